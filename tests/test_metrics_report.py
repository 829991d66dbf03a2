"""evaluate_detections -> DetectionReport (results.json keys, per-image table, CSV), the malignancy AUC, the tables'
new lines, and ``wsbus evaluate`` printing and writing them (run as a user runs it, in subprocesses)."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wsbus.cli import main
from wsbus.evaluate import (CORLOC_SCORE_THRESH, CSV_COLUMNS, DetectionReport, MethodResult, coco_ap, corloc,
                            evaluate_detections, froc_cpm, image_auc, results_table, to_json_methods)

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
BOX = [10.0, 10.0, 20.0, 20.0]


def det(boxes, labels, scores):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64), "scores": torch.tensor(scores, dtype=torch.float32)}


def gt(boxes, labels, **extra):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64), **extra}


NONE, NORMAL = det([], [], []), gt([], [])


def case():
    """Six images; what each row of the per-image table must say is in the comments (score >= 0.5, IoU > 0.5)."""
    detections = [
        det([[11, 10, 21, 20], [0, 0, 5, 5], BOX], [1, 1, 2], [0.9, 0.95, 0.4]),  # 0 benign: hit (IoU 90/110),
        #                                          a benign miss (FP); the malignant 0.4 is below the threshold
        det([BOX], [2], [0.99]),                                 # 1 benign: no benign box; malignant on it (FP)
        det([BOX], [2], [0.4]),                                  # 2 malignant: only below the threshold: miss
        det([[10, 10, 20, 30], [0, 0, 5, 5]], [2, 2], [0.8, 0.9]),  # 3 malignant: best IoU exactly 0.5: miss, 2 FPs
        det([BOX, BOX], [1, 2], [0.7, 0.6]),                     # 4 normal: two FPs; the top one is 0.7 benign
        det([BOX, [50, 50, 70, 70], [52, 50, 70, 70]], [1, 2, 2], [0.8, 0.55, 0.9]),  # 5 mixed: both found;
        #                                          malignant: the best IoU (1.0, score 0.55) beats 0.9 (IoU 0.9)
    ]
    truth = [gt([BOX], [1], id="a"), gt([BOX], [1], id="b"), gt([BOX], [2], id="c"), gt([BOX], [2], id="d"),
             gt([], [], id="e"), gt([BOX, [50, 50, 70, 70]], [1, 2], id="f")]
    return detections, truth


EXPECTED_ROWS = [
    # image, class, det_box, score, iou, hit, false positives
    ("a", "benign", "benign", "11 10 21 20", "0.900000", f"{90 / 110:.6f}", "1", "1"),
    ("b", "benign", "benign", "", "", "", "0", "1"),
    ("c", "malignant", "malignant", "", "", "", "0", "0"),
    ("d", "malignant", "malignant", "10 10 20 30", "0.800000", "0.500000", "0", "2"),
    ("e", "normal", "normal", "10 10 20 20", "0.700000", "", "", "2"),
    ("f", "malignant", "benign", "10 10 20 20", "0.800000", "1.000000", "1", "0"),
    ("f", "malignant", "malignant", "50 50 70 70", "0.550000", "1.000000", "1", "0"),
]


def test_report_as_json_has_exactly_the_results_json_keys_and_the_components_values():
    d, t = case()
    report = evaluate_detections(d, t, n_boot=200, seed=3)
    assert isinstance(report, DetectionReport)
    out = report.as_json()
    assert set(out) == {"corloc", "ci", "ap50", "ap", "froc_cpm", "auc"}
    json.dumps(out, allow_nan=False)
    cl = corloc(d, t)
    assert out["corloc"] == {"overall": cl.overall, "benign": cl.benign, "malignant": cl.malignant}
    assert (cl.benign, cl.malignant, cl.overall) == (2 / 3, 1 / 3, 2 / 5)
    assert out["ci"] == list(cl.ci(n_boot=200, seed=3)["overall"])
    assert out["ap50"] == coco_ap(d, t)["ap50"] and out["ap"] == coco_ap(d, t)["ap"]
    assert set(out["ap50"]) == {"benign", "malignant", "mAP"}
    assert out["froc_cpm"] == froc_cpm(d, t).cpm
    assert out["auc"] == image_auc(d, t)["benign_vs_malignant"]
    full = report.as_dict()
    json.dumps(full, allow_nan=False)
    assert {k: full[k] for k in out} == out
    assert full["n_images"] == {"overall": 5, "benign": 3, "malignant": 3, "normal": 1, "total": 6}
    assert full["n_masses"] == 6 and full["per_image"] == cl.per_image.tolist()
    assert "CorLoc 40.00%" in repr(report)


def test_per_image_table_hand_worked_and_consistent_with_corloc(tmp_path):
    d, t = case()
    report = evaluate_detections(d, t, n_boot=10)
    rows = report.rows()
    got = [(r["image_id"], r["image_label"], r["class"], r["det_box"], r["det_score"], r["iou"], r["hit"],
            r["false_positives"]) for r in rows]
    assert got == EXPECTED_ROWS
    assert [r["image_index"] for r in rows] == ["0", "1", "2", "3", "4", "5", "5"]
    assert rows[5]["gt_boxes"] == "10 10 20 20" and rows[6]["gt_boxes"] == "50 50 70 70"
    cl = corloc(d, t)
    for key in ("benign", "malignant"):
        hits = [r["hit"] == "1" for r in rows if r["class"] == key]
        assert hits == cl.per_class[key].tolist()
    # a CSV a user can read back, written again into the same place
    path = tmp_path / "out" / "per_image.csv"
    assert report.write_csv(path) == path
    evaluate_detections(d, t, n_boot=10, score_thresh=0.95).write_csv(path)
    with open(path, newline="") as f:
        back = list(csv.DictReader(f))
    assert tuple(back[0]) == CSV_COLUMNS and len(back) == 7
    assert back[0]["det_box"] == "0 0 5 5" and back[0]["hit"] == "0"  # at 0.95 only the benign miss counts


def test_malignancy_auc_hand_worked_with_ties_and_normal_images_left_out():
    # malignant images' highest malignant scores 0.8, 0 (none; its benign 0.99 does not count), 0.5;
    # benign images' 0.5, 0 (none), 0.3. Pairs: 0.8 wins 3; 0 ties 0 (1/2), loses 2; 0.5 ties 0.5 (1/2), wins 2:
    # (3 + 0.5 + 2.5) / 9 = 2/3. The normal image's malignant 0.99 takes no part.
    d = [det([BOX], [2], [0.8]), det([BOX], [1], [0.99]), det([BOX], [2], [0.5]),
         det([BOX], [2], [0.5]), NONE, det([BOX], [2], [0.3]), det([BOX], [2], [0.99])]
    t = [gt([BOX], [2]), gt([BOX], [2]), gt([BOX], [2]), gt([BOX], [1]), gt([BOX], [1]), gt([BOX], [1]), NORMAL]
    report = evaluate_detections(d, t, n_boot=10)
    assert report.auc == pytest.approx(2 / 3)
    assert report.as_json()["auc"] == pytest.approx(2 / 3)
    # were the normal image a negative, its 0.99 would beat every malignant image: (6 + 0) / 12
    t_as_benign = t[:6] + [gt([BOX], [1])]
    assert image_auc(d, t_as_benign)["benign_vs_malignant"] == pytest.approx(6 / 12)
    # no benign image: undefined, written as null
    only_malignant = evaluate_detections(d[:3], t[:3], n_boot=10)
    assert math.isnan(only_malignant.auc) and only_malignant.as_json()["auc"] is None


def test_thresholds_are_validated_with_clear_errors():
    d, t = case()
    for kwargs, message in ((dict(score_thresh=1.5), r"score_thresh must be in \[0, 1\]"),
                            (dict(score_thresh=-0.1), r"score_thresh must be in \[0, 1\]"),
                            (dict(score_thresh="0.5"), r"score_thresh must be a number in \[0, 1\]"),
                            (dict(iou_thresh=0.0), r"iou_thresh must be in \(0, 1\)"),
                            (dict(iou_thresh=1.0), r"iou_thresh must be in \(0, 1\)"),
                            (dict(iou_thresh=float("nan")), r"iou_thresh must be a number in \(0, 1\)"),
                            (dict(n_boot=0), "n_boot must be a positive integer"),
                            (dict(level=1.0), r"level must be in \(0, 1\)")):
        with pytest.raises(ValueError, match=message):
            evaluate_detections(d, t, **kwargs)
    assert corloc(d, t).score_thresh == CORLOC_SCORE_THRESH == 0.5
    assert evaluate_detections(d, t, n_boot=10).settings["score_thresh"] == CORLOC_SCORE_THRESH


def test_method_results_carry_the_standard_metrics_into_json_and_tables():
    d, t = case()
    report = evaluate_detections(d, t, n_boot=200)
    m = MethodResult.from_report("joint", report, n_strong=5, n_weak=20, supervision="Weak & Semi")
    assert m.ci == tuple(report.ci["overall"]) and m.per_image.tolist() == report.corloc.per_image.tolist()
    entry = to_json_methods([m])[0]
    assert {k: entry[k] for k in report.as_json()} == report.as_json()
    rows = [{"name": "A", "corloc": 0.5, "ci": (0.4, 0.6), "p_value": None, "n_strong": 1, "n_weak": 2,
             "supervision": "Strong", "ap50": {"benign": 0.5, "malignant": 0.7, "mAP": 0.6}, "ap": 0.25,
             "froc_cpm": 0.4567, "auc": 0.8125},
            {"name": "B", "corloc": 0.25, "ci": None, "p_value": 0.01, "n_strong": 1, "n_weak": 2,
             "supervision": "Weak"}]
    expected = ("|  | A | B |\n|---|---:|---:|\n| CorLoc [%] | 50.00 | 25.00 |\n| 95% CI [%] | 40.00–60.00 | - |\n"
                "| p-value | - | 0.0100 |\n| AP50 [%] | 60.00 | - |\n| AP@[.5:.95] [%] | 25.00 | - |\n"
                "| FROC CPM [%] | 45.67 | - |\n| Malignancy AUC | 0.812 | - |\n| # strong | 1 | 1 |\n"
                "| # weak | 2 | 2 |\n| Level of supervision | Strong | Weak |\n")
    assert results_table(rows, kind="V") == expected
    assert "AP50" not in results_table([rows[1]], kind="V")  # rows without the metrics: the table as before
    with pytest.raises(ValueError, match=r"rows\[0\] \('A'\) froc_cpm must be a fraction"):
        results_table([{**rows[0], "froc_cpm": 45.67}], kind="IV")


# --------------------------------------------------------------------------------------------------------------
# wsbus evaluate, as a user runs it
# --------------------------------------------------------------------------------------------------------------
def wsbus(*args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "wsbus", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluate") / "run"
    proc = wsbus("train", "--data", "phantom:60", "--mode", "joint", "--steps", "2", "--no-progress",
                 "--no-tensorboard", "--device", "cpu", "--out", out)
    assert proc.returncode == 0, proc.stderr
    return out / "last.pt"


def _library_report(checkpoint, score_thresh):
    """The same evaluation in this process: the checkpoint's test images, its detections, evaluate_detections."""
    from wsbus.checkpoint import load_checkpoint
    from wsbus.experiments import checkpoint_split
    from wsbus.inference import detect, load_detector

    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    _, sets = checkpoint_split(ckpt, "test", None, roles=("test",))
    samples = sets["test"]
    model = load_detector(ckpt, device="cpu")
    return evaluate_detections(detect(model, samples, batch_size=8), samples, score_thresh=score_thresh, n_boot=100)


def test_evaluate_prints_and_writes_every_metric_again_into_the_same_files(checkpoint, tmp_path):
    csv_path, json_path = tmp_path / "out" / "per_image.csv", tmp_path / "out" / "eval.json"
    for score in (None, "0"):
        extra = [] if score is None else ["--score-thresh", score]
        proc = wsbus("evaluate", "--checkpoint", checkpoint, "--device", "cpu", "--n-boot", "100",
                     "--csv", csv_path, "--json", json_path, *extra)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        want = 0.5 if score is None else 0.0
        assert f"score >= {want:g}," in lines[0] and "IoU > 0.5" in lines[0]
        assert [ln.split()[0] for ln in lines[2:5]] == ["benign", "malignant", "overall"]
        for prefix in ("AP50 (COCO", "AP@[.5:.95] (COCO", "FROC CPM (", "  sensitivity at 0.125:",
                       "malignancy AUC ("):
            assert any(ln.startswith(prefix) for ln in lines), prefix
        result = json.loads(json_path.read_text())
        library = _library_report(checkpoint, want)
        expected = library.as_json()
        for key in ("ap50", "ap", "froc_cpm", "auc"):
            assert result[key] == expected[key], key
        assert result["settings"]["score_thresh"] == want
        assert result["corloc"]["overall"]["corloc"] == expected["corloc"]["overall"]
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
        assert rows == library.rows()
        by_image = {}
        for r in rows:
            if r["class"] != "normal":
                by_image.setdefault(int(r["image_index"]), []).append(r["hit"] == "1")
        assert [all(h) for _, h in sorted(by_image.items())] == result["per_image"]
        assert sorted(by_image) == result["image_index"]
    # score >= 0 counts every detection: rows of images with detections name their best box
    assert any(r["det_box"] for r in rows)


def test_evaluate_refuses_bad_thresholds_and_output_paths(checkpoint, tmp_path, capsys):
    proc = wsbus("evaluate", "--checkpoint", tmp_path / "missing.pt", "--score-thresh", "1.5")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "argument --score-thresh: expected a score threshold in [0, 1], got '1.5'" in proc.stderr
    for option, value, message in (("--iou", "0", "expected an IoU threshold in (0, 1), got '0'"),
                                   ("--iou", "1", "expected an IoU threshold in (0, 1), got '1'"),
                                   ("--score-thresh", "nan", "expected a score threshold in [0, 1], got 'nan'"),
                                   ("--score-thresh", "-0.1", "expected a score threshold in [0, 1]")):
        with pytest.raises(SystemExit) as exc:
            main(["evaluate", "--checkpoint", "x.pt", option, value])
        assert exc.value.code == 2 and message in capsys.readouterr().err
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for option, path in (("--csv", a_file / "x.csv"), ("--json", tmp_path)):
        assert main(["evaluate", "--checkpoint", str(checkpoint), "--device", "cpu", option, str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"wsbus: error: {option} ") and "not a file path" in err and err.count("\n") == 1


def test_evaluate_help_states_the_library_defaults(capsys):
    from wsbus.evaluate import CORLOC_IOU_THRESH

    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default {CORLOC_SCORE_THRESH:g}, wsbus.evaluate.CORLOC_SCORE_THRESH)" in text
    assert f"(default {CORLOC_IOU_THRESH:g}, wsbus.evaluate.CORLOC_IOU_THRESH)" in text
    assert "--csv FILE" in text
