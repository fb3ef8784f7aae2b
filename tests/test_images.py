"""The one image reader: every format to float32 [0, 1]; bad files fail naming the file."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mammobench.data.dicom import ImageReadError, index_dicom_tree, read_dicom_header
from mammobench.data.images import image_size, read_image

from .conftest import CBIS_DICOM, requires_shared, write_png


def make_dicom(path, pixels: np.ndarray, photometric="MONOCHROME2", window=None, with_pixels=True):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.PatientID, ds.SeriesInstanceUID, ds.SOPInstanceUID = "P_TEST", generate_uid(), meta.MediaStorageSOPInstanceUID
    ds.SeriesDescription = "full mammogram images"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if with_pixels:
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def test_png_8_and_16_bit(tmp_path):
    a8 = np.array([[0, 255], [128, 64]], dtype=np.uint8)
    a16 = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    r8 = read_image(write_png(tmp_path / "a.png", a8))
    r16 = read_image(write_png(tmp_path / "b.png", a16))
    assert r8.dtype == np.float32 and r16.dtype == np.float32
    np.testing.assert_allclose(r8, a8 / 255.0, atol=1e-6)
    np.testing.assert_allclose(r16, a16 / 65535.0, atol=1e-6)


@pytest.mark.parametrize("suffix", [".jpg", ".pgm", ".tif"])
def test_other_formats(tmp_path, suffix):
    a = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (16, 1))
    Image.fromarray(a).save(tmp_path / f"x{suffix}")
    out = read_image(tmp_path / f"x{suffix}")
    assert out.shape == a.shape and out.min() >= 0.0 and out.max() <= 1.0
    assert abs(float(out.mean()) - a.mean() / 255) < 0.02


def test_rgb_becomes_gray(tmp_path):
    Image.fromarray(np.full((4, 4, 3), 200, np.uint8)).save(tmp_path / "c.png")
    out = read_image(tmp_path / "c.png")
    assert out.shape == (4, 4) and np.allclose(out, 200 / 255, atol=0.01)


def test_truncated_png_names_the_file(tmp_path):
    p = write_png(tmp_path / "t.png", (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(ImageReadError, match="t.png") as info:
        read_image(p)
    assert "truncated" in info.value.reason or "corrupt" in info.value.reason


@pytest.mark.parametrize(("content", "reason"), [(b"", "empty"), (b"hello world, not an image", "not a recognised")])
def test_empty_and_non_images(tmp_path, content, reason):
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    with pytest.raises(ImageReadError, match=reason):
        read_image(p)


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "nope.dcm")


def test_dicom_monochrome1_is_inverted_and_window_applied(tmp_path):
    px = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    mono2 = read_image(make_dicom(tmp_path / "m2.dcm", px))
    mono1 = read_image(make_dicom(tmp_path / "m1.dcm", px, photometric="MONOCHROME1"))
    assert mono2[1, 1] > mono2[0, 0]
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    windowed = read_image(make_dicom(tmp_path / "w.dcm", px, window=(1000, 1000)))
    assert windowed[0, 0] == 0.0 and windowed[1, 1] == 1.0  # outside the window: clipped


def test_dicom_without_pixels(tmp_path):
    p = make_dicom(tmp_path / "nopix.dcm", np.zeros((4, 4), np.uint16), with_pixels=False)
    with pytest.raises(ImageReadError, match="no pixel data"):
        read_image(p)


def test_not_dicom_with_dcm_suffix(tmp_path):
    p = tmp_path / "fake.dcm"
    p.write_bytes(b"x" * 300)
    with pytest.raises(ImageReadError, match="fake.dcm"):
        read_image(p)


@requires_shared
def test_real_cbis_dicom_decodes_as_16_bit():
    path = CBIS_DICOM / "Mass-Test_P_00173_LEFT_CC.dcm"
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID.name == "RLE Lossless"
    raw = ds.pixel_array
    assert raw.dtype == np.uint16 and raw.max() > 255  # really 16-bit, not 8-bit in disguise
    img = read_image(path)
    assert img.shape == (4432, 2864) and img.dtype == np.float32
    assert img.min() >= 0.0 and img.max() <= 1.0
    np.testing.assert_allclose(img, raw / 65535.0, atol=1e-6)
    assert image_size(path) == (4432, 2864)


@requires_shared
def test_header_index_reads_no_pixels(tmp_path):
    header = read_dicom_header(CBIS_DICOM / "Mass-Test_P_00820_LEFT_MLO.dcm")
    assert header.patient_id == "Mass-Test_P_00820_LEFT_MLO"
    assert header.series_description == "full mammogram images"
    (tmp_path / "junk.dcm").write_bytes(b"junk")
    make_dicom(tmp_path / "ok.dcm", np.zeros((2, 2), np.uint16))
    index, problems = index_dicom_tree(tmp_path)
    assert len(index) == 1 and index.iloc[0]["rows"] == 2
    assert len(problems) == 1 and "junk.dcm" in problems[0][0]


def _windowed(tmp_path, name, **tags):
    pixels = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (8, 1))
    path = make_dicom(tmp_path / name, pixels)
    ds = pydicom.dcmread(path)
    ds.BitsStored, ds.HighBit = 12, 11
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path)
    return read_image(path)[0]


def test_dicom_voi_functions_and_multi_valued_windows(tmp_path):
    linear = _windowed(tmp_path, "linear.dcm", WindowCenter=2048, WindowWidth=1024)
    sigmoid = _windowed(tmp_path, "sigmoid.dcm", WindowCenter=2048, WindowWidth=1024, VOILUTFunction="SIGMOID")
    exact = _windowed(tmp_path, "exact.dcm", WindowCenter=2048, WindowWidth=1024, VOILUTFunction="LINEAR_EXACT")
    multi = _windowed(tmp_path, "multi.dcm", WindowCenter=[2048, 1000], WindowWidth=[1024, 200])
    # LINEAR clips outside the window; SIGMOID never reaches 0 or 1 inside the range and is smooth.
    assert linear[0] == 0 and linear[-1] == 1 and (linear == 0).sum() > 10
    assert 0 < sigmoid[5] < 0.1 and sigmoid[-5] > 0.9 and (sigmoid == 0).sum() <= 1
    assert np.allclose(exact, linear, atol=0.02)
    assert np.allclose(multi, linear, atol=1e-6), "of several windows the first (the vendor's default) is used"


def test_for_processing_images_are_refused_with_a_clear_note(tmp_path):
    from mammobench.data.dicom import ImageReadError

    path = make_dicom(tmp_path / "raw.dcm", np.zeros((8, 8), np.uint16))
    ds = pydicom.dcmread(path)
    ds.PresentationIntentType = "FOR PROCESSING"
    ds.save_as(path)
    with pytest.raises(ImageReadError, match="FOR PROCESSING image \\(raw detector data"):
        read_image(path)


def test_implicit_little_endian_dicom(tmp_path):
    from pydicom.uid import ImplicitVRLittleEndian

    pixels = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (4, 1))
    explicit = make_dicom(tmp_path / "explicit.dcm", pixels)
    ds = pydicom.dcmread(explicit)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(tmp_path / "implicit.dcm", implicit_vr=True, little_endian=True)
    assert pydicom.dcmread(tmp_path / "implicit.dcm").file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert np.allclose(read_image(explicit), read_image(tmp_path / "implicit.dcm"))
