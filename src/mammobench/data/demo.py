"""Built-in SYNTHETIC demo data: mammogram-like images generated in seconds, no download.

Not real patients and not for any conclusion about real mammograms: it exists so ``make demo`` and the
tests run anywhere. Every image is named ``synthetic_*``, the dataset is ``demo-synthetic`` and every
report made from it says so.

Each image is a breast silhouette filled with multi-scale filtered noise (fibroglandular texture), a
skin line and quantum noise, holding one finding:

* ``BENIGN`` - a round or oval, well-circumscribed mass;
* ``MALIGNANT`` - an irregular mass with radiating spicules;
* ``BENIGN_WITHOUT_CALLBACK`` - scattered coarse calcifications.

Size, contrast, density and position vary, so the classes overlap a little and results are not trivial.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from mammobench.data.labels import BENIGN, BENIGN_WITHOUT_CALLBACK, MALIGNANT
from mammobench.data.sources.base import DEMO_DATASET, is_synthetic
from mammobench.runtime import atomic_write_bytes, atomic_write_csv, atomic_write_text

__all__ = ["DEMO_DATASET", "SYNTHETIC_NOTICE", "generate_demo_dataset", "generate_image", "is_synthetic"]
SYNTHETIC_NOTICE = "SYNTHETIC DEMO DATA - generated images, not patients; results say nothing about real mammograms."

_CLASS_SHARE = ((BENIGN, 0.40), (MALIGNANT, 0.38), (BENIGN_WITHOUT_CALLBACK, 0.22))


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Multi-scale smoothed noise, a cheap stand-in for fibroglandular tissue, scaled to [0, 1]."""
    out = np.zeros((h, w), np.float32)
    for sigma, weight in ((16, 1.0), (6, 0.6), (2, 0.3)):
        layer = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), sigma)
        out += weight * layer / (layer.std() + 1e-6)
    out -= out.min()
    return out / (out.max() + 1e-6)


def _breast(rng: np.random.Generator, h: int, w: int, side: str) -> np.ndarray:
    """Soft half-ellipse silhouette with the chest wall on ``side``."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx = 0.0 if side == "L" else w - 1.0
    cy = h * rng.uniform(0.45, 0.55)
    rx, ry = w * rng.uniform(0.72, 0.88), h * rng.uniform(0.40, 0.47)
    d = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
    return np.clip((1.0 - d) * 12.0, 0.0, 1.0)


def _lesion(rng: np.random.Generator, h: int, w: int, cx: float, cy: float, label: str) -> np.ndarray:
    """Additive intensity map of one finding centred at (cx, cy)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    r = np.sqrt(dx**2 + dy**2)
    theta = np.arctan2(dy, dx)
    out = np.zeros((h, w), np.float32)
    if label == BENIGN:
        a, b = rng.uniform(7, 13), rng.uniform(6, 12)
        rot = rng.uniform(0, np.pi)
        u = (dx * np.cos(rot) + dy * np.sin(rot)) / a
        v = (-dx * np.sin(rot) + dy * np.cos(rot)) / b
        # Some benign masses are lobulated, which makes them harder to tell from malignant ones.
        lobes = rng.uniform(0.1, 0.35) * np.cos(int(rng.integers(3, 7)) * theta) if rng.random() < 0.45 else 0.0
        out = np.clip((1.0 + lobes - (u**2 + v**2)) * 6.0, 0, 1) * rng.uniform(0.08, 0.30)
        return cv2.GaussianBlur(out, (0, 0), rng.uniform(0.6, 2.2))
    if label == MALIGNANT:
        base = rng.uniform(6, 10)
        harmonics = sum(rng.uniform(0.04, 0.22) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (3, 5, 7))
        core = np.clip((base * (1.0 + harmonics) - r) / 2.0, 0, 1) * rng.uniform(0.08, 0.30)
        spicules = np.zeros((h, w), np.float32)
        faint = rng.random() < 0.45  # subtle cancers: few, faint spicules
        for angle in rng.uniform(0, 2 * np.pi, int(rng.integers(1, 5) if faint else rng.integers(6, 14))):
            length = base * rng.uniform(1.5, 3.0)
            end = (int(cx + length * np.cos(angle)), int(cy + length * np.sin(angle)))
            strength = rng.uniform(0.02, 0.06) if faint else rng.uniform(0.08, 0.18)
            cv2.line(spicules, (int(cx), int(cy)), end, float(strength), 1, cv2.LINE_AA)
        return cv2.GaussianBlur(np.maximum(core, spicules), (0, 0), 0.7)
    # BENIGN_WITHOUT_CALLBACK: scattered coarse calcifications
    for _ in range(int(rng.integers(3, 12))):
        px, py = cx + rng.normal(0, 9), cy + rng.normal(0, 9)
        cv2.circle(out, (int(px), int(py)), int(rng.integers(1, 3)), float(rng.uniform(0.15, 0.5)), -1, cv2.LINE_AA)
    return out


def generate_image(seed: int, label: str, side: str, height: int = 320, width: int = 256
                   ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """One synthetic mammogram and the box around its finding.

    Args:
        seed: seeds this image alone (images are independent of generation order).
        label: ``BENIGN``, ``MALIGNANT`` or ``BENIGN_WITHOUT_CALLBACK``.
        side: ``L`` or ``R`` (chest wall on the left or right).

    Returns:
        ``(image, roi)``: ``(height, width)`` uint16 and ``(x0, y0, x1, y1)``.
    """
    rng = np.random.default_rng(seed)
    breast = _breast(rng, height, width, side)
    density = rng.uniform(0.15, 0.45)
    tissue = 0.25 + density * _texture(rng, height, width)
    image = breast * tissue
    # A place well inside the breast for the finding.
    inside = cv2.erode((breast > 0.99).astype(np.uint8), np.ones((41, 41), np.uint8), borderValue=0)
    ys, xs = np.nonzero(inside)
    k = int(rng.integers(len(xs))) if len(xs) else 0
    cx, cy = (float(xs[k]), float(ys[k])) if len(xs) else (width / 2, height / 2)
    image = image + breast * _lesion(rng, height, width, cx, cy, label)
    image = image + rng.normal(0, 0.025, image.shape).astype(np.float32) * breast
    image = np.clip(image, 0, 1)
    half = 28
    roi = (max(0, int(cx) - half), max(0, int(cy) - half), min(width, int(cx) + half), min(height, int(cy) + half))
    return (image * 65535).astype(np.uint16), roi


def generate_demo_dataset(out: str | Path, *, n_patients: int = 160, seed: int = 0) -> Path:
    """Write the synthetic demo images and their table (``demo.csv``) to ``out``; returns the table path.

    Each patient has one finding seen in two views (CC and MLO), like real screening, so a split that
    is not grouped by patient would leak. Deterministic for a given ``seed``.
    """
    out = Path(out)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = [label for label, _ in _CLASS_SHARE]
    shares = [share for _, share in _CLASS_SHARE]
    rows = []
    for p in range(n_patients):
        label = str(rng.choice(labels, p=shares))
        side = "L" if rng.random() < 0.5 else "R"
        for v, view in enumerate(("CC", "MLO")):
            image_seed = seed * 1_000_003 + p * 2 + v
            image, roi = generate_image(image_seed, label, side)
            name = f"synthetic_{p:04d}_{side}_{view}.png"
            ok, encoded = cv2.imencode(".png", image)
            if not ok:  # pragma: no cover - cv2 always encodes uint16 PNG
                raise RuntimeError(f"could not encode {name}")
            atomic_write_bytes(images / name, encoded.tobytes())
            rows.append({
                # the seed is part of the woman's id: two generated sets are different (synthetic) women
                "path": f"images/{name}", "label": label, "patient_id": f"SYN{seed}_{p:04d}",
                "roi": " ".join(map(str, roi)), "lesion_type": "calcification" if label == BENIGN_WITHOUT_CALLBACK else "mass",
                "laterality": side, "view": view, "image_type": "full", "sample_id": f"synthetic_{p:04d}_{side}_{view}",
                "dataset": DEMO_DATASET,
            })
    table = out / "demo.csv"
    atomic_write_csv(table, pd.DataFrame(rows))
    atomic_write_text(out / "README.txt", SYNTHETIC_NOTICE + "\nMade by mammobench.data.demo.generate_demo_dataset.\n")
    return table
