"""Data layer: dataset sources -> one manifest, image reading + preprocessing + cache, leak-free splits,
augmentation, and the torch Dataset / Lightning DataModule that feed training.

Nothing here imports :mod:`mammobench.models`, :mod:`mammobench.training` or later layers.
"""
