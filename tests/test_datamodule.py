from __future__ import annotations

import pytest
import torch
from torch.utils.data import WeightedRandomSampler

from mammobench.data.cache import ImageCache
from mammobench.data.datamodule import MammoDataModule
from mammobench.data.dataset import MammoDataset
from mammobench.data.manifest import ManifestError, read_manifest
from mammobench.data.preprocess import PreprocessSettings
from mammobench.data.transforms import AugmentSettings, create_transform
from mammobench.runtime import MammobenchError

LABELS = ["BENIGN", "MALIGNANT", "BENIGN_WITHOUT_CALLBACK"]


def module(demo_prepared, **kw):
    frame = read_manifest(demo_prepared.out)
    cache = ImageCache(demo_prepared.out / "cache", PreprocessSettings(size=64))
    dm = MammoDataModule(frame, LABELS, cache, mean=0.5, std=0.25, batch_size=8, num_workers=0, **kw)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_batches_and_normalisation(demo_prepared):
    dm = module(demo_prepared)
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (8, 1, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["target"].dtype == torch.int64 and set(batch["target"].tolist()) <= {0, 1, 2}
    assert batch["image"].min() >= (0 - 0.5) / 0.25 - 1e-5 and batch["image"].max() <= (1 - 0.5) / 0.25 + 1e-5
    ds = dm.dataset("train")
    assert "MammoDataset(n=" in repr(ds) and sum(ds.class_counts.values()) == len(ds)


def test_augmentation_only_in_training(demo_prepared):
    dm = module(demo_prepared)
    val = dm.dataset("val")
    assert torch.equal(val[0]["image"], val[0]["image"])
    train = dm.dataset("train")
    torch.manual_seed(0)
    a = train[0]["image"]
    b = train[0]["image"]
    assert not torch.equal(a, b)
    off = create_transform(train=True, augment=AugmentSettings(enabled=False), mean=0.0, std=1.0)
    x = torch.rand(1, 16, 16)
    assert torch.equal(off(x), x)


def test_sampler_hook_and_seeded_epochs(demo_prepared):
    calls = []

    def balanced(targets, generator):
        calls.append(len(targets))
        weights = 1.0 / torch.bincount(torch.as_tensor(targets)).float()
        return WeightedRandomSampler(weights[targets], len(targets), generator=generator)

    dm = module(demo_prepared, train_sampler=balanced, seed=5)
    first = [b["index"].tolist() for b in dm.train_dataloader()]
    again = [b["index"].tolist() for b in dm.train_dataloader()]
    assert calls == [len(dm.dataset("train"))] * 2
    assert first == again  # same epoch, same seed: same batches


def test_bad_inputs(demo_prepared):
    frame = read_manifest(demo_prepared.out)
    cache = ImageCache(demo_prepared.out / "cache", PreprocessSettings(size=64))
    with pytest.raises(ManifestError, match="not in the model's label set"):
        MammoDataset(frame, ["BENIGN", "MALIGNANT"], cache)
    leaky = frame.copy()
    leaky.loc[leaky.index[0], "split"] = "test" if leaky.iloc[0]["split"] != "test" else "train"
    with pytest.raises(MammobenchError, match="leakage"):
        MammoDataModule(leaky, LABELS, cache, mean=0, std=1)
    dm = module(demo_prepared)
    with pytest.raises(MammobenchError, match="empty"):
        dm.dataset("holdout")
