"""End-to-end application of a trained model to a new scan (``predict.py``): the chain and its report."""
