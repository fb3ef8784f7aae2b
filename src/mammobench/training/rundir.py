"""The run directory: what ``fit`` writes, and how later steps read it back safely.

::

    runs/<name>/
      config.yaml        the resolved config (re-run or resume from it)
      split.csv          the split used: sample_id, patient_id, label, split, ...
      environment.json   library versions, machine, seed
      run.json           status (running / finished / failed / interrupted), timings, best epoch
      history.csv        one row per epoch (the curves' data)
      skipped.csv        images that could not be read (if any)
      model.safetensors  the best weights (EMA weights when EMA is on) - never pickled
      model.json         what is needed to rebuild and feed the model: timm name, labels, input, preprocessing
      curves.png         loss / accuracy / AUC / learning rate per epoch
      checkpoints/       Lightning checkpoints (last.ckpt, best.ckpt) to resume this run - local use only
      logs/              CSV and TensorBoard logs
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from mammobench.data.options import IntensityStats
from mammobench.data.preprocess import PreprocessSettings
from mammobench.runtime import MammobenchError

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


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise RunError(f"{path.parent} has no {path.name} ({what}); is it a mammobench run directory?")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RunError(f"{path} must hold a JSON object")
    return data


def read_model_info(run_dir: str | Path) -> ModelInfo:
    """Validate and return ``model.json``; a file from another format version is refused by name."""
    run_dir = Path(run_dir)
    data = read_json(run_dir / MODEL_INFO, "written when training finishes")
    if data.get("format") != RUN_FORMAT:
        raise RunError(
            f"{run_dir / MODEL_INFO} has format {data.get('format')!r}; this mammobench reads format {RUN_FORMAT}. "
            "Re-train with this version, or use the mammobench version that made it."
        )
    try:
        return ModelInfo.model_validate(data)
    except ValidationError as exc:
        raise RunError(f"{run_dir / MODEL_INFO} is malformed: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(run_dir) / RUN_INFO, "the run's status")


def require_finished(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``run.json`` if it finished; a clear error otherwise."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run directory {run_dir} does not exist")
    info = read_run_info(run_dir)
    status = info.get("status")
    if status != "finished":
        hint = " Resume it with `mammobench train --resume RUN_DIR`." if status in ("interrupted", "failed", "running") else ""
        raise RunError(f"run {run_dir} is not finished (status: {status}).{hint}")
    for name in (MODEL_FILE, MODEL_INFO, "split.csv", "config.yaml"):
        if not (run_dir / name).is_file():
            raise RunError(f"run {run_dir} is missing {name}")
    return info
