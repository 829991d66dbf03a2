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
