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
