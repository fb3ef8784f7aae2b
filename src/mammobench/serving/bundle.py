"""Model bundles: ``model.safetensors`` + ``bundle.json`` + ``MODEL_CARD.md`` (+ ``model.onnx``), everything needed
to predict and to know what the model is (:mod:`~mammobench.serving.model_card`).

Loading a bundle runs no code from it: the JSON is validated against a strict schema, the weights are
safetensors (no pickle), and their SHA-256 must match the one recorded in ``bundle.json``; a tampered,
damaged or mismatched bundle is refused with a message saying which check failed.

What the checks protect, and what they cannot:

* ``description_sha256`` covers the whole description (labels and their order, thresholds, positive label,
  preprocessing, input size, architecture, provenance) and the files' checksums cover the weights, the model
  card and the ONNX model. An accidental or naive edit (labels swapped by hand, a threshold changed, a damaged copy, a
  weights file from another model) is refused.
* Someone who edits ``bundle.json`` *and* recomputes its checksums is not stopped by checksums: that is what
  the optional Ed25519 signature is for (:mod:`mammobench.serving.signing`; ``export --sign``,
  ``predict/serve --trusted-key``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

import mammobench
from mammobench.data.sources.base import is_synthetic
from mammobench.evaluation.inference import TTA_FLIPS
from mammobench.evaluation.metrics import metrics_up_to
from mammobench.models.provenance import LicenceRecord
from mammobench.runs import MODEL_FILE, ModelInfo, RunDir
from mammobench.runtime import (
    FileLimitError,
    MammobenchError,
    atomic_write_json,
    atomic_write_text,
    current_umask,
    environment_info,
    load_json_text,
    read_text_bounded,
    save_safetensors,
    sha256_file,
    utc_now,
)
from mammobench.serving.bundle_format import (  # noqa: F401  (re-exported: the bundle's schema lives beside)
    BUNDLE_FORMAT,
    BUNDLE_JSON,
    BUNDLE_KIND,
    MODEL_CARD,
    ONNX_FILE,
    BundleError,
    BundleMeta,
    BundleProvenance,
    EnsembleRecord,
    FileEntry,
    Threshold,
    description_digest,
)
from mammobench.serving.signing import Verification, check_signature

logger = logging.getLogger(__name__)

@dataclass
class Bundle:
    path: Path
    meta: BundleMeta
    model: nn.Module
    #: what its signature says (verified by a trusted key, or why not): said on every use
    verification: Verification

    @property
    def info(self) -> ModelInfo:
        return self.meta.model


def read_bundle_meta(path: str | Path) -> BundleMeta:
    """Parse and validate ``bundle.json`` (no weights touched)."""
    folder = Path(path)
    meta_path = folder / BUNDLE_JSON if folder.is_dir() else folder
    if not meta_path.is_file():
        raise BundleError(f"{path} is not a mammobench bundle: no {BUNDLE_JSON}")
    try:
        data = load_json_text(read_text_bounded(meta_path, "bundle description"), str(meta_path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{meta_path} is not valid JSON ({exc})") from None
    except FileLimitError as exc:
        raise BundleError(str(exc)) from None
    if not isinstance(data, dict) or data.get("kind") != BUNDLE_KIND:
        raise BundleError(f"{meta_path} is not a mammobench bundle description (kind must be {BUNDLE_KIND!r})")
    if data.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{meta_path} has bundle format {data.get('format')!r}; this mammobench reads {BUNDLE_FORMAT} "
                          "(re-export it from its run with this version: mammobench export RUN)")
    recorded = data.get("description_sha256")
    if not recorded or description_digest(data) != recorded:
        raise BundleError(f"{meta_path} was changed after export: its description (labels, thresholds, preprocessing, "
                          "architecture, ...) no longer matches its description_sha256. Refusing a bundle that could "
                          "predict with swapped classes; re-export it from its run")
    try:
        meta = BundleMeta.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise BundleError(f"{meta_path} is malformed: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    if meta.weights.sha256 != meta.model.weights_sha256:
        raise BundleError(f"{meta_path}: the weights checksum differs between 'weights' and 'model'")
    for entry in (meta.weights, meta.onnx, meta.model_card):
        if entry is not None and (Path(entry.file).name != entry.file or entry.file.startswith(".")
                                  or "\\" in entry.file):
            raise BundleError(f"{meta_path} names file {entry.file!r}; bundle files must sit beside bundle.json")
    return meta


def verified_file(folder: Path, entry: FileEntry, what: str) -> Path:
    """The path of a bundle file whose SHA-256 matches ``bundle.json``; a clear error otherwise."""
    path = folder / entry.file
    if not path.is_file():
        raise BundleError(f"bundle {folder} lacks its {what} file {entry.file}")
    digest = sha256_file(path)
    if digest != entry.sha256:
        raise BundleError(f"bundle {folder}: {entry.file} does not match the SHA-256 in {BUNDLE_JSON} "
                          f"(tampered with or damaged; expected {entry.sha256[:12]}..., found {digest[:12]}...)")
    return path


def load_bundle(path: str | Path, *, trusted_key: str | Path | None = None,
                require_signature: bool = False) -> Bundle:
    """Validate and load a bundle: signature (against ``trusted_key``, else the trust store: a signature that does
    not verify is refused; with ``require_signature`` or ``trusted_key``, so is one not made by a trusted key),
    schema, checksums, then a strict load of the weights into the architecture.

    Raises:
        BundleError, SignatureError: naming the check that failed.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from mammobench.runs import build_model

    folder = Path(path)
    if not folder.is_dir():
        raise BundleError(f"bundle {folder} is not a folder")
    meta = read_bundle_meta(folder)
    verification = check_signature(folder, trusted_key=trusted_key, require=require_signature)
    weights_path = verified_file(folder, meta.weights, "weights")
    if meta.model_card is not None:
        verified_file(folder, meta.model_card, "model card")
    try:
        weights = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{weights_path} is not a readable safetensors file: {exc}") from None
    members = {k.split(".", 2)[1] for k in weights if k.startswith("members.")}
    if (meta.model.ensemble or 0) != len(members) or (meta.model.ensemble is not None and meta.model.ensemble < 2):
        raise BundleError(f"bundle {folder}: {BUNDLE_JSON} declares {meta.model.ensemble or 'no'} ensemble members, its "
                          f"weights hold {len(members)}")
    try:
        model = build_model(meta.model, weights)
    except (MammobenchError, RuntimeError) as exc:
        raise BundleError(f"bundle {folder}: weights do not fit {meta.model.architecture} ({exc})") from None
    return Bundle(folder, meta, model, verification)


def _val_threshold(run: RunDir, info: ModelInfo, method: str, temperature: float | None = None) -> dict[str, Threshold]:
    if info.positive_label is None:
        return {}
    from mammobench.evaluation.thresholds import validation_threshold

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback is recorded in the bundle and printed by the CLI
        choice = validation_threshold(run.path, info.labels, info.positive_label, method=method, temperature=temperature)
    if choice.reason:
        logger.warning("decision threshold for %s: %s (%s)", info.positive_label, choice.rule, choice.reason)
    chosen_on = "val" if run.has_split("val") else "none (no validation split)"
    return {info.positive_label: Threshold(value=choice.value, method=method, chosen_on=chosen_on, rule=choice.rule,
                                           reason=choice.reason)}


def _test_summary(run: RunDir) -> dict[str, Any]:
    """The headline metrics of every evaluation of ``run``, for ``bundle.json`` (as ``metrics.json`` writes them)."""
    from mammobench.evaluation.report import EvaluationReport

    summary: dict[str, Any] = {}
    for name, evaluation in run.evaluations().items():
        metrics = EvaluationReport.read(evaluation.metrics_path).to_json()["metrics"]
        summary[name] = {k: metrics[k] for k in metrics_up_to(1)
                         if k in metrics}
    return summary


@dataclass
class BundleContent:
    """What a bundle is written from: the model and its description, the thresholds and temperature, where it came
    from, and the run whose images check an ONNX export."""

    model: nn.Module
    info: ModelInfo
    thresholds: dict[str, Threshold]
    temperature: float | None
    provenance: BundleProvenance
    check_run: RunDir
    terms: list[str]
    ensemble: EnsembleRecord | None = None


def export_bundle(
    run_dir: str | Path, out: str | Path, *, onnx: bool = False, threshold_method: str = "youden",
    parity_tolerance: float = 1e-4, parity_samples: int = 64, sign: str | Path | None = None,
    accept_weights_terms: str | None = None, tta: bool = False,
) -> Path:
    """Write a bundle for a finished run.

    Args:
        run_dir: a finished run directory.
        out: the bundle folder to create.
        onnx: also export ``model.onnx`` and check it against PyTorch on real validation images.
        threshold_method: how the malignant decision threshold is chosen on validation (``youden`` or
            ``sensitivity``).
        parity_tolerance: the largest allowed |p_torch - p_onnx|.
        sign: an Ed25519 private key (PEM): also write ``bundle.sig``.
        accept_weights_terms: the name of the pretrained weights' terms the user acknowledges (a model built on
            weights whose licence forbids redistribution, such as Mammo-FM's, is not exported without it).
        tta: the bundle's predictions average the image with its horizontal and vertical flips.

    Raises:
        RunError: unfinished run; WeightsTermsError: weights' terms not acknowledged; SignatureError: ``sign`` is
            not an Ed25519 private key; BundleError: a bad threshold method, ``out`` an existing folder that is not a
            bundle, ONNX disagreeing with PyTorch beyond the tolerance. Each is raised before ``out`` changes: an
            existing bundle there stays as it was.
    """
    run = RunDir(run_dir)
    run.require_finished()
    terms = _check_before_writing(run.read_model_info().encoder, out, threshold_method, sign, accept_weights_terms)

    def content() -> BundleContent:
        from mammobench.evaluation.calibration import run_calibration

        model, info = run.load_model()
        temperature = run_calibration(run.path).temperature
        return BundleContent(model, info, _val_threshold(run, info, threshold_method, temperature), temperature,
                             _provenance(run), run, terms)

    return write_bundle(content, Path(out), onnx=onnx, parity_tolerance=parity_tolerance, parity_samples=parity_samples,
                        sign=sign, tta=tta)


def check_bundle_target(out: str | Path) -> None:
    """Refuse a bundle folder that is a file or a folder of something else (checked before any work).

    Raises:
        BundleError: ``out`` exists and is not a bundle.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / BUNDLE_JSON).is_file())):
        raise BundleError(f"{out} exists and is not a bundle folder: choose another --out (nothing of yours is replaced)")


def _check_before_writing(encoder: str | None, out: str | Path, threshold_method: str, sign: str | Path | None,
                          accept_weights_terms: str | None) -> list[str]:
    """Everything an export can check before it writes: the weights' terms (their notes returned), the threshold
    method, the signing key, and that ``out`` is a bundle folder or new."""
    from mammobench.encoders import check_weights_terms

    terms = check_weights_terms(encoder, accept_weights_terms, "export")
    for note in terms:
        logger.warning("%s", note)
    if threshold_method not in ("youden", "sensitivity"):
        raise BundleError(f"threshold method {threshold_method!r}: expected youden or sensitivity")
    if sign is not None:
        from mammobench.serving.signing import check_private_key

        check_private_key(sign)
    check_bundle_target(out)
    return terms


def write_bundle(content: Any, out: Path, *, onnx: bool, parity_tolerance: float = 1e-4, parity_samples: int = 64,
                 sign: str | Path | None = None, tta: bool = False) -> Path:
    """Build a bundle beside ``out`` from ``content`` (a :class:`BundleContent`, or a function making one) and swap
    it in whole, so that a failure (an ONNX export that disagrees, a signing error) leaves a working bundle intact."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    try:
        _write_bundle(content() if callable(content) else content, staging, onnx=onnx, parity_tolerance=parity_tolerance,
                      parity_samples=parity_samples, sign=sign, tta=tta)
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp's 0700 -> a folder's usual mode
        _say_what_is_replaced(out)
        _swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _say_what_is_replaced(out: Path) -> None:
    """A bundle already at ``out`` is replaced (export is how a bundle is refreshed): say which one it was."""
    if not (out / BUNDLE_JSON).is_file():
        return
    try:
        provenance = read_bundle_meta(out).provenance
    except Exception:  # noqa: BLE001 - a damaged old bundle is replaced all the same
        provenance = BundleProvenance()
    logger.warning("replacing the bundle in %s (exported %s from %s)", out, provenance.exported or "at an unknown time",
                   provenance.origin())


def _swap_in(staging: Path, out: Path) -> None:
    """Replace ``out`` by ``staging`` with two renames (the old bundle is removed only once the new one is there)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    try:
        staging.rename(out)
    except OSError:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_bundle(content: BundleContent, out: Path, *, onnx: bool, parity_tolerance: float, parity_samples: int,
                  sign: str | Path | None, tta: bool) -> None:
    """Write a bundle's files into the (empty) folder ``out``: the weights, the description with thresholds,
    temperature and provenance, optionally the ONNX model checked against PyTorch, the signature."""
    from mammobench.encoders import weights_licence
    from mammobench.serving.model_card import model_card

    weights = {k: v.detach().contiguous().cpu() for k, v in content.model.state_dict().items()}
    info = content.info
    save_safetensors(weights, out / MODEL_FILE, {"architecture": info.architecture})
    digest = sha256_file(out / MODEL_FILE)
    meta = BundleMeta(model=info.model_copy(update={"weights_sha256": digest}), thresholds=content.thresholds,
                      temperature=content.temperature, weights=FileEntry(file=MODEL_FILE, sha256=digest),
                      provenance=content.provenance, weights_terms=content.terms, ensemble=content.ensemble,
                      tta=list(TTA_FLIPS) if tta else [])  # the flips evaluate --tta averages
    licence = weights_licence(info.encoder)
    meta.weights_licence = LicenceRecord.model_validate(licence.as_dict()) if licence is not None else None
    name = str(content.provenance.run_name or content.check_run.name)
    atomic_write_text(out / MODEL_CARD, model_card(meta, content.check_run, name=name))
    meta.model_card = FileEntry(file=MODEL_CARD, sha256=sha256_file(out / MODEL_CARD))
    if onnx:
        _add_onnx(meta, content.model, content.check_run, out, parity_tolerance=parity_tolerance,
                  parity_samples=parity_samples)
    data = meta.model_dump(mode="json")
    data["description_sha256"] = description_digest(data)
    atomic_write_json(out / BUNDLE_JSON, data)
    if sign is not None:
        from mammobench.serving.signing import sign_bundle

        sign_bundle(out, sign)


def _provenance(run: RunDir) -> BundleProvenance:
    """Where a bundle's model came from: its run, versions, config, best epoch, counts and test metrics."""
    info = run.read_info()
    split = run.read_split()
    return BundleProvenance(
        run=str(run.path.resolve()), run_name=info.name, exported=utc_now(), mammobench_version=mammobench.__version__,
        trained_with=info.mammobench_version, environment=environment_info()["versions"],
        config=run.read_config().model_dump(mode="json"), best_epoch=info.best_epoch,
        best_validation={str(info.monitor): info.best_score} if info.monitor else {}, counts=info.counts,
        evaluation=_test_summary(run), split_rows=len(split), synthetic=is_synthetic(split), pretrained=info.pretrained,
        linear_probe=info.probe)


def _add_onnx(meta: BundleMeta, model: nn.Module, run: RunDir, out: Path, *, parity_tolerance: float,
              parity_samples: int) -> None:
    """Export ``model.onnx`` and keep it only if it matches PyTorch on the run's own validation/test images."""
    from mammobench.serving.onnx import OnnxRunner, export_onnx, max_probability_difference

    info = meta.model
    onnx_path = export_onnx(model, info.input_size, out / ONNX_FILE, views=len(info.views) if info.views else None,
                            channels=info.in_chans)
    inputs, what, masks = _real_inputs(run, info, parity_samples)
    diff = max_probability_difference(model, OnnxRunner(onnx_path), inputs, masks=masks)
    if diff > parity_tolerance:
        onnx_path.unlink()
        raise BundleError(f"ONNX export disagrees with PyTorch by {diff:.2e} (> {parity_tolerance:.0e}) on "
                          f"{what}; not written")
    meta.onnx = FileEntry(file=ONNX_FILE, sha256=sha256_file(onnx_path))
    meta.onnx_max_abs_difference = diff
    meta.onnx_check = what
    logger.info("ONNX export matches PyTorch to %.2e on %s", diff, what)


def _real_inputs(run: RunDir, info: ModelInfo, n: int) -> tuple[torch.Tensor, str, torch.Tensor | None]:
    """Normalised model inputs of up to ``n`` validation (then test) images of the run, which they are, and
    (a breast-level model) the breasts' view masks."""
    import pandas as pd

    from mammobench.data.cache import ImageCache, cache_request

    split = run.read_split()
    rows = pd.concat([split[split["split"] == "val"], split[split["split"] == "test"]])
    if info.views:
        from mammobench.data.dataset import BreastDataset
        from mammobench.data.transforms import AugmentSettings, create_transform

        transform = create_transform(train=False, augment=AugmentSettings(enabled=False), mean=info.mean, std=info.std)
        ds = BreastDataset(rows.assign(label=info.labels[0]), info.labels,
                           ImageCache(run.cache_root(), info.preprocess), transform, views=info.views)
        items = [ds[i] for i in range(min(n, len(ds)))]
        return (torch.stack([it["image"] for it in items]).float(), f"{len(items)} validation/test breasts",  # type: ignore[misc]
                torch.stack([it["view_mask"] for it in items]))  # type: ignore[misc]
    rows = rows.head(n)
    cache = ImageCache(run.cache_root(), info.preprocess)
    images = [cache.get(cache_request(r)) for _, r in rows.iterrows()]
    counts = rows["split"].value_counts()
    what = " and ".join(f"{int(counts[s])} {name} image{'s' if counts[s] != 1 else ''}"
                        for s, name in (("val", "validation"), ("test", "test")) if s in counts)
    from mammobench.data.preprocess import input_batch

    return torch.from_numpy(input_batch(images, info.mean, info.std)), what, None
