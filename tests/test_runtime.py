"""Run-time plumbing: atomic writes with the permissions a user's umask asks for."""

from __future__ import annotations

import os

import pytest

from mammobench.runtime import atomic_write_text


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    from mammobench.runtime import atomic_path

    old = os.umask(umask)
    try:
        a = atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"y")
    finally:
        os.umask(old)
    assert a.stat().st_mode & 0o777 == mode
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == mode


def test_formatting_of_estimates_and_p_values():
    from mammobench.formatting import format_estimate, format_metric, format_p

    assert format_estimate(0.8123, [0.78, 0.84]) == "0.812 [0.780, 0.840]"
    assert format_estimate(0.969, [0.922, 1.0], digits=1, scale=100, unit=" %") == "96.9 % [92.2, 100.0]"
    assert format_estimate(-0.02, [-0.1, 0.06], signed=True) == "-0.020 [-0.100, +0.060]"
    assert format_estimate(0.5, [float("nan"), float("nan")]) == "0.500", "no interval: the value alone"
    assert format_estimate(float("nan")) == format_estimate(None) == format_metric(None) == "n/a"
    assert format_metric({"value": 0.7, "ci": [0.6, 0.8]}) == "0.700 [0.600, 0.800]"
    assert [format_p(p) for p in (0.0004, 0.0421, float("nan"), None)] == ["< 0.001", "0.042", "n/a", "n/a"]


def test_figures_are_written_atomically_and_closed(tmp_path):
    from mammobench.figures import pyplot, save_png

    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = save_png(fig, tmp_path / "sub" / "f.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not plt.fignum_exists(fig.number)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["f.png"], "no temporary file left"


def test_atomic_csv_writes_a_frame(tmp_path):
    import pandas as pd

    from mammobench.runtime import atomic_write_csv

    atomic_write_csv(tmp_path / "t.csv", pd.DataFrame({"a": [1, 2], "b": ["x", "é"]}))
    assert (tmp_path / "t.csv").read_text(encoding="utf-8") == "a,b\n1,x\n2,é\n"


def test_the_same_weights_are_saved_as_the_same_bytes(tmp_path):
    """safetensors writes its metadata in a hash map's order, new each call: the same weights got a new SHA-256 each
    time they were saved (identical runs, a checkpoint converted twice, a bundle exported again)."""
    import torch
    from safetensors import safe_open

    from mammobench.runtime import save_safetensors, sha256_file

    tensors = {"b.weight": torch.arange(6.0).reshape(2, 3), "a.bias": torch.ones(2)}
    metadata = {f"key{i}": f"value {i}" for i in range(8)}  # 8! orders: a repeat by chance is out of the question
    digests = {sha256_file(save_safetensors(tensors, tmp_path / f"{i}.safetensors", metadata)) for i in range(4)}
    assert len(digests) == 1
    with safe_open(str(tmp_path / "0.safetensors"), "pt") as f:
        assert f.metadata() == metadata and torch.equal(f.get_tensor("b.weight"), tensors["b.weight"])
