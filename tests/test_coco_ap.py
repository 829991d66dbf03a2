"""coco_ap / average_precision: equal to pycocotools' own COCOeval, run here on the same data, to 1e-12.

COCOeval is built in each test from pycocotools' COCO objects (ground truth as a dataset dict, detections through
``COCO.loadRes``), independently of torchmetrics, which wsbus uses to run it.
"""
from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

from wsbus.evaluate import COCO_IOU_THRESHOLDS, COCO_RECALL_THRESHOLDS, average_precision, coco_ap

torch.set_num_threads(1)
EPS = np.spacing(1)  # COCOeval's precision is tp / (tp + fp + eps): a perfect detector scores 1 / (1 + eps)


def det(boxes, labels, scores):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64), "scores": torch.tensor(scores, dtype=torch.float32)}


def gt(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64)}


NONE, NORMAL = det([], [], []), gt([], [])
BOX = [10.0, 10.0, 20.0, 20.0]


def _xywh(b):
    x1, y1, x2, y2 = (float(v) for v in b)
    return [x1, y1, x2 - x1, y2 - y1]


def reference_cocoeval(detections, truth, cat_ids=(1, 2)):
    """(AP, AP50) per category and over both, straight from COCOeval.summarize; nan where COCOeval says -1."""
    images = [{"id": i} for i in range(len(truth))]
    boxes = [(i, _xywh(b), c) for i, g in enumerate(truth) for b, c in zip(g["boxes"].tolist(), g["labels"].tolist())]
    anns = [{"id": k + 1, "image_id": i, "category_id": int(c), "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for k, (i, b, c) in enumerate(boxes)]
    results = [{"image_id": i, "category_id": int(c), "bbox": _xywh(b), "score": float(s)}
               for i, d in enumerate(detections)
               for b, c, s in zip(d["boxes"].tolist(), d["labels"].tolist(), d["scores"].tolist()) if c in cat_ids]
    out = {}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": anns,
                           "categories": [{"id": c, "name": str(c)} for c in cat_ids]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        for key, cats in (("mAP", list(cat_ids)), ("benign", [1]), ("malignant", [2])):
            e = COCOeval(coco_gt, coco_dt, "bbox")
            e.params.catIds = cats
            e.evaluate()
            e.accumulate()
            e.summarize()
            out[key] = tuple(math.nan if v == -1 else float(v) for v in e.stats[:2])
    return {"ap": {k: v[0] for k, v in out.items()}, "ap50": {k: v[1] for k, v in out.items()}}


def random_set(seed):
    """Images with 0-3 masses (normal, benign, malignant, mixed) and 0-6 detections: near hits, duplicates, wrong
    classes, other labels, tied scores; integer boxes in even seeds, so that IoUs and recalls hit thresholds
    exactly."""
    g = np.random.default_rng(seed)
    detections, truth = [], []
    for _ in range(int(g.integers(8, 30))):
        k = int(g.choice([0, 1, 1, 1, 2, 3]))
        centre = g.uniform(20, 100, (k, 2))
        half = g.uniform(4, 20, (k, 2))
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        labels = g.integers(1, 3, k)
        n_det = int(g.integers(0, 7))
        src = boxes[g.integers(0, k, n_det)] if k else g.uniform(0, 100, (n_det, 4))
        jitter = g.normal(0, g.choice([1.0, 4.0, 10.0]), (n_det, 4))
        d = src + jitter
        d_boxes = np.concatenate([np.minimum(d[:, :2], d[:, 2:]), np.maximum(d[:, :2], d[:, 2:])], axis=1)
        if seed % 2 == 0:
            boxes, d_boxes = np.round(boxes), np.round(d_boxes)
        d_labels = g.choice([1, 2, 1, 2, 3], n_det)
        scores = np.round(g.uniform(0, 1, n_det), 1 if seed % 3 == 0 else 6)  # coarse scores tie
        truth.append(gt(boxes.tolist(), labels.tolist()))
        detections.append(det(d_boxes.tolist(), d_labels.tolist(), scores.tolist()))
    return detections, truth


def test_thresholds_are_pycocotools_own_float64_values():
    p = Params(iouType="bbox")
    assert list(COCO_IOU_THRESHOLDS) == p.iouThrs.tolist()
    assert list(COCO_RECALL_THRESHOLDS) == p.recThrs.tolist()
    # torchmetrics' defaults (torch.linspace in float32) are not: 0.07 -> 0.0700000003, 0.6 -> 0.6000000238
    assert torch.linspace(0.0, 1.0, 101).tolist()[7] > COCO_RECALL_THRESHOLDS[7] == 0.07
    assert torch.linspace(0.5, 0.95, 10).tolist()[2] > COCO_IOU_THRESHOLDS[2] == 0.6


@pytest.mark.parametrize("seed", range(30))
def test_equals_cocoeval_on_random_sets(seed):
    detections, truth = random_set(seed)
    ours = coco_ap(detections, truth)
    ref = reference_cocoeval(detections, truth)
    for metric in ("ap50", "ap"):
        for key in ("benign", "malignant", "mAP"):
            a, b = ours[metric][key], ref[metric][key]
            assert (math.isnan(a) and math.isnan(b)) or abs(a - b) < 1e-12, (metric, key, a, b)
    assert average_precision(detections, truth) == ours["ap50"]
    assert 0 < ours["ap50"]["mAP"] < 0.99  # the set is not degenerate


@pytest.mark.parametrize("seed", [1, 6, 22])
def test_random_sets_where_torchmetrics_defaults_differ_from_cocoeval(seed):
    # Three of the 30 sets above: torchmetrics' float32 default thresholds move AP by more than 1e-4 there
    # (recall thresholds in sets 1 and 22, IoU thresholds in set 6), while coco_ap still equals COCOeval.
    detections, truth = random_set(seed)
    ref = reference_cocoeval(detections, truth)
    tm = _torchmetrics_default_map(detections, truth)
    assert max(abs(float(tm["map"]) - ref["ap"]["mAP"]), abs(float(tm["map_50"]) - ref["ap50"]["mAP"])) > 1e-4
    ours = coco_ap(detections, truth)
    assert abs(ours["ap"]["mAP"] - ref["ap"]["mAP"]) < 1e-12 and abs(ours["ap50"]["mAP"] - ref["ap50"]["mAP"]) < 1e-12


def test_hand_worked_ap50_with_a_duplicate_and_ap_over_iou_thresholds():
    # Benign: masses in images 0 and 1. Ranked detections: 0.9 on image 0's mass (TP), 0.8 the same box again (a
    # duplicate: FP), 0.7 on image 1's mass (TP). Precision / recall: (1, 1/2), (1/2, 1/2), (2/3, 1); interpolated
    # precision is 1 at recall 0.00 ... 0.50 (51 points) and 2/3 at 0.51 ... 1.00 (50 points).
    detections = [det([BOX, BOX], [1, 1], [0.9, 0.8]), det([BOX], [1], [0.7]),
                  det([[0, 0, 10, 6]], [2], [0.6]), NONE]
    truth = [gt([BOX], [1]), gt([BOX], [1]), gt([[0, 0, 10, 10]], [2]), NORMAL]
    benign = (51 * 1 / (1 + EPS) + 50 * 2 / (3 + EPS)) / 101
    # Malignant: one mass, one detection with IoU 60 / 100 = 0.6 exactly: matched at IoU 0.50, 0.55 and 0.60 of
    # the ten thresholds, so AP50 = 1 and AP@[.5:.95] = 3 / 10 (each times 1 / (1 + eps)).
    ap = coco_ap(detections, truth)
    assert ap["ap50"]["benign"] == pytest.approx(benign, abs=1e-15)
    assert ap["ap50"]["malignant"] == pytest.approx(1 / (1 + EPS), abs=1e-15)
    assert ap["ap"]["malignant"] == pytest.approx(0.3 / (1 + EPS), abs=1e-15)
    assert ap["ap"]["benign"] == pytest.approx(benign, abs=1e-15)  # IoU 1: matched at every threshold
    assert ap["ap50"]["mAP"] == pytest.approx((benign + 1 / (1 + EPS)) / 2, abs=1e-15)


def test_detections_on_normal_images_are_false_positives():
    # One benign mass found with score 0.5; a benign box on a normal image outranks it (0.9). Ranked: FP, TP:
    # precision 1/2 at recall 1, so the interpolated precision is 1/2 everywhere: AP = 1/2.
    ap = coco_ap([det([BOX], [1], [0.5]), det([BOX], [1], [0.9])], [gt([BOX], [1]), NORMAL])
    assert ap["ap50"]["benign"] == pytest.approx(0.5, abs=1e-12)
    assert math.isnan(ap["ap50"]["malignant"]) and ap["ap50"]["mAP"] == ap["ap50"]["benign"]
    # Without the normal image, the same mass scores AP 1: AP uses every detection, whatever its score.
    assert coco_ap([det([BOX], [1], [0.5])], [gt([BOX], [1])])["ap50"]["benign"] == pytest.approx(1, abs=1e-12)
    # A class with boxes but no detection has AP 0; no ground truth at all: nan everywhere.
    assert coco_ap([NONE], [gt([BOX], [2])])["ap"]["malignant"] == 0.0
    assert all(math.isnan(v) for v in coco_ap([det([BOX], [1], [0.9])], [NORMAL])["ap"].values())


def _torchmetrics_default_map(detections, truth):
    from torchmetrics.detection import MeanAveragePrecision

    m = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
    m.update(detections, truth)
    return m.compute()


def test_minimal_cases_where_torchmetrics_float32_thresholds_differ_from_cocoeval():
    # (1) One mass, one detection with IoU exactly 0.6: COCOeval matches it at IoU 0.50, 0.55, 0.60 -> AP 0.3;
    # torchmetrics' default IoU thresholds hold 0.6000000238 and miss the third -> 0.2.
    d1, t1 = [det([[0, 0, 10, 6]], [1], [0.9])], [gt([[0, 0, 10, 10]], [1])]
    # (2) Five masses, three found (recall 3/5 = 0.6 exactly): COCOeval's AP50 = 61/101; torchmetrics' default
    # recall thresholds hold 0.6000000238, so the point at recall 0.60 falls to the next (none) -> 60/101.
    d2 = [det([BOX], [1], [0.9]), det([BOX], [1], [0.8]), det([BOX], [1], [0.7]), NONE, NONE]
    t2 = [gt([BOX], [1])] * 5
    for d, t, metric, ref, default in ((d1, t1, "ap", 0.3, 0.2), (d2, t2, "ap50", 61 / 101, 60 / 101)):
        cocoeval = reference_cocoeval(d, t)[metric]["benign"]
        assert cocoeval == pytest.approx(ref / (1 + EPS), abs=1e-15)
        assert abs(coco_ap(d, t)[metric]["benign"] - cocoeval) < 1e-12
        tm = _torchmetrics_default_map(d, t)
        tm_value = float(tm["map"] if metric == "ap" else tm["map_50"])
        assert tm_value == pytest.approx(default, abs=1e-6), \
            "torchmetrics' default thresholds changed: docs/decisions_pending/metrics.md and the ap.py note can go"


def test_iou_threshold_and_max_detections_are_checked():
    for bad in (0, 1, 1.5, -0.1, float("nan"), "0.5", None):
        with pytest.raises(ValueError, match=r"iou_thresh must be (in|a number in) \(0, 1\)"):
            average_precision([NONE], [NORMAL], iou_thresh=bad)
    with pytest.raises(ValueError, match="max_detections"):
        coco_ap([NONE], [NORMAL], max_detections=5)
    # one IoU threshold: a detection with IoU 0.6 is matched at 0.6 (COCO's >=), not at 0.61
    d, t = [det([[0, 0, 10, 6]], [1], [0.9])], [gt([[0, 0, 10, 10]], [1])]
    assert average_precision(d, t, iou_thresh=0.6)["benign"] > 0.99
    assert average_precision(d, t, iou_thresh=0.61)["benign"] == 0.0
