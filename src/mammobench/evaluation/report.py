"""The evaluation report, typed: what :func:`~mammobench.evaluation.evaluate.evaluate` computes for one set and
writes as ``metrics.json`` (:meth:`EvaluationReport.write`), and what every later step reads back
(:meth:`EvaluationReport.read`): the console, ``compare``, ``ablate``, ``crossval`` and bundles.

The JSON keys are those of the untyped report of mammobench 0.1-0.4, so ``metrics.json`` files written before
still read; keys this version does not know are kept as they are.

::

    report = EvaluationReport.read(RunDir("runs/r").evaluation("test").metrics_path)
    report.metrics["auc_malignant"].value, report.metrics["auc_malignant"].ci
    report.threshold.value, report.threshold.rule, report.calibration.temperature
    report.levels["patient"].metrics["auc_malignant"]
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mammobench.evaluation.metrics import SUBGROUP_METRICS, headline_metric
from mammobench.runs import read_json
from mammobench.runtime import MammobenchError, atomic_write_json

#: ``metrics.json``'s format (unchanged since 0.1: the keys are the same).
EVAL_FORMAT = 1
#: keys written only when there is something in them (as the untyped report did)
OPTIONAL_KEYS = ("by_lesion_type", "by_dataset", "subgroups", "imported")


class ReportError(MammobenchError):
    """A ``metrics.json`` that is not an evaluation report."""


@dataclass(frozen=True)
class ReportOptions:
    """How :func:`~mammobench.evaluation.evaluate.compute_report` summarises a set (the evaluation's own options).

    Attributes:
        n_boot: patient-bootstrap resamples of every interval (subgroups use half, at least 200).
        seed: the bootstrap's seed.
        breakdown_min: the smallest lesion type or dataset that gets its own metrics.
        aggregate: how a breast's images (a patient's breasts) combine: ``mean`` or ``max``.
        by: the manifest columns of subgroup metrics (``density``, ``age_band``, ...).
    """

    n_boot: int = 1000
    seed: int = 0
    breakdown_min: int = 10
    aggregate: str = "mean"
    by: tuple[str, ...] = ()

    @property
    def part_boot(self) -> int:
        """Resamples for a part of the set (a lesion type, a subgroup)."""
        return max(200, self.n_boot // 2)


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Estimate(_Model):
    """A metric's value and its 95 % patient-bootstrap interval (``None``/NaN where undefined or left out)."""

    value: float | None = None
    ci: tuple[float | None, float | None] = (None, None)

    @property
    def defined(self) -> bool:
        return self.value is not None and not math.isnan(self.value)


#: ``{metric name: estimate}``: accuracy, balanced_accuracy, auc_macro, auc_<class>, auc_malignant, sensitivity, ...
Metrics = dict[str, Estimate]


class Level(_Model):
    """The metrics at one level: the rows' own (image or breast), breast, patient."""

    n: int
    metrics: Metrics


class Subgroup(_Model):
    """One value of a ``--by`` column: counts, the binary metrics and, for a handful of patients, a caution."""

    n: int
    patients: int
    counts: dict[str, int] = Field(default_factory=dict)
    auc_malignant: Estimate | None = None
    auc_macro: Estimate | None = None
    sensitivity: Estimate | None = None
    specificity: Estimate | None = None
    caution: str | None = None

    def estimate(self, name: str) -> Estimate | None:
        return getattr(self, name, None) if name in SUBGROUP_METRICS else None


class Threshold(_Model):
    """The decision threshold of the positive class: chosen on the run's validation split, never on this set."""

    method: str = "argmax"
    value: float | None = None
    chosen_on: str | None = None
    rule: str | None = None
    reason: str = ""
    target_sensitivity: float | None = None
    positive_class: str | None = Field(None, alias="class")
    #: on another dataset: the training threshold's rates there, beside the rates of that set's own threshold
    external: dict[str, Any] | None = None


class Calibration(_Model):
    """The run's temperature (fitted on its validation split, or why none was) and the ECE before and after it."""

    temperature: float | None = None
    fitted_on: str | None = None
    reason: str = ""
    ece_before: float | None = None
    ece_after: float | None = None


class Bootstrap(_Model):
    unit: str = "patient"
    n: int = 1000
    seed: int = 0
    level: float = 0.95


class SetReport(_Model):
    """The metrics of one set (:func:`~mammobench.evaluation.evaluate.compute_report`, a pure function of labels,
    probabilities and patients)."""

    n: int
    patients: int
    labels: list[str]
    positive_label: str | None = None
    class_counts: dict[str, int] = Field(default_factory=dict)
    metrics: Metrics
    #: ``{part: {"n": rows, metric: estimate, ...}}`` when the set holds more than one lesion type / dataset
    by_lesion_type: dict[str, dict[str, Any]] | None = None
    by_dataset: dict[str, dict[str, Any]] | None = None
    warnings: list[str] = Field(default_factory=list)
    subgroups: dict[str, dict[str, Subgroup]] | None = None
    per_class: dict[str, dict[str, float | None]] = Field(default_factory=dict)
    confusion_matrix: list[list[int]] = Field(default_factory=list)
    levels: dict[str, Level] = Field(default_factory=dict)
    aggregate: str = "mean"
    level_notes: list[str] = Field(default_factory=list)

    @property
    def headline_key(self) -> str:
        """``auc_malignant`` for a model with a positive class, else ``auc_macro``."""
        return headline_metric(self.metrics)


class EvaluationReport(SetReport):
    """``metrics.json``: what was evaluated, by what and how, the set's metrics, its threshold and calibration."""

    format: int = EVAL_FORMAT
    mammobench_version: str = ""
    created: str = ""
    run: str = ""
    architecture: str = ""
    split: str = ""
    tta: bool = False
    synthetic: bool = False
    notice: str = ""
    bootstrap: Bootstrap = Bootstrap()
    skipped: list[dict[str, Any]] = Field(default_factory=list)
    data: str | None = None  # another prepared dataset (external validation), else None
    label_matching: str = ""
    overlap: dict[str, Any] | None = None
    run_warnings: list[str] = Field(default_factory=list)
    run_warnings_about: str = "the training run"
    threshold: Threshold = Threshold()
    calibration: Calibration = Calibration()
    #: another model's predictions scored (:mod:`~mammobench.evaluation.imported`): the file, its format, the key
    imported: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object of ``metrics.json`` (the header first, as people read it)."""
        # through JSON: intervals as lists, NaN as null, exactly what a reader of the file gets
        data = json.loads(self.model_dump_json(by_alias=True,
                                               exclude={k for k in OPTIONAL_KEYS if getattr(self, k) is None}))
        header = [k for k in EvaluationReport.model_fields if k not in SetReport.model_fields]
        ordered = {k: data.pop(k) for k in header if k in data and k not in ("threshold", "calibration")}
        return {**ordered, **data}

    def write(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_json())

    @classmethod
    def read(cls, path: str | Path) -> EvaluationReport:
        """A written ``metrics.json``; a :class:`ReportError` naming the file and the first bad key otherwise."""
        try:
            return cls.model_validate(read_json(Path(path), "written by mammobench evaluate"))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(map(str, err["loc"]))
            raise ReportError(f"{path} is not an evaluation report: {where}: {err['msg']}") from None
