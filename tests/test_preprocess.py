from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from mammobench.data.preprocess import (
    PreprocessSettings,
    apply_window,
    breast_mask,
    chest_wall_side,
    preprocess_array,
    resize_pad,
    window_limits,
)

from .conftest import fake_mammogram


def test_breast_mask_excludes_label_and_background():
    img = fake_mammogram().astype(np.float32) / 255
    mask = breast_mask(img)
    assert not mask[10:25, 170:185].any()  # the burnt-in label
    assert mask[150, 20] and not mask[150, 195]


@pytest.mark.parametrize("side", ["L", "R"])
def test_chest_wall_side_and_canonical_flip(side):
    img = fake_mammogram(side=side).astype(np.float32) / 255
    assert chest_wall_side(breast_mask(img)) == ("left" if side == "L" else "right")
    out = preprocess_array(img, PreprocessSettings(size=64))
    # After the canonical flip the breast hugs the left edge whatever side it came from.
    assert out[:, :8].mean() > 0.3 and out[:, -8:].mean() < out[:, :8].mean()


def test_breast_crop_removes_background():
    img = fake_mammogram().astype(np.float32) / 255
    cropped = preprocess_array(img, PreprocessSettings(size=64, keep_aspect=False))
    plain = preprocess_array(img, PreprocessSettings(size=64, keep_aspect=False, crop_breast=False))
    assert (cropped > 0.2).mean() > (plain > 0.2).mean() + 0.1


def test_roi_is_cut_and_crops_skip_breast_steps():
    img = np.zeros((100, 100), np.float32)
    img[40:60, 40:60] = 1.0
    out = preprocess_array(img, PreprocessSettings(size=32, window=(0, 100)), roi=(40, 40, 60, 60))
    assert out.shape == (32, 32) and out.min() > 0.99  # the ROI is all lesion
    with pytest.raises(ValueError, match="outside"):
        preprocess_array(img, PreprocessSettings(size=32), roi=(200, 200, 210, 210))
    crop = preprocess_array(img[30:70, 30:70], PreprocessSettings(size=40, window=(0, 100)), full_image=False)
    assert crop[20, 20] == pytest.approx(1.0)


def test_resize_pad_keeps_aspect():
    img = np.ones((100, 50), np.float32)
    out = resize_pad(img, 64)
    assert out.shape == (64, 64)
    assert out[:, 16:48].min() > 0.999 and out[:, :15].max() == 0.0 and out[:, 49:].max() == 0.0
    left = resize_pad(img, 64, align="left")
    assert left[:, :32].min() > 0.999 and left[:, 33:].max() == 0.0
    assert resize_pad(img, 64, keep_aspect=False).min() > 0.999


def test_window_percentile_maps_to_unit_range():
    img = np.linspace(0.2, 0.6, 1000, dtype=np.float32).reshape(10, 100)
    out = apply_window(img, *window_limits(img, 0, 100))
    assert out.min() == 0.0 and out.max() == pytest.approx(1.0)
    flat = np.full((4, 4), 0.5, np.float32)
    assert not np.isnan(apply_window(flat, *window_limits(flat, 1, 99))).any()  # a flat image: no NaN


def test_clahe_stays_in_range():
    img = fake_mammogram().astype(np.float32) / 255
    out = preprocess_array(img, PreprocessSettings(size=64, clahe=True))
    assert out.min() >= 0 and out.max() <= 1 and not np.isnan(out).any()


@pytest.mark.parametrize("bad", [{"window": (50, 10)}, {"size": 4}, {"canonical_side": "up"}, {"sise": 224}])
def test_settings_validation(bad):
    with pytest.raises(ValidationError):
        PreprocessSettings(**bad)


def _breast_on(background: np.ndarray, *, side="L") -> np.ndarray:
    h, w = background.shape
    yy, xx = np.mgrid[0:h, 0:w]
    cx = 0 if side == "L" else w - 1
    inside = ((xx - cx) / (0.55 * w)) ** 2 + ((yy - h / 2) / (0.42 * h)) ** 2 < 1
    rng = np.random.default_rng(0)
    out = background.copy()
    out[inside] = 0.45 + 0.2 * rng.random(inside.sum())
    return out.astype(np.float32)


def test_breast_crop_on_a_full_field_digital_mammogram():
    """FFDM: background exactly 0, no film edges, a burnt-in marker in a corner."""
    img = _breast_on(np.zeros((500, 400)), side="R")
    img[20:50, 20:70] = 1.0  # "R MLO" marker, far from the breast
    mask = breast_mask(img)
    assert not mask[20:50, 20:70].any() and mask[250, 390]
    from mammobench.data.preprocess import bbox_of

    x0, y0, x1, y1 = bbox_of(mask)
    assert x0 > 100 and y0 >= 25 and y1 <= 475, "the crop holds the breast (rows 40-460), not the marker"


def test_breast_crop_on_scanned_film():
    """Film: a noisy grey background, a bright film edge along the top and a scanner label."""
    rng = np.random.default_rng(1)
    img = _breast_on(0.08 + 0.04 * rng.random((500, 400)))
    img[:12, :] = 0.95  # the film's edge
    img[440:480, 300:380] = 0.9  # scanner label
    mask = breast_mask(img)
    assert not mask[:12, 200:].any() and not mask[440:480, 300:380].any() and mask[250, 10]


def _ffdm(h: int = 1400, w: int = 560, fold: float = 0.17, seed: int = 0) -> np.ndarray:
    """A full-field breast whose lowest fifth (near the inframammary fold) is faint, as on a real MLO."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    inside = (xx / (0.9 * w)) ** 2 + ((yy - h * 0.5) / (0.5 * h)) ** 2 < 1
    tissue = np.where(yy < 0.8 * h, 0.55 + 0.1 * np.sin(xx / 17.0) * np.cos(yy / 23.0), fold)
    return np.clip(np.where(inside, tissue + 0.01 * rng.standard_normal((h, w)), 0.0), 0, 1)


def test_12_bit_data_in_a_16_bit_file_gives_the_breast_and_input_of_full_16_bit(tmp_path):
    """The container's range is not the data's: a 12-bit exam in 16-bit PNGs (values up to 4095) must give the same
    breast box and the same model input as the same breast in full 16 bits, with no tissue cut off."""
    from PIL import Image

    from mammobench.data.images import read_image
    from mammobench.data.preprocess import bbox_of

    truth = _ffdm()
    v12 = np.round(truth * 4095).astype(np.uint16)
    Image.fromarray(v12).save(tmp_path / "0_L-MLO_12bit.png")
    Image.fromarray((v12.astype(np.uint32) * 16 + 8 * (v12 > 0)).astype(np.uint16)).save(tmp_path / "0_L-MLO_16bit.png")
    twelve, sixteen = read_image(tmp_path / "0_L-MLO_12bit.png"), read_image(tmp_path / "0_L-MLO_16bit.png")
    assert twelve.max() > 0.6, "12-bit data is scaled by the 12 bits it holds, not by 65535"
    boxes = [bbox_of(breast_mask(img), 0) for img in (twelve, sixteen)]
    assert boxes[0] == boxes[1]
    assert boxes[0][3] == truth.shape[0], "the faint lower breast is kept"
    settings = PreprocessSettings(size=(256, 128))
    a, b = (preprocess_array(img, settings) for img in (twelve, sixteen))
    assert np.abs(a - b).max() < 0.01
    # an array handed over on the container's scale (a notebook dividing by 65535) finds the same breast
    assert bbox_of(breast_mask((v12 / 65535.0).astype(np.float32)), 0) == boxes[0]


def test_stored_bits():
    from mammobench.data.images import stored_bits

    assert [stored_bits(v) for v in (0, 255, 1023, 4095, 3000, 16383, 65535)] == [8, 8, 10, 12, 12, 14, 16]


def test_preprocessing_options_and_intensity_statistics():
    from mammobench.data.options import IntensityStats, PreprocessOptions

    with pytest.raises(ValidationError, match="window percentiles"):
        PreprocessOptions(window=(50, 10))
    settings = PreprocessOptions(clahe=True).with_size((96, 64))
    assert settings.hw == (96, 64) and settings.clahe
    stats = IntensityStats(n=100, mean=(0.3, 0.5, 0.7), std=(0.10, 0.15, 0.20))
    assert stats.outside(0.5, 0.15) == "" and stats.outside(0.12, 0.15) == ""  # within the widened range
    assert "mean intensity 0.020" in stats.outside(0.02, 0.15)
    assert "contrast (SD) 0.002" in stats.outside(0.5, 0.002)
