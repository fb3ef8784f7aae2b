"""The command line: every command parses and documents itself; bad input exits 2 with one clear line."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mammobench.cli import app

COMMANDS = ["prepare", "train", "evaluate", "compare", "crossval", "explain", "demo", "export", "predict", "serve"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command):
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_bad_input_is_one_line_and_exit_code_2(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["prepare", "mias", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and r.output.startswith("error: no such folder") and "Traceback" not in r.output
    r = runner.invoke(app, ["train", "--config", "demo_cnn", "--set", "optim.lrr=1"])
    assert r.exit_code == 2 and "optim.lrr: unknown key" in r.output
    r = runner.invoke(app, ["evaluate", str(tmp_path / "no_run")])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_prepare_demo_prints_the_tables(tmp_path):
    r = CliRunner().invoke(app, ["prepare", "demo", "--out", str(tmp_path / "demo"), "--size", "32", "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert "SYNTHETIC DEMO DATA" in r.output and "Always-majority accuracy" in r.output
    assert (tmp_path / "demo" / "manifest.csv").is_file()


def test_evaluate_prints_clean_lines_and_labels_whose_warnings_they_are(trained_runs):
    import subprocess
    import sys

    code = f"from mammobench.cli import main\nmain(['evaluate', '{trained_runs['cnn']}', '--n-boot', '20'])"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-2000:]
    assert "UndefinedMetricWarning" not in out and "warnings.warn" not in out and "select_threshold(" not in out
    assert "threshold: fallback 0.5" in " ".join(out.split())  # said once, by the CLI, with its reason
    assert "warning (the training run" in out and "the test split of demo_cnn holds only" in " ".join(out.split())


def test_a_fit_through_the_python_api_says_what_happened_in_plain_words(demo_prepared, tmp_path, caplog, capfd):
    from mammobench.config import load_config
    from mammobench.data.manifest import read_manifest, read_manifest_info, write_manifest
    from mammobench.training.fit import fit

    frame = read_manifest(demo_prepared.out)
    write_manifest(frame[frame["split"] != "val"], tmp_path / "no_val", read_manifest_info(demo_prepared.out))
    capfd.readouterr()
    with caplog.at_level("INFO"):
        fit(load_config("demo_cnn", [f"data.manifest={tmp_path / 'no_val'}", f"output.dir={tmp_path}",
                                     f"data.cache_dir={demo_prepared.out / 'cache'}", "stages.finetune_epochs=1",
                                     "trainer.limit_train_batches=1", "output.tensorboard=false"]))
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "best None" not in text and "n/a" not in text and "no validation split, the last epoch (1) kept" in text
    assert "stage 2" not in text and "epoch 1: " in text, "a single-stage run has no stages to name"
    printed = capfd.readouterr()
    assert "litlogger" not in printed.out + printed.err + text


def test_library_loggers_that_bring_their_own_handler_print_once(capfd):
    import logging

    import huggingface_hub.utils.logging  # noqa: F401 - as timm imports it: it adds its own stderr handler

    from mammobench import cli

    cli._setup_logging(False)
    cli._quiet_lightning()
    capfd.readouterr()
    logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
    err = capfd.readouterr().err
    assert err.count("Retrying in 1s") == 1
