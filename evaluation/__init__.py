"""Evaluation of synthesized vertebrae: RHLV quantification, Genant grading and generation metrics (DESIGN 5)."""
