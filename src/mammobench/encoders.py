"""The catalogue of mammography-pretrained encoders ``model.pretrained`` can name, with their preprocessing.

Each entry says what the encoder is, where its weights come from, how its checkpoint is laid out, and how its
authors fed it images: input size, intensity scaling and normalisation. A config that names one gets that
preprocessing (``data.image_size``, ``model.mean``/``std``, ``data.preprocess``) unless it sets a value
itself; ``run.json`` says which values came from the encoder and which the config overrode.

The numbers were read from the authors' code, not from papers:

- **Mammo-CLIP** (``batmanlab/Mammo-CLIP``): ``configs/pre_train_b{2,5}_clip.yaml`` give ``mean: 0.3089279``,
  ``std: 0.25053555408335154``, ``image_size_h: 1520``, ``image_size_w: 912``;
  ``preprocessing/preprocess_image_to_png_kaggle.py`` crops the breast and resizes it to 912 x 1520 without
  keeping its aspect (``cv2.resize``); ``Datasets/dataset_concepts.py`` (``MammoDataset.__getitem__``) reads the PNG
  as RGB (3 equal channels), then ``img -= img.min(); img /= img.max()`` and ``(img - mean) / std``. The released
  checkpoints are what ``breastclip/trainer.py`` saves (``{"model", "optimizer", "scheduler", "config", "epoch",
  "train_loss"}``): the image encoder of ``breastclip/model/modules/__init__.py`` (``tf_efficientnetv2-detect`` =
  ``EfficientNet.from_pretrained("efficientnet-b2", num_classes=1)``, ``tf_efficientnet_b5_ns-detect`` = B5) in the
  authors' vendored copy of ``efficientnet-pytorch`` (``modules/efficientnet_custom.py``, whose ``_fc`` is commented
  out) under ``image_encoder.``, whose "same" padding is fixed for the package's native size (260 px for B2,
  456 px for B5) whatever the input: ``static_padding`` reproduces that exactly.
- **Mammo-FM** (``batmanLab/Mammo-FM`` on the hub): the same checkpoint layout and B5 detector encoder
  (``config["model"]["image_encoder"]["name"] == "tf_efficientnet_b5_ns-detect"``) and the same preprocessing
  (1520 x 912, per-image min-max, mean 0.3089279, std 0.25053555, RGB), read from a fork of the authors' code
  (``huangjj2002/Mammo-FM``: ``finetune_cancer.py``'s ``CustomMammoDataset`` and ``get_val_transform``,
  ``src/codebase/Classifiers/models/breast_clip_classifier.py``); the authors' own repository could not be read here.
  Its weights have their own licence (``LICENSE_WEIGHTS.txt``), stricter than its code's: :data:`MAMMO_FM_LICENCE`.
- **RSNA 2023 first place** (``dangnh0611/kaggle_rsna_breast_cancer``): ``src/submit/submit.py`` crops the breast
  (YOLOX), applies the DICOM's VOI window to 8 bits, resizes keeping the aspect and pads to 2048 x 1024, three
  equal channels; ``src/submit/model.py`` (``KFoldEnsembleModel``) builds ``timm.create_model(model_name,
  num_classes=1, in_chans=3, checkpoint_path=..., global_pool="max")`` for ``convnext_small.fb_in22k_ft_in1k_384``
  and normalises ``(x - mean * 255) / (std * 255)`` per channel with the model's ImageNet mean/std. timm's
  ``create_model(checkpoint_path=...)`` loads ``state_dict_ema`` when the file has one (``load_state_dict(use_ema=
  True)``), and the solution trained with ``--model-ema``, so the EMA weights are the published model. The
  per-channel normalisation is folded into the first convolution (:func:`mammobench.models.pretrained.
  fold_input_normalisation`), so one grey channel in [0, 1] gives the authors' features exactly.

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
class LicenceStatement:
    """What one source says the weights' licence is."""

    licence: str
    stated_by: str
    url: str


@dataclass(frozen=True)
class WeightsLicence:
    """The terms that come with pretrained weights, as their authors state them, and what governs.

    Attributes:
        statements: each statement with its source (the authors' repository, a model card ...); they may disagree.
        governing: the terms mammobench applies: the stricter statement until the authors settle a disagreement.
        non_commercial: the governing terms forbid commercial use (an ``export`` says so).
        forbids: uses the terms forbid outright; ``export`` and ``serve`` of a model built on the weights are
            refused unless the user acknowledges the terms by name (:attr:`acknowledge`).
        acknowledge: the name ``--accept-weights-terms`` must give to export or serve such a model.
    """

    statements: tuple[LicenceStatement, ...]
    governing: str
    non_commercial: bool = False
    forbids: tuple[str, ...] = ()
    acknowledge: str | None = None

    def summary(self) -> str:
        """One line: the governing terms, then every statement with its source."""
        said = "; ".join(f"{s.licence} ({s.stated_by})" for s in self.statements)
        forbids = f"; forbids {', '.join(self.forbids)}" if self.forbids else ""
        return f"{self.governing}{forbids}. Stated: {said}"

    def as_dict(self) -> dict[str, Any]:
        """For ``run.json``, sidecars, ``model.json``-derived bundle files and the page."""
        return {"governing": self.governing, "non_commercial": self.non_commercial, "forbids": list(self.forbids),
                "acknowledge": self.acknowledge,
                "statements": [{"licence": s.licence, "stated_by": s.stated_by, "url": s.url} for s in self.statements]}


@dataclass(frozen=True)
class EncoderSpec:
    """One pretrained encoder: what it is, where it comes from, how to read its checkpoint and feed it.

    Attributes:
        name: what ``model.pretrained`` says (``mammo-clip-b2``).
        architecture: the timm model the weights map onto (``model.name`` must be it).
        title, trained_on, licence, citation, homepage: for people (``mammobench weights list``, the README).
        hub_repo, hub_file: the Hugging Face hub file (``None``: a local file only, ``download`` says where).
        download: where to get the file by hand (for a hub file: the file's own URL, ``.../resolve/main/...``).
        layout, key, strip_prefix: the checkpoint's naming, the entry holding the state dict (``None``: the
            usual entries, EMA weights first), the prefix of the encoder's tensors (others, e.g. a CLIP text
            encoder, are left out).
        input_size: (height, width) the encoder was trained at; ``mean``/``std``: its scalar normalisation
            after intensities are scaled to [0, 1].
        channel_mean, channel_std: a per-channel normalisation its authors applied to three equal channels;
            folded into the first convolution when the weights load (``mean``/``std`` are then 0 and 1).
        global_pool: the pooling its authors' model used (``max`` for the RSNA ConvNeXt); ``None``: timm's.
        preprocess: :class:`~mammobench.data.options.PreprocessOptions` fields that reproduce its authors'
            scaling (``window`` (0, 100) = per-image min-max).
        static_padding: the input side the original network fixed its "same" padding for (``None``: timm's).
        feature_dim: size of the pooled features (a linear probe's input).
    """

    name: str
    architecture: str
    title: str
    trained_on: str
    licence: WeightsLicence
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
    global_pool: str | None = None
    channel_mean: tuple[float, float, float] | None = None
    channel_std: tuple[float, float, float] | None = None

    def config_values(self) -> dict[str, Any]:
        """``{dotted config key: value}`` this encoder's preprocessing sets."""
        values: dict[str, Any] = {"data.image_size": list(self.input_size), "model.mean": self.mean,
                                  "model.std": self.std}
        values.update({f"data.preprocess.{k}": v for k, v in self.preprocess.items()})
        return values


def hub_url(repo: str, file: str) -> str:
    """The download address of a hub file (``/resolve/``: the file itself, not its web page's ``/blob/``)."""
    return f"https://huggingface.co/{repo}/resolve/main/{file}"


_MAMMO_CLIP_CITATION = ("Ghosh S, Poynton CB, Visweswaran S, Batmanghelich K. Mammo-CLIP: A Vision Language Foundation "
                        "Model to Enhance Data Efficiency and Robustness in Mammography. MICCAI 2024. arXiv:2405.12255")
#: The authors' repository and the hub card disagree; the stricter statement governs until they settle it.
MAMMO_CLIP_LICENCE = WeightsLicence(
    statements=(
        LicenceStatement("CC BY-NC-SA 4.0", "the authors' repository: README 'License and Copyright' and LICENSE.txt",
                         "https://github.com/batmanlab/Mammo-CLIP"),
        LicenceStatement("CC BY 4.0", "the Hugging Face model card", "https://huggingface.co/shawn24/Mammo-CLIP"),
    ),
    governing="CC BY-NC-SA 4.0 (the stricter statement governs until the authors settle it): non-commercial use, "
              "attribution, adaptations shared alike",
    non_commercial=True,
)
#: Mammo-FM's weights carry a licence of their own, stricter than its code's.
MAMMO_FM_LICENCE = WeightsLicence(
    statements=(
        LicenceStatement("Mammo-FM licence for model weights (academic research only)", "LICENSE_WEIGHTS.txt in the "
                         "authors' repository and the hub repository", "https://huggingface.co/batmanLab/Mammo-FM"),
    ),
    governing="Mammo-FM weights licence: non-commercial academic research only",
    non_commercial=True,
    forbids=("commercial use", "clinical or diagnostic use", "serving the weights or a model built on them through "
             "an API or a web page", "redistributing the weights or a model built on them", "distilling them into "
             "another model"),
    acknowledge="mammo-fm-weights-licence",
)
RSNA2023_LICENCE = WeightsLicence(
    statements=(
        LicenceStatement("MIT", "the solution's code (LICENSE)", "https://github.com/dangnh0611/kaggle_rsna_breast_cancer"),
        LicenceStatement("the Kaggle dataset's own terms", "the dataset page",
                         "https://www.kaggle.com/datasets/dangnh0611/rsna-breast-cancer-detection-best-ckpts"),
    ),
    governing="the Kaggle dataset's terms (read them before any use beyond research; the weights were trained on "
              "RSNA competition data, whose rules apply too)",
)

_MAMMO_CLIP_COMMON: dict[str, Any] = {
    "trained_on": "screening mammograms paired with their report text (UPMC, in-house), contrastive (CLIP) "
                  "pre-training",
    "licence": MAMMO_CLIP_LICENCE,
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
_MAMMO_FM_COMMON: dict[str, Any] = {
    **{k: v for k, v in _MAMMO_CLIP_COMMON.items() if k != "trained_on"},
    "architecture": "tf_efficientnet_b5", "feature_dim": 2048, "static_padding": 456,
    "licence": MAMMO_FM_LICENCE,
    "citation": "Ghosh S, Joshi VP, Syed R, Kassem A, Varshney A, Basak P, Dai W, Gichoya JW, Trivedi HM, Banerjee I, "
                "Visweswaran S, Poynton CB, Batmanghelich K. Mammo-FM: Breast-specific foundational model for "
                "Integrated Mammographic Diagnosis, Prognosis, and Reporting. arXiv:2512.00198 (2025)",
    "homepage": "https://huggingface.co/batmanLab/Mammo-FM",
    "hub_repo": "batmanLab/Mammo-FM",
}
_MAMMO_FM_TRAINED_ON = ("Mammo-FM pre-training: 821,326 mammograms of 140,677 patients from four US institutions "
                        "with their reports (CLIP), the Mammo-CLIP B5 detector encoder")

ENCODERS: dict[str, EncoderSpec] = {
    spec.name: spec for spec in (
        EncoderSpec(
            name="mammo-clip-b2", architecture="tf_efficientnet_b2", title="Mammo-CLIP image encoder, EfficientNet-B2",
            hub_file="Pre-trained-checkpoints/b2-model-best-epoch-10.tar", feature_dim=1408, static_padding=260,
            download=hub_url("shawn24/Mammo-CLIP", "Pre-trained-checkpoints/b2-model-best-epoch-10.tar"),
            **_MAMMO_CLIP_COMMON),
        EncoderSpec(
            name="mammo-clip-b5", architecture="tf_efficientnet_b5", title="Mammo-CLIP image encoder, EfficientNet-B5",
            hub_file="Pre-trained-checkpoints/b5-model-best-epoch-7.tar", feature_dim=2048, static_padding=456,
            download=hub_url("shawn24/Mammo-CLIP", "Pre-trained-checkpoints/b5-model-best-epoch-7.tar"),
            **_MAMMO_CLIP_COMMON),
        EncoderSpec(
            name="mammo-fm", title="Mammo-FM image encoder, EfficientNet-B5 (the checkpoint trained by Batman Lab)",
            trained_on=_MAMMO_FM_TRAINED_ON + "; this file: Mammo-FM_BatmanlabTrained_CLIP.tar",
            hub_file="Mammo-FM_BatmanlabTrained_CLIP.tar",
            download=hub_url("batmanLab/Mammo-FM", "Mammo-FM_BatmanlabTrained_CLIP.tar"), **_MAMMO_FM_COMMON),
        EncoderSpec(
            name="mammo-fm-asu", title="Mammo-FM image encoder, EfficientNet-B5 (the checkpoint trained at ASU)",
            trained_on=_MAMMO_FM_TRAINED_ON + "; this file: Mammo-FM_ASU_Trained_CLIP.tar",
            hub_file="Mammo-FM_ASU_Trained_CLIP.tar",
            download=hub_url("batmanLab/Mammo-FM", "Mammo-FM_ASU_Trained_CLIP.tar"), **_MAMMO_FM_COMMON),
        EncoderSpec(
            name="rsna2023-convnext-small", architecture="convnext_small",
            title="RSNA Screening Mammography 2023, first place: ConvNeXt-small (EMA weights, max pooling)",
            trained_on="RSNA screening mammograms (cancer vs not) with BMCD, CDD-CESM, CMMD, MiniDDSM and VinDr",
            licence=RSNA2023_LICENCE,
            citation="Nguyen HD. 1st place solution, RSNA Screening Mammography Breast Cancer Detection (Kaggle, 2023)",
            homepage="https://github.com/dangnh0611/kaggle_rsna_breast_cancer",
            download="kaggle datasets download -d dangnh0611/rsna-breast-cancer-detection-best-ckpts (a local file "
                     "only: Kaggle needs an account)",
            input_size=(2048, 1024), mean=0.0, std=1.0, feature_dim=768, global_pool="max",
            channel_mean=(0.485, 0.456, 0.406), channel_std=(0.229, 0.224, 0.225),
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


def weights_licence(encoder: str | None) -> WeightsLicence | None:
    """The licence of the weights a model started from (its ``model.json``'s ``encoder``), if a catalogue encoder."""
    spec = ENCODERS.get(encoder) if encoder else None
    return spec.licence if spec is not None else None


class WeightsTermsError(MammobenchError):
    """A model built on weights whose licence forbids what is asked (serving, redistribution) without the user's
    explicit acknowledgement of those terms."""


def check_weights_terms(encoder: str | None, accepted: str | None, action: str) -> list[str]:
    """What a model's pretrained weights' licence says about ``action`` (``export``, ``serve``).

    Returns:
        Notes to show and record (non-commercial terms; terms acknowledged).

    Raises:
        WeightsTermsError: the licence forbids uses such as serving or redistribution and ``accepted`` does not name
            its terms (:attr:`WeightsLicence.acknowledge`); the message states the terms and the option.
    """
    licence = weights_licence(encoder)
    if licence is None:
        return []
    notes = []
    if licence.forbids:
        if accepted != licence.acknowledge:
            given = f" (--accept-weights-terms {accepted} names other terms)" if accepted else ""
            raise WeightsTermsError(
                f"this model is built on {encoder} weights, whose licence ({licence.governing}) forbids "
                f"{'; '.join(licence.forbids)}. To {action} it for a use within those terms, acknowledge them by "
                f"name: --accept-weights-terms {licence.acknowledge}{given}")
        notes.append(f"{encoder} weights' terms acknowledged ({licence.acknowledge}): {licence.governing}; forbidden: "
                     f"{'; '.join(licence.forbids)}")
    elif licence.non_commercial:
        notes.append(f"fine-tuned from {encoder} weights under {licence.governing}: no commercial use of this model")
    return notes
