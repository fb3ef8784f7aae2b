"""Models layer: timm backbones with a single-channel stem and a fresh head (:mod:`.factory`), and the
two-stage fine-tuning plan that freezes and unfreezes them block by block (:mod:`.finetune`).

Nothing here imports :mod:`mammobench.data`.
"""
