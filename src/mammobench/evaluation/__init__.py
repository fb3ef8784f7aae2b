"""Evaluation layer: metrics with patient-level bootstrap confidence intervals, plots, Grad-CAM
explanations, and the model-comparison report."""
