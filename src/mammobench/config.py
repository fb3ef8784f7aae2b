"""The run configuration: YAML files validated by pydantic, with ``--set key=value`` overrides.

An unknown key or a bad value is an error that names it and says what is allowed. The resolved config
(defaults filled in) is saved in every run directory as ``config.yaml``.

Example:
    >>> cfg = load_config("configs/resnet18.yaml", ["data.manifest=prepared/cbis", "optim.lr=3e-4"])  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mammobench.data.options import AugmentSettings, PreprocessOptions, check_size
from mammobench.runtime import MammobenchError

PACKAGED_CONFIGS = Path(__file__).parent / "configs"


class ConfigError(MammobenchError):
    """A config file or override that does not validate."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    manifest: Path | None = Field(None, description="prepared manifest.csv (or its folder)")
    fold: int | None = Field(None, ge=0, description="k-fold manifests: the fold used as test set")
    val_fraction: float | Literal["auto"] = Field(
        "auto", description="k-fold: validation carved from the other folds, by patient. auto = 0.1 when that holds "
        "at least 10 samples of every class, else none (train on every other fold, keep the last epoch); 0 = none")
    image_size: int | tuple[int, int] | None = Field(
        None, description="None = the model's pretrained input size; a side (224) or [height, width] ([1152, 896])")
    preprocess: PreprocessOptions = PreprocessOptions()  # the size is data.image_size
    augment: AugmentSettings = AugmentSettings()
    sampler: Literal["balanced", "none"] = Field(
        "none", description="balanced = classes equally likely per batch; none = plain shuffling (docs/recipe.md)")
    batch_size: int = Field(32, ge=1)
    num_workers: int | None = Field(None, ge=0, description="None = one less than the CPU cores")
    cache_dir: Path | None = Field(None, description="None = <manifest folder>/cache")

    @field_validator("image_size")
    @classmethod
    def _image_size(cls, v: int | tuple[int, int] | None) -> int | tuple[int, int] | None:
        return check_size(v)

    @field_validator("val_fraction")
    @classmethod
    def _val_fraction(cls, v: float | str) -> float | str:
        if isinstance(v, (int, float)) and not 0 <= v < 1:
            raise ValueError(f"val_fraction must be 'auto' or a share in [0, 1), got {v}")
        return v


class ViewsConfig(_Strict):
    """A breast-level model over several views of one breast (``model.views``)."""

    fusion: Literal["mean", "max", "concat", "attention"] = Field(
        "mean", description="how the views' features combine: mean / max over the views present, concat (a learnt "
        "vector stands in for a missing view), attention (learnt weights over the views present)")
    views: list[Literal["CC", "MLO"]] = Field(["CC", "MLO"], min_length=1, description="the views, in input order")


class ModelConfig(_Strict):
    name: str = "resnet18"
    pretrained: str = Field("hub", description="hub | none | path to .safetensors / state dict")
    drop_rate: float = Field(0.0, ge=0, lt=1)
    drop_path_rate: float | None = Field(None, ge=0, lt=1)
    img_size: int | tuple[int, int] | None = Field(
        None, description="for ViTs built for a size: build at this size (a side or [height, width])")
    mean: float | None = None
    std: float | None = Field(None, gt=0)
    head_init: Literal["small", "timm"] = Field(
        "small", description="new head: small = N(0, 0.01^2) weights and zero bias (initial loss ln C); timm = as built")
    grad_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass (timm's set_grad_checkpointing): far less "
        "memory for whole images at 1152 x 896, ~20-30 % more compute")
    views: ViewsConfig | None = Field(
        None, description="two views per breast through one shared backbone, one prediction per breast, trained on "
        "breast labels (the worst finding); e.g. {fusion: mean}. None = one prediction per image")
    init_from: Path | None = Field(
        None, description="a finished run of the same architecture (e.g. lesion crops) whose backbone starts this one "
        "(patch-to-whole-image transfer, Shen et al. 2019); its head is not taken")


class LossConfig(_Strict):
    name: Literal["focal", "ce"] = "ce"
    gamma: float = Field(2.0, ge=0)
    alpha: Literal["balanced"] | list[float] | None = Field(
        None, description="per-class weights: None, 'balanced' (inverse frequency) or one number per class"
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1)

    @field_validator("alpha")
    @classmethod
    def _positive(cls, v: Any) -> Any:
        if isinstance(v, list) and (not v or any(w < 0 for w in v)):
            raise ValueError("alpha must be a non-empty list of non-negative weights, 'balanced' or null")
        return v


class OptimConfig(_Strict):
    lr: float = Field(3e-4, gt=0, description="head learning rate")
    backbone_lr_mult: float = Field(1.0, gt=0, le=1, description="backbone LR = lr x this (stage 2)")
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(1.0, ge=0, description="linear warm-up at the start of each stage")
    min_lr_ratio: float = Field(0.01, ge=0, le=1, description="cosine floor, as a fraction of the peak LR")
    grad_clip: float | None = Field(1.0, gt=0)
    ema_decay: float | None = Field(None, gt=0, lt=1, description="exponential moving average of weights")


class StagesConfig(_Strict):
    head_epochs: int = Field(0, ge=0, description="stage 1: only the new head trains")
    finetune_epochs: int = Field(15, ge=0, description="stage 2: head + the last blocks")
    unfreeze_blocks: int | Literal["all"] = Field("all", description="blocks unfrozen in stage 2")

    @model_validator(mode="after")
    def _some_epochs(self) -> StagesConfig:
        if self.head_epochs + self.finetune_epochs == 0:
            raise ValueError("head_epochs + finetune_epochs must be at least 1")
        if isinstance(self.unfreeze_blocks, int) and self.unfreeze_blocks < 0:
            raise ValueError("unfreeze_blocks must be >= 0 or 'all'")
        return self


class TrainerConfig(_Strict):
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    num_nodes: int = Field(1, ge=1)
    precision: str = Field("auto", description="auto = bf16-mixed (or 16-mixed) on GPU, 32-true on CPU")
    compile: bool = False
    channels_last: bool | Literal["auto"] = "auto"
    deterministic: bool | Literal["warn"] = "warn"
    monitor: Literal["val/auc_macro", "val/auc_malignant", "val/loss", "val/acc", "val/balanced_acc"] = "val/auc_macro"
    early_stopping_patience: int | None = Field(5, ge=1)
    weights: Literal["auto", "best", "last"] = Field(
        "auto", description="exported weights: best validation epoch, or the last (tiny validation sets are noise); "
        "auto = best when there is a validation split, else last")
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    accumulate: int = Field(
        1, ge=1, description="gradient accumulation: batches per optimiser step (effective batch = data.batch_size x "
        "accumulate x devices), so a batch that fits memory still gives the configured effective batch")
    log_every_n_steps: int = Field(10, ge=1)
    max_time: str | None = Field(None, description="e.g. 00:12:00:00 (DD:HH:MM:SS)")


class OutputConfig(_Strict):
    dir: Path = Path("runs")
    name: str | None = Field(None, description="run folder name; None = the config's name (+ _foldK)")
    tensorboard: bool = True
    mlflow: bool = Field(False, description="also log to MLflow (needs mlflow installed)")


class Config(_Strict):
    """A whole training run."""

    name: str = "run"
    seed: int = 42
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    stages: StagesConfig = StagesConfig()
    trainer: TrainerConfig = TrainerConfig()
    output: OutputConfig = OutputConfig()

    def run_name(self) -> str:
        base = self.output.name or self.name
        return f"{base}_fold{self.data.fold}" if self.data.fold is not None and not self.output.name else base

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def config_differences(a: Config, b: Config) -> list[str]:
    """The dotted keys in which two configs differ (empty when they are the same run)."""

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    old, new = flat(a.model_dump(mode="json")), flat(b.model_dump(mode="json"))
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def list_presets() -> list[tuple[str, str]]:
    """``(name, one-line description)`` of every packaged preset (its first comment line)."""
    out = []
    for path in sorted(PACKAGED_CONFIGS.glob("*.yaml")):
        first = next((ln.lstrip("# ").strip() for ln in path.read_text().splitlines() if ln.startswith("#")), "")
        out.append((path.stem, first))
    return out


def resolve_config_path(path: str | Path) -> Path:
    """A config file, or the name of a packaged preset (``resnet18`` -> ``configs/resnet18.yaml``)."""
    p = Path(path)
    if p.is_file():
        return p
    preset = PACKAGED_CONFIGS / f"{p.stem if p.suffix in ('.yaml', '.yml') else p.name}.yaml"
    if preset.is_file():
        return preset
    presets = ", ".join(sorted(q.stem for q in PACKAGED_CONFIGS.glob("*.yaml")))
    raise ConfigError(f"config {path} does not exist and is not a preset ({presets})")


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {k} is not a section")
    node[keys[-1]] = value


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """``["a.b=1", "c=[1, 2]"]`` -> nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for key, value in _parsed_overrides(overrides).items():
        _set_dotted(out, key, value[0])
    return out


def _parsed_overrides(overrides: list[str] | None) -> dict[str, tuple[Any, str]]:
    """``{dotted key: (value, "key=value" as given)}``, later overrides of a key winning."""
    out: dict[str, tuple[Any, str]] = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. optim.lr=3e-4")
        key, _, raw = item.partition("=")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({exc})") from None
        if not key.strip():
            raise ConfigError(f"--set {item!r}: the key before '=' is empty")
        out[key.strip()] = (value, item)
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_from_dict(data: dict[str, Any], *, where: str = "config",
                     overrides: dict[str, str] | None = None) -> Config:
    """Validate a dict; errors name each bad key, where it came from and what is allowed.

    Args:
        data: the merged config.
        where: the file the values come from (for errors).
        overrides: ``{dotted key: "key=value"}`` of the values that came from ``--set``: an error in one of
            them names the override, not the file the user never edited.
    """
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            source = _source(loc, overrides or {}, where)
            if err["type"] == "extra_forbidden":
                section = _section(err["loc"][:-1])
                allowed = ", ".join(section.model_fields) if section else "?"
                lines.append(f"{source}: {loc}: unknown key (allowed here: {allowed})")
            else:
                lines.append(f"{source}: {loc}: {err['msg']} (got {err.get('input')!r})")
        if len(lines) == 1:
            raise ConfigError(f"invalid config: {lines[0]}") from None
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines)) from None


def _source(loc: str, overrides: dict[str, str], where: str) -> str:
    for key, item in overrides.items():
        if loc == key or loc.startswith(key + ".") or key.startswith(loc + "."):
            return f"--set {item}"
    return where


def _section(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or a preset name), apply ``key=value`` overrides, validate.

    Raises:
        ConfigError: unreadable YAML, unknown keys, bad values - each named.
    """
    data: dict[str, Any] = {}
    where = "config"
    if path is not None:
        resolved = resolve_config_path(path)
        where = str(resolved)
        try:
            loaded = yaml.safe_load(resolved.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{resolved} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{resolved} must hold a mapping of sections, not {type(loaded).__name__}")
        data = loaded
    parsed = _parsed_overrides(overrides)
    return config_from_dict(_merge(data, parse_overrides(overrides)), where=where,
                            overrides={k: item for k, (_, item) in parsed.items()})
