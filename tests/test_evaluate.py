"""wsbus.evaluate: CorLoc, AP, image-level AUC, sensitivity/specificity, FPs, tables and results.json entries.

Expected values are worked out by hand in the comments, or computed by an independent plain-Python
re-implementation of the reference code's CorLoc loop (syshin1014/wssdl_bus, voc_eval_bus.py).
"""
import json
import math

import numpy as np
import pytest
import torch

from wsbus.data import Sample
from wsbus.evaluate import (
    CorLocResult,
    MethodResult,
    add_p_values,
    average_precision,
    bootstrap_ci,
    corloc,
    evaluate_detections,
    false_positives_per_normal_image,
    format_ci,
    format_p_value,
    format_percent,
    image_auc,
    image_scores,
    paired_test,
    results_table,
    sensitivity_specificity,
    to_json_methods,
)

torch.set_num_threads(1)


def det(boxes, labels, scores):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64), "scores": torch.tensor(scores, dtype=torch.float32)}


def gt(boxes, labels, **extra):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64), **extra}


NONE = det([], [], [])
NORMAL = gt([], [])
BOX = [10.0, 10.0, 20.0, 20.0]  # 10 x 10


# ---------------------------------------------------------------------------------------------------------------
# CorLoc on hand-worked cases
# ---------------------------------------------------------------------------------------------------------------
def hand_case():
    """Six images; the expected outcome of each is in the comment."""
    detections = [
        det([[11, 10, 21, 20]], [1], [0.9]),                   # 0 benign: IoU 90/110 = 0.818 -> correct
        det([BOX], [2], [0.99]),                               # 1 benign: right place, wrong class -> wrong
        det([BOX], [2], [0.4]),                                # 2 malignant: score 0.4 < 0.5 -> wrong
        det([[10, 10, 20, 30], [0, 0, 5, 5]], [2, 2], [0.8, 0.9]),  # 3 malignant: IoU exactly 100/200 = 0.5 -> wrong
        det([[0, 0, 5, 5], [10, 10, 20, 22]], [2, 2], [0.95, 0.5]),  # 4 malignant: IoU 100/120, score == 0.5 -> ok
        det([BOX, BOX], [1, 2], [0.9, 0.9]),                   # 5 normal: not part of CorLoc
    ]
    truth = [gt([BOX], [1]), gt([BOX], [1]), gt([BOX], [2]), gt([BOX], [2]), gt([BOX], [2]), NORMAL]
    return detections, truth


def test_corloc_hand_worked():
    r = corloc(*hand_case())
    assert isinstance(r, CorLocResult)
    assert r.benign == pytest.approx(1 / 2)
    assert r.malignant == pytest.approx(1 / 3)
    assert r.overall == pytest.approx(2 / 5)
    assert r.per_image.dtype == bool
    np.testing.assert_array_equal(r.per_image, [True, False, False, False, True])
    np.testing.assert_array_equal(r.image_index, [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(r.per_class["benign"], [True, False])
    np.testing.assert_array_equal(r.class_image_index["malignant"], [2, 3, 4])
    assert r.n_images == {"overall": 5, "benign": 2, "malignant": 3}
    assert r["overall"] == r.overall
    assert "overall=40.00% (n=5)" in repr(r) and "malignant=33.33% (n=3)" in repr(r)


def test_corloc_thresholds_move_the_boundaries():
    d, t = hand_case()
    # Image 3 has IoU exactly 0.5: counted once the threshold is below it; image 2 once scores >= 0.4 count.
    assert corloc(d, t, iou_thresh=0.49).malignant == pytest.approx(2 / 3)
    assert corloc(d, t, score_thresh=0.4).malignant == pytest.approx(2 / 3)
    # Image 4's only overlapping detection has score 0.5: a stricter score threshold drops it.
    assert corloc(d, t, score_thresh=0.51).malignant == pytest.approx(0.0)


def test_corloc_any_detection_of_the_class_counts_and_order_does_not_matter():
    boxes = [[0, 0, 5, 5], [40, 40, 50, 50], [10, 10, 20, 20]]
    d = det(boxes, [1, 1, 1], [0.99, 0.98, 0.6])
    perm = [2, 0, 1]
    d_perm = {k: v[perm] for k, v in d.items()}
    t = [gt([BOX], [1])]
    assert corloc([d], t).overall == 1.0
    assert corloc([d_perm], t).overall == 1.0


def test_corloc_mixed_image_needs_every_class():
    t = [gt([BOX, [50, 50, 70, 70]], [1, 2])]
    only_benign = [det([BOX], [1], [0.9])]
    both = [det([BOX, [50, 50, 70, 70]], [1, 2], [0.9, 0.9])]
    r = corloc(only_benign, t)
    assert (r.benign, r.malignant, r.overall) == (1.0, 0.0, 0.0)
    np.testing.assert_array_equal(r.per_image, [False])
    assert corloc(both, t).overall == 1.0
    # A malignant detection on the benign box does not localise the malignant mass.
    swapped = [det([BOX], [2], [0.9])]
    assert corloc(swapped, t).malignant == 0.0


def test_corloc_class_free_asks_only_where_the_mass_is():
    d, t = hand_case()
    r = corloc(d, t, class_free=True)
    # Image 1 (benign, found as malignant) now counts; the others keep their outcome (score, IoU == 0.5).
    np.testing.assert_array_equal(r.per_image, [True, True, False, False, True])
    assert (r.benign, r.malignant) == (1.0, pytest.approx(1 / 3))
    assert r.class_free and r.as_dict()["class_free"] and "class-free" in repr(r)
    assert not corloc(d, t).class_free
    # On a mixed image a detection of either class may find either mass.
    mixed = [gt([BOX, [50, 50, 70, 70]], [1, 2])]
    assert corloc([det([BOX, [50, 50, 70, 70]], [2, 2], [0.9, 0.9])], mixed, class_free=True).overall == 1.0


def test_corloc_class_free_is_corloc_with_one_class():
    # Independent computation: relabel every detection and every box as benign and ask ordinary CorLoc.
    detections, truth = random_case(300, seed=5)
    one = [{**x, "labels": torch.ones_like(x["labels"])} for x in detections]
    truth_one = [{**x, "labels": torch.ones_like(x["labels"])} for x in truth]
    free = corloc(detections, truth, class_free=True)
    np.testing.assert_array_equal(free.per_image, corloc(one, truth_one).per_image)
    aware = corloc(detections, truth)
    assert not (aware.per_image & ~free.per_image).any()      # every CorLoc hit is a class-free hit
    assert aware.overall < free.overall < 1.0


def test_corloc_voc_plus_one_convention():
    # GT pixels 0..9 x 0..9 and a detection 0..4 x 0..9.
    # Continuous: 4*9 / (9*9) = 0.444;  VOC (+1): 5*10 / (10*10) = 0.5.
    d, t = [det([[0, 0, 4, 9]], [1], [0.9])], [gt([[0, 0, 9, 9]], [1])]
    assert corloc(d, t, iou_thresh=0.45).overall == 0.0
    assert corloc(d, t, iou_thresh=0.45, voc_plus_one=True).overall == 1.0
    assert corloc(d, t, iou_thresh=0.49, voc_plus_one=True).overall == 1.0
    assert corloc(d, t, iou_thresh=0.5, voc_plus_one=True).overall == 0.0  # strictly greater


def test_corloc_empty_classes_are_nan():
    r = corloc([NONE, det([BOX], [1], [0.9])], [NORMAL, gt([BOX], [1])])
    assert r.benign == 1.0 and math.isnan(r.malignant) and r.overall == 1.0
    assert r.n_images["malignant"] == 0 and r.per_class["malignant"].shape == (0,)
    assert all(math.isnan(v) for v in r.ci()["malignant"])
    r = corloc([NONE], [NORMAL])
    assert math.isnan(r.overall) and r.per_image.shape == (0,)
    assert "overall=nan" in repr(r)


def _reference_corloc(detections, truth, cls, iou_thresh, score_thresh, plus_one):
    """Plain-Python transcription of the reference's CorLoc loop (one class)."""
    ni = nok = 0
    for d, g in zip(detections, truth):
        gts = [b for b, l in zip(g["boxes"].tolist(), g["labels"].tolist()) if l == cls]
        if not gts:
            continue
        ni += 1
        dets = [b for b, l, s in zip(d["boxes"].tolist(), d["labels"].tolist(), d["scores"].tolist())
                if l == cls and s >= score_thresh]
        ok = False
        one = 1.0 if plus_one else 0.0
        for gb in gts:
            for db in dets:
                iw = max(min(db[2], gb[2]) - max(db[0], gb[0]) + one, 0.0)
                ih = max(min(db[3], gb[3]) - max(db[1], gb[1]) + one, 0.0)
                inter = iw * ih
                union = ((gb[2] - gb[0] + one) * (gb[3] - gb[1] + one)
                         + (db[2] - db[0] + one) * (db[3] - db[1] + one) - inter)
                if inter / union > iou_thresh:
                    ok = True
        nok += ok
    return nok, ni


def random_case(n, seed):
    g = torch.Generator().manual_seed(seed)
    detections, truth = [], []
    for i in range(n):
        label = int(torch.randint(0, 3, (1,), generator=g))
        if label == 0:
            truth.append(NORMAL)
            centre = torch.rand(2, generator=g) * 80 + 20
        else:
            centre = torch.rand(2, generator=g) * 80 + 20
            half = torch.rand(2, generator=g) * 15 + 5
            truth.append(gt([torch.cat([centre - half, centre + half]).tolist()], [label]))
        k = int(torch.randint(0, 4, (1,), generator=g))
        c = centre + torch.randn(k, 2, generator=g) * 6
        half = torch.rand(k, 2, generator=g) * 15 + 5
        boxes = torch.cat([c - half, c + half], dim=1).round()
        labels = torch.randint(1, 3, (k,), generator=g)
        scores = torch.rand(k, generator=g)
        detections.append({"boxes": boxes, "labels": labels, "scores": scores})
    return detections, truth


@pytest.mark.parametrize("plus_one", [False, True])
def test_corloc_matches_the_reference_loop_beyond_200_images(plus_one):
    # The reference stores outcomes in np.zeros((200,)) and crashes beyond 200 test images; we must not.
    detections, truth = random_case(450, seed=3)
    r = corloc(detections, truth, voc_plus_one=plus_one)
    counts = {c: _reference_corloc(detections, truth, c, 0.5, 0.5, plus_one) for c in (1, 2)}
    assert r.benign == pytest.approx(counts[1][0] / counts[1][1])
    assert r.malignant == pytest.approx(counts[2][0] / counts[2][1])
    # Single-class images: per-image overall == the reference's pooled sum(nok) / sum(ni).
    assert r.overall == pytest.approx((counts[1][0] + counts[2][0]) / (counts[1][1] + counts[2][1]))
    assert r.n_images["overall"] == counts[1][1] + counts[2][1] > 200
    assert 0.05 < r.overall < 0.95  # the case is not degenerate


def test_corloc_accepts_numpy_lists_float64_and_samples():
    d, t = hand_case()
    expected = corloc(d, t)
    d_np = [{k: v.numpy() for k, v in x.items()} for x in d]
    t_list = [{k: v.tolist() for k, v in x.items()} for x in t]
    d_64 = [{k: (v.double() if v.is_floating_point() else v) for k, v in x.items()} for x in d]
    for dd, tt in ((d_np, t_list), (d_64, t)):
        r = corloc(dd, tt)
        assert (r.benign, r.malignant, r.overall) == (expected.benign, expected.malignant, expected.overall)
    img = np.zeros((32, 32), np.uint8)
    samples = [Sample(img, np.array([BOX], np.float32), np.array([1]), 1, "a"),
               Sample(img, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), 0, "b")]
    r = corloc([det([BOX], [1], [0.9]), det([BOX], [1], [0.9])], samples)
    assert r.overall == 1.0 and r.n_images["overall"] == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_corloc_on_cuda_matches_cpu():
    d, t = random_case(60, seed=1)
    cpu = corloc(d, t)
    gpu = corloc([{k: v.cuda() for k, v in x.items()} for x in d], [{k: v.cuda() for k, v in x.items()} for x in t])
    np.testing.assert_array_equal(cpu.per_image, gpu.per_image)
    assert average_precision(d, t) == average_precision([{k: v.cuda() for k, v in x.items()} for x in d], t)
    d_gpu = [{k: v.cuda() for k, v in x.items()} for x in d]
    a, b = evaluate_detections(d, t, n_boot=50), evaluate_detections(d_gpu, t, n_boot=50)
    assert a.as_json() == b.as_json() and a.rows() == b.rows()


def test_corloc_bad_input_names_the_image():
    good_d, good_t = hand_case()
    with pytest.raises(ValueError, match="6 images but ground_truth has 5"):
        corloc(good_d, good_t[:5])
    with pytest.raises(ValueError, match=r"detections\[0\].*missing \['scores'\]"):
        corloc([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}], [NORMAL])
    with pytest.raises(ValueError, match=r"ground_truth\[0\] \(image 'case_7'\).*labels must be 1 \(benign\) or 2"):
        corloc([NONE], [gt([BOX], [0], id="case_7")])
    with pytest.raises(ValueError, match=r"detections\[0\].*shape \[N, 4\]"):
        corloc([{"boxes": torch.zeros(2, 5), "labels": torch.zeros(2), "scores": torch.zeros(2)}], [NORMAL])
    with pytest.raises(ValueError, match=r"box 0 .* inverted"):
        corloc([det([[5, 5, 1, 9]], [1], [0.9])], [gt([BOX], [1])])
    with pytest.raises(ValueError, match=r"'scores' must have shape \[1\]"):
        corloc([det([BOX], [1], [0.9, 0.8])], [gt([BOX], [1])])
    with pytest.raises(ValueError, match="NaN"):
        corloc([det([BOX], [1], [float("nan")])], [gt([BOX], [1])])
    with pytest.raises(ValueError, match=r"image 'w'.*weak sample"):
        corloc([NONE], [Sample(np.zeros((4, 4), np.uint8), None, None, 1, "w")])
    with pytest.raises(TypeError, match="one entry per image"):
        corloc(good_d[0], good_t[0])
    with pytest.raises(ValueError, match="iou_thresh must be in"):
        corloc(good_d, good_t, iou_thresh=50)
    with pytest.raises(ValueError, match="image_label 0 .* contradicts"):
        corloc([NONE], [gt([BOX], [1], image_label=0)])


# ---------------------------------------------------------------------------------------------------------------
# Average precision
# ---------------------------------------------------------------------------------------------------------------
def test_average_precision_hand_worked():
    # Benign: two GT boxes (images 0, 1). Detections ranked 0.9 (TP), 0.8 (FP, image 0 elsewhere), 0.7 (TP).
    # Precision/recall: (1, 0.5), (0.5, 0.5), (0.667, 1.0). COCO's 101-point interpolation: recall 0.00..0.50 ->
    # 1.0 (51 points), 0.51..1.00 -> 2/3 (50 points): AP = (51 + 50 * 2/3) / 101.
    # Malignant: one GT (image 2), one perfect detection -> AP 1. mAP = mean of the two.
    detections = [det([BOX, [50, 50, 60, 60]], [1, 1], [0.9, 0.8]), det([BOX], [1], [0.7]),
                  det([BOX], [2], [0.6]), NONE]
    truth = [gt([BOX], [1]), gt([BOX], [1]), gt([BOX], [2]), NORMAL]
    ap = average_precision(detections, truth)
    expected_benign = (51 + 50 * 2 / 3) / 101
    assert ap["benign"] == pytest.approx(expected_benign, abs=1e-6)
    assert ap["malignant"] == pytest.approx(1.0)
    assert ap["mAP"] == pytest.approx((expected_benign + 1) / 2, abs=1e-6)


def test_average_precision_missing_class_is_nan_and_perfect_is_one():
    ap = average_precision([det([BOX], [1], [0.3]), det([BOX], [2], [0.9])], [gt([BOX], [1]), NORMAL])
    assert ap["benign"] == pytest.approx(1.0)  # AP ignores the score threshold that CorLoc applies
    assert math.isnan(ap["malignant"]) and ap["mAP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="max_detections"):
        average_precision([NONE], [NORMAL], max_detections=5)


# ---------------------------------------------------------------------------------------------------------------
# Image-level scores, AUC, sensitivity / specificity, false positives
# ---------------------------------------------------------------------------------------------------------------
def auc_case():
    detections = [
        det([BOX, BOX], [1, 2], [0.9, 0.2]),   # benign image:   mass 0.9, malignant 0.2
        det([BOX], [1], [0.4]),                # benign image:   mass 0.4, malignant 0
        det([BOX, BOX], [2, 1], [0.6, 0.7]),   # malignant:      mass 0.7, malignant 0.6
        det([BOX], [2], [0.4]),                # malignant:      mass 0.4, malignant 0.4
        det([BOX], [1], [0.5]),                # normal:         mass 0.5
        NONE,                                  # normal:         mass 0
    ]
    truth = [gt([BOX], [1]), gt([BOX], [1]), gt([BOX], [2]), gt([BOX], [2]), NORMAL, NORMAL]
    return detections, truth


def test_image_scores():
    s = image_scores(auc_case()[0])
    np.testing.assert_allclose(s, [[0.9, 0.2], [0.4, 0.0], [0.7, 0.6], [0.0, 0.4], [0.5, 0.0], [0.0, 0.0]],
                               rtol=1e-6)


def test_image_auc_hand_worked():
    auc = image_auc(*auc_case())
    # Mass scores [0.9, 0.4, 0.7, 0.4] vs normal [0.5, 0]: pairs won 2 + 1 + 2 + 1 = 6 of 8.
    assert auc["normal_vs_mass"] == pytest.approx(6 / 8)
    # Malignant scores: malignant images [0.6, 0.4] vs benign [0.2, 0]: all 4 pairs won.
    assert auc["benign_vs_malignant"] == pytest.approx(1.0)
    assert (auc["n_normal"], auc["n_benign"], auc["n_malignant"]) == (2, 2, 2)
    # A tie counts one half: a normal image scoring 0.4 like two mass images.
    d, t = auc_case()
    d[5] = det([BOX], [2], [0.4])
    # vs 0.5: 2 wins (0.9, 0.7); vs 0.4: 2 wins + 2 ties -> (2 + 3) / 8.
    assert image_auc(d, t)["normal_vs_mass"] == pytest.approx(5 / 8)
    assert math.isnan(image_auc(d[:4], t[:4])["normal_vs_mass"])


def test_sensitivity_specificity_and_false_positives():
    d, t = auc_case()
    ss = sensitivity_specificity(d, t, score_thresh=0.5)
    # Called positive at 0.5: images 0, 2, 4 -> mass images 0, 2 of 4 found; normal 4 is a false alarm.
    assert (ss["tp"], ss["fn"], ss["tn"], ss["fp"]) == (2, 2, 1, 1)
    assert ss["sensitivity"] == 0.5 and ss["specificity"] == 0.5
    ss = sensitivity_specificity(d, t, score_thresh=0.4, positive="malignant")
    # Malignant calls at 0.4: images 2, 3 -> both malignant images; no benign/normal called malignant.
    assert (ss["tp"], ss["fn"], ss["tn"], ss["fp"]) == (2, 0, 4, 0)
    # Normal images carry 1 and 0 detections >= 0.5; at 0.6 none.
    assert false_positives_per_normal_image(d, t) == pytest.approx(0.5)
    assert false_positives_per_normal_image(d, t, score_thresh=0.6) == 0.0
    assert math.isnan(false_positives_per_normal_image(d[:4], t[:4]))
    with pytest.raises(ValueError, match="positive must be"):
        sensitivity_specificity(d, t, positive="benign")


def test_evaluate_detections_gathers_everything_as_json():
    d, t = hand_case()
    out = evaluate_detections(d, t, n_boot=200, seed=1).as_dict()
    text = json.dumps(out, allow_nan=False)  # plain JSON, no NaN
    assert json.loads(text)["corloc"] == {"overall": pytest.approx(0.4), "benign": 0.5,
                                          "malignant": pytest.approx(1 / 3)}
    r = corloc(d, t)
    assert out["per_image"] == r.per_image.tolist()
    assert tuple(out["ci"]) == tuple(out["ci_by_class"]["overall"]) == bootstrap_ci(r.per_image, n_boot=200, seed=1)
    assert out["ap50"] == pytest.approx(average_precision(d, t))
    assert out["fp_per_normal_image"] == 2.0
    assert out["n_images"]["total"] == 6 and out["n_images"]["normal"] == 1


# ---------------------------------------------------------------------------------------------------------------
# Tables and results.json entries
# ---------------------------------------------------------------------------------------------------------------
def test_cell_formats():
    assert format_percent(0.845) == "84.50"
    assert format_percent(1.0) == "100.00"
    assert format_percent(float("nan")) == "-" and format_percent(None) == "-"
    assert format_ci((0.81, 0.88)) == "81.00–88.00"
    assert format_p_value(0.0032) == "0.0032"
    assert format_p_value(0.00005) == "<0.0001"
    assert format_p_value(1e-4) == "0.0001"
    assert format_p_value(None) == "-"
    with pytest.raises(ValueError, match="not a percentage"):
        format_percent(84.5)
    with pytest.raises(ValueError, match="low > high"):
        format_ci((0.9, 0.8))


def test_table_ii_markdown_exact():
    rows = [
        {"aspect": "MoI for B / M", "variant": "most benign / most malignant", "corloc": 0.795, "ci": (0.7575, 0.835)},
        {"aspect": "MoI for B / M", "variant": "most abnormal / most malignant", "corloc": 0.82,
         "ci": (0.7825, 0.8575)},
        {"aspect": "Proposed", "variant": "most malignant | gradual | combined", "corloc": 0.845,
         "ci": (0.81, 0.88)},
    ]
    expected = (
        "| Aspect | Variant | CorLoc [%] | 95% CI [%] |\n"
        "|---|---|---:|---:|\n"
        "| MoI for B / M | most benign / most malignant | 79.50 | 75.75–83.50 |\n"
        "|  | most abnormal / most malignant | 82.00 | 78.25–85.75 |\n"
        "| Proposed | most malignant \\| gradual \\| combined | 84.50 | 81.00–88.00 |\n"
    )
    assert results_table(rows, kind="II") == expected


def test_table_iv_markdown_exact():
    rows = [
        {"name": "Initial", "corloc": 0.705, "ci": (0.66, 0.75), "n_strong": 50, "n_weak": 4974},
        {"name": "Retrained (50%)", "corloc": 0.8225, "ci": (0.785, 0.86), "n_strong": "50+4974*0.5",
         "n_weak": "4974*0.5"},
    ]
    expected = (
        "|  | Initial | Retrained (50%) |\n"
        "|---|---:|---:|\n"
        "| CorLoc [%] | 70.50 | 82.25 |\n"
        "| 95% CI [%] | 66.00–75.00 | 78.50–86.00 |\n"
        "| # strong | 50 | 50+4974*0.5 |\n"
        "| # weak | 4974 | 4974*0.5 |\n"
    )
    assert results_table(rows, kind="IV") == expected


def test_table_v_markdown_and_html_exact():
    rows = [
        {"name": "Weak only", "corloc": 0.2125, "ci": (0.1725, 0.255), "p_value": 1e-6, "n_strong": None,
         "n_weak": 5024, "supervision": "Weak"},
        {"name": "Proposed", "corloc": 0.845, "ci": (0.81, 0.88), "p_value": None, "n_strong": 800,
         "n_weak": 4224, "supervision": "Weak & Semi"},
    ]
    expected_md = (
        "|  | Weak only | Proposed |\n"
        "|---|---:|---:|\n"
        "| CorLoc [%] | 21.25 | 84.50 |\n"
        "| 95% CI [%] | 17.25–25.50 | 81.00–88.00 |\n"
        "| p-value | <0.0001 | - |\n"
        "| # strong | - | 800 |\n"
        "| # weak | 5024 | 4224 |\n"
        "| Level of supervision | Weak | Weak & Semi |\n"
    )
    assert results_table(rows, kind="V") == expected_md
    html = results_table(rows[1:], kind="V", fmt="html")
    r, l = 'style="text-align:right"', 'style="text-align:left"'
    expected_html = (
        "<table>\n<thead>\n"
        f"<tr><th {l}></th><th {r}>Proposed</th></tr>\n"
        "</thead>\n<tbody>\n"
        f"<tr><td {l}>CorLoc [%]</td><td {r}>84.50</td></tr>\n"
        f"<tr><td {l}>95% CI [%]</td><td {r}>81.00–88.00</td></tr>\n"
        f"<tr><td {l}>p-value</td><td {r}>-</td></tr>\n"
        f"<tr><td {l}># strong</td><td {r}>800</td></tr>\n"
        f"<tr><td {l}># weak</td><td {r}>4224</td></tr>\n"
        f"<tr><td {l}>Level of supervision</td><td {r}>Weak &amp; Semi</td></tr>\n"
        "</tbody>\n</table>\n"
    )
    assert html == expected_html


def test_table_errors_name_the_row():
    with pytest.raises(ValueError, match=r"rows\[0\] \('joint'\) has no 'ci'"):
        results_table([{"name": "joint", "corloc": 0.5, "n_strong": 1, "n_weak": 2}], kind="IV")
    with pytest.raises(ValueError, match=r"rows\[0\] \('joint'\) corloc must be a fraction"):
        results_table([{"name": "joint", "corloc": 84.5, "ci": None, "n_strong": 1, "n_weak": 2}], kind="IV")
    with pytest.raises(ValueError, match="kind must be"):
        results_table([{"name": "x"}], kind="III")
    with pytest.raises(ValueError, match="fmt must be"):
        results_table([{"name": "x"}], fmt="latex")


def test_method_results_json_and_p_values():
    d, t = hand_case()
    r = corloc(d, t)
    worse = corloc([NONE] * 6, t)
    joint = MethodResult.from_corloc("joint", r, n_strong=10, n_weak=90, n_boot=200, supervision="Weak & Semi")
    weak = MethodResult.from_corloc("weak_only", worse, n_strong=0, n_weak=100, n_boot=200)
    assert joint.ci == bootstrap_ci(r.per_image, n_boot=200)
    entries = to_json_methods([joint, weak])
    json.dumps({"methods": entries}, allow_nan=False)
    assert entries[0]["name"] == "joint" and entries[0]["n_strong"] == 10 and entries[0]["n_weak"] == 90
    assert entries[0]["corloc"] == {"overall": pytest.approx(0.4), "benign": 0.5, "malignant": pytest.approx(1 / 3)}
    assert entries[0]["ci"] == list(joint.ci)
    assert set(entries[1]) == {"name", "n_strong", "n_weak", "corloc", "ci"}
    with_p = add_p_values([joint, weak], reference="joint")
    assert with_p[0].p_value is None
    assert with_p[1].p_value == paired_test(worse.per_image, r.per_image).mcnemar_pvalue  # 2 discordant -> 0.5
    assert with_p[1].p_value == pytest.approx(0.5)
    table = results_table(with_p, kind="V")
    assert "| p-value | - | 0.5000 |" in table and "| CorLoc [%] | 40.00 | 0.00 |" in table
    bad = MethodResult("x", n_strong="50+10", n_weak=1, overall=0.5)
    with pytest.raises(ValueError, match="method 'x': n_strong must be a non-negative integer"):
        to_json_methods([bad])
    with pytest.raises(ValueError, match="appears twice"):
        to_json_methods([joint, joint])
