"""The catalogue of mammography-pretrained encoders ``model.pretrained`` can name, with their preprocessing.

Each entry says what the encoder is, where its weights come from, how its checkpoint is laid out, and how its
authors fed it images: input size, intensity scaling and normalisation. A config that names one gets that
preprocessing (``data.image_size``, ``model.mean``/``std``, ``data.preprocess``) unless it sets a value
itself; ``run.json`` says which values came from the encoder and which the config overrode.

The numbers were read from the authors' code, not from papers:

- **Mammo-CLIP** (``batmanlab/Mammo-CLIP``): ``configs/pre_train_b{2,5}_clip.yaml`` give ``mean: 0.3089279``,
  ``std: 0.25053555408335154``, ``image_size_h: 1520``, ``image_size_w: 912``;
  ``preprocessing/preprocess_image_to_png_kaggle.py`` crops the breast and resizes it to 912 x 1520 without
  keeping its aspect (``cv2.resize``); the datasets min-max each image to [0, 1] before normalising, and read
  it as RGB (3 equal channels). The released checkpoints (``b{2,5}_detector_period_n``) hold the image encoder
  in the naming of the ``efficientnet-pytorch`` package (``configs/model/clip_b{2,5}_det_clinical.yaml``:
  ``tf_efficientnet_b5_ns-detect`` = ``EfficientNet.from_pretrained("efficientnet-b5")``) under
  ``image_encoder.``, whose "same" padding is fixed for the package's native size (260 px for B2, 456 px for B5)
  whatever the input: ``static_padding`` reproduces that exactly.
- **RSNA 2023 first place** (``dangnh0611/kaggle_rsna_breast_cancer``, ``src/submit/submit.py``): breast ROI
  (YOLOX), the DICOM's VOI window to 8 bits, resized keeping the aspect and padded to 2048 x 1024, three equal
  channels, ImageNet mean/std; a timm ``convnext_small`` with one output.

This module is plain data (no torch): the config validates names against it, ``models.pretrained`` loads
the weights, ``mammobench weights list`` prints it.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mammobench.runtime import MammobenchError

#: Checkpoint layouts :mod:`mammobench.models.pretrained` can map to timm's names.
Layout = Literal["timm", "efficientnet_pytorch"]

#: The safetensors metadata key naming the catalogue entry a converted file holds.
ENCODER_METADATA_KEY = "mammobench_encoder"


class EncoderError(MammobenchError):
    """An encoder name the catalogue does not know, or one that has no download."""


@dataclass(frozen=True)
class EncoderSpec:
    """One pretrained encoder: what it is, where it comes from, how to read its checkpoint and feed it.

    Attributes:
        name: what ``model.pretrained`` says (``mammo-clip-b2``).
        architecture: the timm model the weights map onto (``model.name`` must be it).
        title, trained_on, licence, citation, homepage: for people (``mammobench weights list``, the README).
        hub_repo, hub_file: the Hugging Face hub file (``None``: a local file only, ``download`` says where).
        download: where to get the file by hand.
        layout, key, strip_prefix: the checkpoint's naming, the entry holding the state dict, the prefix of
            the encoder's tensors (others, e.g. a CLIP text encoder, are left out).
        input_size: (height, width) the encoder was trained at; ``mean``/``std``: its scalar normalisation
            after intensities are scaled to [0, 1].
        preprocess: :class:`~mammobench.data.options.PreprocessOptions` fields that reproduce its authors'
            scaling (``window`` (0, 100) = per-image min-max).
        static_padding: the input side the original network fixed its "same" padding for (``None``: timm's).
        feature_dim: size of the pooled features (a linear probe's input).
    """

    name: str
    architecture: str
    title: str
    trained_on: str
    licence: str
    citation: str
    homepage: str
    download: str
    input_size: tuple[int, int]
    mean: float
    std: float
    feature_dim: int
    hub_repo: str | None = None
    hub_file: str | None = None
    layout: Layout = "timm"
    key: str | None = None
    strip_prefix: str | None = None
    preprocess: dict[str, Any] = field(default_factory=dict)
    static_padding: int | None = None

    def config_values(self) -> dict[str, Any]:
        """``{dotted config key: value}`` this encoder's preprocessing sets."""
        values: dict[str, Any] = {"data.image_size": list(self.input_size), "model.mean": self.mean,
                                  "model.std": self.std}
        values.update({f"data.preprocess.{k}": v for k, v in self.preprocess.items()})
        return values


_MAMMO_CLIP_CITATION = ("Ghosh S, Poynton CB, Visweswaran S, Batmanghelich K. Mammo-CLIP: A Vision Language Foundation "
                        "Model to Enhance Data Efficiency and Robustness in Mammography. MICCAI 2024. arXiv:2405.12255")
_MAMMO_CLIP_COMMON: dict[str, Any] = {
    "trained_on": "screening mammograms paired with their report text (UPMC, in-house), contrastive (CLIP) "
                  "pre-training",
    "licence": "CC BY 4.0 (the authors' README; their code's LICENSE.txt is MIT)",
    "citation": _MAMMO_CLIP_CITATION,
    "homepage": "https://github.com/batmanlab/Mammo-CLIP",
    "input_size": (1520, 912),
    "mean": 0.3089279,
    "std": 0.25053555408335154,
    "hub_repo": "shawn24/Mammo-CLIP",
    "layout": "efficientnet_pytorch",
    "key": "model",
    "strip_prefix": "image_encoder.",
    "preprocess": {"window": [0.0, 100.0], "keep_aspect": False, "crop_breast": True},
}

ENCODERS: dict[str, EncoderSpec] = {
    spec.name: spec for spec in (
        EncoderSpec(
            name="mammo-clip-b2", architecture="tf_efficientnet_b2", title="Mammo-CLIP image encoder, EfficientNet-B2",
            hub_file="Pre-trained-checkpoints/b2-model-best-epoch-10.tar", feature_dim=1408, static_padding=260,
            download="https://huggingface.co/shawn24/Mammo-CLIP/blob/main/Pre-trained-checkpoints/b2-model-best-epoch-10.tar",
            **_MAMMO_CLIP_COMMON),
        EncoderSpec(
            name="mammo-clip-b5", architecture="tf_efficientnet_b5", title="Mammo-CLIP image encoder, EfficientNet-B5",
            hub_file="Pre-trained-checkpoints/b5-model-best-epoch-7.tar", feature_dim=2048, static_padding=456,
            download="https://huggingface.co/shawn24/Mammo-CLIP/blob/main/Pre-trained-checkpoints/b5-model-best-epoch-7.tar",
            **_MAMMO_CLIP_COMMON),
        EncoderSpec(
            name="rsna2023-convnext-small", architecture="convnext_small",
            title="RSNA Screening Mammography 2023, first place: ConvNeXt-small",
            trained_on="RSNA screening mammograms (cancer vs not) with BMCD, CDD-CESM, CMMD, MiniDDSM and VinDr",
            licence="MIT (the solution's code); the weights' Kaggle dataset states its own terms",
            citation="Nguyen HD. 1st place solution, RSNA Screening Mammography Breast Cancer Detection (Kaggle, 2023)",
            homepage="https://github.com/dangnh0611/kaggle_rsna_breast_cancer",
            download="kaggle datasets download -d dangnh0611/rsna-breast-cancer-detection-best-ckpts (a local file "
                     "only: Kaggle needs an account)",
            input_size=(2048, 1024), mean=0.449, std=0.226, feature_dim=768,
            preprocess={"keep_aspect": True, "crop_breast": True}),
    )
}


def get_encoder(name: str) -> EncoderSpec:
    """The catalogue entry ``name``; an :class:`EncoderError` listing the known ones otherwise."""
    if name in ENCODERS:
        return ENCODERS[name]
    raise EncoderError(f"unknown encoder {name!r}; known: {', '.join(ENCODERS)} (mammobench weights list)")


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata in a ``.safetensors`` header, read without torch (empty when absent or unreadable)."""
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > 100 << 20:
                return {}
            header = json.loads(handle.read(length))
    except (OSError, ValueError, struct.error):
        return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def encoder_named_by(pretrained: Any) -> EncoderSpec | None:
    """The catalogue entry a ``model.pretrained`` value names: a known name, ``{source: name}``, or a
    ``.safetensors`` file ``mammobench weights convert`` wrote (its metadata names the source)."""
    if isinstance(pretrained, dict):
        pretrained = pretrained.get("source") or pretrained.get("file")
    else:
        pretrained = getattr(pretrained, "source", None) or getattr(pretrained, "file", None) or pretrained
    if pretrained is None:
        return None
    text = str(pretrained)
    if text in ENCODERS:
        return ENCODERS[text]
    if text.endswith(".safetensors"):
        name = safetensors_metadata(text).get(ENCODER_METADATA_KEY)
        return ENCODERS.get(name) if name else None
    return None
