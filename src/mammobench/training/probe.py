"""``trainer.mode: linear_probe``: a frozen encoder's features and a logistic regression, in seconds on a CPU.

The steps, in the order :func:`fit_probe` takes them:

1. the run folder, the split and the model, built by the same parts as a fine-tune
   (:mod:`~mammobench.training.parts`: the same preprocessing, cache and pretrained weights);
2. every image's pooled features (timm's ``forward_head(..., pre_logits=True)``), computed once and cached on
   disk per encoder (a fingerprint of its weights, padding and normalisation), image and preprocessing
   (:class:`EmbeddingCache`): the cells of a study share them;
3. a scikit-learn logistic regression on the training split's standardised features, its regularisation ``C``
   chosen by cross-validation inside the training split (folds grouped by patient, the validation and test
   splits never seen), balanced class weights;
4. the scaler and the regression folded into the network's own linear head, checked against scikit-learn's
   probabilities, and written as an ordinary run (``model.safetensors`` + ``model.json``): ``evaluate``, bundles,
   ONNX, ``predict`` and the page take it like any fine-tuned model.

A probe trains nothing else: the optimiser, schedule, loss, sampler and augmentation settings do not apply.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

import mammobench
from mammobench.config import Config, encoder_settings
from mammobench.data.dataset import MammoDataset
from mammobench.data.manifest import cache_folder, patient_key
from mammobench.data.transforms import create_transform
from mammobench.models.factory import count_parameters
from mammobench.runs import RUN_FORMAT, RunDir, RunRecord
from mammobench.runtime import MammobenchError, atomic_path, utc_now
from mammobench.training.callbacks import History
from mammobench.training.checks import pretrained_warnings, split_warnings
from mammobench.training.parts import (
    RunResult,
    Training,
    build_model,
    build_training,
    load_split,
    resolve_lesion_context,
    write_model,
    write_reproducibility,
)
from mammobench.training.replacing import check_run_dir, replacing, set_aside, settle_replaced

logger = logging.getLogger(__name__)

EMBEDDINGS_FORMAT = 1
#: The regularisation strengths the inner cross-validation chooses from (inverse L2 penalty on standardised features).
C_GRID = tuple(float(c) for c in np.logspace(-4, 2, 13))


class ProbeError(MammobenchError):
    """A linear probe that cannot be fitted: too few samples of a class for its inner cross-validation."""


def encoder_fingerprint(model: nn.Module, *, mean: float, std: float) -> str:
    """A hash of what makes an image's features: the encoder's weights (not its head), its padding, its pooling
    (max and average pooling have no weights, yet give other features), the normalisation. Two runs with the same
    fingerprint compute the same features from the same cached image."""
    head = set(_head_names(model))
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name in head or not tensor.is_floating_point():
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    pads = [str(getattr(m, "static_pad", "")) for m in model.modules() if hasattr(m, "static_pad")]
    pools = [repr(m) for m in model.modules() if "pool" in type(m).__name__.lower()]
    digest.update(repr((type(model).__name__, pads, pools, round(mean, 8), round(std, 8), EMBEDDINGS_FORMAT)).encode())
    return digest.hexdigest()[:20]


def _head_names(model: nn.Module) -> list[str]:
    head = _classifier(model)
    ids = {id(p) for p in head.parameters()}
    return [n for n, p in model.named_parameters() if id(p) in ids]


def _classifier(model: nn.Module) -> nn.Linear:
    timm_model: Any = model
    head = timm_model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Linear):
        raise ProbeError(f"{type(model).__name__} has no linear classification head (get_classifier() is "
                         f"{type(head).__name__}): a linear probe needs one")
    return head


class EmbeddingCache:
    """Pooled features on disk: ``<cache root>/embeddings/<encoder fingerprint>/<image cache entry>.npy``.

    The image cache's entry names already key the file, ROI and preprocessing, so a feature file is reused
    exactly when the same encoder sees the same preprocessed image.
    """

    def __init__(self, root: str | Path, fingerprint: str):
        self.folder = Path(root) / "embeddings" / fingerprint

    def path(self, image_entry: Path) -> Path:
        return self.folder / image_entry.parent.parent.name / image_entry.name

    def features(self, model: nn.Module, dataset: MammoDataset, *, batch_size: int,
                 device: torch.device | None = None) -> tuple[np.ndarray, int]:
        """``(n, d)`` features of every sample of ``dataset`` (cached ones read, the rest computed on ``device``
        in float32 and written) and how many were computed now."""
        paths = [self.path(e) for e in dataset.entry_paths]
        todo = [i for i, p in enumerate(paths) if not p.is_file()]
        if todo:
            model.eval()
            loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, todo), batch_size=batch_size)
            with torch.inference_mode():
                for batch in loader:
                    timm_model: Any = model
                    images = batch["image"].to(device) if device is not None else batch["image"]
                    feats = timm_model.forward_head(timm_model.forward_features(images), pre_logits=True)
                    for index, row in zip(batch["index"].tolist(), feats.float().cpu().numpy(), strict=True):
                        paths[index].parent.mkdir(parents=True, exist_ok=True)
                        with atomic_path(paths[index]) as tmp:
                            np.save(tmp, row.astype(np.float32), allow_pickle=False)
        return np.stack([np.load(p, allow_pickle=False) for p in paths]), len(todo)


#: A feature whose spread over the training images is below this share of its magnitude holds only float32
#: rounding noise (standardising it would multiply that noise by more than 10^4): it is left out of the probe.
MIN_RELATIVE_SPREAD = 1e-4


@dataclass
class ProbeFit:
    """A fitted probe: the pipeline (scaler + logistic regression) on the ``used`` features, the chosen ``C``,
    the inner CV, the classes the training split held (indices into the labels)."""

    pipeline: Any
    used: np.ndarray  # boolean mask over the encoder's features
    c: float
    inner_folds: int
    inner_log_loss: float
    classes: list[int]

    def predict_proba(self, features: np.ndarray, num_classes: int) -> np.ndarray:
        """``(n, num_classes)`` probabilities (0 for a class the training split lacked)."""
        probs = np.zeros((len(features), num_classes))
        probs[:, self.classes] = self.pipeline.predict_proba(features[:, self.used].astype(np.float64))
        return probs


def check_probe_data(targets: np.ndarray, groups: np.ndarray, labels: list[str], where: str) -> int:
    """The number of inner folds a training split allows; a :class:`ProbeError` naming the class that is short.

    Raises:
        ProbeError: one class only, or a class with fewer than two patients (two inner folds need two).
    """
    present = sorted(set(targets.tolist()))
    if len(present) < 2:
        only = labels[present[0]] if present else "nothing"
        raise ProbeError(f"{where}: the training split holds only {only}; a linear probe needs two classes")
    patients_per_class = {labels[c]: len(set(groups[targets == c])) for c in present}
    folds = min(5, *patients_per_class.values())
    if folds < 2:
        few = ", ".join(f"{k} ({v} patient{'s' if v != 1 else ''})" for k, v in patients_per_class.items() if v < 2)
        raise ProbeError(f"{where}: too few training patients of {few} for the probe's inner cross-validation "
                         "(at least 2 per class); merge classes or use a larger split")
    return folds


def fit_logistic(features: np.ndarray, targets: np.ndarray, groups: np.ndarray, labels: list[str], *,
                 seed: int, where: str) -> ProbeFit:
    """A standardised logistic regression, ``C`` chosen by patient-grouped, stratified inner cross-validation.

    Raises:
        ProbeError: a class with too few patients for two inner folds (named, with where it was).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = check_probe_data(targets, groups, labels, where)
    classes = list(range(len(labels)))
    spread, size = features.std(axis=0), np.abs(features).max(axis=0)
    used = spread > MIN_RELATIVE_SPREAD * np.maximum(size, 1e-30)
    if not used.any():
        raise ProbeError(f"{where}: none of the encoder's {features.shape[1]} features varies across the training "
                         "images (beyond float rounding): an untrained or broken encoder, or blank images?")

    x = features[:, used].astype(np.float64)  # float64: float32 probabilities miss sum-to-one by more than sklearn allows
    splits = list(StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, targets, groups))
    scores = np.mean([_c_path_scores(x[train], targets[train], x[test], targets[test], classes)
                      for train, test in splits], axis=0)
    if not np.isfinite(scores).any():
        raise ProbeError(f"{where}: the probe's inner cross-validation failed in every fold (a class missing from "
                         "an inner training fold?); use a larger split")
    best = int(np.nanargmax(scores))  # the first (smallest) C of equal scores, as GridSearchCV ranks them
    scaler = StandardScaler().fit(x)
    regression = LogisticRegression(C=C_GRID[best], class_weight="balanced", max_iter=5000, warm_start=True)
    _start_in_row_span(regression, scaler.transform(x), targets)  # the exact optimum: refit in 1-2 iterations
    pipeline = make_pipeline(scaler, regression).fit(x, targets)
    return ProbeFit(pipeline, used, float(C_GRID[best]), folds, float(-scores[best]),
                    [int(c) for c in regression.classes_])


def _row_span(standardised: np.ndarray) -> np.ndarray:
    """An orthonormal basis ``V`` (d x r, r <= n) of the span of the training rows. With an L2 penalty the
    regression's weights lie in that span, so fitting on ``X V`` (r columns instead of d) and mapping the weights
    back (``w = V w'``) is the same fit, exactly: the penalty ``|w|^2 = |w'|^2`` and every logit are unchanged."""
    gram = standardised @ standardised.T  # n x n: cheaper than the SVD of n x d when d >> n
    eigenvalues, vectors = np.linalg.eigh(gram)
    keep = eigenvalues > max(float(eigenvalues[-1]), 1e-300) * 1e-12
    return (standardised.T @ vectors[:, keep]) / np.sqrt(eigenvalues[keep])


def _start_in_row_span(regression: Any, a: np.ndarray, y: np.ndarray) -> None:
    """Fit ``regression`` on the row-span coordinates of ``a`` and leave its solution, mapped back to ``a``'s
    features, as the warm start of a fit on ``a`` itself."""
    v = _row_span(a)
    regression.fit(a @ v, y)
    regression.coef_ = regression.coef_ @ v.T


def _c_path_scores(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                   classes: list[int]) -> np.ndarray:
    """The held-out log loss (negated) of the standardised regression at every C of :data:`C_GRID`, fitted along
    the path from the strongest penalty with warm starts, in the training rows' span (:func:`_row_span`)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    a, b = scaler.transform(x_train), scaler.transform(x_test)
    v = _row_span(a)
    a, b = a @ v, b @ v
    regression = LogisticRegression(class_weight="balanced", max_iter=5000, warm_start=True)
    scores = np.full(len(C_GRID), np.nan)
    for i, c in enumerate(C_GRID):
        regression.set_params(C=c)
        try:
            regression.fit(a, y_train)
        except ValueError:  # one class only in this inner training fold
            return scores
        probs = np.zeros((len(b), len(classes)))
        probs[:, regression.classes_] = regression.predict_proba(b)  # a class the inner fold lacked: probability 0
        # scikit-learn's log_loss, without its input checks (65 calls): probabilities clipped at float eps
        scores[i] = float(np.log(np.clip(probs[np.arange(len(b)), y_test], np.finfo(float).eps, 1)).mean())
    return scores


def fold_into_head(model: nn.Module, probe: ProbeFit, num_classes: int) -> None:
    """Write the scaler and the regression into ``model``'s linear head, so that its softmax is the probe's
    probabilities. Two classes: logits ``(-z/2, z/2)``, whose softmax is the regression's sigmoid(z)."""
    scaler, regression = probe.pipeline[0], probe.pipeline[-1]
    scale = scaler.scale_.astype(np.float64)
    coef = regression.coef_.astype(np.float64) / scale
    intercept = regression.intercept_.astype(np.float64) - coef @ scaler.mean_.astype(np.float64)
    if coef.shape[0] == 1:  # binary: one row for the second class
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    weight = np.zeros((num_classes, len(probe.used)))  # features left out weigh nothing
    bias = np.full(num_classes, -1e4)  # a class the training split lacked can never be predicted
    weight[np.ix_(np.asarray(probe.classes), np.flatnonzero(probe.used))] = coef
    bias[probe.classes] = intercept
    head = _classifier(model)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight).to(head.weight))
        assert head.bias is not None
        head.bias.copy_(torch.from_numpy(bias).to(head.bias))


def check_folded(model: nn.Module, dataset: MammoDataset, features: np.ndarray, probe: ProbeFit) -> float:
    """The largest difference between the network's probabilities and scikit-learn's on up to 8 images
    (an internal check: a probe whose folded head disagrees with its regression is an error, never a result)."""
    n = min(8, len(dataset))
    images = torch.stack([torch.as_tensor(dataset[i]["image"]) for i in range(n)])
    model.eval()
    with torch.inference_mode():
        net = torch.softmax(model(images).double(), dim=1).numpy()
    return float(np.abs(net - probe.predict_proba(features[:n], net.shape[1])).max())


def eval_dataset(dm: Any, split: str) -> MammoDataset:
    """``split``'s samples without augmentation (the probe's features come from the images as they are)."""
    ds = dm.dataset(split)
    return MammoDataset(ds.metadata, dm.labels, dm.cache,
                        create_transform(train=False, augment=dm.augment, mean=dm.mean, std=dm.std))


@dataclass
class Embedded:
    """Step 2's result: the training split (without augmentation), its features, and what the cache did."""

    train: MammoDataset
    features: np.ndarray
    computed: int  # images encoded now (the rest were read from the cache)
    seconds: float
    folder: Path


def embed_splits(model: nn.Module, training: Training, config: Config) -> Embedded:
    """Every split's features through the cache (the validation and test splits' too, so a later ``evaluate`` of
    the same encoder finds them); the training split's are returned."""
    t0 = time.perf_counter()
    cache = EmbeddingCache(cache_folder(config.data.manifest, config.data.cache_dir),
                           encoder_fingerprint(model, mean=training.input_cfg.mean, std=training.input_cfg.std))
    gpu = torch.cuda.is_available() and config.trainer.accelerator in ("auto", "gpu", "cuda")
    device = torch.device("cuda") if gpu else torch.device("cpu")
    model.to(device)
    try:
        train = eval_dataset(training.dm, "train")
        features, computed = cache.features(model, train, batch_size=config.data.batch_size, device=device)
        for split in training.dm.datasets:
            if split != "train":
                computed += cache.features(model, eval_dataset(training.dm, split), batch_size=config.data.batch_size,
                                           device=device)[1]
    finally:
        model.to("cpu")
    return Embedded(train, features, computed, time.perf_counter() - t0, cache.folder)


def _where(config: Config) -> str:
    return f"{config.data.manifest}" + (f" (fold {config.data.fold})" if config.data.fold is not None else "")


def fit_into_head(model: nn.Module, embedded: Embedded, labels: list[str], config: Config) -> ProbeFit:
    """Steps 3 and 4: the regression on the training features, folded into ``model``'s head and checked."""
    groups = patient_key(embedded.train.metadata).to_numpy()
    probe = fit_logistic(embedded.features, embedded.train.targets, groups, labels, seed=config.seed,
                         where=_where(config))
    fold_into_head(model, probe, len(labels))
    gap = check_folded(model, embedded.train, embedded.features, probe)
    if gap > 1e-3:
        raise ProbeError(f"internal error: the network's head disagrees with the fitted probe by {gap:.2g}")
    return probe


def probe_record(probe: ProbeFit, embedded: Embedded) -> dict[str, Any]:
    """What ``run.json`` says about the fit (``probe``)."""
    return {"C": probe.c, "C_grid": [C_GRID[0], C_GRID[-1], len(C_GRID)], "inner_folds": probe.inner_folds,
            "inner_log_loss": probe.inner_log_loss, "class_weight": "balanced",
            "features": int(embedded.features.shape[1]), "features_used": int(probe.used.sum()),
            "train_samples": int(len(embedded.features)), "embedded_now": embedded.computed,
            "embed_seconds": embedded.seconds, "embeddings": str(embedded.folder),
            "not_used": "optim, stages, loss, data.sampler and data.augment (a probe trains nothing else)"}


def fit_probe(config: Config, *, overwrite: bool = False, show_progress: bool = False) -> RunResult:
    """Fit a linear probe as ``config`` says and write an ordinary run directory (see the module's steps).

    Returns:
        :class:`~mammobench.training.parts.RunResult` (no validation score: the probe chose ``C`` by its inner CV).

    Raises:
        ConfigError, MammobenchError: bad config or data (named); ProbeError: too few samples of a class.
    """
    run = RunDir(config.output.dir / config.run_name())
    check_run_dir(run, resume=False, overwrite=overwrite)  # 1. the run folder, split and model, as fit builds them
    torch.manual_seed(config.seed)
    data = load_split(config)
    requested = config  # config.yaml keeps what was asked
    config, context_notes = resolve_lesion_context(config, data)
    data.notes += context_notes
    model, load_report = build_model(config, data)
    training = build_training(config, data, model, show_progress=show_progress)
    train = training.dm.dataset("train")  # a split the probe cannot fit is refused before anything is written
    check_probe_data(train.targets, patient_key(train.metadata).to_numpy(), data.labels, _where(config))
    backup = set_aside(run.path) if overwrite and run.exists() else None
    with replacing(backup, run.path, History(run.history_path)):
        write_reproducibility(run, requested, data, training)
        counts = {s: training.dm.dataset(s).class_counts for s in training.dm.datasets}
        base = {"format": RUN_FORMAT, "mammobench_version": mammobench.__version__, "name": config.run_name(),
                "started": utc_now(), "mode": "linear_probe", "labels": data.labels, "weights": load_report.summary(),
                "pretrained": load_report.provenance(), "encoder": encoder_settings(config),
                "parameters": count_parameters(model), "input_size": training.input_cfg.size, "counts": counts}
        warned = (split_warnings(counts, kfold=config.data.fold is not None, val_use="decision threshold")
                  + data.notes + pretrained_warnings(config, parameters=count_parameters(model)))
        for w in warned:
            logger.warning("%s", w)
        run.write_info({**base, "status": "running"})
        t0 = time.perf_counter()
        try:
            embedded = embed_splits(model, training, config)  # 2. features, through the cache
            probe = fit_into_head(model, embedded, data.labels, config)  # 3. + 4. the regression, in the head
            write_model(run, config, data, training, model, load_report)
        except BaseException as exc:  # the folder says how it ended; --overwrite runs it again
            status = "interrupted" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "failed"
            run.write_info({**base, "status": status, "error": f"{type(exc).__name__}: {exc}",
                                              "stopped": utc_now()})
            raise
        seconds = time.perf_counter() - t0
        run.write_info({**base, "status": "finished", "finished": utc_now(), "train_seconds": seconds,
                                          "epochs_run": 0, "kept_epoch": None, "best_epoch": None, "best_score": None,
                                          "monitor": None, "probe": probe_record(probe, embedded), "warnings": warned})
        settle_replaced(backup, run.path, finished=True, started_training=True)
    logger.info("linear probe %s: C = %.3g chosen by %d-fold inner CV (log loss %.3f) on %d training samples; "
                "%d images embedded now (%.1f s), %.1f s in all", run.path, probe.c, probe.inner_folds,
                probe.inner_log_loss, len(embedded.features), embedded.computed, embedded.seconds, seconds)
    return RunResult(run.path, "finished", None, None, None, pd.DataFrame(), seconds)


def probe_summary(info: RunRecord) -> str:
    """One line about a probe run's fit, for the command line."""
    p = info.probe or {}
    return (f"linear probe, C = {p.get('C', float('nan')):.3g} by {p.get('inner_folds')}-fold inner CV on "
            f"{p.get('train_samples')} training samples ({p.get('features')} features; "
            f"{p.get('embedded_now')} images embedded now)")
