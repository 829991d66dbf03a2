"""make_phantom: determinism, prefix stability, proportions, boxes on the masses, knobs, property test."""
from __future__ import annotations

import dataclasses
import re
from collections import Counter, defaultdict

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsbus.data import SCANNERS, PhantomConfig, Sample, make_phantom


def _same(a, b):
    assert [s.id for s in a] == [s.id for s in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.boxes, y.boxes)
        np.testing.assert_array_equal(x.labels, y.labels)
        assert (x.image_label, x.patient) == (y.image_label, y.patient)


def test_deterministic_and_prefix_stable():
    ten = make_phantom(10, seed=3)
    _same(ten, make_phantom(10, seed=3))
    _same(ten[:5], make_phantom(5, seed=3))
    other = make_phantom(10, seed=4)
    assert not all(np.array_equal(a.image, b.image) for a, b in zip(ten, other))
    assert make_phantom(0) == []


def test_samples_are_valid_and_named():
    samples = make_phantom(30, seed=0, size=(96, 128))
    for s in samples:
        assert isinstance(s, Sample) and s.is_strong
        assert s.image.dtype == np.uint8 and s.image.shape == (96, 128)
        assert re.fullmatch(r"ph0-\d{5}", s.id) and re.fullmatch(r"P\d{4}", s.patient)
        assert len(s.boxes) == (0 if s.image_label == 0 else 1)
        if len(s.boxes):
            assert s.labels.tolist() == [s.image_label]
    assert len({s.id for s in samples}) == 30


def test_patients_hold_one_to_three_images_of_one_label():
    samples = make_phantom(300, seed=1, size=32)
    by_patient = defaultdict(list)
    for s in samples[:-3]:  # the last patient may be cut by n
        by_patient[s.patient].append(s)
    sizes = Counter(len(v) for v in by_patient.values())
    assert set(sizes) <= {1, 2, 3} and min(sizes.values()) > 10
    assert all(len({s.image_label for s in v}) == 1 for v in by_patient.values())
    # patients are numbered in order and images of one patient are consecutive
    order = [int(s.patient[1:]) for s in samples]
    assert order == sorted(order) and order[0] == 0
    single = make_phantom(20, seed=1, images_per_patient=(1, 1))
    assert len({s.patient for s in single}) == 20


def test_class_proportions():
    labels = Counter(s.image_label for s in make_phantom(500, seed=2, size=32))
    for c, p in enumerate((0.2, 0.45, 0.35)):  # drawn per patient (~2 images each): sd ~ 0.03
        assert abs(labels[c] / 500 - p) < 0.08
    labels = Counter(s.image_label for s in make_phantom(50, seed=2, size=32, proportions=(0.0, 1.0, 0.0)))
    assert labels == Counter({1: 50})


def _ring_contrast(s):
    """Mean of a ring around the box (half the box size wide) minus the mean inside the box."""
    x1, y1, x2, y2 = s.boxes[0].astype(int)
    img = s.image.astype(float)
    h, w = img.shape
    bw, bh = x2 - x1, y2 - y1
    X1, Y1, X2, Y2 = max(0, x1 - bw // 2), max(0, y1 - bh // 2), min(w, x2 + bw // 2), min(h, y2 + bh // 2)
    outer = img[Y1:Y2, X1:X2].sum() - img[y1:y2, x1:x2].sum()
    n = (Y2 - Y1) * (X2 - X1) - bw * bh
    return outer / n - img[y1:y2, x1:x2].mean()


def test_boxes_inside_the_image_and_around_a_dark_mass():
    samples = [s for s in make_phantom(120, seed=5) if s.image_label > 0]
    for s in samples:
        x1, y1, x2, y2 = s.boxes[0]
        assert 0 <= x1 < x2 <= s.width and 0 <= y1 < y2 <= s.height
        assert x1 == int(x1) and y2 == int(y2)  # pixel edges
        assert 0.04 * 128 <= min(x2 - x1, y2 - y1) and max(x2 - x1, y2 - y1) <= 0.6 * 128
    contrast = np.array([_ring_contrast(s) for s in samples])
    assert (contrast > 0).mean() > 0.95 and contrast.mean() > 15  # masses are hypoechoic
    # the contrast knob controls it
    faint = np.array([_ring_contrast(s) for s in make_phantom(120, seed=5, contrast=0.1) if s.image_label > 0])
    assert faint.mean() < contrast.mean() - 10


def _aspect_auc(samples):
    """P(aspect of a benign box > aspect of a malignant box): how well 'wider than tall' separates B from M."""
    asp = {1: [], 2: []}
    for s in samples:
        if s.image_label:
            b = s.boxes[0]
            asp[s.image_label].append((b[2] - b[0]) / (b[3] - b[1]))
    ben, mal = np.array(asp[1]), np.array(asp[2])
    return (ben[:, None] > mal[None, :]).mean()


def test_cue_strength_controls_the_birads_shape_cue():
    strong = _aspect_auc(make_phantom(250, seed=6, size=64, cue_strength=1.0))
    none = _aspect_auc(make_phantom(250, seed=6, size=64, cue_strength=0.0))
    assert strong > 0.85 and abs(none - 0.5) < 0.12


@pytest.mark.parametrize("knob, value", [
    ("contrast", 0.2), ("speckle", 0.3), ("n_distractors", 8), ("distractor_similarity", 1.0),
    ("cue_strength", 0.0), ("blur", 2.0), ("gain", 1.5), ("scanner", "B"), ("scanner", {"noise": 0.05}),
    ("speckle_size", 2.0), ("noise", 0.05), ("resolution", 0.5), ("tgc", -1.0), ("dynamic_range", 60.0),
    ("mass_size", (0.15, 0.2)), ("proportions", (0.0, 0.0, 1.0)),
])
def test_every_knob_changes_the_output(knob, value):
    base = make_phantom(6, seed=8, size=64)
    changed = make_phantom(6, seed=8, size=64, **{knob: value})
    assert any(not np.array_equal(a.image, b.image) for a, b in zip(base, changed)), knob


def test_gain_and_scanners():
    mean = lambda **kw: np.mean([s.image.mean() for s in make_phantom(8, seed=9, size=64, **kw)])  # noqa: E731
    assert mean(gain=1.5) > mean() + 5 > mean(gain=0.6) + 10
    assert set(SCANNERS) == {"A", "B", "C"}
    # scanner B has coarser speckle: neighbouring pixels are more alike
    def corr(samples):
        return np.mean([np.corrcoef(s.image[10:50, 10:53].ravel(), s.image[10:50, 11:54].ravel())[0, 1] for s in samples])
    assert corr(make_phantom(6, seed=9, size=64, scanner="B")) > corr(make_phantom(6, seed=9, size=64, scanner="C")) + 0.1


def test_bad_knobs():
    with pytest.raises(TypeError, match="unknown knob"):
        make_phantom(2, contrasts=0.5)
    with pytest.raises(ValueError, match="proportions"):
        make_phantom(2, proportions=(0.5, 0.6, 0.1))
    with pytest.raises(ValueError, match="cue_strength"):
        make_phantom(2, cue_strength=1.5)
    with pytest.raises(ValueError, match="scanner"):
        make_phantom(2, scanner="Z")
    with pytest.raises(ValueError, match="at least 32"):
        make_phantom(2, size=16)
    with pytest.raises(ValueError, match="non-negative integer"):
        make_phantom(-1)
    assert dataclasses.is_dataclass(PhantomConfig) and PhantomConfig().scanner_settings()["gain"] == 1.0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 ** 31 - 1), h=st.integers(32, 100), w=st.integers(32, 100), n=st.integers(1, 4),
       cue=st.floats(0, 1), contrast=st.floats(0, 1), size_lo=st.floats(0.02, 0.2))
def test_property_every_sample_is_valid(seed, h, w, n, cue, contrast, size_lo):
    samples = make_phantom(n, seed=seed, size=(h, w), cue_strength=cue, contrast=contrast,
                           mass_size=(size_lo, size_lo + 0.05))
    assert len(samples) == n
    for s in samples:
        # Sample validates boxes (inside the image, x1 < x2, y1 < y2) and labels on construction; re-check it
        Sample(s.image, s.boxes, s.labels, s.image_label, s.id, s.patient)
        assert s.image.shape == (h, w) and s.image.dtype == np.uint8
        assert len(s.boxes) == int(s.image_label > 0)


def test_show_samples_writes_a_png(tmp_path):
    from wsbus.viz.samples import show_samples

    samples = make_phantom(6, seed=1, size=48)
    samples[1] = samples[1].as_weak()
    fig = show_samples(samples, ncols=4, ax_size=1.5)
    assert len(fig.axes) == 8  # 2 rows x 4 columns, the last two empty
    titles = [ax.get_title() for ax in fig.axes[:6]]
    assert titles[0] == f"{samples[0].id}: benign" and titles[1].endswith("(weak)")
    n_boxes = sum(len(ax.patches) for ax in fig.axes)
    assert n_boxes == sum(len(s.boxes) for s in samples if s.is_strong)
    colours = {tuple(p.get_edgecolor()[:3]) for ax in fig.axes for p in ax.patches}
    assert colours <= {(0x2c / 255, 0xa0 / 255, 0x2c / 255), (0xd6 / 255, 0x27 / 255, 0x28 / 255)}
    path = tmp_path / "grid.png"
    fig.savefig(path, dpi=50)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000
    with pytest.raises(ValueError, match="at least one"):
        show_samples([])
