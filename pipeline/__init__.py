"""Whole-pipeline applications: the one-scan chain of ``predict.py`` with its report, and the demo run of
``demo.py`` (its model, step list, step runner, report data, figures and report)."""
