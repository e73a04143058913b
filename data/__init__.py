"""Datasets, slice masking, NIfTI I/O, crops and the phantom generator.

The dataset registry lives in :mod:`data.loader` (it imports PyTorch), so the
torch-free steps (I/O, phantoms, straightening) start without loading it.
"""
