"""What a run is: the folder :func:`~mammobench.training.fit.fit` writes, its files by name, and how every later
step (evaluation, experiments, serving) reads it back safely. The run format lives here and nowhere else.

::

    runs/<name>/
      config.yaml        the resolved config (re-run or resume from it)
      split.csv          the split used: sample_id, patient_id, label, split, ...
      environment.json   library versions, machine, seed
      run.json           status (running / finished / failed / interrupted), timings, best epoch, warnings, the
                         starting weights (file, SHA-256, encoder), a linear probe's fit (C, inner CV)
      history.csv        one row per epoch (the curves' data; fine-tunes only)
      skipped.csv        images that could not be read (if any)
      model.safetensors  the kept weights (EMA weights when EMA is on) - never pickled
      model.json         what is needed to rebuild and feed the model: timm name, labels, input, preprocessing
      curves.png         loss / accuracy / AUC / learning rate per epoch (fine-tunes only)
      calibration.json   the temperature fitted on the validation split (or why none was)
      fingerprints.csv   content fingerprints of the training files (the external-overlap check)
      checkpoints/       Lightning checkpoints (last.ckpt, best.ckpt) to resume this run - local use only (fine-tunes)
      logs/              CSV and TensorBoard logs (fine-tunes)
      encoder.safetensors, encoder.json   a pretraining run's encoder and what it is (mammobench pretrain; such a run
                         has no model.json: split.csv lists the images it read, history.csv its loss per epoch)
      evaluation/<split>[_tta]/, evaluation/external_<data>_<split>[_tta]/   what evaluate() wrote (EvaluationDir):
                         metrics.json, predictions.csv, predictions_<level>.csv, roc.png, pr.png, confusion.png,
                         reliability.png, reliability_calibrated.png, subgroups.png, curves.png

Example:
    >>> run = RunDir("runs/resnet18")                       # doctest: +SKIP
    >>> run.require_finished(); model, info = run.load_model()   # doctest: +SKIP
    >>> run.split_rows("test").head()                        # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from mammobench.data.options import IntensityStats
from mammobench.data.preprocess import PreprocessSettings
from mammobench.models.provenance import Record, WeightsProvenance
from mammobench.runtime import FileLimitError, MammobenchError, load_json_text, read_text_bounded, sha256_file

if TYPE_CHECKING:  # heavy imports only where a model is built
    import pandas as pd
    import torch
    from torch import nn

    from mammobench.config import Config

RUN_FORMAT = 1
MODEL_FILE = "model.safetensors"
MODEL_INFO = "model.json"
RUN_INFO = "run.json"


class RunError(MammobenchError):
    """A run directory that is missing files, unfinished, or from an incompatible version."""


class ModelInfo(BaseModel):
    """``model.json``: everything needed to rebuild the network and prepare its input."""

    model_config = ConfigDict(extra="forbid")

    format: int = RUN_FORMAT
    architecture: str
    labels: list[str]
    positive_label: str | None
    in_chans: int = 1
    input_size: int | tuple[int, int]  # a side, or (height, width)
    mean: float
    std: float
    img_size: int | tuple[int, int] | None = None
    preprocess: PreprocessSettings
    weights_sha256: str
    ema: bool = False
    mode: str = "roi"  # what the model was trained on: "roi" (lesion crops) or "full" (whole mammograms)
    views: list[str] | None = None  # a breast-level model: its views in input order (None: an image model)
    fusion: str | None = None  # how a breast-level model combines its views
    #: a lesion model's training lesions: cut from whole images ("image", with --roi), crop files ("crop"), or both
    lesions_from: str | None = None
    hflip: float | None = None  # horizontal-flip probability of its training augmentation
    input_stats: IntensityStats | None = None  # what its training inputs looked like (None: runs made before 0.2)
    encoder: str | None = None  # the catalogue encoder it started from (mammobench.encoders), if any
    #: the input side its "same" padding is fixed for (a converted efficientnet-pytorch encoder; models.padding)
    static_padding: int | None = None
    global_pool: str | None = None  # timm's pooling when not the architecture's default (an encoder's, e.g. max)
    ensemble: int | None = None  # an ensemble bundle: its number of members (weights under members.<i>.)
    ensemble_average: str | None = None  # how the members combine: probabilities or logits (models.ensemble)


class RunRecord(Record):
    """``run.json``: what a run was and how it went. Written when a run starts (``status: running``), when it stops
    and when it finishes; read through :meth:`RunDir.read_info` only."""

    format: int = RUN_FORMAT
    mammobench_version: str | None = None
    name: str | None = None
    status: Literal["running", "finished", "failed", "interrupted"] | None = None
    started: str | None = None
    finished: str | None = None
    stopped: str | None = None
    error: str | None = None
    monitor: str | None = None
    labels: list[str] = []
    weights: str | None = None  # the starting weights in one line
    pretrained: WeightsProvenance | None = None
    encoder: dict[str, Any] | None = None  # the catalogue encoder's preprocessing and what the config overrode
    parameters: int | None = None
    input_size: int | tuple[int, int] | None = None
    device: str | None = None
    counts: dict[str, dict[str, int]] = {}  # {split: {label: samples}}
    kept_weights: str | None = None
    batch: dict[str, int] | None = None
    grad_checkpointing: bool = False
    validation: str | None = None
    train_seconds: float | None = None
    epochs_run: int | None = None
    stopped_early: bool | None = None
    best_epoch: int | None = None
    best_score: float | None = None
    kept_epoch: int | None = None
    train_images_per_s: float | None = None
    initial_loss: float | None = None
    uniform_loss: float | None = None
    warnings: list[str] = []
    probe: dict[str, Any] | None = None  # a linear probe's fit (training.probe.probe_record)
    pretraining: dict[str, Any] | None = None  # a pretraining run's method, epochs and images (training.pretrain)


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from a run's file; a clear :class:`RunError` when it is missing or malformed."""
    if not path.is_file():
        raise RunError(f"{path.parent} has no {path.name} ({what}); is it a mammobench run directory?")
    try:
        data = load_json_text(read_text_bounded(path, what), str(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{path} is not valid JSON ({exc})") from None
    except FileLimitError as exc:
        raise RunError(str(exc)) from None
    if not isinstance(data, dict):
        raise RunError(f"{path} must hold a JSON object")
    return data


class EvaluationDir:
    """One evaluation of a run (:func:`~mammobench.evaluation.evaluate.evaluate` writes it): its files by name.

    Args:
        path: ``<run>/evaluation/<name>`` (:meth:`RunDir.evaluation`).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"EvaluationDir({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.json"

    @property
    def predictions_path(self) -> Path:
        return self.path / "predictions.csv"

    def level_predictions_path(self, level: str) -> Path:
        """The predictions per ``breast`` or ``patient``."""
        return self.path / f"predictions_{level}.csv"

    def plot_path(self, kind: str) -> Path:
        """A figure: ``roc``, ``pr``, ``confusion``, ``reliability``, ``reliability_calibrated``, ``subgroups``,
        ``curves`` (the training curves, beside the run's own evaluation)."""
        return self.path / f"{kind}.png"

    def exists(self) -> bool:
        """Whether the evaluation finished (its ``metrics.json``, read typed by
        :meth:`~mammobench.evaluation.report.EvaluationReport.read`, is written last)."""
        return self.metrics_path.is_file()


class RunDir:
    """One run folder: its files by name, their readers, and its model.

    Args:
        path: the run folder (``<output.dir>/<name>``).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    # ----------------------------------------------------------------- the files
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def split_path(self) -> Path:
        return self.path / "split.csv"

    @property
    def environment_path(self) -> Path:
        return self.path / "environment.json"

    @property
    def info_path(self) -> Path:
        return self.path / RUN_INFO

    @property
    def history_path(self) -> Path:
        return self.path / "history.csv"

    @property
    def skipped_path(self) -> Path:
        return self.path / "skipped.csv"

    @property
    def weights_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def encoder_path(self) -> Path:
        """A pretraining run's encoder (``mammobench pretrain``): timm's names, usable as ``model.pretrained``."""
        return self.path / "encoder.safetensors"

    @property
    def encoder_sidecar_path(self) -> Path:
        """What the encoder is and where it came from (:class:`~mammobench.models.provenance.EncoderSidecar`)."""
        return self.path / "encoder.json"

    @property
    def model_info_path(self) -> Path:
        return self.path / MODEL_INFO

    @property
    def curves_path(self) -> Path:
        return self.path / "curves.png"

    @property
    def calibration_path(self) -> Path:
        return self.path / "calibration.json"

    @property
    def fingerprints_path(self) -> Path:
        return self.path / "fingerprints.csv"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        """The latest epoch with its optimiser state (to resume)."""
        return self.checkpoints / "last.ckpt"

    @property
    def best_checkpoint(self) -> Path:
        """The best validation epoch's weights (while training)."""
        return self.checkpoints / "best.ckpt"

    def evaluation(self, name: str, *, tta: bool = False) -> EvaluationDir:
        """One evaluation's files (``name``: a split, or :func:`external_name`)."""
        return EvaluationDir(self.path / "evaluation" / f"{name}{'_tta' if tta else ''}")

    def evaluations(self) -> dict[str, EvaluationDir]:
        """Every evaluation written so far, by name (``test``, ``test_tta``, ``external_cmmd_all``, ...)."""
        folder = self.path / "evaluation"
        found = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        return {p.name: EvaluationDir(p) for p in found if (p / "metrics.json").is_file()}

    def reproduction_files(self) -> list[str]:
        """The files a reader needs to reproduce the run, those it holds: config, split, versions, history, weights."""
        paths = (self.config_path, self.split_path, self.environment_path, self.history_path, self.weights_path)
        return [p.name for p in paths if p.is_file()]

    def warnings(self) -> list[str]:
        """The run's warnings (``run.json``), empty when it has none or no ``run.json``."""
        return list(self.read_info().warnings) if self.exists() else []

    @staticmethod
    def external_name(data: str | Path, split: str) -> str:
        """The evaluation name of another prepared dataset's ``split`` rows."""
        return f"external_{Path(data).resolve().name}_{split}"

    # ----------------------------------------------------------------- readers
    def exists(self) -> bool:
        """Whether a run was started here (its ``run.json`` exists)."""
        return self.info_path.is_file()

    def read_info(self) -> RunRecord:
        """``run.json``: status, timings, counts, warnings (any run folder ever written; unknown fields kept).

        Raises:
            RunError: no ``run.json``, or one whose fields are not what a run writes (naming the field).
        """
        data = read_json(self.info_path, "the run's status")
        try:
            return RunRecord.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise RunError(f"{self.info_path} is malformed: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None

    def write_info(self, record: RunRecord | dict[str, Any]) -> RunRecord:
        """Validate ``record`` and write it as ``run.json`` (atomically)."""
        from mammobench.runtime import atomic_write_json

        checked = record if isinstance(record, RunRecord) else RunRecord.model_validate(record)
        atomic_write_json(self.info_path, checked.model_dump(mode="json"))
        return checked

    def status(self) -> str | None:
        """The run's status, or ``None`` when no run was started here."""
        return self.read_info().status if self.exists() else None

    def read_model_info(self) -> ModelInfo:
        """Validate and return ``model.json``; a file from another format version is refused by name."""
        data = read_json(self.model_info_path, "written when training finishes")
        if data.get("format") != RUN_FORMAT:
            raise RunError(
                f"{self.model_info_path} has format {data.get('format')!r}; this mammobench reads format {RUN_FORMAT}. "
                "Re-train with this version, or use the mammobench version that made it."
            )
        try:
            return ModelInfo.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise RunError(f"{self.model_info_path} is malformed: {err['loc']}: {err['msg']}") from None

    def read_config(self) -> Config:
        from mammobench.config import load_config

        return load_config(self.config_path)

    def require_finished(self) -> RunRecord:
        """The run's ``run.json`` if it finished with every file a later step reads; a clear error otherwise."""
        if not self.path.is_dir():
            raise RunError(f"run directory {self.path} does not exist")
        info = self.read_info()
        status = info.status
        if status != "finished":
            hint = (" Resume it with `mammobench train --resume RUN_DIR`."
                    if status in ("interrupted", "failed", "running") else "")
            raise RunError(f"run {self.path} is not finished (status: {status}).{hint}")
        for path in (self.weights_path, self.model_info_path, self.split_path, self.config_path):
            if not path.is_file():
                raise RunError(f"run {self.path} is missing {path.name}")
        return info

    def read_split(self, *, columns: list[str] | None = None) -> pd.DataFrame:
        """``split.csv`` as strings (every row, or only ``columns``)."""
        import pandas as pd

        return pd.read_csv(self.split_path, dtype=str, keep_default_na=False, usecols=columns)

    def split_rows(self, split: str) -> pd.DataFrame:
        """The rows of one split; a clear error when it is empty."""
        frame = self.read_split()
        rows = frame[frame["split"] == split].reset_index(drop=True)
        if rows.empty:
            raise RunError(f"the {split} split of run {self.path} is empty (splits: {sorted(set(frame['split']))})")
        return rows

    def has_split(self, split: str) -> bool:
        """Whether ``split.csv`` holds any row of ``split`` (runs on small k-fold sets may have no ``val``)."""
        return bool((self.read_split(columns=["split"])["split"] == split).any())

    def training_rows(self) -> pd.DataFrame:
        """The rows the model learnt from: its training and validation splits."""
        frame = self.read_split()
        return frame[frame["split"].isin(["train", "val"])]

    def cache_root(self) -> Path:
        """The cache the run trained from (its config's ``data.cache_dir``, else its manifest's folder)."""
        from mammobench.data.manifest import cache_folder

        cfg = self.read_config()
        manifest = Path(cfg.data.manifest) if cfg.data.manifest else None
        if cfg.data.cache_dir is None and (manifest is None or not manifest.exists()):
            return self.path / "cache"
        return cache_folder(manifest, cfg.data.cache_dir)

    # ----------------------------------------------------------------- the model
    def read_weights(self, info: ModelInfo | None = None) -> dict[str, torch.Tensor]:
        """The kept weights, checked against the SHA-256 ``model.json`` recorded for them (the one check of a run's
        weights: loading a model, starting another run from this one).

        Raises:
            RunError: no weights file, or one that is not the file the run wrote.
        """
        from safetensors.torch import load_file

        info = info or self.read_model_info()
        if not self.weights_path.is_file():
            raise RunError(f"run {self.path} has no {MODEL_FILE}")
        if sha256_file(self.weights_path) != info.weights_sha256:
            raise RunError(f"{self.weights_path} does not match the checksum in model.json: the weights were changed "
                           "or damaged")
        return load_file(str(self.weights_path))

    def load_model(self) -> tuple[nn.Module, ModelInfo]:
        """The kept model (weights checked against the SHA-256 in ``model.json``) and its info."""
        info = self.read_model_info()
        return build_model(info, self.read_weights(info)), info


def build_model(info: ModelInfo, weights: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild the architecture of ``info`` (no download; an ensemble of ``info.ensemble`` such networks) and load
    ``weights`` strictly; eval mode."""
    from mammobench.models.ensemble import EnsembleModel

    if info.ensemble:
        model: nn.Module = EnsembleModel([_network(info) for _ in range(info.ensemble)],
                                         info.ensemble_average or "probabilities")  # type: ignore[arg-type]
    else:
        model = _network(info)
    from mammobench.models.loading import ModelError, load_exact

    try:
        return load_exact(model, weights, f"the weights of this {info.architecture}").eval()
    except ModelError as exc:
        raise RunError(str(exc)) from None


def _network(info: ModelInfo) -> nn.Module:
    """One network of ``info``'s architecture, channels-last where that is faster."""
    import torch

    from mammobench.models.factory import create_model, prefers_channels_last
    from mammobench.models.multiview import MultiViewClassifier

    model, _ = create_model(info.architecture, num_classes=len(info.labels), pretrained="none",
                            in_chans=info.in_chans, img_size=info.img_size, fusion=info.fusion,
                            num_views=len(info.views or []) or 2, static_padding=info.static_padding,
                            global_pool=info.global_pool)
    if prefers_channels_last(model):
        model = model.to(memory_format=torch.channels_last)  # inputs follow (NCHW inputs work too)
        if isinstance(model, MultiViewClassifier):
            model.channels_last = True
    return model
