"""The torch Dataset over a manifest: cached preprocessed images, integer targets, metadata in order."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from mammobench.data.cache import ImageCache, cache_request
from mammobench.data.manifest import ManifestError


class MammoDataset(Dataset):
    """Samples of a manifest as ``{"image": (1, S, S) float tensor, "target": int, "index": int}``.

    Args:
        frame: manifest rows (any subset, e.g. one split).
        labels: class names in output order; ``target`` is the index into it.
        cache: where preprocessed images live (built on first access if missing).
        transform: tensor transform (augmentation + normalisation), or ``None``.

    Attributes:
        metadata: ``frame`` in sample order (index reset), for joining predictions back.
        targets: ``(N,)`` int64 array of class indices.

    Raises:
        ManifestError: a label in ``frame`` that is not in ``labels``.
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        labels: Sequence[str],
        cache: ImageCache,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.metadata = frame.reset_index(drop=True)
        self.label_names = list(labels)
        unknown = sorted(set(self.metadata["label"]) - set(self.label_names))
        if unknown:
            raise ManifestError(f"label(s) {unknown} are not in the model's label set {self.label_names}")
        lookup = {name: i for i, name in enumerate(self.label_names)}
        self.targets = np.array(self.metadata["label"].map(lookup), dtype=np.int64)  # writable copy
        self.cache = cache
        self.transform = transform
        self._requests = [cache_request(r) for _, r in self.metadata.iterrows()]
        self._entries = [cache.entry_path(r) for r in self._requests]

    def __len__(self) -> int:
        return len(self.metadata)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        image = torch.from_numpy(self.cache.get(self._requests[i], self._entries[i]))[None]
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "target": int(self.targets[i]), "index": i}

    @property
    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.targets, minlength=len(self.label_names))
        return {name: int(c) for name, c in zip(self.label_names, counts, strict=True)}

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}: {v}" for k, v in self.class_counts.items())
        return f"MammoDataset(n={len(self)}, patients={self.metadata['patient_id'].nunique()}, {counts}; {self.cache})"
