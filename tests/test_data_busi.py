"""load_busi, boxes_from_mask and the duplicate finder, on folders and images built here."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from torchvision.ops import masks_to_boxes

from wsbus.data import (DataError, Sample, assign_duplicate_patients, boxes_from_mask, find_duplicates,
                        label_conflicts, load_busi, make_phantom, read_gray)
from wsbus.data.busi import read_mask_boxes
from wsbus.data.dedup import perceptual_hash


def boxes_from_mask_reference(mask, *, min_area=1):
    """The earlier boxes_from_mask, kept verbatim as the reference: scipy labels on the full mask, then
    torchvision's masks_to_boxes on one dense boolean mask per component, + 1 on the maxima."""
    mask = np.asarray(mask)
    peak = float(mask.max()) if mask.size else 0.0
    if peak <= 0:
        return np.zeros((0, 4), dtype=np.float32)
    components, count = ndimage.label(mask > peak / 2, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return np.zeros((0, 4), dtype=np.float32)
    areas = np.bincount(components.ravel(), minlength=count + 1)[1:]
    keep = np.flatnonzero(areas >= min_area) + 1
    if len(keep) == 0:
        return np.zeros((0, 4), dtype=np.float32)
    masks = torch.from_numpy(components[None, :, :] == keep[:, None, None])
    boxes = masks_to_boxes(masks)
    boxes[:, 2:] += 1
    return boxes.numpy().astype(np.float32)


def assert_same_boxes(new, old, what=""):
    assert new.dtype == old.dtype == np.float32, what
    assert new.shape == old.shape, f"{what}: {new.tolist()} != {old.tolist()}"
    assert new.tobytes() == old.tobytes(), f"{what}: {new.tolist()} != {old.tolist()}"  # bit for bit


def random_masks(seed=0, n=60):
    """Masks with several components: ellipses and rectangles (some touching the border or only diagonally),
    specks of 1-3 pixels, soft (anti-aliased) edges; as uint8 0/255, 0/1, bool, uint16, int16, float."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        h, w = int(rng.integers(8, 90)), int(rng.integers(8, 90))
        m = np.zeros((h, w), np.float64)
        yy, xx = np.mgrid[:h, :w]
        for _ in range(int(rng.integers(0, 5))):
            cy, cx = rng.uniform(-5, h + 5), rng.uniform(-5, w + 5)
            ry, rx = rng.uniform(1, h / 2), rng.uniform(1, w / 2)
            m = np.maximum(m, np.clip(1.5 - np.hypot((yy - cy) / ry, (xx - cx) / rx), 0, 1))  # soft edge
        for _ in range(int(rng.integers(0, 4))):  # specks under typical min_area
            y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
            m[y:y + int(rng.integers(1, 3)), x:x + int(rng.integers(1, 3))] = 1
        if k % 7 == 0:  # a diagonal chain: one component under 8-connectivity
            d = np.arange(min(h, w) // 2)
            m[d, d] = 1
        u8 = np.rint(m * 255).astype(np.uint8)
        out += [u8, (u8 > 127).astype(np.uint8), u8 > 127, u8.astype(np.uint16) * 7, u8.astype(np.int16) - 3,
                m, m.astype(np.float32)]
    return out


def _mask(h, w, rects):
    m = np.zeros((h, w), np.uint8)
    for y0, y1, x0, x1 in rects:
        m[y0:y1, x0:x1] = 255
    return m


@pytest.fixture
def busi_root(tmp_path, gray_image, write_image):
    base = tmp_path / "Dataset_BUSI_with_GT"
    imgs = {}

    def add(cls, n, image, masks):
        imgs[f"{cls} ({n})"] = image
        write_image(base / cls / f"{cls} ({n}).png", image)
        for suffix, m in masks.items():
            write_image(base / cls / f"{cls} ({n}){suffix}.png", m)

    # benign (1): two lesions in the main mask (two components) and one more in _mask_1
    add("benign", 1, gray_image(50, 70, 1), {"_mask": _mask(50, 70, [(5, 15, 3, 13), (30, 40, 50, 65)]),
                                             "_mask_1": _mask(50, 70, [(20, 24, 20, 30)])})
    # benign (2): RGB image and RGB mask (BUSI has some)
    rgb = np.stack([gray_image(50, 70, 2)] * 3, axis=-1)
    add("benign", 2, rgb, {"_mask": np.stack([_mask(50, 70, [(10, 20, 10, 20)])] * 3, axis=-1)})
    add("malignant", 1, gray_image(50, 70, 3), {"_mask": _mask(50, 70, [(0, 50, 60, 70)])})
    # malignant (2) is an exact copy of benign (1): a duplicate with a label conflict
    add("malignant", 2, gray_image(50, 70, 1), {"_mask": _mask(50, 70, [(5, 15, 3, 13)])})
    add("normal", 1, gray_image(50, 70, 4), {"_mask": np.zeros((50, 70), np.uint8)})
    (base / "normal" / ".DS_Store").write_bytes(b"\0\1")
    return tmp_path, base, imgs


def test_boxes_from_mask_hand_worked_and_torchvision():
    m = _mask(40, 50, [(5, 15, 3, 13), (20, 30, 30, 45)])
    m[0, 49] = 255  # a one-pixel speck
    boxes = boxes_from_mask(m)
    # pixel-edge boxes: rows 5..14 and cols 3..12 -> (3, 5, 13, 15)
    assert boxes.tolist() == [[49, 0, 50, 1], [3, 5, 13, 15], [30, 20, 45, 30]]  # raster order of first pixel
    assert boxes_from_mask(m, min_area=2).tolist() == [[3, 5, 13, 15], [30, 20, 45, 30]]
    # independent check: torchvision on the hand-made component masks, +1 on the maxima
    comps = torch.zeros(2, 40, 50, dtype=torch.bool)
    comps[0, 5:15, 3:13] = True
    comps[1, 20:30, 30:45] = True
    expected = masks_to_boxes(comps)
    expected[:, 2:] += 1
    np.testing.assert_array_equal(boxes_from_mask(m, min_area=2), expected.numpy())
    # diagonal neighbours are one component (8-connectivity); 0/1 masks work like 0/255
    d = np.zeros((5, 5), np.uint8)
    d[1, 1] = d[2, 2] = 1
    assert boxes_from_mask(d).tolist() == [[1, 1, 3, 3]]
    assert boxes_from_mask(np.zeros((4, 4))).shape == (0, 4)


def test_boxes_from_mask_equals_reference_on_random_masks():
    masks = random_masks()
    multi = 0
    for i, m in enumerate(masks):
        for min_area in (1, 2, 10, 50):
            old = boxes_from_mask_reference(m, min_area=min_area)
            assert_same_boxes(boxes_from_mask(m, min_area=min_area), old, f"mask {i} ({m.dtype}), min_area {min_area}")
            multi += len(old) > 1
    assert multi > 50  # the masks do exercise several components (not only the one-component shortcut)


def test_boxes_from_mask_edge_cases_equal_reference():
    cases = {
        "empty": np.zeros((0, 0), np.uint8), "zeros": np.zeros((6, 7), np.uint8),
        "full": np.full((5, 9), 255, np.uint8), "one pixel": np.pad(np.ones((1, 1), np.uint8), 3),
        "odd peak": np.array([[0, 3, 4, 7], [0, 0, 0, 4]], np.uint8),  # > 3.5: the 4s and the 7
        "negative": np.array([[-5, -1], [-2, -9]], np.int16), "nan": np.full((3, 3), np.nan),
        "border corners": np.pad(np.ones((1, 1), np.uint8), ((0, 4), (0, 4))) + np.pad(np.ones((1, 1), np.uint8),
                                                                                        ((4, 0), (4, 0))),
        "diagonal touch": np.eye(6, dtype=np.uint8) * 255, "anti-diagonal": np.fliplr(np.eye(5, dtype=bool)),
        "checkerboard": (np.indices((9, 11)).sum(0) % 2).astype(np.uint8),
        "wide int64": np.array([[0, 2 ** 40], [2 ** 39 + 1, 0]], np.int64),
    }
    for name, m in cases.items():
        for min_area in (1, 2, 3):
            assert_same_boxes(boxes_from_mask(m, min_area=min_area), boxes_from_mask_reference(m, min_area=min_area),
                              f"{name}, min_area {min_area}")
    assert boxes_from_mask(cases["checkerboard"]).tolist() == [[0, 0, 11, 9]]  # one 8-connected component
    with pytest.raises(DataError, match="some.png: a mask must be 2-D"):
        boxes_from_mask(np.zeros((2, 3, 3)), where="some.png")


@pytest.mark.parametrize("mode", ["L", "1", "RGB", "L255soft"])
def test_read_mask_boxes_equals_reference_on_files(tmp_path, mode):
    """The Pillow-cropped path (mode "1" and "L" PNGs) and the read_gray path (RGB) give the reference's boxes."""
    for i, m in enumerate(random_masks(seed=3, n=25)[::7]):  # the 0/255 uint8 masks
        if mode == "1":
            im = Image.fromarray(m > 127)
        elif mode == "RGB":
            im = Image.fromarray(np.stack([m] * 3, axis=-1))
        elif mode == "L":
            im = Image.fromarray(np.where(m > 127, 255, 0).astype(np.uint8))
        else:  # soft 0..255 edges: the threshold (half the maximum) matters
            im = Image.fromarray(m)
        path = tmp_path / f"m{i}.png"
        im.save(path)
        assert im.mode == mode[:1] if mode != "RGB" else im.mode == "RGB"
        for min_area in (1, 10):
            old = boxes_from_mask_reference(read_gray(path), min_area=min_area)
            assert_same_boxes(read_mask_boxes(path, m.shape, min_area=min_area), old, f"{path.name} {min_area}")


def test_read_mask_boxes_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad_mask.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match=r"bad_mask\.png: cannot read image"):
        read_mask_boxes(bad, (4, 4))
    with pytest.raises(DataError, match=r"missing\.png: image file not found"):
        read_mask_boxes(tmp_path / "missing.png", (4, 4))
    good = tmp_path / "small.png"
    Image.fromarray(np.zeros((4, 5), bool)).save(good)
    with pytest.raises(DataError, match=r"small\.png: mask size 5x4 differs from the image size 6x4"):
        read_mask_boxes(good, (4, 6))
    assert read_mask_boxes(good, (4, 5)).shape == (0, 4)  # an all-zero mask has no box
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 5), 300, np.uint16)).save(deep)
    with pytest.raises(DataError, match=r"deep\.png: expected an 8-bit image"):
        read_mask_boxes(deep, (4, 5))


def test_loaded_images_are_writable_contiguous_uint8(busi_root):
    _, base, _ = busi_root
    for s in load_busi(base):
        assert s.image.dtype == np.uint8 and s.image.flags.c_contiguous and s.image.flags.writeable, s.id
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "The given NumPy array is not writable" would fail here
            torch.from_numpy(s.image)


def test_load_busi(busi_root):
    parent, base, imgs = busi_root
    samples = load_busi(parent)  # the parent of Dataset_BUSI_with_GT works
    assert [s.id for s in load_busi(base)] == [s.id for s in samples]  # and so does the folder itself
    by_id = {s.id: s for s in samples}
    assert list(by_id) == ["benign (1)", "benign (2)", "malignant (1)", "malignant (2)", "normal (1)"]
    b1 = by_id["benign (1)"]
    assert b1.boxes.tolist() == [[3, 5, 13, 15], [50, 30, 65, 40], [20, 20, 30, 24]]
    assert b1.labels.tolist() == [1, 1, 1] and b1.image_label == 1
    np.testing.assert_array_equal(b1.image, imgs["benign (1)"])
    b2 = by_id["benign (2)"]
    assert b2.image.ndim == 2 and b2.boxes.tolist() == [[10, 10, 20, 20]]
    assert by_id["malignant (1)"].boxes.tolist() == [[60, 0, 70, 50]] and by_id["malignant (1)"].image_label == 2
    n = by_id["normal (1)"]
    assert n.image_label == 0 and n.boxes.shape == (0, 4)
    # the exact copy shares a patient with its original; other images have their own
    assert by_id["malignant (2)"].patient == by_id["benign (1)"].patient
    assert len({s.patient for s in samples}) == 4
    assert label_conflicts(samples) == [["benign (1)", "malignant (2)"]]
    assert len({s.patient for s in load_busi(parent, dedup=False)}) == 5


@pytest.mark.parametrize("breakage, pattern", [
    ("missing_mask", r"benign \(2\)\.png: no mask"),
    ("mask_size", r"malignant \(1\)_mask\.png: mask size 60x50 differs from the image size 70x50"),
    ("empty_mask", r"malignant \(1\)_mask\.png: the mask of a malignant image is empty"),
    ("corrupt", r"malignant \(1\)\.png: cannot read image"),
    ("orphan_mask", r"mask without its image benign \(9\)\.png"),
    ("normal_with_lesion", r"normal \(1\)_mask\.png: a normal image with a non-empty mask"),
    ("bad_name", r"scan_07\.png: unexpected file name"),
    ("wrong_folder", r"a 'benign' file in the 'malignant' folder"),
    ("empty_folder", r"normal: no images found"),
])
def test_bad_input(busi_root, write_image, breakage, pattern):
    _, base, _ = busi_root
    if breakage == "missing_mask":
        (base / "benign" / "benign (2)_mask.png").unlink()
    elif breakage == "mask_size":
        write_image(base / "malignant" / "malignant (1)_mask.png", np.zeros((50, 60), np.uint8))
    elif breakage == "empty_mask":
        write_image(base / "malignant" / "malignant (1)_mask.png", np.zeros((50, 70), np.uint8))
    elif breakage == "corrupt":
        (base / "malignant" / "malignant (1).png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    elif breakage == "orphan_mask":
        write_image(base / "benign" / "benign (9)_mask.png", np.zeros((50, 70), np.uint8))
    elif breakage == "normal_with_lesion":
        write_image(base / "normal" / "normal (1)_mask.png", _mask(50, 70, [(1, 10, 1, 10)]))
    elif breakage == "bad_name":
        write_image(base / "benign" / "scan_07.png", np.zeros((5, 5), np.uint8))
    elif breakage == "wrong_folder":
        write_image(base / "malignant" / "benign (3).png", np.zeros((5, 5), np.uint8))
    elif breakage == "empty_folder":
        for p in (base / "normal").iterdir():
            p.unlink()
    with pytest.raises(DataError, match=pattern):
        load_busi(base)


def test_not_a_busi_folder(tmp_path):
    with pytest.raises(DataError, match="no BUSI class folders"):
        load_busi(tmp_path)


def _sample(image, sid, label=1, patient=None):
    boxes = np.array([[0, 0, 4, 4]], np.float32) if label else np.zeros((0, 4), np.float32)
    return Sample(image, boxes, np.full(len(boxes), label, np.int64), label, sid, patient)


def test_find_duplicates_exact_near_and_distinct():
    phantoms = [s.image for s in make_phantom(12, seed=5, size=96)]
    base = phantoms[0]
    rescaled = np.asarray(Image.fromarray(base).resize((72, 72), Image.Resampling.BILINEAR))
    buf = io.BytesIO()
    Image.fromarray(phantoms[1]).save(buf, format="JPEG", quality=85)
    reencoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))
    brighter = np.clip(phantoms[2].astype(int) + 12, 0, 255).astype(np.uint8)  # re-windowed copy
    samples = [_sample(im, f"img{i}") for i, im in enumerate(phantoms)]
    samples += [_sample(base.copy(), "exact0", label=2), _sample(rescaled, "small0"),
                _sample(reencoded, "jpeg1"), _sample(brighter, "bright2")]
    groups = find_duplicates(samples)
    assert groups == [["img0", "exact0", "small0"], ["img1", "jpeg1"], ["img2", "bright2"]]
    assert find_duplicates(samples, near=False) == [["img0", "exact0"]]
    # the 12 distinct phantom images (same anatomy model, same scanner) are never merged
    assert find_duplicates(samples[:12]) == []
    assert label_conflicts(samples, groups) == [["img0", "exact0", "small0"]]
    h = perceptual_hash(base)
    assert 0 <= h < 2 ** 64 and h == perceptual_hash(base.copy())


def test_assign_duplicate_patients_links_transitively():
    im = [s.image for s in make_phantom(4, seed=9, size=64)]
    samples = [_sample(im[0], "a", patient="P1"), _sample(im[1], "b", patient="P1"),
               _sample(im[1].copy(), "c"), _sample(im[2], "d"), _sample(im[3], "e", patient="P9")]
    out = assign_duplicate_patients(samples, prefix="x:")
    # c duplicates b, b shares patient P1 with a: a, b, c form one patient; d and e stay apart
    assert [s.patient for s in out] == ["P1", "P1", "P1", "x:d", "P9"]
    assert [s.id for s in out] == [s.id for s in samples]
    with pytest.raises(DataError, match="more than once"):
        find_duplicates([samples[0], samples[0]])
