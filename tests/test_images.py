"""Reading scans (wsbus.data.images): PNG/JPEG/TIFF through read_gray, DICOM written here with pydicom (RGB, YBR,
MONOCHROME1/2, 12-bit windowed and rescaled, multi-frame, RLE-compressed), 16-bit PNG and TIFF read as DICOM is,
listing folders, bad files."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from wsbus.data import DataError, list_images, read_gray, read_image
from wsbus.data.images import dicom_frame_count, is_dicom


def write_dicom(path, array, photometric, bits=8, **elements):
    """A minimal ultrasound DICOM file (Part 10, explicit VR little endian) holding ``array``; the test is skipped
    without pydicom (the optional extra ``dicom``)."""
    pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (ExplicitVRLittleEndian, UltrasoundImageStorage, UltrasoundMultiFrameImageStorage,
                             generate_uid)

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    multi = array.ndim == 4 or (array.ndim == 3 and not photometric.startswith(("RGB", "YBR")))
    ds.SOPClassUID = UltrasoundMultiFrameImageStorage if multi else UltrasoundImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.set_pixel_data(array, photometric, bits)
    for k, v in elements.items():
        setattr(ds, k, v)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def luminance(rgb):
    return np.rint(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).clip(0, 255).astype(np.uint8)


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)


def test_monochrome2_8bit_is_read_as_stored(tmp_path, gray_image):
    img = gray_image(20, 30, 1)
    path = write_dicom(tmp_path / "a.dcm", img, "MONOCHROME2")
    assert is_dicom(path) and dicom_frame_count(path) == 1
    out = read_image(path)
    assert out.dtype == np.uint8 and np.array_equal(out, img)


def test_monochrome1_is_inverted(tmp_path, gray_image):
    img = gray_image(20, 30, 2)
    assert np.array_equal(read_image(write_dicom(tmp_path / "m1.dcm", img, "MONOCHROME1")), 255 - img)


def test_rgb_and_ybr_become_luminance(tmp_path, rgb):
    pytest.importorskip("pydicom")
    from pydicom.pixels import convert_color_space

    want = luminance(rgb)
    assert np.array_equal(read_image(write_dicom(tmp_path / "rgb.dcm", rgb, "RGB")), want)
    ybr = write_dicom(tmp_path / "ybr.dcm", convert_color_space(rgb, "RGB", "YBR_FULL"), "YBR_FULL")
    got = read_image(ybr)
    assert np.abs(got.astype(int) - want).max() <= 1          # YBR -> RGB rounding only
    assert np.abs(got.astype(int) - luminance(convert_color_space(rgb, "RGB", "YBR_FULL"))).max() > 10


def test_rle_compressed_rgb(tmp_path, rgb):
    pytest.importorskip("pydicom")
    from pydicom.uid import RLELossless

    path = write_dicom(tmp_path / "rgb.dcm", rgb, "RGB")
    ds = pytest.importorskip("pydicom").dcmread(path)
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm")
    assert np.array_equal(read_image(tmp_path / "rle.dcm"), luminance(rgb))


def test_12bit_with_and_without_a_window(tmp_path):
    values = np.linspace(0, 4095, 20 * 30).reshape(20, 30).astype(np.uint16)
    # no window: the frame's own min..max -> 0..255
    plain = read_image(write_dicom(tmp_path / "p.dcm", values, "MONOCHROME2", bits=12))
    assert plain.min() == 0 and plain.max() == 255
    assert np.array_equal(plain, np.rint(values / 4095 * 255).astype(np.uint8))
    # a window of 1024 around 2048: below -> 0, above -> 255, linear inside
    windowed = read_image(write_dicom(tmp_path / "w.dcm", values, "MONOCHROME2", bits=12, WindowCenter=2048,
                                      WindowWidth=1024))
    assert windowed[values < 1500].max() == 0 and windowed[values > 2600].min() == 255
    inside = (values > 1700) & (values < 2400)
    assert 0 < windowed[inside].min() < windowed[inside].max() < 255
    inverted = read_image(write_dicom(tmp_path / "i.dcm", values, "MONOCHROME1", bits=12))
    assert np.array_equal(inverted, 255 - plain)


def test_multi_frame_is_read_frame_by_frame(tmp_path, gray_image):
    frames = np.stack([gray_image(20, 30, k) for k in range(3)])
    path = write_dicom(tmp_path / "cine.dcm", frames, "MONOCHROME2")
    assert dicom_frame_count(path) == 3
    for k in range(3):
        assert np.array_equal(read_image(path, k), frames[k])
    with pytest.raises(DataError, match=r"cine\.dcm: a multi-frame DICOM file \(3 frames\)"):
        read_image(path)
    with pytest.raises(DataError, match=r"cine\.dcm: frame 3 out of range"):
        read_image(path, 3)
    listed = list_images(tmp_path)
    assert [(f.name, f.frame) for f in listed] == [("cine.dcm#0", 0), ("cine.dcm#1", 1), ("cine.dcm#2", 2)]


def test_dicom_without_pixel_data_and_non_dicom(tmp_path, gray_image):
    path = write_dicom(tmp_path / "a.dcm", gray_image(8, 8, 0), "MONOCHROME2")
    ds = pytest.importorskip("pydicom").dcmread(path)
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    with pytest.raises(DataError, match=r"nopix\.dcm: the DICOM file holds no pixel data"):
        read_image(tmp_path / "nopix.dcm")
    (tmp_path / "text.dcm").write_text("hello")
    with pytest.raises(DataError, match=r"text\.dcm: not a readable DICOM file"):
        read_image(tmp_path / "text.dcm")


def test_extensionless_dicom_is_found_by_its_preamble(tmp_path, gray_image):
    img = gray_image(10, 12, 3)
    write_dicom(tmp_path / "IM0001", img, "MONOCHROME2")
    (tmp_path / "README").write_text("not an image")
    (tmp_path / "notes.txt").write_text("not an image")
    assert [f.name for f in list_images(tmp_path)] == ["IM0001"]
    assert np.array_equal(read_image(tmp_path / "IM0001"), img)


def test_image_files_follow_read_gray(tmp_path, write_image, gray_image, rgb):
    write_image(tmp_path / "g.png", gray_image(20, 30, 0))
    write_image(tmp_path / "c.tif", rgb)
    write_image(tmp_path / "j.jpg", gray_image(20, 30, 1), quality=95)
    for name in ("g.png", "c.tif", "j.jpg"):
        assert np.array_equal(read_image(tmp_path / name), read_gray(tmp_path / name))
    with pytest.raises(DataError, match=r"g\.png: frame 0 asked for"):
        read_image(tmp_path / "g.png", 0)


def test_listing_names_and_errors(tmp_path, write_image, gray_image):
    write_image(tmp_path / "d1" / "a.png", gray_image(8, 8, 0))
    write_image(tmp_path / "d1" / "sub" / "b.png", gray_image(8, 8, 1))
    write_image(tmp_path / "d1" / ".hidden.png", gray_image(8, 8, 1))
    write_image(tmp_path / "d2" / "a.png", gray_image(8, 8, 2))
    assert [f.name for f in list_images(tmp_path / "d1")] == ["a.png"]
    assert [f.name for f in list_images(tmp_path / "d1", recursive=True)] == ["a.png", "sub/b.png"]
    both = list_images([tmp_path / "d1", tmp_path / "d2", tmp_path / "d1" / "a.png"])
    assert [f.name for f in both] == [str(tmp_path / "d1" / "a.png"), str(tmp_path / "d2" / "a.png")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no images found in the folder"):
        list_images(tmp_path / "empty")
    with pytest.raises(DataError, match=r"nothing\.png: no such file or folder"):
        list_images(tmp_path / "nothing.png")


def test_16bit_png_and_tiff_are_read_as_16bit_dicom(tmp_path):
    """The same 16-bit pixels give the same 8-bit image from a PNG, a TIFF and a MONOCHROME2 DICOM without a window:
    the image's own minimum..maximum onto 0..255."""
    tifffile = pytest.importorskip("tifffile")
    values = np.linspace(300, 50000, 24 * 36).reshape(24, 36).astype(np.uint16)
    values[3, 4] = 41234
    Image.fromarray(values).save(tmp_path / "d.png")
    tifffile.imwrite(tmp_path / "d.tif", values)
    assert Image.open(tmp_path / "d.png").mode.startswith("I;16")              # really a 16-bit PNG
    expected = np.rint((values.astype(np.float64) - 300) * (255.0 / (50000 - 300))).astype(np.uint8)
    for name in ("d.png", "d.tif"):
        got = read_image(tmp_path / name)
        assert got.dtype == np.uint8 and np.array_equal(got, expected), name
    assert [f.name for f in list_images(tmp_path)] == ["d.png", "d.tif"]
    pytest.importorskip("pydicom")
    assert np.array_equal(read_image(write_dicom(tmp_path / "d.dcm", values, "MONOCHROME2", bits=16)), expected)


def test_16bit_rgb_and_float_tiff(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    rgb16 = np.random.default_rng(1).integers(0, 65536, (10, 12, 3)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "c.tif", rgb16, photometric="rgb")
    scaled = np.rint(rgb16.astype(np.float64) * (255.0 / 65535)).clip(0, 255).astype(np.uint8)
    assert np.array_equal(read_image(tmp_path / "c.tif"), luminance(scaled))    # as a 16-bit RGB DICOM
    floats = np.linspace(-1.5, 2.5, 60, dtype=np.float32).reshape(6, 10)
    tifffile.imwrite(tmp_path / "f.tif", floats)
    got = read_image(tmp_path / "f.tif")
    assert got[0, 0] == 0 and got[-1, -1] == 255 and np.all(np.diff(got.ravel().astype(int)) >= 0)
    floats[2, 3] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", floats)
    with pytest.raises(DataError, match=r"nan\.tif: the image holds NaN or infinite values"):
        read_image(tmp_path / "nan.tif")
