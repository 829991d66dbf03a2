"""Prediction on new scans: wsbus.inference.predict / iter_predict / PredictionWriter, load_detector's errors, and
`wsbus predict` (in-process), on files written here (PNG, DICOM) and a tiny detector trained for two steps."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from wsbus.checkpoint import CheckpointError
from wsbus.cli import main
from wsbus.data import DataError, make_phantom
from wsbus.inference import PredictionWriter, detect, iter_predict, load_detector, predict

SIZE = 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """``last.pt`` of a tiny detector trained two strong steps by wsbus.engine.Trainer."""
    from wsbus.engine import Trainer
    from wsbus.models import build_detector

    torch.manual_seed(0)
    model = build_detector("tiny", min_size=SIZE, max_size=SIZE, anchor_sizes=(16, 32))
    out = tmp_path_factory.mktemp("predict") / "run"
    trainer = Trainer(model, make_phantom(4, size=SIZE), None, mode="strong", steps=2, out_dir=out,
                      checkpoint_every=1, progress=False, tensorboard=False, device="cpu")
    trainer.fit()
    return out / "last.pt"


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_detector(checkpoint)


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Six phantom scans (64 px, one 64 x 80) as PNG files, and the samples they came from."""
    folder = tmp_path_factory.mktemp("scans")
    samples = make_phantom(5, size=SIZE, seed=4) + make_phantom(1, size=(SIZE, 80), seed=5)
    for s in samples:
        Image.fromarray(s.image).save(folder / f"{s.id}.png")
    return folder, samples


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in ("boxes", "labels", "scores"))


def test_predict_matches_detect_on_samples(model, scans):
    _, samples = scans
    want = detect(model, samples, batch_size=3)
    got = predict(model, samples, batch_size=3, score_thresh=0.0)
    assert [p.name for p in got] == [s.id for s in samples]
    assert all(p.ok and same(vars(p), w) for p, w in zip(got, want))
    assert sum(len(p.scores) for p in got) > 0


def test_files_arrays_and_workers_give_the_same_detections(model, scans):
    folder, samples = scans
    from_arrays = predict(model, [s.image for s in samples], batch_size=3)
    from_files = predict(model, folder, batch_size=3, num_workers=2)
    assert [p.name for p in from_files] == sorted(f"{s.id}.png" for s in samples)
    by_name = {p.name: p for p in from_files}
    for s, a in zip(samples, from_arrays):
        f = by_name[f"{s.id}.png"]
        assert same(vars(f), vars(a)) and (f.width, f.height) == (s.width, s.height)
        assert f.path == folder / f"{s.id}.png" and f.frame is None and a.path is None
    assert [p.name for p in from_arrays] == [f"image {k}" for k in range(len(samples))]


def test_score_threshold_size_and_mode_are_restored(model, scans):
    _, samples = scans
    model.train()
    heads, tr = model.roi_heads, model.transform
    saved = (heads.score_thresh, tr.min_size, tr.max_size)
    low = predict(model, samples, score_thresh=0.0)
    high = predict(model, samples, score_thresh=0.3)
    assert all(bool((p.scores >= 0.3).all()) for p in high)
    for lo, hi in zip(low, high):
        keep = lo.scores >= 0.3
        assert torch.equal(lo.boxes[keep], hi.boxes)
    assert sum(len(p.scores) for p in low) > sum(len(p.scores) for p in high)
    # below the model's own threshold (0.05): the box head's threshold is lowered for the call
    heads.score_thresh = 0.2
    try:
        lowered = predict(model, samples, score_thresh=0.0)
    finally:
        heads.score_thresh = saved[0]
    assert sum(len(p.scores) for p in lowered) == sum(len(p.scores) for p in low)
    big = predict(model, samples[:2], size=2 * SIZE, score_thresh=0.0)
    assert not all(same(vars(a), vars(b)) for a, b in zip(big, low[:2]))   # the model ran at 128 px
    assert model.training and (heads.score_thresh, tr.min_size, tr.max_size) == saved
    model.eval()


def test_unreadable_images_raise_or_are_skipped(model, scans, tmp_path):
    folder, _ = scans
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"broken\.png: cannot read image"):
        predict(model, [folder / "ph4-00000.png", bad])
    got = predict(model, [bad, folder / "ph4-00000.png"], errors="skip")
    assert [p.ok for p in got] == [False, True] and "broken.png" in got[0].error and got[0].boxes is None
    with pytest.raises(DataError, match=r"nothing: no such file or folder"):
        predict(model, tmp_path / "nothing")
    with pytest.raises(DataError, match=r"a numpy image must be uint8"):
        predict(model, np.zeros((8, 8), np.float32))
    with pytest.raises(TypeError, match=r"image 0: expected a path"):
        predict(model, [42])


def test_generator_yields_as_it_goes_and_keeps_images(model, scans):
    _, samples = scans
    it = iter_predict(model, [torch.from_numpy(s.image)[None].float() / 255 for s in samples], batch_size=2,
                      keep_images=True)
    first = next(it)
    assert first.image.dtype == torch.uint8 and first.image.shape == (1, SIZE, SIZE)
    assert np.abs(first.image[0].numpy().astype(int) - samples[0].image).max() <= 1
    it.close()
    assert not model.training


def test_load_detector_errors(tmp_path, model):
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"x\.pt' is not a wsbus checkpoint: it is a text file"):
        load_detector(tmp_path / "x.pt")
    torch.save({"model": model.state_dict()}, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match=r"bare\.pt.*holds no model config"):
        load_detector(tmp_path / "bare.pt")
    other = {**model.config, "representation_size": 32}
    torch.save({"model": model.state_dict(), "config": {"model": other}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt.*do not fit"):
        load_detector(tmp_path / "other.pt")


def test_writer_keeps_partial_results_when_interrupted(model, scans, tmp_path):
    folder, _ = scans
    preds = predict(model, folder, keep_images=True)
    with pytest.raises(KeyboardInterrupt):
        with PredictionWriter(tmp_path / "out") as w:
            for p in preds[:2]:
                w.add(p)
            raise KeyboardInterrupt
    images = json.loads((tmp_path / "out" / "images.json").read_text())
    assert images["complete"] is False and [im["name"] for im in images["images"]] == [p.name for p in preds[:2]]
    assert sorted(p.name for p in (tmp_path / "out" / "overlays").iterdir()) == sorted(p.name for p in preds[:2])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["complete"] is False and summary["n_images"] == 2


# ---------------------------------------------------------------------------------------------------------
# wsbus predict
# ---------------------------------------------------------------------------------------------------------

def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_predict_writes_every_output(checkpoint, model, scans, tmp_path, capsys):
    folder, samples = scans
    out = tmp_path / "out"
    rc = main(["predict", "--checkpoint", str(checkpoint), "--images", str(folder), "--out", str(out),
               "--score-thresh", "0.1", "--batch-size", "4", "--workers", "1", "--no-progress", "--device", "cpu"])
    assert rc == 0
    assert f"predicted {len(samples)} image(s)" in capsys.readouterr().out
    want = {p.name: p for p in predict(model, folder, score_thresh=0.1)}
    images = json.loads((out / "images.json").read_text())
    assert images["complete"] is True and images["failed"] == []
    assert [c["name"] for c in images["categories"]] == ["benign", "malignant"]
    names = {im["id"]: im["name"] for im in images["images"]}
    assert sorted(names.values()) == sorted(want)
    results = json.loads((out / "detections.json").read_text())
    assert len(results) == sum(len(p.scores) for p in want.values()) > 0
    for r in results:
        p = want[names[r["image_id"]]]
        x, y, w, h = r["bbox"]
        hit = (p.boxes - torch.tensor([x, y, x + w, y + h])).abs().max(dim=1).values < 1e-4
        assert hit.any() and int(p.labels[hit][0]) == r["category_id"] and r["score"] >= 0.1
    # pycocotools reads the pair as ground-truth images + results
    from pycocotools.coco import COCO

    gt = COCO(str(out / "images.json"))
    assert len(gt.loadRes(str(out / "detections.json")).getAnnIds()) == len(results)
    rows = _rows(out / "detections.csv")
    assert len(rows) == len(results) and set(rows[0]) == {"image", "x1", "y1", "x2", "y2", "class", "score"}
    assert {r["class"] for r in rows} <= {"benign", "malignant"}
    summary = {r["image"]: r for r in _rows(out / "summary.csv")}
    for name, p in want.items():
        assert float(summary[name]["max_malignant"]) == pytest.approx(p.max_score(2))
        assert float(summary[name]["max_benign"]) == pytest.approx(p.max_score(1))
        assert int(summary[name]["n_detections"]) == len(p.scores)
    assert json.loads((out / "summary.json").read_text())["n_images"] == len(samples)
    for im in images["images"]:
        overlay = np.asarray(Image.open(out / im["overlay"]))
        assert overlay.shape == (im["height"], im["width"], 3)
        assert im["overlay"] == f"overlays/{im['name']}"          # named after the input file
        if len(want[im["name"]].scores):
            colourful = np.abs(overlay.astype(int) - overlay.mean(axis=2, keepdims=True)).max()
            assert colourful > 50                               # the boxes are coloured, the scan is gray


def test_cli_predict_dicom_and_bad_files(checkpoint, model, tmp_path, capsys, gray_image):
    pytest.importorskip("pydicom")
    from test_images import write_dicom

    d = tmp_path / "mixed"
    img = gray_image(SIZE, SIZE, 7)
    write_dicom(d / "mono.dcm", img, "MONOCHROME2")
    write_dicom(d / "rgb.dcm", np.repeat(img[..., None], 3, axis=2), "RGB")
    write_dicom(d / "cine.dcm", np.stack([img, 255 - img]), "MONOCHROME2")
    write_dicom(d / "empty.dcm", img, "MONOCHROME2")
    import pydicom

    ds = pydicom.dcmread(d / "empty.dcm")
    del ds.PixelData
    ds.save_as(d / "empty.dcm")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"
    args = ["predict", "--checkpoint", str(checkpoint), "--images", str(d), "--out", str(out), "--no-progress",
            "--workers", "0", "--device", "cpu"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "corrupt.png: cannot read image" in err and "empty.dcm: the DICOM file holds no pixel data" in err
    images = json.loads((out / "images.json").read_text())
    assert [im["name"] for im in images["images"]] == ["cine.dcm#0", "cine.dcm#1", "mono.dcm", "rgb.dcm"]
    assert [im["frame"] for im in images["images"]] == [0, 1, None, None]
    assert sorted(f["name"] for f in images["failed"]) == ["corrupt.png", "empty.dcm"]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == [
        "cine.dcm_frame0.png", "cine.dcm_frame1.png", "mono.dcm.png", "rgb.dcm.png"]
    # the same pixels read from DICOM as from an array give the same detections
    ref = predict(model, [img])[0]
    results = json.loads((out / "detections.json").read_text())
    for name in ("mono.dcm", "rgb.dcm", "cine.dcm#0"):
        image_id = next(im["id"] for im in images["images"] if im["name"] == name)
        assert len([r for r in results if r["image_id"] == image_id]) == len(ref.scores)
    summary = {r["image"]: r for r in _rows(out / "summary.csv")}
    assert summary["empty.dcm"]["status"] == "failed" and "no pixel data" in summary["empty.dcm"]["error"]
    assert main(args + ["--strict"]) == 1
    assert "2 of 6 image(s) could not be read (--strict)" in capsys.readouterr().err


def test_cli_predict_errors(checkpoint, tmp_path, capsys):
    (tmp_path / "bad.png").write_text("text")
    base = ["predict", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o"), "--no-progress", "--workers",
            "0"]
    assert main(base + ["--images", str(tmp_path / "bad.png")]) == 1          # every image failed
    assert "1 of 1 image(s) could not be read" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(base + ["--images", str(tmp_path / "empty")]) == 2
    assert "empty: no images found" in capsys.readouterr().err
    not_a_checkpoint = ["predict", "--checkpoint", str(tmp_path / "bad.png"), "--images", str(tmp_path / "bad.png"),
                        "--out", str(tmp_path / "o2")]
    assert main(not_a_checkpoint) == 2
    assert "bad.png' is not a wsbus checkpoint: it is a text file" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()                                      # nothing written before the check


def test_help_of_the_new_commands_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys\nfrom wsbus.cli import main\n"
            "for c in ['predict', 'convert', 'export']:\n"
            "    try:\n        main([c, '--help'])\n    except SystemExit:\n        pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("NO TORCH")
    for option in ("--score-thresh", "--strict", "--workers", "--to", "--format", "--opset"):
        assert option in proc.stdout
