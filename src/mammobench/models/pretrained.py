"""What ``model.pretrained`` names, fetched and mapped onto a timm model: a weights file or a catalogue encoder.

A catalogue encoder (:mod:`mammobench.encoders`) comes from the Hugging Face hub (``huggingface_hub``'s cache,
so once per machine) or from a local file; either way it is read without executing anything
(:mod:`~mammobench.models.checkpoints`), its encoder tensors are renamed to timm's (e.g. the
``efficientnet-pytorch`` names of Mammo-CLIP to ``tf_efficientnet_b2``), the rest of the checkpoint (a CLIP text
encoder, projections, an optimiser) is left out, and the result loads through the same
:func:`~mammobench.models.loading.load_state` as any file. :func:`convert_weights` does that once and writes a
``.safetensors`` file with a JSON sidecar, which then loads with no pickle at all.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

import mammobench
from mammobench.config import PRETRAINED_WORDS, PretrainedWeights
from mammobench.encoders import (
    ENCODER_METADATA_KEY,
    ENCODERS,
    EncoderSpec,
    Layout,
    get_encoder,
    safetensors_metadata,
)
from mammobench.models.loading import (
    LoadReport,
    ModelError,
    check_model_name,
    load_state,
    load_weights_file,
    read_state_dict,
)
from mammobench.models.provenance import EncoderSidecar, LicenceRecord
from mammobench.runtime import atomic_write_json, format_list, save_safetensors, sha256_file, utc_now

logger = logging.getLogger(__name__)

CONVERTED_FORMAT = "1"


@dataclass(frozen=True)
class WeightsRequest:
    """``model.pretrained`` resolved: ``kind`` hub / none / file / encoder, the local file (if any), the catalogue
    entry (if any), where the state dict sits and whether the file is already in timm's naming."""

    kind: Literal["hub", "none", "file", "encoder"]
    file: Path | None = None
    encoder: EncoderSpec | None = None
    key: str | None = None
    strip_prefix: str | None = None
    timm_names: bool = True  # False: the encoder's original layout, renamed on loading
    fold_normalisation: bool = False  # the authors' per-channel normalisation goes into the first convolution

    @property
    def static_padding(self) -> int | None:
        return self.encoder.static_padding if self.encoder is not None else None

    @property
    def global_pool(self) -> str | None:
        return self.encoder.global_pool if self.encoder is not None else None


def weights_request(pretrained: str | PretrainedWeights | None) -> WeightsRequest:
    """Resolve a ``model.pretrained`` value (already validated by the config)."""
    if pretrained is None or (isinstance(pretrained, str) and pretrained in PRETRAINED_WORDS):
        return WeightsRequest("hub" if pretrained == "hub" else "none")
    if isinstance(pretrained, str) and pretrained in ENCODERS:
        spec = ENCODERS[pretrained]
        return WeightsRequest("encoder", None, spec, spec.key, spec.strip_prefix, timm_names=spec.layout == "timm",
                              fold_normalisation=spec.channel_mean is not None)
    if isinstance(pretrained, str):
        pretrained = PretrainedWeights(file=Path(pretrained))
    file = Path(pretrained.file) if pretrained.file is not None else None
    converted = _converted_encoder(file)
    if converted is not None:  # written by `mammobench weights convert`: timm's names, no prefix, no pickle
        if pretrained.source not in (None, converted.name):
            raise ModelError(f"{file} was converted from {converted.name}, not {pretrained.source}: "
                             f"set model.pretrained.source to {converted.name} or leave it out")
        return WeightsRequest("encoder", file, converted, pretrained.key, pretrained.strip_prefix)
    if pretrained.source is None:
        return WeightsRequest("file", file, None, pretrained.key, pretrained.strip_prefix)
    spec = get_encoder(pretrained.source)
    return WeightsRequest("encoder", file, spec, pretrained.key or spec.key,
                          pretrained.strip_prefix if pretrained.strip_prefix is not None else spec.strip_prefix,
                          timm_names=spec.layout == "timm", fold_normalisation=spec.channel_mean is not None)


def _converted_encoder(file: Path | None) -> EncoderSpec | None:
    if file is None or file.suffix != ".safetensors":
        return None
    name = safetensors_metadata(file).get(ENCODER_METADATA_KEY)
    return ENCODERS.get(name) if name else None


def encoder_file(spec: EncoderSpec, file: Path | None) -> tuple[Path, str | None]:
    """The encoder's weights file: ``file``, else downloaded from the hub (cached). Returns ``(path, revision)``.

    Raises:
        ModelError: no local file and the hub cannot be reached (the message says where to put the file).
    """
    if file is not None:
        if not file.is_file():
            raise ModelError(f"weights file {file} ({spec.name}) does not exist; get it from {spec.download}")
        return file, None
    if spec.hub_repo is None or spec.hub_file is None:
        raise ModelError(f"{spec.name} is not on the Hugging Face hub: get the file ({spec.download}) and set "
                         f"model.pretrained: {{source: {spec.name}, file: /path/to/it}}")
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    from mammobench.models.hub import hub_file_url, hub_offline, unreachable

    cached = try_to_load_from_cache(spec.hub_repo, spec.hub_file)
    if isinstance(cached, str):  # a cached copy needs no network (a cluster node without internet)
        path = Path(cached)
    else:  # one short request first: offline, the answer comes in seconds, not after the hub client's retries
        reason = "HF_HUB_OFFLINE is set" if hub_offline() else unreachable(hub_file_url(spec.hub_repo, spec.hub_file))
        try:
            if reason:
                raise ConnectionError(reason)
            path = Path(hf_hub_download(spec.hub_repo, spec.hub_file))
        except Exception as exc:  # offline, no such file, a proxy refusing: every case gets the same way out
            raise ModelError(_download_failed(spec, exc)) from None
    parts = path.parts
    revision = parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None
    return path, revision


def _download_failed(spec: EncoderSpec, exc: BaseException) -> str:
    assert spec.hub_file is not None
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = Path(spec.hub_file).name
    return (f"could not download {spec.name} ({spec.hub_repo}, {spec.hub_file}) from the Hugging Face hub "
            f"({type(exc).__name__}{': ' + reason[:200] if reason else ''}). Offline? On a machine that reaches the hub, "
            f"download {spec.download}, copy it here and set model.pretrained: {{source: {spec.name}, file: "
            f"/path/to/{name}}}; or convert it once there (mammobench weights convert {name} --source {spec.name} "
            f"--out {spec.name}.safetensors) and set model.pretrained to that file")


#: efficientnet-pytorch's module names -> timm's: the stem and head, a block with expansion, one without.
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
              "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK = re.compile(r"_blocks\.(\d+)\.(_[a-z0-9_]+?)\.(weight|bias|running_mean|running_var|num_batches_tracked)$")


def efficientnet_pytorch_to_timm(state: dict[str, torch.Tensor], model: nn.Module, path: str | Path
                                 ) -> tuple[dict[str, torch.Tensor], int]:
    """Rename an ``efficientnet-pytorch`` state dict (``_blocks.7._expand_conv.weight``) to a timm
    EfficientNet's (``blocks.2.1.conv_pw.weight``); its classifier (``_fc``) is left out.

    Returns:
        ``(renamed state, tensors left out)``.

    Raises:
        ModelError: ``model`` is not a timm EfficientNet, the block counts differ (another B size), or a
            tensor has a name this layout does not have.
    """
    stages = getattr(model, "blocks", None)
    if not isinstance(stages, nn.Sequential) or not all(isinstance(s, nn.Sequential) for s in stages):
        raise ModelError(f"{path} is in efficientnet-pytorch's layout, which maps onto timm EfficientNets only, "
                         f"not {type(model).__name__}")
    flat = [(i, j) for i, stage in enumerate(stages) for j in range(len(stage))]  # type: ignore[arg-type]
    numbers = {int(m[1]) for k in state if (m := _BLOCK.match(k))}
    if len(numbers) != len(flat):
        raise ModelError(f"{path} holds an EfficientNet of {len(numbers)} blocks; "
                         f"{getattr(model, 'default_cfg', {}).get('architecture', 'the model')} has {len(flat)}: "
                         "a checkpoint of another size (B0-B7)?")
    expanded = {int(m[1]) for k in state if (m := _BLOCK.match(k)) and m[2] == "_expand_conv"}
    out: dict[str, torch.Tensor] = {}
    unknown, left_out = [], 0
    for key, value in state.items():
        block = _BLOCK.match(key)
        if block:
            number, module, leaf = int(block[1]), block[2], block[3]
            name = (_EXPANDED if number in expanded else _SEPARABLE).get(module)
            if name is None:
                unknown.append(key)
                continue
            i, j = flat[number]
            out[f"blocks.{i}.{j}.{name}.{leaf}"] = value
            continue
        module, _, leaf = key.partition(".")
        if module == "_fc":
            left_out += 1
        elif module in _TOP:
            out[f"{_TOP[module]}.{leaf}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise ModelError(f"{path}: {len(unknown)} tensors are not in efficientnet-pytorch's layout "
                         f"({format_list(unknown, 4)}); set model.pretrained's key / strip_prefix to the encoder's")
    return out, left_out


def fold_input_normalisation(state: dict[str, torch.Tensor], model: nn.Module, spec: EncoderSpec,
                             path: str | Path) -> dict[str, torch.Tensor]:
    """Fold the per-channel normalisation ``spec``'s authors applied to three equal channels into the first
    convolution, so that the grey image in [0, 1], normalised by the scalar ``spec.mean``/``spec.std`` (0 and 1),
    gives the same features.

    The authors fed ``x_c = (g - m_c) / s_c`` for each channel c of a grey image ``g``: the first convolution then
    computes ``sum_c W_c * (g - m_c) / s_c + b``. With ``W'_c = W_c / s_c`` and ``b' = b - sum_c m_c / s_c *
    sum(W_c)`` it computes the same from ``g`` in every channel (summing the channels for one grey input keeps it
    exact). Exact only where the convolution never pads (a padded border would read 0 where the authors' read
    ``-m_c / s_c``) and when it has a bias to take the shift: both are checked.

    Raises:
        ModelError: the first convolution pads, has no bias, or is not in the state dict.
    """
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    first = cfg.get("first_conv")
    first = first[0] if isinstance(first, (list, tuple)) else first
    weight_key, bias_key = f"{first}.weight", f"{first}.bias"
    conv = model.get_submodule(str(first)) if first else None
    if conv is None or weight_key not in state:
        raise ModelError(f"{path}: cannot fold {spec.name}'s per-channel normalisation: no first convolution "
                         f"{first!r} in the file")
    if bias_key not in state or any(int(p) for p in getattr(conv, "padding", (0,))):
        raise ModelError(f"{path}: {spec.name}'s per-channel normalisation cannot be folded exactly into {first} "
                         "(it pads or has no bias)")
    assert spec.channel_mean is not None and spec.channel_std is not None
    weight = state[weight_key].double()
    mean = torch.tensor(spec.channel_mean, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(spec.channel_std, dtype=torch.float64).view(1, -1, 1, 1)
    if weight.shape[1] != mean.shape[1]:
        raise ModelError(f"{path}: {first} takes {weight.shape[1]} channels, {spec.name}'s normalisation has {mean.shape[1]}")
    # scalar normalisation of the grey input, (g - spec.mean) / spec.std, undone inside the fold
    scaled = weight / std * spec.std
    shift = ((spec.mean - mean) / std * weight).sum(dim=(1, 2, 3))
    out = dict(state)
    out[weight_key] = scaled.to(state[weight_key].dtype)
    out[bias_key] = (state[bias_key].double() + shift).to(state[bias_key].dtype)
    return out


def _timm_layout(state: dict[str, torch.Tensor], model: nn.Module, path: str | Path
                 ) -> tuple[dict[str, torch.Tensor], int]:
    return state, 0


#: Each checkpoint layout's renaming onto timm's names, as timm's ``pretrained_filter_fn``: ``(state, model, file)
#: -> (renamed state, tensors left out)``. A new layout: one function here and its name in ``encoders.Layout``.
LAYOUT_FILTERS: dict[Layout, Callable[[dict[str, torch.Tensor], nn.Module, str | Path],
                                      tuple[dict[str, torch.Tensor], int]]] = {
    "timm": _timm_layout,
    "efficientnet_pytorch": efficientnet_pytorch_to_timm,
}


def encoder_state(request: WeightsRequest, path: Path, model: nn.Module, report: LoadReport) -> dict[str, torch.Tensor]:
    """The encoder's tensors from ``path`` in timm's names (nothing executed); ``report`` records the file, the
    checkpoint entry taken and what was folded."""
    state = read_state_dict(path, key=request.key, strip_prefix=request.strip_prefix, report=report)
    spec = request.encoder
    if not request.timm_names and spec is not None:
        state, left_out = LAYOUT_FILTERS[spec.layout](state, model, path)
        report.left_out += left_out
    if request.fold_normalisation and spec is not None:
        state = fold_input_normalisation(state, model, spec, path)
        report.adapted.append(f"{spec.name}'s per-channel mean/std folded into the first convolution")
    return state


def load_pretrained(model: nn.Module, request: WeightsRequest) -> LoadReport:
    """Load a ``file`` or ``encoder`` request into ``model`` (its head stays new). Raises :class:`ModelError`."""
    if request.kind == "file":
        assert request.file is not None
        return load_weights_file(model, request.file, key=request.key, strip_prefix=request.strip_prefix)
    spec = request.encoder
    assert spec is not None
    path, revision = encoder_file(spec, request.file)
    report = LoadReport("encoder", path=str(path), encoder=spec.name, hub_revision=revision)
    state = encoder_state(request, path, model, report)
    return load_state(model, state, report, new_head=True)


@dataclass
class ConvertResult:
    """What :func:`convert_weights` wrote: the safetensors file, its sidecar, and the sidecar's content."""

    out: Path
    sidecar: Path
    info: EncoderSidecar


def convert_weights(src: str | Path, out: str | Path, *, source: str | None = None, arch: str | None = None,
                    key: str | None = None, strip_prefix: str | None = None, overwrite: bool = False) -> ConvertResult:
    """Write the encoder in ``src`` (any checkpoint, read without executing it) as ``out`` (.safetensors, timm's
    names, three input channels as published) with a JSON sidecar ``out``.json saying where it came from.

    Args:
        src: the original file (e.g. Mammo-CLIP's ``b5-model-best-epoch-7.tar``).
        out: the ``.safetensors`` file to write.
        source: a catalogue encoder (its layout, key, prefix, preprocessing and licence travel with the file).
        arch: the timm architecture, for a file that is no catalogue encoder (timm's names, e.g. RSNA ConvNeXt).
        key, strip_prefix: where the state dict sits (default: the source's).
        overwrite: replace an existing ``out``.

    Raises:
        ModelError: a bad argument, an unreadable or foreign file, tensors that do not fit ``arch``; nothing is
            written then.
    """
    src, out = Path(src), Path(out)
    spec = get_encoder(source) if source else None
    architecture = arch or (spec.architecture if spec else None)
    if architecture is None:
        raise ModelError("say what the file holds: --source (a catalogue encoder: " + ", ".join(ENCODERS) +
                         ") or --arch (a timm architecture)")
    if spec is not None and arch is not None and arch != spec.architecture:
        raise ModelError(f"--arch {arch} contradicts --source {spec.name}, a {spec.architecture} encoder")
    check_model_name(architecture)
    if out.suffix != ".safetensors":
        raise ModelError(f"--out {out}: the converted file must end in .safetensors")
    sidecar = out.with_suffix(".json")
    for path in (out, sidecar):
        if path.exists() and not overwrite:
            raise ModelError(f"{path} exists; choose another --out or pass --overwrite")
    if out.resolve() == src.resolve():
        raise ModelError(f"--out {out} is the file being converted")
    import timm

    pool: dict[str, Any] = {"global_pool": spec.global_pool} if spec and spec.global_pool else {}
    model = timm.create_model(architecture, pretrained=False, num_classes=0, **pool)
    request = WeightsRequest("encoder" if spec else "file", src, spec,
                             key if key is not None else (spec.key if spec else None),
                             strip_prefix if strip_prefix is not None else (spec.strip_prefix if spec else None),
                             timm_names=spec is None or spec.layout == "timm",
                             fold_normalisation=spec is not None and spec.channel_mean is not None)
    report = LoadReport("encoder" if spec else "file", path=str(src), encoder=spec.name if spec else None)
    state = encoder_state(request, src, model, report)
    load_state(model, dict(state), report, new_head=True)  # every tensor must fit before anything is written
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    metadata = {ENCODER_METADATA_KEY: spec.name if spec else "", "architecture": architecture,
                "source_sha256": report.sha256, "source_file": src.name, "format": CONVERTED_FORMAT,
                "converted_by": f"mammobench {mammobench.__version__}"}
    if spec is not None and spec.static_padding:
        metadata["static_padding"] = str(spec.static_padding)
    if report.entry:
        metadata["entry"] = report.entry
    if request.fold_normalisation:
        metadata["folded"] = "per-channel input normalisation in the first convolution"
    save_safetensors(tensors, out, metadata)
    info = EncoderSidecar(
        encoder=spec.name if spec else None, architecture=architecture, file=out.name, sha256=sha256_file(out),
        source_file=str(src), source_sha256=report.sha256, tensors=len(tensors), left_out=report.left_out,
        placeholders=report.placeholders, entry=report.entry, adapted=report.adapted,
        input_channels="3 (as published; mammobench sums them for its one-channel input when loading)",
        preprocessing=spec.config_values() if spec else None, static_padding=spec.static_padding if spec else None,
        global_pool=spec.global_pool if spec else None,
        licence=LicenceRecord.model_validate(spec.licence.as_dict()) if spec else None,
        citation=spec.citation if spec else None, homepage=spec.homepage if spec else None, converted=utc_now(),
        mammobench_version=mammobench.__version__)
    atomic_write_json(sidecar, info.model_dump(mode="json"))
    return ConvertResult(out, sidecar, info)
