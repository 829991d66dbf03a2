"""load_busbra on a BUS-BRA-shaped folder built here."""
from __future__ import annotations

import numpy as np
import pytest

from wsbus.data import DataError, load_busbra

HEADER = "ID,Case,Histology,Pathology,BIRADS,Device,Width,Height,Side,BBOX\n"


def _mask(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 255
    return m


@pytest.fixture
def busbra_root(tmp_path, gray_image, write_image):
    base = tmp_path / "BUSBRA"
    rows = [("bus_0001-l", 1, "Fibroadenoma", "benign", 3), ("bus_0001-r", 1, "Fibroadenoma", "benign", 3),
            ("bus_0002-s", 2, "Invasive ductal carcinoma", "malignant", 5)]
    images = {}
    for k, (image_id, *_rest) in enumerate(rows):
        images[image_id] = gray_image(40, 64, seed=k)
        write_image(base / "Images" / f"{image_id}.png", images[image_id])
        write_image(base / "Masks" / f"mask_{image_id[4:]}.png", _mask(40, 64, 5 + k, 20 + k, 10, 30 + k))
    lines = [f"{i},{case},{hist},{path},{birads},GE,64,40,left,\"[1, 2, 3, 4]\"\n" for i, case, hist, path, birads in rows]
    (base / "bus_data.csv").write_text(HEADER + "".join(lines))
    return tmp_path, base, images


def test_load_busbra(busbra_root):
    parent, base, images = busbra_root
    samples = load_busbra(parent)  # parent of BUSBRA/ works, and so does BUSBRA/ itself
    assert [s.id for s in load_busbra(base)] == [s.id for s in samples] == ["bus_0001-l", "bus_0001-r", "bus_0002-s"]
    a, b, c = samples
    assert a.patient == b.patient == "busbra:1" and c.patient == "busbra:2"
    assert (a.image_label, b.image_label, c.image_label) == (1, 1, 2)
    assert a.boxes.tolist() == [[10, 5, 30, 20]] and c.boxes.tolist() == [[10, 7, 32, 22]]
    assert c.labels.tolist() == [2]
    np.testing.assert_array_equal(b.image, images["bus_0001-r"])


@pytest.mark.parametrize("breakage, pattern", [
    ("no_image", r"bus_data\.csv, line 3: no image .*bus_0001-r\.png"),
    ("no_mask", r"bus_data\.csv, line 4: no mask .*mask_0002-s\.png"),
    ("mask_size", r"mask_0001-l\.png: mask size 10x10 differs from the image size 64x40"),
    ("empty_mask", r"mask_0001-l\.png: empty mask"),
    ("pathology", r"line 2: unknown Pathology 'probably benign'"),
    ("columns", r"missing column\(s\) \['Pathology'\]"),
    ("no_rows", r"bus_data\.csv: no rows"),
    ("duplicate", r"line 3: ID 'bus_0001-l' appears twice"),
    ("extra_image", r"1 image\(s\) not described in bus_data\.csv, e\.g\. \['bus_0099-l\.png'\]"),
    ("corrupt", r"bus_0002-s\.png: cannot read image"),
])
def test_bad_input(busbra_root, write_image, breakage, pattern):
    _, base, _ = busbra_root
    csv_path = base / "bus_data.csv"
    text = csv_path.read_text()
    if breakage == "no_image":
        (base / "Images" / "bus_0001-r.png").unlink()
    elif breakage == "no_mask":
        (base / "Masks" / "mask_0002-s.png").unlink()
    elif breakage == "mask_size":
        write_image(base / "Masks" / "mask_0001-l.png", np.zeros((10, 10), np.uint8))
    elif breakage == "empty_mask":
        write_image(base / "Masks" / "mask_0001-l.png", np.zeros((40, 64), np.uint8))
    elif breakage == "pathology":
        csv_path.write_text(text.replace("Fibroadenoma,benign", "Fibroadenoma,probably benign", 1))
    elif breakage == "columns":
        csv_path.write_text(text.replace("Pathology", "Diagnosis", 1))
    elif breakage == "no_rows":
        csv_path.write_text(HEADER)
    elif breakage == "duplicate":
        csv_path.write_text(text.replace("bus_0001-r", "bus_0001-l", 1))
    elif breakage == "extra_image":
        write_image(base / "Images" / "bus_0099-l.png", np.zeros((40, 64), np.uint8))
    elif breakage == "corrupt":
        (base / "Images" / "bus_0002-s.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=pattern):
        load_busbra(base)


def test_not_a_busbra_folder(tmp_path):
    with pytest.raises(DataError, match="bus_data.csv not found"):
        load_busbra(tmp_path)


def test_bilevel_masks_and_writable_images(busbra_root, write_image):
    """BUS-BRA's masks are 1-bit PNGs (Pillow mode "1"): same boxes as 0/255 ones, including a speck under
    min_area and a second lesion; the images come back writable, C-contiguous uint8 (torch.from_numpy is silent)."""
    import warnings

    import torch
    from PIL import Image

    _, base, _ = busbra_root
    m = _mask(40, 64, 5, 20, 10, 30) > 0
    m[30:36, 40:50] = True   # a second lesion
    m[0, 63] = True          # a speck (1 pixel < min_area 10)
    m[20, 30] = True         # touches the first lesion's corner diagonally: part of it (8-connectivity)
    write_image(base / "Masks" / "mask_0001-l.png", m)
    with Image.open(base / "Masks" / "mask_0001-l.png") as im:
        assert im.mode == "1"
    a = load_busbra(base)[0]
    assert a.boxes.tolist() == [[10, 5, 31, 21], [40, 30, 50, 36]] and a.labels.tolist() == [1, 1]
    assert load_busbra(base, min_area=1)[0].boxes.tolist() == [[63, 0, 64, 1], [10, 5, 31, 21], [40, 30, 50, 36]]
    for s in load_busbra(base):
        assert s.image.dtype == np.uint8 and s.image.flags.c_contiguous and s.image.flags.writeable, s.id
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            torch.from_numpy(s.image)


def test_semicolon_csv_is_read_and_bad_rows_are_named(busbra_root):
    """A bus_data.csv saved by a spreadsheet with ';' separators (a comma inside a value, as in 'Fibroadenoma,
    complex', used to give "AttributeError: 'list' object has no attribute 'strip'")."""
    parent, base, _ = busbra_root
    csv_path = base / "bus_data.csv"
    want = [(s.id, s.patient, s.image_label, s.boxes.tolist()) for s in load_busbra(parent)]
    rows = [line.split(",", 9) for line in csv_path.read_text().splitlines()]
    rows[1][2] = "Fibroadenoma, complex"
    csv_path.write_text("".join(";".join(r) + "\n" for r in rows))
    assert [(s.id, s.patient, s.image_label, s.boxes.tolist()) for s in load_busbra(parent)] == want
    # the same row with commas: more values than the header, named by line
    lines = csv_path.read_text().splitlines()
    csv_path.write_text(HEADER + "".join(line.replace(";", ",") + "\n" for line in lines[1:]))
    with pytest.raises(DataError, match=r"bus_data\.csv, line 2: 11 fields, but the header has 10 \(separator ','\); "
                                        r"a value holding the separator must be quoted"):
        load_busbra(parent)


def test_cli_reads_a_semicolon_csv_and_names_a_broken_one(busbra_root, tmp_path):
    import subprocess
    import sys

    parent, base, _ = busbra_root
    csv_path = base / "bus_data.csv"
    csv_path.write_text(csv_path.read_text().replace(",", ";").replace('"[1; 2; 3; 4]"', "[1 2 3 4]"))

    def convert(out):
        return subprocess.run([sys.executable, "-m", "wsbus", "convert", "--data", f"busbra:{base}", "--to", "coco",
                               str(out)], capture_output=True, text=True, timeout=300)

    ok = convert(tmp_path / "coco")
    assert ok.returncode == 0 and "wrote 3 image(s) with 3 box(es)" in ok.stdout, ok.stderr
    csv_path.write_text(csv_path.read_text().replace("Pathology", "Diagnosis"))
    bad = convert(tmp_path / "coco2")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    found = "ID;Case;Histology;Diagnosis;BIRADS;Device;Width;Height;Side;BBOX".split(";")
    assert bad.stderr.strip() == (f"wsbus: error: {csv_path}: missing column(s) ['Pathology']; found {found} (looked "
                                  f"for them separated by ',', ';', '\\t', '|')")
