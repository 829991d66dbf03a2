"""load_voc: the SNUBH VOC layout of the reference code, on folders built here."""
from __future__ import annotations


import numpy as np
import pytest
import tifffile
from PIL import Image

from wsbus.data import DataError, load_voc, read_gray


def _xml(objects, size=(80, 60), patient=None, extra="<BIRADS><diag>3</diag></BIRADS><segmented>0</segmented>"):
    objs = "".join(
        f"<object><name>{name}</name><pose/><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for name, b in objects)
    size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>1</depth></size>" if size else ""
    pat = f"<patient>{patient}</patient>" if patient else ""
    return f"<annotation><folder>BUS</folder><filename>x.tif</filename>{size_xml}{extra}{pat}{objs}</annotation>"


@pytest.fixture
def voc_root(tmp_path, gray_image, write_image):
    root = tmp_path / "SNUBH_BUS"
    (root / "Annotations").mkdir(parents=True)
    images = {k: gray_image(60, 80, seed=i) for i, k in enumerate(["FILE001", "FILE002", "FILE003"])}
    # FILE001: PackBits TIFF, a benign mass plus an annotation aid that must be skipped
    (root / "TIFFImages").mkdir()
    Image.fromarray(images["FILE001"]).save(root / "TIFFImages" / "FILE001.tif", compression="packbits")
    (root / "Annotations" / "FILE001.xml").write_text(
        _xml([("benign", (11, 21, 40, 50)), ("__background__", (1, 1, 80, 60))], patient="PAT-7"))
    # FILE002: JPEG, a malignant mass
    write_image(root / "JPEGImages" / "FILE002.jpg", images["FILE002"], quality=95)
    (root / "Annotations" / "FILE002.xml").write_text(_xml([("Malignant ", (1, 1, 80, 60))]))
    # FILE003: PNG, no mass -> normal
    write_image(root / "PNGImages" / "FILE003.png", images["FILE003"])
    (root / "Annotations" / "FILE003.xml").write_text(_xml([]))
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "test.txt").write_text("FILE003\nFILE001\n")
    return root, images


def test_packbits_fixture_is_really_packbits(voc_root):
    root, _ = voc_root
    with tifffile.TiffFile(root / "TIFFImages" / "FILE001.tif") as tif:
        assert tif.pages[0].compression == 32773  # PACKBITS


def test_load_all(voc_root):
    root, images = voc_root
    samples = load_voc(root)
    assert [s.id for s in samples] == ["FILE001", "FILE002", "FILE003"]
    a, b, c = samples
    np.testing.assert_array_equal(a.image, images["FILE001"])  # lossless TIFF and PNG read back exactly
    np.testing.assert_array_equal(c.image, images["FILE003"])
    assert b.image.shape == (60, 80) and b.image.dtype == np.uint8
    assert np.abs(b.image.astype(int) - images["FILE002"]).mean() < 8  # JPEG, lossy
    # VOC (xmin, ymin, xmax, ymax) 1-based inclusive -> (xmin - 1, ymin - 1, xmax, ymax)
    np.testing.assert_array_equal(a.boxes, np.array([[10, 20, 40, 50]], np.float32))
    assert a.labels.tolist() == [1] and a.image_label == 1 and a.patient == "PAT-7"
    np.testing.assert_array_equal(b.boxes, np.array([[0, 0, 80, 60]], np.float32))  # the whole image is allowed
    assert b.image_label == 2 and b.patient is None
    assert c.boxes.shape == (0, 4) and c.labels.shape == (0,) and c.image_label == 0 and c.is_strong


def test_split_file(voc_root):
    root, _ = voc_root
    assert [s.id for s in load_voc(root, split="test")] == ["FILE003", "FILE001"]
    with pytest.raises(DataError, match="val.txt"):
        load_voc(root, split="val")


def test_mixed_labels(voc_root):
    root, _ = voc_root
    (root / "Annotations" / "FILE002.xml").write_text(_xml([("benign", (1, 1, 10, 10)), ("malignant", (20, 20, 30, 30))]))
    with pytest.raises(DataError, match=r"FILE002\.xml.*mixed"):
        load_voc(root)
    s = {x.id: x for x in load_voc(root, mixed="malignant")}["FILE002"]
    assert s.image_label == 2 and s.labels.tolist() == [1, 2]
    with pytest.raises(ValueError, match="mixed"):
        load_voc(root, mixed="benign")


@pytest.mark.parametrize("objects, pattern", [
    ([("cyst", (1, 1, 10, 10))], r"FILE002\.xml.*unknown class name 'cyst'"),
    ([("benign", (30, 5, 10, 20))], r"FILE002\.xml.*inverted"),
    ([("benign", (10, 5, 81, 20))], r"FILE002\.xml.*outside the 80x60 image"),
    ([("benign", (0, 5, 20, 20))], r"FILE002\.xml.*outside"),  # xmin 0 is before the first (1-based) pixel
])
def test_bad_objects(voc_root, objects, pattern):
    root, _ = voc_root
    (root / "Annotations" / "FILE002.xml").write_text(_xml(objects))
    with pytest.raises(DataError, match=pattern):
        load_voc(root)


def test_broken_xml_and_bad_size(voc_root):
    root, _ = voc_root
    (root / "Annotations" / "FILE002.xml").write_text("<annotation><object><name>benign</name>")
    with pytest.raises(DataError, match=r"FILE002\.xml: broken XML"):
        load_voc(root)
    (root / "Annotations" / "FILE002.xml").write_text(_xml([("benign", (1, 1, 5, 5))], size=(100, 60)))
    with pytest.raises(DataError, match=r"FILE002\.xml.*100x60.*80x60"):
        load_voc(root)
    (root / "Annotations" / "FILE002.xml").write_text(
        "<annotation><object><name>benign</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax></bndbox>"
        "</object></annotation>")
    with pytest.raises(DataError, match=r"FILE002\.xml.*ymax"):
        load_voc(root)


def test_missing_and_corrupt_images(voc_root):
    root, _ = voc_root
    (root / "TIFFImages" / "FILE001.tif").write_bytes(b"II*\x00garbage-not-a-tiff")
    with pytest.raises(DataError, match=r"FILE001\.tif: cannot read image"):
        load_voc(root)
    (root / "TIFFImages" / "FILE001.tif").unlink()
    with pytest.raises(DataError, match=r"no image found for id 'FILE001'"):
        load_voc(root)
    png = root / "PNGImages" / "FILE003.png"
    png.write_bytes(png.read_bytes()[:60])  # truncated PNG
    with pytest.raises(DataError, match=r"FILE003\.png"):
        read_gray(png)


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_voc(tmp_path / "nope")
    (tmp_path / "Annotations").mkdir()
    with pytest.raises(DataError, match="no annotations"):
        load_voc(tmp_path)
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Main" / "train.txt").write_text("A\n")
    with pytest.raises(DataError, match=r"A\.xml: annotation file not found"):
        load_voc(tmp_path, split="train")


def test_read_gray_converts_rgb_and_rejects_16bit(tmp_path, write_image):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 200
    p = write_image(tmp_path / "rgb.png", rgb)
    out = read_gray(p)
    assert out.shape == (4, 5) and int(out[0, 0]) == round(0.299 * 200)  # ITU-R 601 luminance
    tifffile.imwrite(tmp_path / "deep.tif", np.zeros((4, 5), np.uint16))
    with pytest.raises(DataError, match=r"deep\.tif: expected an 8-bit image"):
        read_gray(tmp_path / "deep.tif")
