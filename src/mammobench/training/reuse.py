"""Train a config, or reuse (or resume) its run when one is already there: the one rule ``compare`` and
``ablate`` share for a run folder that exists."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from mammobench.config import Config, config_differences
from mammobench.runs import RunDir, RunError
from mammobench.training.fit import fit
from mammobench.training.fit import resume as resume_run

logger = logging.getLogger(__name__)


class ConfigChanged(RunError):
    """A finished run made with another config than the one asked for (``on_change="refuse"``)."""

    def __init__(self, run_dir: Path, differences: list[str]):
        self.run_dir, self.differences = run_dir, differences
        super().__init__(f"{run_dir} was trained with another config ({', '.join(differences[:5])} differ)")


def train_or_reuse(config: Config, *, on_change: Literal["retrain", "refuse"] = "retrain",
                   show_progress: bool = False) -> Path:
    """The run folder of ``config``, finished: reused when it finished with this very config, resumed when it
    stopped with it, trained afresh when there is none or it stopped with another config.

    Args:
        on_change: a *finished* run made with another config is trained again (``retrain``: ``compare``, whose
            configs are the user's to change) or refused (``refuse``: an ``ablate`` cell, whose finished runs are
            the study's evidence).

    Raises:
        ConfigChanged: ``on_change="refuse"`` and the finished run's config differs (the keys are named).
    """
    run = RunDir(config.output.dir / config.run_name())
    status = run.status()
    if status is None:
        return fit(config, show_progress=show_progress).run_dir
    differences = config_differences(run.read_config(), config) if run.config_path.is_file() else ["config.yaml"]
    if status == "finished" and not differences:
        logger.info("reusing finished run %s", run.path)
        return run.path
    if status == "finished" and on_change == "refuse":
        raise ConfigChanged(run.path, differences)
    if status != "finished" and not differences and run.last_checkpoint.is_file():
        logger.info("resuming unfinished run %s", run.path)
        return resume_run(run.path, show_progress=show_progress).run_dir
    logger.info("run %s exists with %s; training it again", run.path,
                f"another config ({', '.join(differences[:3])} differ)" if differences else f"status {status}")
    return fit(config, overwrite=True, show_progress=show_progress).run_dir
