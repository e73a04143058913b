"""Evaluation of synthesized vertebrae: RHLV quantification, Genant grading and generation metrics
(docs/design.md, 'Quantification and grading')."""
