"""The torch Dataset over a manifest: cached preprocessed images, integer targets, metadata in order."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from mammobench.data.cache import ImageCache, cache_request
from mammobench.data.manifest import ManifestError, patient_key
from mammobench.data.preprocess import as_channels


class _Labelled(Dataset):
    """What both datasets share: ``targets`` over ``label_names`` and their counts."""

    targets: np.ndarray
    label_names: list[str]

    @property
    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.targets, minlength=len(self.label_names))
        return {name: int(c) for name, c in zip(self.label_names, counts, strict=True)}

    def _set_targets(self, label_column: pd.Series, labels: Sequence[str]) -> None:
        self.label_names = list(labels)
        unknown = sorted(set(label_column) - set(self.label_names))
        if unknown:
            raise ManifestError(f"label(s) {unknown} are not in the model's label set {self.label_names}")
        lookup = {name: i for i, name in enumerate(self.label_names)}
        self.targets = np.array(label_column.map(lookup), dtype=np.int64)  # writable copy

    def _counts(self) -> str:
        return ", ".join(f"{k}: {v}" for k, v in self.class_counts.items())


class MammoDataset(_Labelled):
    """Samples of a manifest as ``{"image": (C, H, W) float tensor, "target": int, "index": int}`` (C: one channel, or
    one per scale of ``data.preprocess.scales``).

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
        self._set_targets(self.metadata["label"], labels)
        self.cache = cache
        self.transform = transform
        self._requests = [cache_request(r) for _, r in self.metadata.iterrows()]
        self._entries = [cache.entry_path(r) for r in self._requests]

    def __len__(self) -> int:
        return len(self.metadata)

    @property
    def entry_paths(self) -> list[Path]:
        """Each sample's preprocessed image in the cache, in sample order."""
        return list(self._entries)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        image = torch.from_numpy(as_channels(self.cache.get(self._requests[i], self._entries[i])))
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "target": int(self.targets[i]), "index": i}

    def __repr__(self) -> str:
        return f"MammoDataset(n={len(self)}, patients={patient_key(self.metadata).nunique()}, {self._counts()}; {self.cache})"


class BreastDataset(_Labelled):
    """Breasts as ``{"image": (V, 1, H, W), "view_mask": (V,) bool, "target": int, "index": int}``.

    Each breast's views come from its image rows (:func:`~mammobench.data.views.breast_table`); a missing
    view is an all-zero slot with ``view_mask`` False (the model masks it, it never sees the zeros). Each
    view is augmented on its own.

    Attributes:
        metadata: one row per breast (``breast_id``, ``patient_id``, ``label``, ``view_<V>`` row indices).
        images: the image rows the views index into.
        targets: ``(N,)`` int64 breast labels; ``notes``: what :func:`breast_table` set aside.
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        labels: Sequence[str],
        cache: ImageCache,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        views: Sequence[str] = ("CC", "MLO"),
        positive: str | None = None,
    ):
        from mammobench.data.views import breast_table

        self.images = frame.reset_index(drop=True)
        self.label_names = list(labels)
        self.views = list(views)
        self.metadata, self.notes = breast_table(self.images, self.label_names, positive, self.views)
        if self.metadata.empty:
            raise ManifestError(f"no breast has a {' or '.join(self.views)} view among {len(self.images)} image(s)")
        self._set_targets(self.metadata["label"], labels)
        self.cache = cache
        self.transform = transform
        self._requests = [cache_request(r) for _, r in self.images.iterrows()]
        self._entries = [cache.entry_path(r) for r in self._requests]
        self._index = self.metadata[[f"view_{v}" for v in self.views]].to_numpy(dtype=np.int64)
        self._shape: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.metadata)

    def _view(self, k: int) -> torch.Tensor:
        image = torch.from_numpy(as_channels(self.cache.get(self._requests[k], self._entries[k])))
        return self.transform(image) if self.transform is not None else image

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        present = [int(k) for k in self._index[i] if k >= 0]
        loaded = {k: self._view(k) for k in present}
        shape = next(iter(loaded.values())).shape
        stack = torch.stack([loaded[int(k)] if k >= 0 else torch.zeros(shape) for k in self._index[i]])
        return {"image": stack, "view_mask": torch.from_numpy(self._index[i] >= 0), "target": int(self.targets[i]),
                "index": i}

    def __repr__(self) -> str:
        return f"BreastDataset(n={len(self)} breasts, views {'/'.join(self.views)}, {self._counts()}; {self.cache})"
