"""Images + masks + a label table (wsbus.data.masks): binary and colour-coded masks, patterns, the `masks:` spec."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from wsbus.data import DataError, load_masks
from wsbus.data.sources import load_source


def blob_mask(h, w, *rects, value=255):
    m = np.zeros((h, w), np.uint8)
    for y1, x1, y2, x2 in rects:
        m[y1:y2, x1:x2] = value
    return m


@pytest.fixture
def layout(tmp_path, write_image, gray_image):
    """ROOT/images/{a,b,c}.png, ROOT/masks/<stem>_mask.png (c normal: no mask), ROOT/labels.csv."""
    root = tmp_path / "set"
    for k, stem in enumerate("abc"):
        write_image(root / "images" / f"{stem}.png", gray_image(40, 50, k))
    write_image(root / "masks" / "a_mask.png", blob_mask(40, 50, (5, 5, 15, 20), (25, 30, 35, 45)))
    write_image(root / "masks" / "b_mask.png", blob_mask(40, 50, (10, 10, 30, 40), value=1))
    (root / "labels.csv").write_text("ID;Pathology;Case\na;B;p1\nb.png;M;p1\nc;N;p2\n")
    return root


OPTIONS = dict(mask_pattern="{stem}_mask.png", id_column="id", label_column="pathology", patient_column="case",
               label_map={"B": "benign", "M": "malignant", "N": "normal"})


def test_binary_masks_with_a_table(layout, gray_image):
    samples = load_masks(layout / "images", layout / "masks", layout / "labels.csv", **OPTIONS)
    a, b, c = samples
    assert [s.id for s in samples] == ["a", "b", "c"]
    assert (a.image_label, b.image_label, c.image_label) == (1, 2, 0)
    assert (a.patient, b.patient, c.patient) == ("p1", "p1", "p2")
    assert a.boxes.tolist() == [[5, 5, 20, 15], [30, 25, 45, 35]] and a.labels.tolist() == [1, 1]
    assert b.boxes.tolist() == [[10, 10, 40, 30]] and b.labels.tolist() == [2]      # a 0/1 mask works too
    assert c.is_strong and len(c.boxes) == 0
    assert np.array_equal(a.image, gray_image(40, 50, 0))


def test_regex_pattern_and_several_masks_per_image(tmp_path, write_image, gray_image):
    d = tmp_path / "flat"                       # BUSI-like: masks beside their images, extra lesions in _mask_1
    write_image(d / "x (1).png", gray_image(30, 30, 1))
    write_image(d / "x (1)_mask.png", blob_mask(30, 30, (0, 0, 5, 5)))
    write_image(d / "x (1)_mask_1.png", blob_mask(30, 30, (20, 20, 30, 30)))
    (d / "t.csv").write_text("file,cls\nx (1).png,malignant\n")
    pattern = re.compile(r"(?P<stem>.+)_mask(_\d+)?\.png")
    (s,) = load_masks(d, d, d / "t.csv", mask_pattern=pattern, id_column="file", label_column="cls")
    assert s.id == "x (1)" and s.boxes.tolist() == [[0, 0, 5, 5], [20, 20, 30, 30]] and s.labels.tolist() == [2, 2]
    (s2,) = load_masks(d, d, d / "t.csv", mask_pattern="re:" + pattern.pattern, id_column="file", label_column="cls")
    assert np.array_equal(s2.boxes, s.boxes)
    # a format pattern names one mask per image, so the extra mask is taken for an image (without a label)
    with pytest.raises(DataError, match=r"x \(1\)_mask_1\.png: the image has no row in .*t\.csv"):
        load_masks(d, d, d / "t.csv", mask_pattern="{stem}_mask.png", id_column="file", label_column="cls")


def test_colour_coded_masks_without_a_table(tmp_path, write_image, gray_image):
    root = tmp_path / "colour"
    write_image(root / "images" / "m.png", gray_image(32, 32, 1))
    write_image(root / "images" / "n.png", gray_image(32, 32, 2))
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[2:10, 2:12] = (0, 255, 0)               # benign
    rgb[20:30, 15:31] = (255, 0, 0)             # malignant
    write_image(root / "masks" / "m.png", rgb)
    write_image(root / "masks" / "n.png", np.zeros((32, 32, 3), np.uint8))
    colors = {"benign": (0, 255, 0), "malignant": [(255, 0, 0), (200, 0, 0)]}
    m, n = load_masks(root / "images", root / "masks", colors=colors)
    assert m.image_label == 2 and m.boxes.tolist() == [[2, 2, 12, 10], [15, 20, 31, 30]] and m.labels.tolist() == [1, 2]
    assert n.image_label == 0 and len(n.boxes) == 0
    (root / "masks.json").write_text(json.dumps({"colors": colors}))
    assert [s.image_label for s in load_source(f"masks:{root}")] == [2, 0]


def test_masks_spec_with_settings(layout):
    (layout / "masks.json").write_text(json.dumps(OPTIONS))
    samples = load_source(f"masks:{layout}")
    assert [(s.id, s.image_label) for s in samples] == [("a", 1), ("b", 2), ("c", 0)]
    (layout / "masks.json").write_text(json.dumps({**OPTIONS, "no_such_option": 1}))
    with pytest.raises(DataError, match=r"masks\.json.*no_such_option"):
        load_source(f"masks:{layout}")


def test_missing_mask_error_or_weak(layout):
    (layout / "masks" / "b_mask.png").unlink()
    with pytest.raises(DataError, match=r"b\.png: no mask for a malignant image \(expected .*b_mask\.png"):
        load_masks(layout / "images", layout / "masks", layout / "labels.csv", **OPTIONS)
    samples = load_masks(layout / "images", layout / "masks", layout / "labels.csv", missing_mask="weak", **OPTIONS)
    assert not samples[1].is_strong and samples[1].image_label == 2


def test_mask_size_must_match_its_image(layout, write_image):
    write_image(layout / "masks" / "a_mask.png", blob_mask(41, 50, (5, 5, 15, 20)))
    with pytest.raises(DataError, match=r"a_mask\.png: mask size 50x41 differs from the image size 50x40"):
        load_masks(layout / "images", layout / "masks", layout / "labels.csv", **OPTIONS)


@pytest.mark.parametrize("table, message", [
    ("ID;Pathology;Case\na;B;p1\nb;X;p1\nc;N;p2\n", r"labels\.csv, line 3: unknown label 'X'"),
    ("ID;Pathology;Case\na;B;p1\nb;M;p1\n", r"c\.png: the image has no row in .*labels\.csv"),
    ("ID;Pathology;Case\na;B;p1\nb;M;p1\nc;N;p2\nd;B;p3\n", r"labels\.csv, line 5: no image 'd'"),
    ("ID;Pathology;Case\na;B;p1\na.png;M;p1\n", r"line 3: image 'a.png' already labelled on line 2"),
    ("Name;Pathology\na;B\n", r"labels\.csv: no id column 'id'"),
])
def test_bad_tables_are_named(layout, table, message):
    (layout / "labels.csv").write_text(table)
    with pytest.raises(DataError, match=message):
        load_masks(layout / "images", layout / "masks", layout / "labels.csv", **OPTIONS)


def test_bad_masks_and_images(layout, write_image):
    write_image(layout / "masks" / "c_mask.png", blob_mask(40, 50, (0, 0, 10, 10)))
    with pytest.raises(DataError, match=r"c_mask\.png: a normal image with a non-empty mask"):
        load_masks(layout / "images", layout / "masks", layout / "labels.csv", **OPTIONS)
    write_image(layout / "masks" / "c_mask.png", blob_mask(40, 50))
    write_image(layout / "masks" / "a_mask.png", blob_mask(40, 50, (0, 0, 2, 2)))   # below min_area
    with pytest.raises(DataError, match=r"a_mask\.png: the mask of a benign image is empty"):
        load_masks(layout / "images", layout / "masks", layout / "labels.csv", **OPTIONS)
    (layout / "masks" / "a_mask.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"a_mask\.png: cannot read image"):
        load_masks(layout / "images", layout / "masks", layout / "labels.csv", **OPTIONS)
    write_image(layout / "masks" / "a_mask.png", blob_mask(40, 50, (5, 5, 15, 20)))
    (layout / "images" / "b.png").write_text("not an image")
    with pytest.raises(DataError, match=r"b\.png: cannot read image"):
        load_masks(layout / "images", layout / "masks", layout / "labels.csv", **OPTIONS)
    with pytest.raises(DataError, match="binary masks need a label table"):
        load_masks(layout / "images", layout / "masks", **{k: v for k, v in OPTIONS.items() if k == "mask_pattern"})


def test_colour_mask_disagreeing_with_the_table(tmp_path, write_image, gray_image):
    write_image(tmp_path / "i" / "m.png", gray_image(16, 16, 1))
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[2:10, 2:12] = (255, 0, 0)
    write_image(tmp_path / "k" / "m.png", rgb)
    (tmp_path / "l.csv").write_text("id,label\nm,benign\n")
    with pytest.raises(DataError, match=r"m\.png: .*disagrees.*the mask's classes disagree with the table"):
        load_masks(tmp_path / "i", tmp_path / "k", tmp_path / "l.csv", colors={"malignant": (255, 0, 0)})


def test_empty_or_missing_folders(tmp_path):
    (tmp_path / "i").mkdir()
    (tmp_path / "k").mkdir()
    with pytest.raises(DataError, match=r"i: no images found"):
        load_masks(tmp_path / "i", tmp_path / "k", colors={"benign": (0, 255, 0)})
    with pytest.raises(DataError, match=r"nope: mask folder not found"):
        load_masks(tmp_path / "i", tmp_path / "nope")
    with pytest.raises(ValueError, match=r"must contain \{stem\}"):
        load_masks(tmp_path / "i", tmp_path / "k", mask_pattern="mask.png")
