"""Start a run from another run's backbone: the patch-to-whole-image transfer of Shen et al. (2019).

A classifier trained on lesion crops has learnt what lesions look like at full resolution; the same
network, given whole mammograms and a new head, starts from those features instead of ImageNet's
(Shen et al., "Deep learning to improve breast cancer detection on screening mammography", Sci Rep 2019:
AUC 0.86 on whole CBIS-DDSM images from a patch classifier). ``model.init_from: RUN_DIR`` does this for
any timm architecture; ViT position embeddings are resampled to the new patch grid by timm's own
``checkpoint_filter_fn``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from mammobench.models.loading import LoadReport, ModelError, load_state
from mammobench.runs import RunDir, RunError

logger = logging.getLogger(__name__)


def init_from_run(model: nn.Module, run_dir: str | Path, architecture: str) -> LoadReport:
    """Load a finished run's weights into ``model`` (same architecture), every tensor but the head.

    Returns:
        What was taken (``loaded``), adapted (resampled position embeddings) and left new (the head).

    Raises:
        RunError: the folder is not a finished run, or its weights do not match their checksum.
        ModelError: the run is of another architecture, or its tensors do not fit this model.
    """
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise RunError(f"model.init_from={run.path} does not exist (expected a finished mammobench run folder)")
    run.require_finished()
    info = run.read_model_info()
    if info.architecture != architecture:
        raise ModelError(f"model.init_from={run.path} is a {info.architecture} run but this run builds {architecture}: "
                         "weights transfer within one architecture only (train the crops model with the same model.name)")
    path = run.weights_path
    state = run.read_weights(info)
    if info.views:  # a breast-level run: its backbone alone
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    target: nn.Module = getattr(model, "backbone", model)  # a breast-level model takes the backbone
    try:
        report = load_state(target, state, LoadReport("run", path=str(path)), new_head=True)
    except ModelError as exc:
        raise ModelError(f"model.init_from={run.path}: {exc}") from None
    # the weights' origin travels: an encoder's licence, its fixed padding and pooling bind the runs built on it
    report.encoder, report.static_padding, report.global_pool = info.encoder, info.static_padding, info.global_pool
    if target is not model:
        report.reinitialised = [n for n, _ in model.named_parameters() if not n.startswith("backbone.")]
    logger.info("initialised from run %s: %s", run.path, report.summary())
    return report
