"""froc (FROC curves counted as the reference's voc_eval_bus), plot_froc, and froc_cpm (the lesion-level FROC of
LUNA16 / nnDetection and its CPM), against hand-worked numbers and an independent recount."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from wsbus.data import Sample
from wsbus.evaluate import (FROC_FP_RATES, REFERENCE_FROC_THRESHOLDS, CPMResult, FROCResult, corloc, froc, froc_cpm,
                            interpolate_froc)
from wsbus.viz.detections import plot_froc


def _det(boxes, labels, scores):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64), "scores": torch.tensor(scores, dtype=torch.float32)}


def _gt(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels)}


T = [1.0, 0.8, 0.6, 0.4, 0.2, 0.0]

# Four test images (IoU threshold 0.5, strictly greater):
#   image 0, benign mass A = (0, 0, 10, 10):
#       d0 benign    A itself           0.90  hit (IoU 1)
#       d1 benign    (1, 1, 10, 10)     0.70  hit (IoU 81/100), a DUPLICATE of d0: not a false positive
#       d2 benign    (50, 50, 60, 60)   0.50  miss -> benign FP
#       d3 malignant A                  0.30  no malignant mass here -> malignant FP (right place, wrong class)
#   image 1, malignant mass B = (20, 20, 40, 40):
#       d0 malignant (20, 20, 40, 30)   0.45  IoU 200/400 = 0.5 exactly, not > 0.5 -> malignant FP
#       d1 malignant (22, 22, 40, 40)   0.25  hit (IoU 324/400)
#       d2 benign    B                  0.85  no benign mass here -> benign FP
#   image 2, normal: d0 benign (5, 5, 15, 15) 0.65 -> benign FP; d1 malignant, same box, 0.15 -> malignant FP
#   image 3, benign mass C = (30, 30, 50, 50), no detection: never found
DETS = [
    _det([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60], [0, 0, 10, 10]], [1, 1, 1, 2], [0.9, 0.7, 0.5, 0.3]),
    _det([[20, 20, 40, 30], [22, 22, 40, 40], [20, 20, 40, 40]], [2, 2, 1], [0.45, 0.25, 0.85]),
    _det([[5, 5, 15, 15], [5, 5, 15, 15]], [1, 2], [0.65, 0.15]),
    _det([], [], []),
]
GTS = [_gt([[0, 0, 10, 10]], [1]), _gt([[20, 20, 40, 40]], [2]), _gt([], []), _gt([[30, 30, 50, 50]], [1])]

# Benign (n = 2 images with a benign mass: 0 and 3). Image 0 is found from t <= 0.90 on; image 3 never.
#   detected at T:         0    1    1    1    1    1
#   FPs (0.85, 0.65, 0.5): 0    1    2    3    3    3      -> per image (/ 2): 0, .5, 1, 1.5, 1.5, 1.5
# Malignant (n = 1: image 1), found from t <= 0.25 on.
#   detected:              0    0    0    0    1    1
#   FPs (0.45, 0.3, 0.15): 0    0    0    1    2    3      -> per image (/ 1)
# Overall = the mean of the two class curves (the reference's "all" curve).
BENIGN_DETECTED, BENIGN_FP = [0, 1, 1, 1, 1, 1], [0, 1, 2, 3, 3, 3]
MALIGNANT_DETECTED, MALIGNANT_FP = [0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 2, 3]


def test_hand_worked_per_class_and_overall():
    r = froc(DETS, GTS, thresholds=T)
    assert isinstance(r, FROCResult)
    assert r.thresholds.tolist() == T
    assert r.n_images == {"benign": 2, "malignant": 1, "normal": 1, "total": 4}
    assert r.detected["benign"].tolist() == BENIGN_DETECTED and r.false_positives["benign"].tolist() == BENIGN_FP
    assert r.detected["malignant"].tolist() == MALIGNANT_DETECTED
    assert r.false_positives["malignant"].tolist() == MALIGNANT_FP
    np.testing.assert_allclose(r.sensitivity["benign"], [0, .5, .5, .5, .5, .5])
    np.testing.assert_allclose(r.fp_per_image["benign"], [0, .5, 1, 1.5, 1.5, 1.5])
    np.testing.assert_allclose(r.sensitivity["malignant"], [0, 0, 0, 0, 1, 1])
    np.testing.assert_allclose(r.fp_per_image["malignant"], [0, 0, 0, 1, 2, 3])
    np.testing.assert_allclose(r.sensitivity["overall"], [0, .25, .25, .25, .75, .75])
    np.testing.assert_allclose(r.fp_per_image["overall"], [0, .25, .5, 1.25, 1.75, 2.25])
    # thresholds are sorted from high to low, duplicates dropped; the same counts in any order given
    r2 = froc(DETS, GTS, thresholds=[0.0, 0.4, 1.0, 0.2, 0.8, 0.6, 0.4])
    assert r2.thresholds.tolist() == T and r2.false_positives["benign"].tolist() == BENIGN_FP


def test_voc_plus_one_turns_the_borderline_box_into_a_hit():
    # With +1 pixel widths image 1's d0 has IoU 21*11 / (21*21) = 0.524 > 0.5: the mass is found from t <= 0.45
    # and d0 is no longer a false positive (the other boxes do not change sides).
    r = froc(DETS, GTS, thresholds=T, voc_plus_one=True)
    assert r.detected["malignant"].tolist() == [0, 0, 0, 1, 1, 1]
    assert r.false_positives["malignant"].tolist() == [0, 0, 0, 0, 1, 2]
    assert r.detected["benign"].tolist() == BENIGN_DETECTED and r.false_positives["benign"].tolist() == BENIGN_FP
    assert r.voc_plus_one is True


def test_normal_image_duplicates_and_wrong_class():
    box = [[10, 10, 30, 30]]
    # one benign mass found three times (two duplicates): 1 detected, 0 false positives
    dup = froc([_det(box * 3, [1, 1, 1], [0.9, 0.8, 0.7])], [_gt(box, [1])], thresholds=[0.5])
    assert dup.detected["benign"].tolist() == [1] and dup.false_positives["benign"].tolist() == [0]
    # the same detections on a normal image: all three are false positives; no image has a mass, so the
    # reference's per-image rates (divided by the images of the class) are undefined
    normal = froc([_det(box * 3, [1, 1, 1], [0.9, 0.8, 0.7])], [_gt([], [])], thresholds=[0.5, 0.75])
    assert normal.false_positives["benign"].tolist() == [2, 3] and normal.n_images["normal"] == 1
    assert np.isnan(normal.fp_per_image["benign"]).all() and np.isnan(normal.sensitivity["overall"]).all()
    # a normal image added to a benign one: its false positives count, it adds no image to n_benign
    mixed = froc([_det(box, [1], [0.9]), _det(box * 3, [1, 1, 1], [0.9, 0.8, 0.7])], [_gt(box, [1]), _gt([], [])],
                 thresholds=[0.5])
    assert mixed.fp_per_image["benign"].tolist() == [3.0] and mixed.sensitivity["benign"].tolist() == [1.0]
    # the right box with the wrong class: a malignant false positive, and the benign mass is not found
    wrong = froc([_det(box, [2], [0.9])], [_gt(box, [1])], thresholds=[0.5])
    assert wrong.detected["benign"].tolist() == [0] and wrong.false_positives["malignant"].tolist() == [1]
    # only benign images: the overall curve is the benign one (the malignant curve is nan)
    assert np.isnan(wrong.sensitivity["malignant"]).all()
    assert wrong.sensitivity["overall"].tolist() == wrong.sensitivity["benign"].tolist() == [0.0]
    # labels other than 1 and 2 are ignored (as in corloc)
    other = froc([_det(box * 2, [0, 3], [0.9, 0.9])], [_gt(box, [1])], thresholds=[0.5])
    assert other.false_positives["benign"].tolist() == [0] and other.false_positives["malignant"].tolist() == [0]


def test_mixed_image_counts_each_class_separately():
    # one image with a benign and a malignant mass (the reference evaluates each class on its own)
    gt = _gt([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2])
    det = _det([[0, 0, 10, 10], [0, 0, 10, 10]], [1, 2], [0.9, 0.8])  # benign found; malignant at the wrong place
    r = froc([det], [gt], thresholds=[0.5])
    assert r.n_images == {"benign": 1, "malignant": 1, "normal": 0, "total": 1}
    assert r.detected["benign"].tolist() == [1] and r.false_positives["benign"].tolist() == [0]
    assert r.detected["malignant"].tolist() == [0] and r.false_positives["malignant"].tolist() == [1]


def test_threshold_above_every_score_and_score_at_threshold():
    r = froc(DETS, GTS, thresholds=[0.95, 0.9])
    # 0.95 is above every score: nothing counts; a score equal to the threshold counts (score >= t)
    assert r.sensitivity["overall"].tolist() == [0.0, 0.25] and r.fp_per_image["overall"].tolist() == [0.0, 0.0]
    assert r.detected["benign"].tolist() == [0, 1]
    one = froc([_det([[0, 0, 10, 10]], [1], [1.0])], [_gt([[0, 0, 10, 10]], [1])], thresholds=[1.0])
    assert one.sensitivity["benign"].tolist() == [1.0]
    empty = froc([_det([], [], []) for _ in GTS], GTS)  # no detection at all: sensitivity 0, no FP
    assert (empty.sensitivity["overall"] == 0).all() and (empty.fp_per_image["overall"] == 0).all()


def _random_set(seed, n=40):
    g = torch.Generator().manual_seed(seed)
    dets, gts = [], []
    for i in range(n):
        k = int(torch.randint(0, 3, (1,), generator=g))  # 0 (normal), 1 or 2 masses
        xy = torch.rand(k, 2, generator=g) * 60
        gt_boxes = torch.cat([xy, xy + 10 + torch.rand(k, 2, generator=g) * 30], dim=1)
        cls = 1 + int(torch.randint(0, 2, (1,), generator=g))
        gts.append({"boxes": gt_boxes, "labels": torch.full((k,), cls)})
        d = int(torch.randint(0, 6, (1,), generator=g))
        jitter = (torch.rand(d, 4, generator=g) - 0.5) * 16
        base = gt_boxes[torch.randint(0, k, (d,), generator=g)] if k else torch.tensor([[20.0, 20, 40, 40]]).repeat(d, 1)
        boxes = base + jitter
        boxes = torch.cat([torch.minimum(boxes[:, :2], boxes[:, 2:]), torch.maximum(boxes[:, :2], boxes[:, 2:])], 1)
        scores = torch.round(torch.rand(d, generator=g) * 20) / 20  # many scores exactly on the 0.05 grid
        scores[: d // 2] = torch.rand(d // 2, generator=g)
        dets.append({"boxes": boxes, "labels": 1 + torch.randint(0, 2, (d,), generator=g), "scores": scores})
    return dets, gts


@pytest.mark.parametrize("voc_plus_one", [False, True])
def test_per_class_sensitivity_is_corloc_at_each_threshold(voc_plus_one):
    """Per class, FROC sensitivity at threshold t and corloc(score_thresh=t) are the same number for every t:
    both count the images having a mass of the class in which a same-class detection with score >= t has
    IoU > iou_thresh with one of them. Overall they differ in general (FROC averages the two class curves, corloc
    pools the images with a mass); they coincide when no image holds both classes and the two classes have the
    same number of images (checked below), or when the class sensitivities are equal."""
    dets, gts = _random_set(1)
    r = froc(dets, gts, voc_plus_one=voc_plus_one)  # the reference's 21 thresholds, on scores on that grid
    for j, t in enumerate(r.thresholds):
        c = corloc(dets, gts, score_thresh=float(t), voc_plus_one=voc_plus_one)
        for key in ("benign", "malignant"):
            assert r.sensitivity[key][j] == c[key], (key, t)
    # equal class sizes, no mixed image: the mean of the class curves is the pooled CorLoc
    benign = [i for i, g in enumerate(gts) if g["labels"].numel() and int(g["labels"][0]) == 1]
    malignant = [i for i, g in enumerate(gts) if g["labels"].numel() and int(g["labels"][0]) == 2]
    keep = benign[:min(len(benign), len(malignant))] + malignant[:min(len(benign), len(malignant))]
    d2, g2 = [dets[i] for i in keep], [gts[i] for i in keep]
    r2 = froc(d2, g2, thresholds=[0.7, 0.45, 0.3])
    for j, t in enumerate(r2.thresholds):
        assert r2.sensitivity["overall"][j] == pytest.approx(corloc(d2, g2, score_thresh=float(t)).overall)
    # the hand-worked set has 2 benign images and 1 malignant: there they differ (0.75 vs pooled 2/3 at t = 0.2)
    assert froc(DETS, GTS, thresholds=[0.2]).sensitivity["overall"][0] == 0.75
    assert corloc(DETS, GTS, score_thresh=0.2).overall == pytest.approx(2 / 3)


def test_monotone_in_the_threshold():
    dets, gts = _random_set(2, n=60)
    r = froc(dets, gts, thresholds=np.linspace(0, 1, 41))
    assert r.thresholds[0] == 1.0 and r.thresholds[-1] == 0.0 and np.all(np.diff(r.thresholds) < 0)
    for key in ("benign", "malignant"):  # a lower threshold keeps every detection a higher one keeps
        assert np.all(np.diff(r.detected[key]) >= 0) and np.all(np.diff(r.false_positives[key]) >= 0)
    for key in ("benign", "malignant", "overall"):
        assert np.all(np.diff(r.sensitivity[key]) >= 0) and np.all(np.diff(r.fp_per_image[key]) >= 0)
    assert r.false_positives["benign"][-1] + r.false_positives["malignant"][-1] > 0  # not vacuous


def test_default_thresholds_samples_and_json():
    r = froc(DETS, GTS)
    assert r.thresholds.tolist() == list(REFERENCE_FROC_THRESHOLDS) and len(r.thresholds) == 21
    assert r.thresholds[2] == 0.9 and r.thresholds[-1] == 0.0
    # ground truth as Samples gives the same curves
    images = [np.zeros((64, 64), np.uint8)] * 4
    samples = [Sample(im, g["boxes"].numpy(), g["labels"].numpy(), int(g["labels"].max()) if g["labels"].numel() else 0,
                      f"s{i}") for i, (im, g) in enumerate(zip(images, GTS))]
    rs = froc(DETS, samples)
    for key in ("benign", "malignant", "overall"):
        np.testing.assert_array_equal(rs.sensitivity[key], r.sensitivity[key])
        np.testing.assert_array_equal(rs.fp_per_image[key], r.fp_per_image[key])
    d = json.loads(json.dumps(r.as_dict()))
    assert d["thresholds"][:3] == [1.0, 0.95, 0.9] and d["n_images"]["benign"] == 2
    assert d["false_positives"]["malignant"][-1] == 3 and d["sensitivity"]["overall"][-1] == 0.75
    assert json.loads(json.dumps(froc([_det([], [], [])], [_gt([[0, 0, 5, 5]], [1])]).as_dict()))[
        "sensitivity"]["malignant"][0] is None  # nan -> null
    assert "benign n=2" in repr(r)


def test_sensitivity_at_fp_rates():
    r = froc(DETS, GTS, thresholds=T)
    # overall points (fp, sens): (0, 0) (.25, .25) (.5, .25) (1.25, .25) (1.75, .75) (2.25, .75)
    assert r.sensitivity_at().tolist() == [0.0, 0.25, 0.25, 0.25, 0.75, 0.75, 0.75]
    assert list(FROC_FP_RATES) == [0.125, 0.25, 0.5, 1, 2, 4, 8]
    # benign points: (0, 0) (.5, .5) (1, .5) (1.5, .5) ...; malignant: (0, 0) x3, (1, 0), (2, 1), (3, 1)
    assert r.sensitivity_at([0.4, 0.5], which="benign").tolist() == [0.0, 0.5]
    assert r.sensitivity_at([1.9, 2.0], which="malignant").tolist() == [0.0, 1.0]
    strict = froc(DETS, GTS, thresholds=[0.0])  # only the loosest point (fp 2.25): nothing at a lower rate
    assert strict.sensitivity_at([1.0, 3.0]).tolist() == [0.0, 0.75]
    with pytest.raises(KeyError, match="'everything'"):
        r.sensitivity_at(which="everything")
    with pytest.raises(ValueError, match="fp_rates must be finite"):
        r.sensitivity_at([-1.0])


def test_bad_input_errors():
    with pytest.raises(ValueError, match=r"thresholds must lie in \[0, 1\]"):
        froc(DETS, GTS, thresholds=[0.5, 1.5])
    with pytest.raises(ValueError, match=r"thresholds must lie in \[0, 1\]"):
        froc(DETS, GTS, thresholds=[math.nan])
    with pytest.raises(ValueError, match="thresholds is empty"):
        froc(DETS, GTS, thresholds=[])
    with pytest.raises(TypeError, match="thresholds must be a sequence of numbers"):
        froc(DETS, GTS, thresholds="0.5")
    with pytest.raises(ValueError, match="iou_thresh must be in"):
        froc(DETS, GTS, iou_thresh=2)
    with pytest.raises(ValueError, match="detections has 3 images but ground_truth has 4"):
        froc(DETS[:3], GTS)
    with pytest.raises(ValueError, match=r"detections\[1\] is missing \['scores'\]"):
        froc([DETS[0], {"boxes": DETS[1]["boxes"], "labels": DETS[1]["labels"]}], GTS[:2])
    with pytest.raises(ValueError, match=r"ground_truth\[0\].*labels must be 1 \(benign\) or 2"):
        froc(DETS[:1], [_gt([[0, 0, 10, 10]], [3])])
    with pytest.raises(TypeError, match="plot_froc needs a FROCResult"):
        plot_froc({"sensitivity": {}})


def test_plot_froc():
    from matplotlib.figure import Figure

    r = froc(DETS, GTS, thresholds=T)
    fig = plot_froc(r, fp_rates=FROC_FP_RATES)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    labels = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert labels == ["benign (n=2)", "malignant (n=1)", "overall (mean of the classes)"]
    benign = ax.get_lines()[0]
    np.testing.assert_allclose(benign.get_ydata(), 100 * r.sensitivity["benign"])
    # the zero-FP point sits a decade below the smallest positive rate (0.25, overall) on the log axis
    assert benign.get_xdata()[0] == pytest.approx(0.025)
    # drawing into given axes returns their figure; a class without images is left out
    other = Figure()
    ax2 = other.subplots()
    only_benign = froc([_det([[0, 0, 10, 10]], [1], [0.9])], [_gt([[0, 0, 10, 10]], [1])])
    assert plot_froc(only_benign, ax=ax2) is other
    assert [ln.get_label() for ln in ax2.get_lines() if not ln.get_label().startswith("_")] == [
        "benign (n=1)", "overall (mean of the classes)"]


# --------------------------------------------------------------------------------------------------------------
# froc_cpm: the lesion-level FROC and its CPM
# --------------------------------------------------------------------------------------------------------------
def test_cpm_hand_worked_on_the_same_images():
    # Masses: A (image 0, benign), B (image 1, malignant), C (image 3, benign): 3 masses in 4 images.
    # A is found at 0.90 (its duplicate at 0.70 is neither hit nor FP), B at 0.25 (0.45 has IoU exactly 0.5:
    # a FP), C never. False positives: 0.85 (benign on B), 0.65 and 0.15 (normal image), 0.5 (benign beside A),
    # 0.45 (malignant, IoU 0.5), 0.3 (malignant on the benign A).
    r = froc_cpm(DETS, GTS)
    assert isinstance(r, CPMResult) and (r.n_masses, r.n_images) == (3, 4)
    np.testing.assert_allclose(r.thresholds, [math.inf, 0.9, 0.85, 0.65, 0.5, 0.45, 0.3, 0.25, 0.15], rtol=1e-6)
    np.testing.assert_allclose(r.sensitivity, np.array([0, 1, 1, 1, 1, 1, 1, 2, 2]) / 3)
    np.testing.assert_allclose(r.fp_per_image, np.array([0, 0, 1, 2, 3, 4, 5, 5, 6]) / 4)
    # 1/8 .. 1: sensitivity 1/3 (A only); 2, 4, 8 lie beyond the last point (1.5 FP per image): its 2/3.
    np.testing.assert_allclose(r.sensitivity_at_rates, [1 / 3] * 4 + [2 / 3] * 3)
    assert r.cpm == pytest.approx((4 / 3 + 3 * 2 / 3) / 7)
    # the reference curve of the same images divides by the images of each class and averages the classes
    assert froc(DETS, GTS).sensitivity_at().tolist() != r.sensitivity_at_rates.tolist()


def test_cpm_interpolates_linearly_between_false_positive_counts():
    # Image 0 (benign A): A at 0.9, a miss at 0.8; image 1 (malignant B): B at 0.8, tied with that miss;
    # image 2 normal: a malignant box at 0.5; image 3 (malignant C): nothing. Thresholds inf, 0.9, 0.8, 0.5:
    # found 0, 1, 2, 2 of 3; FPs 0, 0, 1, 2 over 4 images.
    a, b, c = [0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 70, 70]
    dets = [_det([a, [80, 80, 90, 90]], [1, 1], [0.9, 0.8]), _det([b], [2], [0.8]), _det([a], [2], [0.5]),
            _det([], [], [])]
    gts = [_gt([a], [1]), _gt([b], [2]), _gt([], []), _gt([c], [2])]
    r = froc_cpm(dets, gts)
    np.testing.assert_allclose(r.fp_per_image, [0, 0, 0.25, 0.5])
    np.testing.assert_allclose(r.sensitivity, [0, 1 / 3, 2 / 3, 2 / 3])
    # At 1/8 FP per image: halfway from (0, 1/3) to (0.25, 2/3) -> 1/2 (a step rule would give 1/3).
    np.testing.assert_allclose(r.sensitivity_at_rates, [0.5] + [2 / 3] * 6)
    assert r.cpm == pytest.approx((0.5 + 6 * 2 / 3) / 7)
    np.testing.assert_allclose(r.sensitivity_at_rates, np.interp(FROC_FP_RATES, r.fp_per_image, r.sensitivity))
    # One class alone: the malignant masses B and C, the malignant boxes only.
    m = froc_cpm(dets, gts, classes=[2])
    assert (m.n_masses, m.classes) == (2, (2,))
    np.testing.assert_allclose(m.sensitivity, [0, 0.5, 0.5])
    np.testing.assert_allclose(m.fp_per_image, [0, 0, 0.25])
    assert m.cpm == pytest.approx(0.5)
    assert json.loads(json.dumps(r.as_dict(), allow_nan=False))["thresholds"][0] is None  # inf -> null


def test_interpolate_froc_at_curve_points_between_them_and_beyond():
    fp = np.array([0, 0, 0, 1, 1, 2, 2, 2.0])
    sens = np.array([0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    got = interpolate_froc(fp, sens, [0, 0.5, 1, 1.5, 2, 3])
    np.testing.assert_allclose(got, [0.2, 0.25, 0.4, 0.45, 0.7, 0.7])  # top of a run; top -> next bottom; end
    np.testing.assert_allclose(got, np.interp([0, 0.5, 1, 1.5, 2, 3], fp, sens))
    with pytest.raises(ValueError, match="fp_rates must be finite, non-negative"):
        interpolate_froc(fp, sens, [-1])
    with pytest.raises(ValueError, match="starts at 0 false positives"):
        interpolate_froc(np.array([0.5, 1.0]), np.array([0.1, 0.2]), [1])


def _plain_iou(a, b):
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _recount(dets, gts, t):
    """Masses found and false positives at threshold t, by plain Python loops."""
    found = fps = 0
    for d, g in zip(dets, gts):
        kept = [(b, c) for b, c, s in zip(d["boxes"].tolist(), d["labels"].tolist(), d["scores"].tolist())
                if s >= t and c in (1, 2)]
        truth = list(zip(g["boxes"].tolist(), g["labels"].tolist()))
        found += sum(any(c == k and _plain_iou(b, m) > 0.5 for b, c in kept) for m, k in truth)
        fps += sum(not any(c == k and _plain_iou(b, m) > 0.5 for m, k in truth) for b, c in kept)
    return found, fps


def _random_images(n, seed, masses=(0, 1, 1, 2)):
    g = np.random.default_rng(seed)
    dets, gts = [], []
    for _ in range(n):
        k = int(g.choice(masses))
        centre, half = g.uniform(20, 100, (k, 2)), g.uniform(5, 15, (k, 2))
        boxes = np.round(np.concatenate([centre - half, centre + half], 1))
        n_det = int(g.integers(0, 5))
        src = boxes[g.integers(0, k, n_det)] if k else g.uniform(10, 100, (n_det, 4))
        d = src + g.normal(0, 4, (n_det, 4))
        d = np.round(np.concatenate([np.minimum(d[:, :2], d[:, 2:]), np.maximum(d[:, :2], d[:, 2:])], 1))
        dets.append(_det(d.tolist(), g.choice([1, 2, 1, 2, 0], n_det).tolist(), np.round(g.uniform(0, 1, n_det), 2)))
        gts.append(_gt(boxes.tolist(), g.integers(1, 3, k).tolist()))
    return dets, gts


@pytest.mark.parametrize("seed", range(6))
def test_cpm_curve_equals_an_independent_recount(seed):
    dets, gts = _random_images(40, seed)
    r = froc_cpm(dets, gts)
    n_masses = sum(len(g["labels"]) for g in gts)
    assert r.n_masses == n_masses and r.n_images == 40
    for t, sens, fp in zip(r.thresholds, r.sensitivity, r.fp_per_image):
        found, fps = _recount(dets, gts, t)
        assert (sens, fp) == (found / n_masses, fps / 40), t
    np.testing.assert_allclose(r.sensitivity_at_rates, np.interp(FROC_FP_RATES, r.fp_per_image, r.sensitivity))
    assert r.cpm == pytest.approx(float(np.mean(r.sensitivity_at_rates)))
    assert 0 < r.cpm < 1


@pytest.mark.parametrize("cls, key", [(1, "benign"), (2, "malignant")])
def test_one_class_curve_is_corloc_at_its_thresholds_with_one_mass_per_image(cls, key):
    dets, gts = _random_images(50, 7, masses=(0, 1))
    r = froc_cpm(dets, gts, classes=[cls])
    for t, sens in zip(r.thresholds[1:], r.sensitivity[1:]):
        assert sens == corloc(dets, gts, score_thresh=float(t))[key]


def test_cpm_edge_cases_and_errors():
    none = [_det([], [], []) for _ in GTS]
    r = froc_cpm(none, GTS)
    assert r.cpm == 0.0 and r.thresholds.tolist() == [math.inf] and r.sensitivity_at_rates.tolist() == [0.0] * 7
    normal_only = froc_cpm([DETS[2]], [GTS[2]])
    assert math.isnan(normal_only.cpm) and normal_only.n_masses == 0 and normal_only.fp_per_image[-1] == 2.0
    assert json.loads(json.dumps(normal_only.as_dict(), allow_nan=False))["cpm"] is None
    assert "cpm=nan" in repr(normal_only) and "cpm=47.62%" in repr(froc_cpm(DETS, GTS))
    with pytest.raises(ValueError, match="classes must be a non-empty subset"):
        froc_cpm(DETS, GTS, classes=[0, 1])
    with pytest.raises(ValueError, match="classes must be a non-empty subset"):
        froc_cpm(DETS, GTS, classes=[])
    with pytest.raises(ValueError, match="fp_rates must be finite"):
        froc_cpm(DETS, GTS, fp_rates=[1, math.inf])
    for bad in (0, 1, 1.2):
        with pytest.raises(ValueError, match=r"iou_thresh must be in \(0, 1\)"):
            froc_cpm(DETS, GTS, iou_thresh=bad)
