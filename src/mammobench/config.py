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
from mammobench.encoders import ENCODERS, EncoderError, EncoderSpec, encoder_named_by, get_encoder
from mammobench.runtime import (
    FileLimitError,
    MammobenchError,
    load_yaml_text,
    read_text_bounded,
)

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


#: ``model.pretrained`` strings that are not a weights file or a catalogue encoder.
PRETRAINED_WORDS = ("hub", "none", "")
#: Suffixes that make a ``model.pretrained`` string a file path.
WEIGHTS_SUFFIXES = (".safetensors", ".pth", ".pt", ".tar", ".bin", ".ckpt", ".p", ".pkl")


class PretrainedWeights(_Strict):
    """``model.pretrained`` as a mapping: a catalogue encoder, a local file, or both (``{source, file}``)."""

    source: str | None = Field(None, description="a catalogue encoder: " + ", ".join(ENCODERS) +
                               " (mammobench weights list); without file it is downloaded from the Hugging Face hub")
    file: Path | None = Field(None, description="a local weights file: .safetensors, or a pickled checkpoint "
                              "(.pth/.pt/.tar/...) read without executing it")
    arch: str | None = Field(None, description="the timm architecture the file holds (model.name must be it)")
    key: str | None = Field(None, description="the checkpoint entry holding the state dict (default: the source's, "
                            "else state_dict / model / model_state_dict)")
    strip_prefix: str | None = Field(None, description="keep only the tensors under this prefix, without it "
                                     "(default: the source's, else a module. every key carries)")

    @model_validator(mode="after")
    def _source_or_file(self) -> PretrainedWeights:
        if self.source is None and self.file is None:
            raise ValueError("give source (a catalogue encoder: " + ", ".join(ENCODERS) + ") or file (a local weights "
                             "file), or both")
        if self.source is not None:
            try:
                spec = get_encoder(self.source)
            except EncoderError as exc:
                raise ValueError(str(exc)) from None
            if self.file is None and spec.hub_repo is None:
                raise ValueError(f"{spec.name} is not on the Hugging Face hub: get the file ({spec.download}) and set "
                                 f"model.pretrained: {{source: {spec.name}, file: /path/to/it}}")
        return self


class ModelConfig(_Strict):
    name: str = "resnet18"
    pretrained: str | PretrainedWeights = Field(
        "hub", description="hub (timm's ImageNet weights) | none | a catalogue encoder (" + ", ".join(ENCODERS) +
        ") | a weights file | {source, file, arch, key, strip_prefix}")
    freeze: Literal["none", "all"] = Field(
        "none", description="all = the encoder never trains (its BatchNorm statistics stay the pretrained ones), "
        "only the head learns: by gradient descent (trainer.mode finetune) or in closed form (linear_probe)")
    drop_rate: float = Field(0.0, ge=0, lt=1)
    drop_path_rate: float | None = Field(None, ge=0, lt=1)
    img_size: int | tuple[int, int] | None = Field(
        None, description="for ViTs built for a size: build at this size (a side or [height, width])")
    mean: float | None = None
    std: float | None = Field(None, gt=0)
    global_pool: Literal["avg", "max", "avgmax", "gem"] | None = Field(
        None, description="how the feature map becomes one vector: avg | max | avgmax (their mean) | gem (generalised "
        "mean, p learnt; the RSNA 2023 winners pooled whole mammograms with max or GeM). None = the architecture's "
        "(or a catalogue encoder's authors')")
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

    @field_validator("pretrained", mode="before")
    @classmethod
    def _mapping_as_weights(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        try:  # validated here so that an error names the mapping's problem, not every branch of the union
            return PretrainedWeights.model_validate(v)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                raise ValueError(f"unknown key {where} (allowed: {', '.join(PretrainedWeights.model_fields)})") from None
            raise ValueError((f"{where}: " if where else "") + err["msg"].removeprefix("Value error, ")) from None

    @field_validator("pretrained")
    @classmethod
    def _known_pretrained(cls, v: str | PretrainedWeights) -> str | PretrainedWeights:
        if isinstance(v, PretrainedWeights) or v in PRETRAINED_WORDS or v in ENCODERS:
            return v
        if "/" in v or "\\" in v or v.endswith(WEIGHTS_SUFFIXES) or Path(v).exists():
            return v  # a file: read (and checked) when the model is built
        raise ValueError(f"{v!r} is neither a catalogue encoder ({', '.join(ENCODERS)}; mammobench weights list) nor "
                         "hub, none or a weights file (.safetensors, .pth, .tar, ...)")

    @model_validator(mode="after")
    def _architecture_fits_weights(self) -> ModelConfig:
        spec = encoder_named_by(self.pretrained)
        arch = self.pretrained.arch if isinstance(self.pretrained, PretrainedWeights) else None
        if spec is not None and arch is not None and arch != spec.architecture:
            raise ValueError(f"model.pretrained.arch {arch} contradicts {spec.name}, a {spec.architecture} encoder")
        expected = spec.architecture if spec is not None else arch
        if expected is not None and self.name != expected:
            what = f"{spec.name} is a {expected} encoder" if spec is not None else f"the file holds a {expected}"
            raise ValueError(f"{what}, but model.name is {self.name}: set model.name: {expected}")
        folded = spec is not None and spec.channel_mean is not None
        if folded and (self.mean not in (None, spec.mean) or self.std not in (None, spec.std)):  # type: ignore[union-attr]
            assert spec is not None
            raise ValueError(f"{spec.name} takes its authors' per-channel normalisation in its first convolution: "
                             f"model.mean and model.std must stay {spec.mean} and {spec.std} (leave them unset)")
        return self


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
    mode: Literal["finetune", "linear_probe"] = Field(
        "finetune", description="finetune = gradient descent (Lightning); linear_probe = encode every image once "
        "(cached) with the frozen encoder (model.freeze: all), then a logistic regression with its regularisation "
        "chosen by inner cross-validation on the training split (seconds on a CPU)")
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
    keep_checkpoint: Literal["none", "last"] = Field(
        "none", description="what stays in checkpoints/ once a run finished: none (model.safetensors holds the kept "
        "weights) or last (the last epoch with optimiser state, to train on from); while training, last.ckpt (to resume) "
        "and best.ckpt (weights only) are kept")


class PretrainConfig(_Strict):
    """Self-supervised pretraining of ``model.name`` on unlabelled mammograms (``mammobench pretrain``).

    Views are crops of breast tissue at the model's resolution (``crop_size``) cut from the manifest's cache at
    ``data.image_size`` (prepare it large: the crops then keep the detail a whole-frame resize loses), each keeping at
    least ``min_tissue`` of breast, with the grey-level augmentations a mammogram can show (no colour).
    """

    method: Literal["simclr", "byol", "dino"] = Field(
        "simclr", description="simclr (contrastive, NT-Xent), byol (momentum teacher, no negatives), dino (momentum "
        "teacher, centred soft targets, multi-crop): lightly's heads and losses")
    epochs: int = Field(20, ge=1)
    crop_size: int = Field(224, ge=16, le=2048, description="the model's input side: a view's size in pixels")
    crops_per_image: int = Field(4, ge=1, description="samples drawn from each image per epoch")
    min_tissue: float = Field(0.5, ge=0, le=1, description="share of breast a crop must hold (background crops "
                              "are drawn again, up to 20 times)")
    scale: tuple[float, float] = Field((0.3, 1.0), description="area of a view within its crop (random resized crop)")
    local_crops: int = Field(4, ge=0, description="dino: small views per sample beside the two large ones")
    local_size: int = Field(96, ge=16, description="dino: side of a small view")
    projection_dim: int = Field(128, ge=8)
    hidden_dim: int = Field(1024, ge=8)
    temperature: float = Field(0.1, gt=0, description="simclr: the NT-Xent temperature")
    momentum: tuple[float, float] = Field((0.99, 1.0), description="byol, dino: the teacher's EMA momentum, from the "
                                          "first to the last step (cosine)")
    warmup_epochs: int = Field(1, ge=0)

    @field_validator("scale", "momentum")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 1:
            raise ValueError(f"expected 0 < low <= high <= 1, got {list(v)}")
        return v


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
    pretrain: PretrainConfig | None = Field(None, description="self-supervised pretraining (mammobench pretrain)")

    @model_validator(mode="after")
    def _probe_needs_a_frozen_image_model(self) -> Config:
        if self.trainer.mode == "linear_probe":
            if self.model.freeze != "all":
                raise ValueError("trainer.mode linear_probe keeps the encoder frozen: set model.freeze: all")
            if self.model.views is not None:
                raise ValueError("trainer.mode linear_probe fits one image's features; unset model.views (a two-view "
                                 "model fuses its views with learnt weights: fine-tune it, with model.freeze: all)")
        return self

    def encoder(self) -> EncoderSpec | None:
        """The catalogue encoder ``model.pretrained`` names (directly, as ``source``, or by a converted file)."""
        return encoder_named_by(self.model.pretrained)

    def run_name(self) -> str:
        base = self.output.name or self.name
        return f"{base}_fold{self.data.fold}" if self.data.fold is not None and not self.output.name else base

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


#: Keys that say where a run is written and how it is watched, never what it learns: two configs that differ only
#: in these make the same run (a finished one is reused, not trained again or refused).
RESULT_NEUTRAL_KEYS = ("name", "output.dir", "output.name", "output.tensorboard", "output.mlflow",
                       "output.keep_checkpoint", "data.num_workers", "trainer.log_every_n_steps")


def result_differences(a: Config, b: Config) -> list[str]:
    """The keys of :func:`config_differences` that change a run's result (not :data:`RESULT_NEUTRAL_KEYS`)."""
    return [k for k in config_differences(a, b) if k not in RESULT_NEUTRAL_KEYS]


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
        return Config.model_validate(with_encoder_preprocessing(data))
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
                msg = err["msg"].removeprefix("Value error, ")
                got = "" if isinstance(err.get("input"), dict) else f" (got {err.get('input')!r})"
                lines.append(f"{source}: {loc}: {msg}{got}" if loc else msg)  # a rule across sections
        if len(lines) == 1:
            raise ConfigError(f"invalid config: {lines[0]}") from None
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines)) from None


def with_encoder_preprocessing(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the preprocessing of the encoder ``model.pretrained`` names filled in where the config
    leaves a value unset (absent or null): input size, mean/std, the intensity window and resizing. The saved
    ``config.yaml`` then holds them, so a resumed or copied run preprocesses the same way."""
    import copy

    model = data.get("model")
    try:
        spec = encoder_named_by(model.get("pretrained")) if isinstance(model, dict) else None
    except (TypeError, ValueError):
        spec = None  # a malformed value: validation names it
    if spec is None:
        return data
    out = copy.deepcopy(data)
    for dotted, value in spec.config_values().items():
        node, keys = out, dotted.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {}) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(keys[-1]) is None:
            node[keys[-1]] = value
    return out


def encoder_settings(config: Config) -> dict[str, Any] | None:
    """What ``run.json`` says about the encoder's preprocessing: each value the config took from it, and each one
    it overrode (with the encoder's own); ``None`` when ``model.pretrained`` names no catalogue encoder."""
    spec = config.encoder()
    if spec is None:
        return None
    dumped = config.model_dump(mode="json")
    taken, overridden = [], []
    for dotted, value in spec.config_values().items():
        node: Any = dumped
        for k in dotted.split("."):
            node = node.get(k) if isinstance(node, dict) else None
        if node == value:
            taken.append(dotted)
        else:
            overridden.append(f"{dotted}: {node} (the encoder's: {value})")
    return {"name": spec.name, "from_encoder": taken, "overridden": overridden}


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
            loaded = load_yaml_text(read_text_bounded(resolved, "config"), str(resolved)) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{resolved} is not valid YAML: {exc}") from None
        except FileLimitError as exc:
            raise ConfigError(str(exc)) from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{resolved} must hold a mapping of sections, not {type(loaded).__name__}")
        data = loaded
    parsed = _parsed_overrides(overrides)
    nested = parse_overrides(overrides)
    return config_from_dict(_merge(_without_replaced_crop(data, nested), nested), where=where,
                            overrides={k: item for k, (_, item) in parsed.items()})


#: The alternative ways to cut around a lesion (data.preprocess): a config sets at most one.
LESION_CROPS = ("context", "field_mm", "scales")


def _without_replaced_crop(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The file's config without its way of cutting around a lesion when an override sets another one:
    ``--set data.preprocess.scales=[0.5,2]`` on a preset with a ``context`` means the scales, not a conflict."""
    section = overrides.get("data")
    given = section.get("preprocess") if isinstance(section, dict) else None
    base = data.get("data", {}).get("preprocess") if isinstance(data.get("data"), dict) else None
    if not isinstance(given, dict) or not isinstance(base, dict):
        return data
    if not any(given.get(k) is not None for k in LESION_CROPS):
        return data
    kept = {k: v for k, v in base.items() if k not in LESION_CROPS or k in given}
    return {**data, "data": {**data["data"], "preprocess": kept}}
