"""Evaluation: metrics, plots and the run report."""
