"""Explanations: Grad-CAM for CNNs, gradient-weighted attention rollout for ViTs, and the gallery's choice of cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def test_vit_maps_are_not_flat_and_cnn_maps_still_work(trained_runs, demo_prepared):
    from mammobench.data.cache import ImageCache, cache_request
    from mammobench.evaluation.explain import explain_arrays, explanation_method
    from mammobench.runs import RunDir

    frame = pd.read_csv(Path(trained_runs["vit"]) / "split.csv", dtype=str, keep_default_na=False)
    rows = frame[frame["split"] == "test"].head(4)
    for key, method in (("vit", "attention rollout"), ("cnn", "Grad-CAM")):
        model, info = RunDir(trained_runs[key]).load_model()
        assert explanation_method(model).startswith(method)
        cache = ImageCache(demo_prepared.out / "cache", info.preprocess)
        images = [cache.get(cache_request(r)) for _, r in rows.iterrows()]
        maps = [cam for *_, cam in explain_arrays(model, info, images)]
        assert all(m.shape == images[0].shape and m.std() > 0.02 for m in maps), key
        if key == "vit":  # class-specific: explaining another class gives another map
            other = explain_arrays(model, info, images[:1], target=info.labels[1])[0][3]
            first = explain_arrays(model, info, images[:1], target=info.labels[0])[0][3]
            assert np.abs(other - first).max() > 0.05


def test_gallery_samples_across_classes():
    from mammobench.experiments.compare import _across_classes

    true = np.array(["A", "A", "A", "B", "B", "C"])
    score = np.array([0.99, 0.98, 0.97, 0.6, -1.0, 0.7])
    assert _across_classes(true, score, 3) == [0, 3, 5]  # one per class (in order of appearance) before a second
    assert _across_classes(true, score, 10) == [0, 3, 5, 1, 2]
