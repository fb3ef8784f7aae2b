"""The command line: every command parses and documents itself; bad input exits 2 with one clear line."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from mammobench.cli import app, expand_set_args
from mammobench.config import ConfigError, load_config

from .conftest import REPO

runner = CliRunner()

COMMANDS = ["prepare", "presets", "train", "pretrain", "evaluate", "compare", "crossval", "ablate", "explain", "demo", "export",
            "keygen", "predict", "serve", "weights", "trust"]


def test_the_command_list_is_every_command():
    import typer.main

    assert sorted(typer.main.get_command(app).commands) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command):
    """Each command's help says what it does and documents every option and argument it takes."""
    import click
    import typer.main

    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    cmd = typer.main.get_command(app).commands[command]
    assert f"Usage: mammobench {command}" in text
    assert " ".join((cmd.help or "").split("\n")[0].split()) in text, "the first line of its docstring"
    for param in cmd.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.help, f"{command}: {param.opts} has no help"
            assert max(param.opts, key=len) in text, f"{command}: {param.opts} undocumented"
            assert " ".join(str(param.help or "").split())[:40] in text, f"{command}: {param.opts} without its help"
        elif isinstance(param, click.Argument):
            assert param.name.upper() in text or param.human_readable_name.upper() in text, f"{command}: {param.name}"
    if isinstance(cmd, click.Group):
        assert all(sub in text for sub in cmd.commands)


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
        result = fit(load_config("demo_cnn", [f"data.manifest={tmp_path / 'no_val'}", f"output.dir={tmp_path}",
                                              f"data.cache_dir={demo_prepared.out / 'cache'}",
                                              "stages.finetune_epochs=1", "trainer.limit_train_batches=1",
                                              "output.tensorboard=false"]))
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "best None" not in text and "n/a" not in text and "no validation split, the last epoch (1) kept" in text
    assert "stage 2" not in text and "epoch 1: " in text, "a single-stage run has no stages to name"
    printed = capfd.readouterr()
    assert "litlogger" not in printed.out + printed.err + text
    from mammobench.cli import show

    show.trained(result)
    said = " ".join(capfd.readouterr().out.split())
    assert "finished after 1 epoch, " in said and "1 epochs" not in said


def test_library_loggers_that_bring_their_own_handler_print_once(capfd):
    import logging

    import huggingface_hub.utils.logging  # noqa: F401 - as timm imports it: it adds its own stderr handler

    from mammobench.cli.console import quiet_lightning, setup_logging

    setup_logging(False)
    quiet_lightning()
    capfd.readouterr()
    logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
    err = capfd.readouterr().err
    assert err.count("Retrying in 1s") == 1


def test_help_does_not_import_the_training_stack():
    code = ("import sys; from mammobench.cli import main\n"
            "for argv in (['--help'], ['train', '--help'], ['ablate', '--help'], ['presets']):\n"
            "    try: main(argv)\n"
            "    except SystemExit: pass\n"
            "print('HEAVY', sorted(m for m in ('lightning', 'torch', 'timm', 'optuna', 'gradio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert "HEAVY []" in out, out[-500:]


def test_one_set_takes_several_values_and_errors_name_the_override():
    assert expand_set_args(["train", "--set", "a=1", "b=2", "-s", "c=3", "--overwrite"]) == [
        "train", "--set", "a=1", "--set", "b=2", "-s", "c=3", "--overwrite"]
    assert expand_set_args(["compare", "resnet18", "--set", "a=1", "--out", "x"]) == [
        "compare", "resnet18", "--set", "a=1", "--out", "x"]
    with pytest.raises(ConfigError, match=r"--set optim\.lrr=1: optim\.lrr: unknown key") as err:
        load_config("resnet18", ["data.manifest=x", "optim.lrr=1"])
    assert "resnet18.yaml" not in str(err.value)
    code = ("from mammobench.cli import main\n"
            "main(['train', '--config', 'demo_cnn', '--set', 'output.tensorboard=false', 'optim.lrr=1'])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--set optim.lrr=1" in res.stderr and "Traceback" not in res.stderr


def test_version_presets_and_resume_of_a_non_run(tmp_path):
    import mammobench

    assert runner.invoke(app, ["--version"]).output.strip() == f"mammobench {mammobench.__version__}"
    res = runner.invoke(app, ["presets"])
    assert res.exit_code == 0
    for name in ("resnet18", "vit_base_patch16_384", "efficientnet_lite0_local", "demo_cnn"):
        assert re.search(rf"{name}\s+│\s+\S", res.output), name
    assert "trains on a laptop CPU in about a minute" in res.output  # wide: not cut at 80 columns
    (tmp_path / "notarun").mkdir()
    res = runner.invoke(app, ["train", "--resume", str(tmp_path / "notarun")])
    assert res.exit_code == 2 and "is not a mammobench run folder" in res.output


def _readme_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            for part in re.split(r"\s*(?:&&|;)\s*", line):
                if not re.match(r"(mammobench|srun|torchrun)\b", part):  # a python -c line, mkdir, ...
                    continue
                words = shlex.split(part)
                if words[:1] == ["srun"] or words[:1] == ["torchrun"]:
                    words = words[words.index("mammobench.cli") + 1:] if "mammobench.cli" in words else words[1:]
                    words = ["mammobench", *words] if words[:1] != ["mammobench"] else words
                if words[:1] == ["mammobench"]:
                    commands.append(words[1:])
    return commands


def test_every_readme_command_line_parses():
    import click
    import typer.main

    commands = _readme_commands()
    assert len(commands) >= 15
    group = typer.main.get_command(app)
    for words in commands:
        args = expand_set_args(words)
        ctx = group.make_context("mammobench", list(args), resilient_parsing=False)
        pending = [*getattr(ctx, "_protected_args", []), *ctx.args]  # the sub-command and its words
        if not pending:
            continue
        name, rest = pending[0], pending[1:]
        sub = group.get_command(ctx, name)
        assert sub is not None, f"README: unknown command {name!r} in: mammobench {' '.join(words)}"
        try:
            sub.make_context(name, list(rest), parent=ctx)
        except click.UsageError as exc:
            raise AssertionError(f"README line does not parse: mammobench {' '.join(words)}: {exc}") from None


def test_training_from_the_cli_is_free_of_lightning_chatter(demo_prepared, tmp_path):
    code = ("from mammobench.cli import main\n"
            f"main(['train', '--config', 'demo_cnn', '--set', 'data.manifest={demo_prepared.out}', 'output.dir={tmp_path}',"
            " 'stages.finetune_epochs=2', 'trainer.limit_train_batches=1', 'output.tensorboard=false'])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-2000:]
    assert "finished after 2 epochs" in " ".join(out.split())
    assert "GPU available" not in out and "Tip:" not in out and "stepping batches" not in out
    # written to a log (no terminal): one line per epoch, no redrawn progress bar
    epochs = [line for line in out.splitlines() if "Epoch " in line]
    assert [line.split("Epoch ")[1].split(":")[0] for line in epochs] == ["1/2", "2/2"], out[-2000:]
    assert "val/loss" in epochs[0] and not any("━" in line for line in epochs)


def test_what_users_make_is_ignored_by_git_and_the_code_is_not():
    """Patient-derived outputs at their default places never reach a commit by `git add -A`; code and docs do."""
    import shutil
    import subprocess

    from .conftest import REPO

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    made = ["prepared/cbis/manifest.csv", "bundles/r18/bundle.json", "bundle/model.onnx", "explanations/a.png",
            "comparison/report.html", "studies/s/cells.csv", "runs/x/run.json", "demo_output/report.md",
            "imported/gmic/metrics.json", "dicom_out/1.2.3/sr.dcm",
            "cams/case1/x.png", "predictions.csv", "breasts_images.csv", "keys/mammobench_ed25519.pem"]
    kept = ["src/mammobench/serving/bundle.py", "docs/studies/encoders.yaml", "keys/mammobench_ed25519.pub.pem",
            "README.md"]
    result = subprocess.run(["git", "check-ignore", "--no-index", *made, *kept], cwd=REPO, capture_output=True, text=True)
    assert sorted(result.stdout.split()) == sorted(made)


def test_text_from_files_and_paths_is_printed_as_data_never_as_markup_or_terminal_codes(tmp_path):
    """An error naming a path with '[/]' was a MarkupError traceback (exit 1); '[green]' coloured it; an ESC byte
    reached the terminal (a hyperlink, a title). Now each is printed as the text it is."""
    from typer.testing import CliRunner

    from mammobench.cli import app
    from mammobench.cli.console import plain

    odd = tmp_path / "run [" / "] [green]✓ signature verified[" / "] \x1b]8;;http:" / "x\x1b\\link"
    odd.mkdir(parents=True)
    result = CliRunner().invoke(app, ["evaluate", str(odd)], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "MarkupError" not in result.output
    assert "run [/] [green]✓ signature verified[/]" in result.output, "the markup is shown as text"
    assert "\x1b" not in result.output and "\\x1b]8;;http:/x" in result.output
    assert plain("a\x07b\x9bc\n") == "a\\x07b\\x9bc\n"


def test_ctrl_c_in_train_says_where_it_stopped_and_how_to_go_on(demo_prepared, tmp_path, monkeypatch):
    """Lightning turns Ctrl-C into a quiet exit(1); train now says which run stopped in which epoch and how to
    resume it, with a shell's exit status for an interruption (130), and the run folder says 'interrupted'."""
    import json

    from typer.testing import CliRunner

    from mammobench.cli import app
    from mammobench.training.module import LesionClassifier

    def interrupted(self, batch, batch_idx):
        raise KeyboardInterrupt

    monkeypatch.setattr(LesionClassifier, "training_step", interrupted)
    args = ["train", "-c", "demo_cnn"]
    for item in (f"data.manifest={demo_prepared.out}", f"output.dir={tmp_path}", "stages.head_epochs=0",
                 "stages.finetune_epochs=1", "output.tensorboard=false"):
        args += ["--set", item]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 130, result.output
    assert "interrupted:" in result.output and "stopped in epoch 1" in result.output
    assert "mammobench train --resume" in result.output
    run = next(tmp_path.iterdir())
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"


def test_predict_with_nothing_readable_fails_and_a_roi_outside_the_image_is_named(trained_runs, tmp_path):
    from typer.testing import CliRunner

    from mammobench.cli import app
    from mammobench.evaluation.inference import RoiError, checked_roi
    from mammobench.serving.bundle import export_bundle

    bundle = export_bundle(trained_runs["cnn"], tmp_path / "b")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"not an image")
    r = CliRunner().invoke(app, ["predict", str(bundle), str(tmp_path / "bad"), "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 2 and "none of the 1 image(s) could be predicted" in r.output
    assert (tmp_path / "p.csv").is_file(), "the reasons are still written"
    assert checked_roi((10, 10, 20, 20), (100, 50)) == ((10, 10, 20, 20), "")
    box, note = checked_roi((40, 90, 60, 120), (100, 50))
    assert box == (40, 90, 50, 100) and "clipped to 40 90 50 100" in note
    with pytest.raises(RoiError, match="expected x0 < x1"):
        checked_roi((30, 10, 20, 20), (100, 50))
    with pytest.raises(RoiError, match=r"lies outside the image \(50 x 100 pixels"):
        checked_roi((60, 10, 80, 20), (100, 50))
    from PIL import Image

    (tmp_path / "ok").mkdir()
    Image.new("L", (50, 100), 128).save(tmp_path / "ok" / "m.png")
    r = CliRunner().invoke(app, ["predict", str(bundle), str(tmp_path / "ok"), "--roi", "60", "10", "80", "20",
                                 "--out", str(tmp_path / "q.csv")], env={"COLUMNS": "300"})
    assert r.exit_code == 2 and "lies outside the image (50 x 100 pixels" in r.output and "Traceback" not in r.output


def test_serve_on_a_busy_port_and_crossval_into_a_foreign_folder_are_refused_before_any_work(tmp_path):
    """serve on a port another program holds was a Gradio traceback; crossval --ensemble into a folder that is not
    a bundle was refused only after every fold had trained."""
    import socket

    from typer.testing import CliRunner

    from mammobench.cli import app

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        r = CliRunner().invoke(app, ["serve", str(tmp_path / "no_bundle"), "--port", str(port)],
                               env={"COLUMNS": "300"})
    assert r.exit_code == 2 and f"port {port} on 127.0.0.1 is in use" in r.output and "Traceback" not in r.output
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("a user's file")
    r = CliRunner().invoke(app, ["crossval", "-c", "demo_cnn", "--set", f"data.manifest={tmp_path / 'none'}",
                                 "--ensemble", str(foreign)], env={"COLUMNS": "300"})
    assert r.exit_code == 2 and "is not a bundle folder" in r.output
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
