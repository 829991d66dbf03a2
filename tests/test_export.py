"""TorchScript and ONNX export (wsbus.export, `wsbus export`): the exported files reproduce the PyTorch detections."""
from __future__ import annotations

import pytest
import torch

from wsbus.cli import main
from wsbus.export import BOX_TOLERANCE, check_export, default_check_images, export_detector, run_exported
from wsbus.inference import load_detector
from wsbus.models import build_detector

SIZE = 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random-weight detector saved as ``{"model": state_dict, "config": {"model": config}}``."""
    torch.manual_seed(1)
    model = build_detector("tiny", min_size=SIZE, max_size=SIZE)
    path = tmp_path_factory.mktemp("export") / "tiny.pt"
    torch.save({"model": model.state_dict(), "config": {"model": model.config}}, path)
    return path


def _detections(model, images):
    model.eval()
    with torch.no_grad():
        return [model([im])[0] for im in images]


def test_torchscript_reproduces_the_detector(checkpoint, tmp_path):
    out = tmp_path / "sub" / "model.pt"
    check = export_detector(checkpoint, out, "torchscript")
    assert check.passed and check.n_images == 3 and check.n_detections > 0, str(check)
    assert check.max_box_diff <= BOX_TOLERANCE["torchscript"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.pt"]         # no temporary file left
    # run it by hand, as a user would
    model = load_detector(checkpoint)
    images = default_check_images(model, 2)
    want = _detections(model, images)
    scripted = torch.jit.load(str(out))
    for img, w in zip(images, want):
        _, (got,) = scripted([img])
        assert torch.equal(got["labels"], w["labels"])
        assert torch.allclose(got["boxes"], w["boxes"], atol=BOX_TOLERANCE["torchscript"], rtol=0)


def test_the_check_fails_against_another_model(checkpoint, tmp_path):
    out = tmp_path / "model.pt"
    export_detector(checkpoint, out, "torchscript", check=False)
    torch.manual_seed(2)
    other = build_detector("tiny", min_size=SIZE, max_size=SIZE)
    check = check_export(other, out, "torchscript", default_check_images(other, 2))
    assert not check.passed and "FAILED" in str(check)


def test_onnx_reproduces_the_detector_at_another_size(checkpoint, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    check = export_detector(checkpoint, out, "onnx", size=96)
    assert check.passed and check.n_detections > 0, str(check)
    model = load_detector(checkpoint)
    images = [torch.rand(1, 70, 90, generator=torch.Generator().manual_seed(0))]   # a size not exported with
    got = run_exported(out, "onnx", images)
    native = _detections(model, images)[0]                                        # the model's own 64 px
    from wsbus.inference import model_settings

    with model_settings(model, 96, 0.05):
        resized = _detections(model, images)[0]
    assert len(got[0]["boxes"]) == len(resized["boxes"])
    assert torch.equal(got[0]["labels"], resized["labels"])
    assert torch.allclose(got[0]["boxes"], resized["boxes"], atol=BOX_TOLERANCE["onnx"], rtol=0)
    assert len(native["boxes"]) != len(resized["boxes"]) or not torch.allclose(native["boxes"], resized["boxes"])


def test_cli_export_prints_the_check(checkpoint, tmp_path, capsys, write_image, gray_image):
    write_image(tmp_path / "scan.png", gray_image(SIZE, 90, 3))
    out = tmp_path / "m.pt"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "torchscript", str(out),
                 "--images", str(tmp_path / "scan.png")]) == 0
    printed = capsys.readouterr().out
    assert f"as torchscript to {out}" in printed and "check passed: torchscript vs PyTorch on 1 image(s)" in printed
    assert out.is_file()
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert main(["export", "--checkpoint", str(tmp_path / "junk.pt"), "--format", "torchscript",
                 str(tmp_path / "x.pt")]) == 2
    assert "junk.pt' is not a wsbus checkpoint: it is a text file" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export_detector(checkpoint, tmp_path / "x", "tflite")


def test_default_check_images_have_several_shapes(checkpoint):
    model = load_detector(checkpoint)
    shapes = [tuple(im.shape[1:]) for im in default_check_images(model, 3)]
    ratios = {round(h / w, 2) for h, w in shapes}
    assert len(ratios) == 3 and any(h > w for h, w in shapes) and any(w > h for h, w in shapes), shapes


def test_a_check_that_compares_nothing_fails_and_writes_nothing(tmp_path, capsys):
    """A model that finds nothing, even at score 0.001: the check has nothing to compare, so it fails (it used to
    print "check passed ... 0 detection(s)"), and the model file is not written."""
    torch.manual_seed(1)
    model = build_detector("tiny", min_size=SIZE, max_size=SIZE)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[0] = 100.0      # background wins everywhere
    path = tmp_path / "blind.pt"
    torch.save({"model": model.state_dict(), "config": {"model": model.config}}, path)
    check = export_detector(path, tmp_path / "m.pt", "torchscript")
    assert not check.passed and check.n_detections == 0 and check.agrees
    assert "check FAILED" in str(check) and "compared nothing" in str(check)
    assert not (tmp_path / "m.pt").exists()
    assert main(["export", "--checkpoint", str(path), "--format", "torchscript", str(tmp_path / "m.pt")]) == 1
    captured = capsys.readouterr()
    assert "compared nothing" in captured.out and f"{tmp_path / 'm.pt'} was not written" in captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blind.pt"]              # no temporary file either


def test_cli_an_unreadable_check_image_stops_before_anything_is_written(checkpoint, tmp_path):
    import subprocess
    import sys

    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    out = tmp_path / "models" / "m.onnx"
    proc = subprocess.run([sys.executable, "-m", "wsbus", "export", "--checkpoint", str(checkpoint), "--format",
                           "onnx", str(out), "--images", str(tmp_path / "broken.png")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"wsbus: error: {tmp_path / 'broken.png'}: cannot read image")
    assert not (tmp_path / "models").exists()


def _snippet() -> str:
    """The Python block of docs/predict.md's Export section, as written there."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "predict.md").read_text()
    section = text[text.index("## Export"):]
    return section[section.index("```python\n") + len("```python\n"):section.index("```\n", section.index("```python"))]


def test_the_documented_snippet_runs_and_gives_predicts_detections(checkpoint, tmp_path, write_image, gray_image):
    """docs/predict.md's snippet, run as written in a fresh interpreter beside model.pt, model.onnx and scan.png,
    gives the detections `wsbus predict` writes for scan.png; without its `import torchvision` it fails."""
    pytest.importorskip("onnxruntime")
    import json
    import subprocess
    import sys

    write_image(tmp_path / "scan.png", gray_image(SIZE + 10, 90, 4))
    for fmt, name in (("torchscript", "model.pt"), ("onnx", "model.onnx")):
        assert main(["export", "--checkpoint", str(checkpoint), "--format", fmt, str(tmp_path / name)]) == 0
    assert main(["predict", "--checkpoint", str(checkpoint), "--images", str(tmp_path / "scan.png"), "--out",
                 str(tmp_path / "pred"), "--workers", "0", "--no-progress", "--no-overlays"]) == 0
    snippet = _snippet()
    dump = ("\nimport json\njson.dump({'ts': [detections[0]['boxes'].tolist(), detections[0]['scores'].tolist()], "
            "'onnx': [boxes.tolist(), scores.tolist()]}, open('got.json', 'w'))\n")
    proc = subprocess.run([sys.executable, "-c", snippet + dump], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads((tmp_path / "got.json").read_text())
    want = json.loads((tmp_path / "pred" / "detections.json").read_text())
    want_boxes = [[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in want)]
    assert len(want_boxes) > 0
    for fmt, tol in (("ts", BOX_TOLERANCE["torchscript"]), ("onnx", BOX_TOLERANCE["onnx"])):
        boxes, scores = got[fmt]
        assert len(boxes) == len(want_boxes), fmt
        assert torch.allclose(torch.tensor(sorted(boxes)), torch.tensor(sorted(want_boxes)), atol=tol, rtol=0), fmt
        assert torch.allclose(torch.tensor(sorted(scores)), torch.tensor(sorted(r["score"] for r in want)),
                              atol=1e-4, rtol=0), fmt
    without = snippet.replace("import torchvision", "pass  # import torchvision")
    assert without != snippet
    proc = subprocess.run([sys.executable, "-c", without], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "torchvision" in proc.stderr
