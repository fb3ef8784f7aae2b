"""The preprocessing and augmentation settings of a run: plain pydantic models, cheap to import.

They live apart from the code that applies them (:mod:`mammobench.data.preprocess`, OpenCV;
:mod:`mammobench.data.transforms`, torchvision) so that reading or validating a config (and every
``--help``) never imports the image and deep-learning stacks.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mammobench.runtime import MAX_SIDE, MIN_SIDE, Size, check_size, size_hw, size_label  # noqa: F401 - re-exported


class PreprocessOptions(BaseModel):
    """Every preprocessing choice but the size (a run's config holds these; the size follows the model).

    Attributes:
        keep_aspect: resize the long side to ``size`` and pad (True), or stretch to a square (False).
        window: lower/upper intensity percentiles mapped to 0 and 1 (contrast/brightness normalisation).
        window_from: where those percentiles are measured: ``image`` (the breast in the whole image, also
            for a lesion cut out of it), ``crop`` (each lesion crop stretched on its own pixels: erases
            absolute density, kept to reproduce older runs and for ablations) or ``fixed`` (no window:
            the decoded intensities as they are).
        clahe: apply Contrast Limited Adaptive Histogram Equalisation after windowing.
        clahe_clip: CLAHE clip limit; ``clahe_tiles``: its tile grid.
        crop_breast: crop full mammograms to the breast (drops film borders, labels, background).
        canonical_side: flip full mammograms so the chest wall is on this side (``none`` to keep).
        context: the lesion context a lesion model sees, in lesion radii: a square of half-side ``radius x (1 +
            context)`` around the lesion's own box (the manifest's ``lesion`` column), so 0.5 is the square of three
            radii. ``None``: the ``roi`` box as ``prepare --roi-margin`` made it.
        field_mm: instead, a fixed physical field of view: a square of this many mm around the lesion's centre,
            from the image's pixel size (``pixel_mm``).
        scales: several contexts at once (e.g. ``[0.5, 2.0]``): one input channel per context, the same lesion at
            each (a multi-scale input; the model takes ``len(scales)`` channels).
        invert: ``auto`` turns a whole image with a bright frame whose brightest pixels outnumber its darkest
            (an export that inverted it: white background, dark breast; 156 of the 1,168 RSNA Kaggle images) back
            into a mammogram as a radiologist sees it, before anything else; ``never`` keeps every image as read.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    keep_aspect: bool = True
    window: tuple[float, float] = (0.5, 99.5)
    window_from: Literal["image", "crop", "fixed"] = "image"
    clahe: bool = False
    clahe_clip: float = Field(2.0, gt=0)
    clahe_tiles: int = Field(8, ge=1, le=64)
    crop_breast: bool = True
    canonical_side: Literal["left", "right", "none"] = "left"
    context: float | None = Field(None, ge=0, le=20)
    field_mm: float | None = Field(None, gt=0, le=500)
    scales: tuple[float, ...] | None = None
    invert: Literal["auto", "never"] = "auto"

    @field_validator("scales")
    @classmethod
    def _check_scales(cls, v: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if v is not None and (not 2 <= len(v) <= 4 or any(not 0 <= c <= 20 for c in v) or len(set(v)) != len(v)):
            raise ValueError(f"scales must be 2 to 4 different contexts in lesion radii (0-20), e.g. [0.5, 2.0]; got {list(v)}")
        return v

    @model_validator(mode="after")
    def _one_way_to_crop(self) -> PreprocessOptions:
        given = [name for name in ("context", "field_mm", "scales") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"{' and '.join(given)} are alternatives: set one way to crop around the lesion")
        return self

    @property
    def around_lesion(self) -> bool:
        """Whether crops are cut around the manifest's ``lesion`` box (context, field of view or scales)."""
        return self.context is not None or self.field_mm is not None or self.scales is not None

    @property
    def channels(self) -> int:
        """Input channels of the preprocessed image: one per scale, else one."""
        return len(self.scales) if self.scales else 1

    @field_validator("window")
    @classmethod
    def _check_window(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"window percentiles must satisfy 0 <= low < high <= 100, got {v}")
        return v

    def with_size(self, size: Size) -> PreprocessSettings:
        return PreprocessSettings(size=size, **self.model_dump())


class PreprocessSettings(PreprocessOptions):
    """How a raw image becomes a model input: :class:`PreprocessOptions` and the output ``size``: a side in
    pixels (224, 384, 512 or any; square after padding) or ``(height, width)`` for whole mammograms
    (1152 x 896, 1024 x 512: the breast keeps its aspect and fills far more of the input than a padded
    square). Changing any field rebuilds the cache automatically.
    """

    size: Size = 224

    @field_validator("size")
    @classmethod
    def _check_size(cls, v: Size) -> Size:
        checked = check_size(v)
        assert checked is not None
        return checked

    @property
    def hw(self) -> tuple[int, int]:
        return size_hw(self.size)


class IntensityStats(BaseModel):
    """What a model's training inputs looked like (after preprocessing, in [0, 1]): the 1st, 50th and 99th
    percentile over ``n`` training images of each image's mean and of its standard deviation.

    Recorded in ``model.json`` and bundles, so that an input far outside them (a 16-bit crop read on the wrong
    scale, an inverted image, another modality) is flagged instead of answered calmly.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    n: int = Field(ge=1)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def outside(self, mean: float, std: float) -> str:
        """Empty when an image's ``mean``/``std`` lie within the training range (widened by half its width,
        at least 0.05), else the sentence saying which lies outside."""
        problems = []
        for name, value, (lo, _, hi) in (("mean intensity", mean, self.mean), ("contrast (SD)", std, self.std)):
            margin = max(0.05, 0.5 * (hi - lo))
            if not lo - margin <= value <= hi + margin:
                problems.append(f"{name} {value:.3f} (training images: {lo:.3f}-{hi:.3f})")
        if not problems:
            return ""
        return ("intensities far outside the training images': " + "; ".join(problems) +
                ": check the file's bit depth, inversion (MONOCHROME1) and that it is the kind of image the model "
                "was trained on")


class AugmentSettings(BaseModel):
    """Training augmentation. Probabilities are per image; set ``enabled: false`` to switch all off.

    The defaults are flips only: on real lesions the notebook's full set (rotation 15, blur, sharpness,
    noise, brightness/contrast, affine; :data:`NOTEBOOK_AUGMENT`) did not help (``docs/recipe.md``).
    Brightness and contrast jitter in particular perturb the absolute density a lesion crop carries.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    rotation_degrees: float = Field(0.0, ge=0, le=180)
    hflip: float = Field(0.5, ge=0, le=1)
    vflip: float = Field(0.5, ge=0, le=1)
    blur_p: float = Field(0.0, ge=0, le=1)
    blur_sigma: tuple[float, float] = (0.1, 1.5)
    sharpness_p: float = Field(0.0, ge=0, le=1)
    sharpness_factor: float = Field(2.0, ge=0)
    noise_p: float = Field(0.0, ge=0, le=1)
    noise_std: float = Field(0.02, ge=0)
    brightness: float = Field(0.0, ge=0, le=1)
    contrast: float = Field(0.0, ge=0, le=1)
    affine_p: float = Field(0.0, ge=0, le=1)
    translate: float = Field(0.05, ge=0, le=0.5)
    scale: tuple[float, float] = (0.95, 1.05)


#: The student notebook's augmentation set, as ``--set`` overrides (an ablation variant, or a choice).
NOTEBOOK_AUGMENT = ("data.augment.rotation_degrees=15", "data.augment.blur_p=0.2", "data.augment.sharpness_p=0.2",
                    "data.augment.noise_p=0.2", "data.augment.brightness=0.1", "data.augment.contrast=0.1",
                    "data.augment.affine_p=0.3")


