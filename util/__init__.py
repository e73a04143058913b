"""Utilities shared by every step: atomic file writes, devices, logging."""
