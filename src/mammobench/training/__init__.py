"""Training layer: focal loss, balanced sampling, optimiser and schedule, the LightningModule, and
:func:`~mammobench.training.fit.fit` which turns a config into a run directory."""
