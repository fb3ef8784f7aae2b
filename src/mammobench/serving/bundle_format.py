"""What a bundle is: ``bundle.json``'s strict schema (:class:`BundleMeta`) and its file names, apart from the code
that writes and reads bundles (:mod:`~mammobench.serving.bundle`), so that what describes a bundle (the model card,
ensembles, the page) can use it without importing the writer."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from mammobench.models.provenance import LicenceRecord, WeightsProvenance
from mammobench.runs import ModelInfo
from mammobench.runtime import MammobenchError

BUNDLE_FORMAT = 2  # 2: description_sha256 covers the whole description
BUNDLE_KIND = "mammobench-bundle"
BUNDLE_JSON = "bundle.json"
ONNX_FILE = "model.onnx"
MODEL_CARD = "MODEL_CARD.md"


class BundleError(MammobenchError):
    """A bundle that is malformed, tampered with, or does not fit its architecture."""


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str
    sha256: str


class Threshold(BaseModel):
    """A decision threshold: ``value``, the ``method`` asked for, and the ``rule`` that decided it (the method,
    or ``fallback 0.5`` with its ``reason`` when the validation set was too small or one-sided)."""

    model_config = ConfigDict(extra="forbid")
    value: float
    method: str
    chosen_on: str
    rule: str = ""
    reason: str = ""


class BundleProvenance(BaseModel):
    """Where a bundle's model came from: its run (or an ensemble's runs), the versions, the config, the kept epoch, the
    training counts, the test metrics and the starting weights. Fields an older or newer bundle has beyond these are
    kept as they are."""

    model_config = ConfigDict(extra="allow")

    run: str | None = None
    runs: list[str] | None = None  # an ensemble's member runs
    run_name: str | None = None
    exported: str | None = None
    mammobench_version: str | None = None
    trained_with: str | None = None
    environment: dict[str, Any] = {}
    config: dict[str, Any] = {}
    best_epoch: int | None = None
    best_validation: dict[str, float | None] = {}
    counts: dict[str, dict[str, int]] | None = None
    evaluation: dict[str, Any] = {}
    split_rows: int | None = None
    synthetic: bool = False
    pretrained: WeightsProvenance | None = None
    linear_probe: dict[str, Any] | None = None

    def origin(self) -> str:
        """``run PATH`` or ``an ensemble of N runs``."""
        return f"an ensemble of {len(self.runs)} runs" if self.runs else f"run {self.run or 'unknown'}"


class EnsembleRecord(BaseModel):
    """An ensemble bundle's members (their runs and test metrics), how they are averaged, where its threshold and
    temperature were chosen, and its own evidence: the test split its members share, or a cross-validation's pooled
    out-of-fold AUC (with why there is no held-out test)."""

    model_config = ConfigDict(extra="allow")

    members: list[dict[str, Any]] = []
    average: str | None = None
    chosen_on: str | None = None
    calibration: dict[str, Any] = {}
    test: dict[str, Any] | None = None
    test_note: str | None = None
    out_of_fold_auc: dict[str, Any] | None = None


class BundleMeta(BaseModel):
    """``bundle.json``: the run's ``model.json`` (architecture, labels, input, preprocessing), the decision
    thresholds, the files with their checksums, and where the model came from."""

    model_config = ConfigDict(extra="forbid")

    kind: str = BUNDLE_KIND
    format: int = BUNDLE_FORMAT
    model: ModelInfo
    thresholds: dict[str, Threshold] = {}
    weights: FileEntry
    onnx: FileEntry | None = None
    onnx_max_abs_difference: float | None = None
    onnx_check: str = ""
    provenance: BundleProvenance = BundleProvenance()
    #: temperature scaling fitted on the run's validation split (None: none fitted); applied to every output
    temperature: float | None = None
    #: the licence of the pretrained weights the model was built on (mammobench.encoders), and what was said of it
    weights_licence: LicenceRecord | None = None
    weights_terms: list[str] = []
    #: test-time augmentation the Predictor applies: the flips whose probabilities are averaged with the image's
    tta: list[str] = []
    #: an ensemble's members (their runs and test metrics) and how its threshold and temperature were chosen
    ensemble: EnsembleRecord | None = None
    #: MODEL_CARD.md (serving.model_card): what the model is for, its data, results and limits; checksummed
    model_card: FileEntry | None = None
    description_sha256: str = ""


def description_digest(data: dict[str, Any]) -> str:
    """SHA-256 of a bundle description's canonical JSON, without its own ``description_sha256`` field."""
    body = {k: v for k, v in data.items() if k != "description_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()
