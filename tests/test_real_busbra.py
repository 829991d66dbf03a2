"""load_busbra on the real BUS-BRA files (Gómez-Flores et al. 2024), when ``WSBUS_BUSBRA`` names their folder.

Skipped without it. The data set is read in place (never copied) and loaded once for the module.
"""
from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

ROOT = os.environ.get("WSBUS_BUSBRA")
if not ROOT:
    pytest.skip("WSBUS_BUSBRA is not set (the folder of the real BUS-BRA files: bus_data.csv, Images/, Masks/)",
                allow_module_level=True)

from test_data_busi import assert_same_boxes, boxes_from_mask_reference  # noqa: E402

from wsbus.data import load_busbra, read_gray, split  # noqa: E402

# The one image whose csv BBOX disagrees with its mask; the mask is right (its box is the lesion's extent).
CSV_BOX_WRONG = "bus_0845-s"


@pytest.fixture(scope="module")
def base() -> Path:
    root = Path(ROOT)
    return root / "BUSBRA" if (root / "BUSBRA" / "bus_data.csv").is_file() else root


@pytest.fixture(scope="module")
def samples(base):
    return load_busbra(base)


@pytest.fixture(scope="module")
def rows(base):
    with open(base / "bus_data.csv", newline="", encoding="utf-8-sig") as f:
        return {r["ID"]: r for r in csv.DictReader(f)}


def test_counts_and_labels(samples):
    assert len(samples) == 1875
    assert len({s.id for s in samples}) == 1875
    assert len({s.patient for s in samples}) == 1064
    assert all(s.patient.startswith("busbra:") for s in samples)
    assert Counter(s.image_label for s in samples) == {1: 1268, 2: 607}
    for s in samples:
        assert s.is_strong and len(s.boxes) >= 1, s.id
        assert s.labels.tolist() == [s.image_label] * len(s.boxes), s.id
        assert s.image.dtype == np.uint8 and s.image.ndim == 2, s.id
        assert s.image.flags.c_contiguous and s.image.flags.writeable, s.id


def test_boxes_match_the_csv_bbox(samples, rows):
    """The csv's ``BBOX`` ``[x, y, w, h]`` (integers) is, in pixel-edge coordinates, ``(x - 1, y - 1, x + w, y + h)``:
    ``x, y`` are the 1-based first column and row, ``x + w, y + h`` the 1-based last ones (so ``w`` is the width
    minus one). Verified here: with that reading every image but one agrees with its mask exactly, while reading
    ``[x, y]`` as 0-based (``x1 = x``) is one pixel off on every image."""
    agree, off_by_one, disagree = 0, 0, []
    for s in samples:
        x, y, w, h = json.loads(rows[s.id]["BBOX"])
        assert len(s.boxes) == 1, s.id  # one lesion per BUS-BRA image
        mask_box = s.boxes[0].tolist()
        if mask_box == [x - 1, y - 1, x + w, y + h]:
            agree += 1
        else:
            disagree.append(s.id)
        off_by_one += mask_box[:2] == [x - 1, y - 1] and mask_box != [x, y, x + w, y + h]
    assert disagree == [CSV_BOX_WRONG]
    assert agree == 1874 and off_by_one == 1874
    wrong = next(s for s in samples if s.id == CSV_BOX_WRONG)
    x, y, w, h = json.loads(rows[CSV_BOX_WRONG]["BBOX"])
    x1, y1, x2, y2 = wrong.boxes[0].tolist()
    # same right and bottom edges, but the csv box starts far to the left of and above the lesion
    assert (x2, y2) == (x + w, y + h) and x1 > x + 50 and y1 > y + 20


def test_boxes_equal_the_earlier_implementation(base, samples):
    """Real masks give, bit for bit, the boxes of the earlier boxes_from_mask (full-size labelling and dense
    per-component masks through torchvision's masks_to_boxes). The earlier one takes ~12 ms a mask, so every
    8th mask is checked (235 of them); the csv test above covers every box."""
    for s in samples[::8]:
        mask = read_gray(base / "Masks" / f"mask_{s.id[len('bus_'):]}.png")
        assert_same_boxes(s.boxes, boxes_from_mask_reference(mask, min_area=10), s.id)


def test_patient_split_keeps_patients_apart(samples):
    strong, weak, test = split(samples, n_strong=50, n_test=300, seed=0)
    patients = [{s.patient for s in part} for part in (strong, weak, test)]
    assert not patients[0] & patients[1] and not patients[0] & patients[2] and not patients[1] & patients[2]
    ids = [s.id for part in (strong, weak, test) for s in part]
    assert len(ids) == len(set(ids)) == len(samples)  # every image in exactly one subset
    # whole patients (1 or 2 images each in BUS-BRA) are moved, so a count can be missed by an image or two
    assert abs(len(strong) - 50) <= 2 and abs(len(test) - 300) <= 2
