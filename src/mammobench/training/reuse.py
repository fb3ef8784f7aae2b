"""Train a config, or reuse (or resume) its run when one is already there: the one rule ``compare`` and
``ablate`` share for a run folder that exists."""

from __future__ import annotations

import logging
from pathlib import Path

from mammobench.config import Config, result_differences
from mammobench.runs import RunDir, RunError
from mammobench.training.fit import fit
from mammobench.training.fit import resume as resume_run

logger = logging.getLogger(__name__)


class ConfigChanged(RunError):
    """A finished run in the way, made with another config (or on other rows) than the one asked for: a user's
    work, never trained over without ``overwrite``."""

    def __init__(self, run_dir: Path, differences: list[str]):
        self.run_dir, self.differences = run_dir, differences
        super().__init__(
            f"{run_dir} is a finished run made with another config ({', '.join(differences[:5])} differ"
            f"{'' if len(differences) <= 5 else f', and {len(differences) - 5} more'}); it is kept. To train this "
            "config too, give it another folder (--set output.name=NAME or output.dir=DIR); to replace the run, "
            "pass --overwrite")


def split_difference(run: RunDir, config: Config) -> str | None:
    """Why the rows a finished run trained and tested on are not those ``config`` would use now (its manifest was
    prepared again, its folds changed), or None when they are the same."""
    from mammobench.training.parts import load_split

    try:
        now = load_split(config).frame
        then = run.read_split(columns=["sample_id", "label", "split"])
    except Exception as exc:  # noqa: BLE001 - a manifest that cannot be read now is a difference in itself
        return f"data.manifest (cannot be read as the run read it: {exc})"
    keys = ["sample_id", "label", "split"]
    a = then[keys].astype(str).sort_values(keys).reset_index(drop=True)
    b = now[keys].astype(str).sort_values(keys).reset_index(drop=True)
    if a.equals(b):
        return None
    return (f"data.manifest's rows ({len(then)} rows then, {len(now)} now, or their labels or splits changed: "
            "the manifest was prepared again)")


def train_or_reuse(config: Config, *, overwrite: bool = False, show_progress: bool = False) -> Path:
    """The run folder of ``config``, finished: reused when it finished with the same result-bearing config on the
    same rows, resumed when it stopped with it, trained afresh when there is none or an unfinished one with
    another config.

    Args:
        overwrite: a *finished* run made with another config (or on rows that changed) is trained again; without
            it, that run is refused with the keys that differ (:class:`ConfigChanged`), never lost.

    Raises:
        ConfigChanged: a finished, different run in the way and no ``overwrite``.
    """
    run = RunDir(config.output.dir / config.run_name())
    status = run.status()
    if status is None:
        return fit(config, show_progress=show_progress).run_dir
    differences = result_differences(run.read_config(), config) if run.config_path.is_file() else [run.config_path.name]
    if status == "finished" and not differences and (why := split_difference(run, config)):
        differences = [why]
    if status == "finished" and not differences:
        logger.info("reusing finished run %s", run.path)
        return run.path
    if status == "finished" and not overwrite:
        raise ConfigChanged(run.path, differences)
    if status != "finished" and not differences and run.last_checkpoint.is_file():
        logger.info("resuming unfinished run %s", run.path)
        return resume_run(run.path, show_progress=show_progress).run_dir
    logger.info("run %s exists with %s; training it again", run.path,
                f"another config ({', '.join(differences[:3])} differ)" if differences else f"status {status}")
    return fit(config, overwrite=True, show_progress=show_progress).run_dir
