"""split and split_table1: patient-disjoint, stratified, deterministic; Table I proportions."""
from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from wsbus.data import TABLE_I, Sample, split, split_table1

_IMG = np.zeros((8, 8), np.uint8)


def _s(i, label, patient=None):
    boxes = np.array([[1, 1, 5, 5]], np.float32) if label else np.zeros((0, 4), np.float32)
    return Sample(_IMG, boxes, np.full(len(boxes), label, np.int64), label, f"s{i:04d}", patient)


def make(counts, per_patient=1, seed=0):
    """counts = {label: n images}; patients hold `per_patient` images of one label (last one may hold fewer)."""
    rng = random.Random(seed)
    out, i, p = [], 0, 0
    for label, n in counts.items():
        for k in range(n):
            if k % per_patient == 0:
                p += 1
            out.append(_s(i, label, f"P{p}" if per_patient > 1 else None))
            i += 1
    rng.shuffle(out)
    return out


def _labels(samples):
    return Counter(s.image_label for s in samples)


def _patients(samples):
    return {s.patient if s.patient is not None else s.id for s in samples}


def test_counts_stratification_and_normals():
    data = make({0: 100, 1: 300, 2: 200})
    strong, weak, test = split(data, n_strong=50, n_test=120, seed=1)
    # test: 120 images stratified as 100/300/200 of 600 -> 20/60/40 exactly
    assert _labels(test) == Counter({0: 20, 1: 60, 2: 40})
    # strong: 50 from the pool of 240 B + 160 M (normals do not train by default) -> 30/20
    assert _labels(strong) == Counter({1: 30, 2: 20})
    assert _labels(weak) == Counter({1: 210, 2: 140}) and 0 not in _labels(strong + weak)
    # with train_normals, normal images can be strong or weak
    strong, weak, test = split(data, n_strong=60, n_test=120, seed=1, train_normals=True)
    # pool after the test set: 80 N + 240 B + 160 M = 480 -> 60 strong = 10 / 30 / 20
    assert _labels(strong) == Counter({0: 10, 1: 30, 2: 20})
    assert _labels(weak)[0] > 0 and len(strong) + len(weak) + len(test) == 600


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stratification_within_one(seed):
    data = make({0: 37, 1: 211, 2: 95}, seed=seed)
    strong, weak, test = split(data, strong_fraction=0.1, test_fraction=0.25, seed=seed)
    n_test = round(0.25 * len(data))
    assert len(test) == n_test
    for c, n in {0: 37, 1: 211, 2: 95}.items():
        assert abs(_labels(test)[c] - n_test * n / len(data)) <= 1
    pool = {1: 211 - _labels(test)[1], 2: 95 - _labels(test)[2]}
    for c in (1, 2):
        assert abs(_labels(strong)[c] - 0.1 * sum(pool.values()) * pool[c] / sum(pool.values())) <= 1


def test_patients_never_straddle_and_duplicates_stay_together():
    data = make({0: 60, 1: 240, 2: 150}, per_patient=3, seed=4)
    strong, weak, test = split(data, n_strong=40, n_test=90, seed=7)
    sets = [_patients(strong), _patients(weak), _patients(test)]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert abs(len(test) - 90) <= 2 and abs(len(strong) - 40) <= 2  # whole patients of 3 images
    # by="image" ignores patients (and may separate them)
    s2, w2, t2 = split(data, n_strong=40, n_test=90, by="image", seed=7)
    assert len(t2) == 90 and len(s2) == 40


def test_deterministic_order_independent_and_seeded():
    data = make({0: 50, 1: 200, 2: 120}, per_patient=2, seed=1)
    a = split(data, n_strong=30, n_test=60, seed=5)
    shuffled = list(data)
    random.Random(9).shuffle(shuffled)
    b = split(shuffled, n_strong=30, n_test=60, seed=5)
    for x, y in zip(a, b):
        assert sorted(s.id for s in x) == sorted(s.id for s in y)
    c = split(data, n_strong=30, n_test=60, seed=6)
    assert sorted(s.id for s in a.test) != sorted(s.id for s in c.test)
    # each subset keeps the input order
    pos = {s.id: k for k, s in enumerate(data)}
    assert all([pos[s.id] for s in x] == sorted(pos[s.id] for s in x) for x in a)


def test_weak_keeps_hidden_boxes_and_per_class_requests():
    data = make({0: 30, 1: 100, 2: 100})
    strong, weak, test = split(data, n_strong={1: 10, 2: 10}, n_test={0: 10, 1: 10, 2: 10}, n_weak={1: 40, 2: 20})
    assert _labels(strong) == Counter({1: 10, 2: 10}) and _labels(test) == Counter({0: 10, 1: 10, 2: 10})
    assert _labels(weak) == Counter({1: 40, 2: 20})
    assert all(s.is_strong for s in weak)  # the boxes are still there (hidden from training by its role)


def test_clear_errors():
    data = make({0: 10, 1: 20, 2: 5})
    with pytest.raises(ValueError, match="only 5 are available"):
        split(data, n_strong={2: 6}, n_test=0)
    with pytest.raises(ValueError, match="asked for 40 test images but only 35"):
        split(data, n_strong=1, n_test=40)
    with pytest.raises(ValueError, match="not both"):
        split(data, n_strong=1, strong_fraction=0.5)
    with pytest.raises(ValueError, match="give n_strong"):
        split(data)
    with pytest.raises(ValueError, match="normal strong images but only 0"):
        split(data, n_strong={0: 1}, n_test=0)
    with pytest.raises(ValueError, match="by must be"):
        split(data, n_strong=1, by="case")
    with pytest.raises(ValueError, match="empty"):
        split([], n_strong=1)


def test_table1():
    assert TABLE_I["strong"] == {0: 0, 1: 400, 2: 400}
    assert sum(TABLE_I["weak"].values()) == 4224 and sum(TABLE_I["test"].values()) == 600
    data = make({0: 40, 1: 800, 2: 320})
    # benign needs 400 + 3291 + 200 = 3891 -> scale 800/3891; malignant 1533 -> 320/1533; normal 200 -> 40/200
    scale = min(40 / 200, 800 / 3891, 320 / 1533)
    strong, weak, test = split_table1(data, seed=3)
    want = {role: {c: int(np.floor(n * scale + 1e-9)) for c, n in per.items()} for role, per in TABLE_I.items()}
    assert _labels(strong) == Counter({c: n for c, n in want["strong"].items() if n})
    assert _labels(weak) == Counter({c: n for c, n in want["weak"].items() if n})
    assert _labels(test) == Counter({c: n for c, n in want["test"].items() if n})
    assert want["weak"][1] / want["weak"][2] == pytest.approx(3291 / 933, rel=0.03)
    s, w, t = split_table1(data, scale=0.05)
    assert _labels(s) == Counter({1: 20, 2: 20}) and _labels(t) == Counter({0: 10, 1: 10, 2: 10})
    with pytest.raises(ValueError, match="normal"):
        split_table1(make({1: 50, 2: 50}))


def test_images_without_boxes_go_to_the_weak_set_only():
    """A site's folder: a few images with masks, the rest with an image label only. Strong and test images need
    boxes; the unboxed images' patients train as weak images; a validation set held out of them must be boxed."""
    from wsbus.data import hold_out, make_phantom, split

    samples = make_phantom(90, seed=3, size=32)
    site = [s if int(s.patient[1:]) % 3 == 0 else s.as_weak() for s in samples]   # a third of the patients boxed
    parts = split(site, n_strong=6, n_test=8, seed=0)
    assert all(s.is_strong for s in parts.strong + parts.test)
    unboxed = {s.id for s in site if not s.is_strong and s.image_label > 0}
    assert unboxed and unboxed <= {s.id for s in parts.weak}
    kept, val = hold_out(parts.weak, 4, seed=0, boxed_only=True)
    assert val and all(s.is_strong for s in val)
    assert all(s.is_strong for s in split(samples, n_strong=6, n_test=8, seed=0).strong)
