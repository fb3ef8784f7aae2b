"""Files made the way an attacker makes them: a few hundred bytes that ask the checkpoint reader for work or memory
without end. Each is refused with its reason, before anything is built (the reader never got that far before:
these hung for minutes or allocated gigabytes)."""

from __future__ import annotations

import io
import pickle
import sys
import zipfile
from decimal import Decimal
from pathlib import Path

import pytest
import torch

from mammobench.models.checkpoints import CheckpointError, read_checkpoint
from mammobench.models.pickle_budget import Limits, PickleBudgetError, check_pickle


class _Call:
    """Pickles as ``fn(*args)`` (what an attacker's ``__reduce__`` writes)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def legacy_file(path: Path, payload: bytes) -> Path:
    """A non-zip checkpoint as torch's legacy ``_save`` lays it out: magic number, protocol, system info, object."""
    from torch.serialization import MAGIC_NUMBER, PROTOCOL_VERSION

    head = b"".join(pickle.dumps(x, protocol=2) for x in (
        MAGIC_NUMBER, PROTOCOL_VERSION, {"protocol_version": PROTOCOL_VERSION, "little_endian": True,
                                         "type_sizes": {"short": 2, "int": 4, "long": 4}}))
    path.write_bytes(head + payload + pickle.dumps([], protocol=2))
    return path


def zip_file(path: Path, payload: bytes) -> Path:
    """A zip checkpoint as torch.save writes one, its ``data.pkl`` replaced by ``payload``."""
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as src, zipfile.ZipFile(path, "w") as out:
        for info in src.infolist():
            data = payload if info.filename.endswith("data.pkl") else src.read(info)
            out.writestr(info, data)
    return path


def shared_nested_key(levels: int = 33) -> bytes:
    """``{((0, 0), (0, 0))...: 1}``: a key of ``levels`` tuples, each holding the one below twice (memoised)."""
    return b"\x80\x02}" + b"K\x00" + b"".join(b"q" + bytes([i]) + b"h" + bytes([i]) + b"\x86"
                                                for i in range(levels)) + b"K\x01s."


HOSTILE = {
    "a dict key of 33 levels of shared nested tuples": (shared_nested_key(), "parts"),
    "int(Decimal('1e10000000'))": (pickle.dumps(_Call(int, _Call(Decimal, "1e10000000")), protocol=2),
                                   "no weights file stores"),
    "bytes(3e9)": (pickle.dumps(_Call(bytes, 3_000_000_000), protocol=2), "more than the file's own size"),
    "list(range(1e10))": (pickle.dumps(_Call(list, range(10**10)), protocol=2), "more than the file's own size"),
    "torch.Tensor(3e9)": (pickle.dumps(_Call(torch.Tensor, 3_000_000_000), protocol=2),
                          "more than the file's own size"),
    "UntypedStorage(1.2e10)": (pickle.dumps(_Call(torch.UntypedStorage, 12_000_000_000), protocol=2),
                               "more than the file's own size"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
@pytest.mark.parametrize("layout", ["legacy", "zip"])
def test_a_crafted_checkpoint_is_refused_with_its_reason(case, layout, tmp_path):
    payload, reason = HOSTILE[case]
    path = (legacy_file if layout == "legacy" else zip_file)(tmp_path / "x.pth", payload)
    assert path.stat().st_size < 2000
    with pytest.raises(PickleBudgetError, match=reason) as err:
        read_checkpoint(path)
    assert str(path) in str(err.value) and "Refused before anything was built" in str(err.value)


def test_a_stride_0_tensor_declared_huge_is_refused(tmp_path):
    """One row of 64 floats declared as 4.7M rows (stride 0): a conversion's copy would allocate 1.2 GB."""
    path = tmp_path / "s.pth"
    torch.save({"w": torch.zeros(64).expand(4_700_000, 64)}, path)
    assert path.stat().st_size < 4000
    with pytest.raises(PickleBudgetError, match="stride 0"):
        read_checkpoint(path)


def test_overlapping_and_out_of_storage_tensors_are_refused(tmp_path):
    base = torch.arange(16.0)
    torch.save({"w": base.as_strided((8, 4), (1, 1))}, tmp_path / "o.pth")
    with pytest.raises(PickleBudgetError, match="overlaps itself"):
        read_checkpoint(tmp_path / "o.pth")
    # a storage that declares more bytes than its record holds
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, buffer)
    data = buffer.getvalue()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(tmp_path / "d.pth", "w") as out:
        for info in src.infolist():
            body = src.read(info)
            if info.filename.endswith("data.pkl"):  # numel 4 -> 2,130,706,432 (BININT)
                assert b"K\x04t" in body
                body = body.replace(b"K\x04t", b"J\x00\x00\x00\x7ft")
            out.writestr(info, body)
    with pytest.raises(PickleBudgetError, match="declares .* bytes but its record holds 16"):
        read_checkpoint(tmp_path / "d.pth")


def test_a_compressed_record_is_refused(tmp_path):
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(100_000)}, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as src, \
            zipfile.ZipFile(tmp_path / "c.pth", "w", compression=zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            out.writestr(info.filename, src.read(info))
    with pytest.raises(PickleBudgetError, match="is compressed"):
        read_checkpoint(tmp_path / "c.pth")


def test_deep_nesting_is_refused_and_real_checkpoints_are_far_inside_the_limits(tmp_path):
    deep: list = []
    for _ in range(100):
        deep = [deep]
    torch.save({"x": deep}, tmp_path / "deep.pth")
    with pytest.raises(PickleBudgetError, match="nests containers"):
        read_checkpoint(tmp_path / "deep.pth")
    # a state dict of 1,000 tensors with an optimiser-like dict beside it reads (and is well inside the limits)
    state = {f"layer{i}.weight": torch.randn(3, 3) for i in range(1000)}
    torch.save({"model": state, "args": {"lr": Decimal("0.001"), "size": (512, 512)}, "epoch": 3}, tmp_path / "ok.pth")
    assert len(read_checkpoint(tmp_path / "ok.pth").obj["model"]) == 1000
    with open(tmp_path / "ok.pth", "rb"), zipfile.ZipFile(tmp_path / "ok.pth") as z:
        pkl = next(n for n in z.namelist() if n.endswith("data.pkl"))
        check_pickle(z.read(pkl), "ok", file_size=(tmp_path / "ok.pth").stat().st_size,
                     limits=Limits(max_instructions=60_000, max_depth=8))


def test_the_budget_is_a_checkpoint_error_named_by_the_loaders(tmp_path):
    """Callers that catch CheckpointError (model.pretrained, weights convert) name the refusal, not a traceback."""
    assert issubclass(PickleBudgetError, CheckpointError)
    path = legacy_file(tmp_path / "x.pth", HOSTILE["bytes(3e9)"][0])
    from mammobench.models.loading import ModelError
    from mammobench.models.pretrained import convert_weights

    with pytest.raises((ModelError, CheckpointError), match="more than the file's own size"):
        convert_weights(path, tmp_path / "out.safetensors", arch="resnet18")
    assert not list(tmp_path.glob("out*"))
    assert sys.getrecursionlimit() >= 1000


BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))


def test_a_billion_laughs_yaml_is_refused_wherever_yaml_is_read(tmp_path):
    """400 bytes that expand to 9**9 values: a config, a study file and a label map each refuse it by name."""
    from mammobench.config import ConfigError, load_config
    from mammobench.data.labels import LabelError, parse_label_spec
    from mammobench.experiments.study import StudyError, load_study

    assert len(BILLION_LAUGHS) < 500
    for name, call, error in (("c.yaml", load_config, ConfigError), ("s.yaml", load_study, StudyError),
                              ("l.yaml", parse_label_spec, LabelError)):
        path = tmp_path / name
        path.write_text(BILLION_LAUGHS)
        with pytest.raises(error, match="billion laughs"):
            call(path if name != "l.yaml" else str(path))
    # anchors and aliases of ordinary size still read
    (tmp_path / "ok.yaml").write_text("base: &b {optim: {lr: 0.001}}\nother: *b\n")
    from mammobench.runtime import load_yaml_text

    assert load_yaml_text((tmp_path / "ok.yaml").read_text(), "ok")["other"] == {"optim": {"lr": 0.001}}


def test_json_nested_past_python_and_oversized_files_are_named(tmp_path):
    from mammobench.runs import RunError, read_json
    from mammobench.serving.bundle import BundleError, read_bundle_meta

    (tmp_path / "run.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(RunError, match="nested too deeply"):
        read_json(tmp_path / "run.json", "the run's record")
    bundle = tmp_path / "b"
    bundle.mkdir()
    with open(bundle / "bundle.json", "wb") as fh:
        fh.truncate((64 << 20) + 1)
    with pytest.raises(BundleError, match="bytes .at most"):
        read_bundle_meta(bundle)


def test_an_image_bomb_is_refused_from_its_header(tmp_path):
    """A PNG of 20,000 x 20,000 (a few hundred KB compressed, 400 MB decoded) and a DICOM that declares as much."""
    import numpy as np
    from PIL import Image

    from mammobench.data.dicom import ImageReadError
    from mammobench.data.images import read_image

    Image.new("L", (20_000, 20_000)).save(tmp_path / "bomb.png", optimize=True)
    assert (tmp_path / "bomb.png").stat().st_size < 1_000_000
    with pytest.raises(ImageReadError, match="more than 100,000,000 pixels|20000 x 20000 pixels, more than 100,000,000"):
        read_image(tmp_path / "bomb.png")
    import pydicom

    from .test_images import make_dicom

    path = tmp_path / "big.dcm"
    make_dicom(path, np.zeros((4, 4), np.uint16))
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = 60_000, 60_000
    ds.save_as(path)
    with pytest.raises(ImageReadError, match="60000 x 60000 pixels"):
        read_image(path)
