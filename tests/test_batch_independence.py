"""A scan's detections do not depend on the other scans of its batch, nor on the path that runs the checkpoint:
``detect`` (what ``wsbus evaluate``, ``wsbus self-train`` and ``wsbus experiment`` run), ``predict`` (``wsbus
predict``) at batch sizes 1, 2 and all at once, and the TorchScript and ONNX exports (``wsbus export``) give every
image the same detections, on images of several sizes and aspect ratios (each is padded to the detector's fixed
canvas). The same model with torchvision's batch-max padding does not: that is what the test measures."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from wsbus.data import make_phantom
from wsbus.export import export_detector, run_exported
from wsbus.inference import detect, load_detector, predict

#: square, wide, tall, smaller than the input size (upscaled), larger: every image reaches the canvas differently
SHAPES = [(64, 64), (40, 96), (96, 50), (36, 50), (80, 80)]
ATOL = 1e-4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random-weight tiny detector (min size 64, canvas 96) with a low box threshold and no practical cap on the
    detections, so that every image has dozens to compare."""
    from wsbus.models import build_detector

    torch.manual_seed(0)
    model = build_detector("tiny", min_size=64, max_size=96, box_score_thresh=0.001, box_detections_per_img=1000)
    path = tmp_path_factory.mktemp("batch") / "tiny.pt"
    torch.save({"model": model.state_dict(), "config": {"model": model.config}}, path)
    return path


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_detector(checkpoint)


@pytest.fixture(scope="module")
def samples():
    return [make_phantom(1, seed=k, size=shape)[0] for k, shape in enumerate(SHAPES)]


def _differences(a, b):
    """Why two detection sets of one image differ (empty when they agree: the same count, and every detection of
    ``b`` matched to one of ``a`` with the same label, boxes and score within ATOL)."""
    if len(a["boxes"]) != len(b["boxes"]):
        return [f"{len(a['boxes'])} vs {len(b['boxes'])} detections"]
    used = np.zeros(len(a["boxes"]), bool)
    ab, al, asc = a["boxes"].double().numpy(), a["labels"].numpy(), a["scores"].double().numpy()
    problems = []
    for box, label, score in zip(b["boxes"].double().numpy(), b["labels"].numpy(), b["scores"].double().numpy()):
        cand = np.flatnonzero(~used & (al == label))
        diff = np.abs(ab[cand] - box).max(axis=1, initial=0) + np.abs(asc[cand] - score) if len(cand) else []
        if len(cand) == 0 or diff.min() > ATOL:
            problems.append(f"no match for {label} {box.round(3).tolist()} {score:.5f}")
            continue
        used[cand[int(np.argmin(diff))]] = True
    return problems


def _assert_same(reference, other, what):
    bad = {k: d for k, (a, b) in enumerate(zip(reference, other)) if (d := _differences(a, b))}
    assert len(reference) == len(other) and not bad, f"{what}: images {bad}"


def test_detect_and_predict_agree_at_every_batch_size(model, samples):
    reference = detect(model, samples, batch_size=1)
    assert sum(len(d["boxes"]) for d in reference) > 40 * len(samples)
    for b in (2, len(samples)):
        _assert_same(reference, detect(model, samples, batch_size=b), f"detect, batch size {b}")
    for b in (1, 2, len(samples)):
        got = predict(model, [s.image for s in samples], batch_size=b, score_thresh=0.0)
        _assert_same(reference, [vars(p) for p in got], f"predict, batch size {b}")


@pytest.mark.parametrize("format", ["torchscript", "onnx"])
def test_the_exported_models_agree(checkpoint, model, samples, format, tmp_path):
    if format == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    out = tmp_path / f"model.{format}"
    check = export_detector(checkpoint, out, format)
    assert check.passed, str(check)
    reference = detect(model, samples, batch_size=len(samples))
    got = run_exported(out, format, [s.to_tensor(torch.float32) for s in samples])
    _assert_same(reference, got, f"{format} export")


def test_torchvision_batch_padding_would_not_agree(model, samples):
    """The same weights with torchvision's transform (each batch padded to its largest image): an image's
    detections change with its batch-mates, so the tests above can fail."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    old = copy.deepcopy(model)
    tr = model.transform
    old.transform = GeneralizedRCNNTransform(tr.min_size, tr.max_size, list(tr.image_mean), list(tr.image_std),
                                             size_divisible=tr.size_divisible).eval()
    alone = detect(old, samples, batch_size=1)
    together = detect(old, samples, batch_size=len(samples))
    assert sum(bool(_differences(a, b)) for a, b in zip(alone, together)) >= 2
