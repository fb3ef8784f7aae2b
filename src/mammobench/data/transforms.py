"""Training augmentation and input normalisation, on single-channel float tensors.

The notebook's augmentations (rotations, flips, Gaussian blur, sharpness, noise) plus brightness/contrast
and a small affine. They run on the preprocessed image, so they cost microseconds, not a decode.
Randomness comes from torch's generator, which the DataLoader seeds per worker from the run's seed;
evaluation uses no augmentation at all.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from mammobench.data.options import NOTEBOOK_AUGMENT, AugmentSettings
from mammobench.data.preprocess import normalise

__all__ = ["NOTEBOOK_AUGMENT", "AugmentSettings", "create_transform"]


class AddGaussianNoise(torch.nn.Module):
    """Add N(0, std^2) noise and clip to [0, 1] (film grain / quantum noise)."""

    def __init__(self, std: float):
        super().__init__()
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + torch.randn_like(x) * self.std).clamp_(0.0, 1.0)


class Normalize1(torch.nn.Module):
    """``(x - mean) / std`` with scalar statistics (a single-channel model input)."""

    def __init__(self, mean: float, std: float):
        super().__init__()
        if std <= 0:
            raise ValueError(f"normalisation std must be > 0, got {std}")
        self.mean, self.std = float(mean), float(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return normalise(x, self.mean, self.std)


def create_transform(*, train: bool, augment: AugmentSettings, mean: float, std: float) -> v2.Compose:
    """The transform from a cached ``(1, H, W)`` float tensor in [0, 1] to a model input.

    Args:
        train: add the augmentations (``False`` for validation, test and prediction).
        augment: what to add.
        mean, std: scalar input normalisation (the pretrained model's, averaged over RGB).
    """
    steps: list[torch.nn.Module] = []
    if train and augment.enabled:
        a = augment
        if a.hflip:
            steps.append(v2.RandomHorizontalFlip(a.hflip))
        if a.vflip:
            steps.append(v2.RandomVerticalFlip(a.vflip))
        if a.rotation_degrees:
            steps.append(v2.RandomRotation(a.rotation_degrees, interpolation=v2.InterpolationMode.BILINEAR))
        if a.affine_p and (a.translate or a.scale != (1.0, 1.0)):
            steps.append(v2.RandomApply([v2.RandomAffine(0, translate=(a.translate, a.translate), scale=a.scale)], p=a.affine_p))
        if a.brightness or a.contrast:
            steps.append(v2.ColorJitter(brightness=a.brightness, contrast=a.contrast))
        if a.blur_p:
            steps.append(v2.RandomApply([v2.GaussianBlur(5, sigma=a.blur_sigma)], p=a.blur_p))
        if a.sharpness_p:
            steps.append(v2.RandomAdjustSharpness(a.sharpness_factor, p=a.sharpness_p))
        if a.noise_p and a.noise_std:
            steps.append(v2.RandomApply([AddGaussianNoise(a.noise_std)], p=a.noise_p))
    steps.append(Normalize1(mean, std))
    return v2.Compose(steps)
