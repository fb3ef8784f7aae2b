"""The study file of ``mammobench ablate``: a base config, named variants (or a grid, or a search), and the
repeated cross-validation every variant is judged on.

Example ``study.yaml``::

    name: mias_recipe
    base: efficientnet_lite0_local          # a preset or a config file
    set: [data.manifest=prepared/mias, model.pretrained=weights/tf_efficientnet_lite0.safetensors]
    baseline: default                       # the variant every other one is compared with
    variants:
      default: []                           # the base config as it is
      crop_window: [data.preprocess.window_from=crop]
      cross_entropy: [loss.name=ce]
    cv: {repeats: 5, folds: 5, seed: 0}
    metric: auc_malignant

Instead of ``variants``, ``grid: {optim.lr: [1e-4, 3e-4], loss.name: [ce, focal]}`` makes one variant per
combination (baseline: the base config), and ``search: {trials: 20, params: {optim.lr: {low: 1e-5,
high: 1e-3, log: true}}}`` runs Optuna's TPE sampler over declared ranges, each trial judged on all the
folds. Every variant is validated as a full config before anything trains.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from mammobench.config import Config, load_config, parse_overrides
from mammobench.evaluation.metrics import STUDY_METRICS
from mammobench.runtime import (
    FileLimitError,
    MammobenchError,
    load_yaml_text,
    read_text_bounded,
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=,+-]*$")

def _study_metric(value: str) -> str:
    if value not in STUDY_METRICS:
        raise ValueError(f"{value!r} is not a metric a study can rank by; one of {', '.join(STUDY_METRICS)}")
    return value


#: What a study ranks its variants by: a model metric of the registry (its direction read from there).
StudyMetric = Annotated[str, AfterValidator(_study_metric)]


class StudyError(MammobenchError):
    """A study file that cannot be run (named key or value), or a study state that cannot go on."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CVSpec(_Strict):
    """Repeated, patient-grouped, label-stratified k-fold CV: ``repeats`` x ``folds`` fits per variant.

    Repeat ``r`` assigns folds with seed ``seed + r`` and trains with the base config's seed ``+ r``, so
    repeats differ in both the split and the training randomness; every variant sees the same folds.
    """

    repeats: int = Field(5, ge=1, le=100)
    folds: int = Field(5, ge=2, le=100)
    seed: int = 0


class SearchParam(_Strict):
    """One searched key: a numeric range (``low``, ``high``, ``log``, ``step``) or ``choices``."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> SearchParam:
        if self.choices is not None:
            if not self.choices or self.low is not None or self.high is not None:
                raise ValueError("give either a non-empty 'choices' list or 'low'/'high', not both")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError("a range needs low < high (or use 'choices')")
        elif self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class SearchSpec(_Strict):
    """Hyper-parameter search with Optuna's TPE sampler; each trial is one full repeated CV."""

    trials: int = Field(20, ge=1)
    params: dict[str, SearchParam]
    seed: int = 0


class StudySpec(_Strict):
    """A whole study (see the module docstring)."""

    name: str
    base: str = Field(description="config file or preset name")
    set: list[str] = Field(default_factory=list, description="overrides applied to every variant")
    baseline: str = "baseline"
    variants: dict[str, list[str]] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    search: SearchSpec | None = None
    cv: CVSpec = CVSpec()
    metric: StudyMetric = "auc_malignant"
    tta: bool = False
    n_boot: int = Field(200, ge=0, description="bootstrap resamples of each fold's evaluation (its CIs)")

    @model_validator(mode="after")
    def _one_design(self) -> StudySpec:
        kinds = [k for k, v in (("variants", self.variants), ("grid", self.grid), ("search", self.search)) if v]
        if len(kinds) != 1:
            raise ValueError(f"give exactly one of variants, grid or search (got {', '.join(kinds) or 'none'})")
        if not _NAME.match(self.name):
            raise ValueError(f"name {self.name!r} must be letters, digits and _ . - (it names a folder)")
        for name in self.variants:
            if not _NAME.match(name):
                raise ValueError(f"variant name {name!r} must be letters, digits and _ . = , + - (it names a folder)")
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid.{key} is empty: list the values to try")
        return self

    @property
    def design(self) -> Literal["variants", "grid", "search"]:
        return "variants" if self.variants else ("grid" if self.grid else "search")

    def variant_overrides(self) -> dict[str, list[str]]:
        """Every variant's overrides (beyond ``set``), the baseline first."""
        if self.design == "variants":
            out = {self.baseline: self.variants.get(self.baseline, [])}
            out.update({k: v for k, v in self.variants.items() if k != self.baseline})
            return out
        if self.design == "grid":
            out = {self.baseline: []}
            keys = list(self.grid)
            for combo in itertools.product(*(self.grid[k] for k in keys)):
                items = [f"{k}={yaml_value(v)}" for k, v in zip(keys, combo, strict=True)]
                out[",".join(items)] = items
            return out
        return {}


def yaml_value(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text.removesuffix("\n...").strip()


def folder_name(variant: str) -> str:
    """A variant's run folder: its name with anything but letters, digits, ``_ . -`` replaced."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", variant).strip("_") or "variant"


def load_study(path: str | Path) -> StudySpec:
    """Read and validate a study file; every variant must make a valid config that differs from the baseline.

    Raises:
        StudyError: unreadable YAML, unknown keys, a variant that overrides nothing or names an unknown
            config key, a grid over a key that does not exist; each named.
    """
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"study file {path} does not exist")
    try:
        data = load_yaml_text(read_text_bounded(path, "study file"), str(path))
    except yaml.YAMLError as exc:
        raise StudyError(f"{path} is not valid YAML: {exc}") from None
    except FileLimitError as exc:
        raise StudyError(str(exc)) from None
    if not isinstance(data, dict):
        raise StudyError(f"{path} must hold a mapping (name, base, variants | grid | search, cv)")
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "study"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            allowed = ""
            if err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
                allowed = f" (allowed: {', '.join(StudySpec.model_fields)})"
            lines.append(f"{loc}: {msg}{allowed}")
        raise StudyError(f"{path} is invalid:\n  " + "\n  ".join(lines)) from None
    check_study(spec, where=str(path))
    return spec


def study_config(spec: StudySpec, overrides: list[str]) -> Config:
    """The config of one variant: ``base`` + ``set`` + the variant's overrides (validated)."""
    return load_config(spec.base, [*spec.set, *overrides])


def _check_model(cfg: Config) -> None:
    """The model name exists in timm (a typo would otherwise crash every cell of its variant)."""
    from mammobench.models.loading import check_model_name

    check_model_name(cfg.model.name)


def check_study(spec: StudySpec, *, where: str = "study") -> dict[str, Config]:
    """Build every variant's config and check its model name now, so a typo fails before the first fit; returns
    the configs by name."""
    try:
        base = study_config(spec, [])
        _check_model(base)
    except MammobenchError as exc:
        raise StudyError(f"{where}: base {spec.base!r} with set {spec.set} is invalid: {exc}") from None
    configs: dict[str, Config] = {}
    if spec.design == "search":
        assert spec.search is not None
        for key, param in spec.search.params.items():
            probes = param.choices if param.choices is not None and key == "model.name" else \
                [param.choices[0] if param.choices is not None else param.low]
            for probe in probes:
                _check_key(spec, key, probe, where=f"{where}: search.params.{key}")
        return {spec.baseline: base}
    if spec.design == "grid":
        for key, values in spec.grid.items():
            _check_key(spec, key, values[0], where=f"{where}: grid.{key}")
    if spec.design == "variants" and spec.baseline not in spec.variants:
        raise StudyError(f"{where}: baseline {spec.baseline!r} is not one of the variants "
                         f"({', '.join(spec.variants)}); name it, or add it with an empty list")
    reference = base.model_dump()
    for name, overrides in spec.variant_overrides().items():
        try:
            parse_overrides(overrides)
            cfg = study_config(spec, overrides)
            _check_model(cfg)
        except MammobenchError as exc:
            raise StudyError(f"{where}: variant {name!r}: {exc}") from None
        if name != spec.baseline and cfg.model_dump() == reference and spec.design == "variants":
            what = "has no overrides" if not overrides else f"sets only what the base already has ({', '.join(overrides)})"
            raise StudyError(f"{where}: variant {name!r} {what}: it would repeat the baseline")
        configs[name] = cfg
    return configs


def identical_variants(spec: StudySpec, configs: dict[str, Config] | None = None) -> dict[str, str]:
    """``{variant: the earlier variant with exactly its config}``: such a variant is trained once, not twice (a grid
    point equal to the base config is the baseline: ``grid: {optim.lr: [1e-4, 3e-4]}`` over a base at 3e-4)."""
    import json

    configs = configs if configs is not None else check_study(spec)
    first: dict[str, str] = {}
    out: dict[str, str] = {}
    for name, cfg in configs.items():
        key = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
        if key in first:
            out[name] = first[key]
        else:
            first[key] = name
    return out


def _check_key(spec: StudySpec, key: str, value: Any, *, where: str) -> None:
    node: Any = Config
    for part in key.split("."):
        fields = getattr(node, "model_fields", None)
        if fields is None or part not in fields:
            allowed = ", ".join(fields) if fields else "(not a section)"
            raise StudyError(f"{where}: {key!r} is not a config key ({part!r} unknown; allowed here: {allowed})")
        ann = fields[part].annotation
        node = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    try:
        _check_model(study_config(spec, [f"{key}={yaml_value(value)}"]))
    except MammobenchError as exc:
        raise StudyError(f"{where}: {exc}") from None


def cell_of(trial: Any) -> tuple[Any, Any, Any]:
    """(variant, repeat, fold) of a study trial: recorded by the worker, else as queued (Optuna's fixed
    parameters), else the parameters of studies made before cells were recorded so."""
    attrs = trial.user_attrs
    if "variant" in attrs:
        return attrs["variant"], attrs.get("repeat"), attrs.get("fold")
    params = trial.params or trial.system_attrs.get("fixed_params", {})
    return params.get("variant"), params.get("repeat"), params.get("fold")
