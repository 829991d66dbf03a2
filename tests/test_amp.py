"""Mixed precision: the detector under ``torch.autocast`` (bfloat16 on CPU; float16 + GradScaler on CUDA).

* a short bf16 training of the tiny detector on the phantom through ``Trainer(amp=True)`` runs the network in
  bfloat16, stays finite and its loss falls;
* under autocast the training losses are float32 scalars with finite gradients, for strong, weak and mixed batches;
* boxes are decoded in float32 under autocast (anchors, proposals, detections): bfloat16 would round a coordinate
  near 600 px to a multiple of 4 px; checked against torchvision's ``BoxCoder`` run in float32;
* on CUDA (skipped without a GPU): float16 with a GradScaler.
"""
from __future__ import annotations

import statistics

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder

from conftest import DETECTOR_SIZE, detector_images, strong_target
from wsbus.models import LOSS_KEYS, build_detector

torch.set_num_threads(1)


def test_bf16_trainer_run_is_finite_and_learns():
    from wsbus.data import make_phantom
    from wsbus.engine import Trainer

    data = make_phantom(24, seed=0, size=96)
    torch.manual_seed(0)
    net = build_detector("tiny", min_size=96, max_size=96)
    dtypes = set()
    net.backbone[0].register_forward_hook(lambda m, i, o: dtypes.add(o.dtype))
    trainer = Trainer(net, data[:12], data[12:], mode="joint", steps=30, amp=True, device="cpu", lr=1e-3, seed=0,
                      progress=False, tensorboard=False)
    assert trainer.amp_dtype == torch.bfloat16 and not trainer.scaler.is_enabled()  # no scaler for bf16
    history = trainer.fit()
    assert dtypes == {torch.bfloat16}  # the convolutions really ran in bfloat16
    losses = history.losses
    assert len(losses) == 30
    for record in history:
        assert all(torch.isfinite(torch.tensor(record[k])) for k in ("loss",) + LOSS_KEYS), record
    first, last = statistics.mean(losses[:10]), statistics.mean(losses[-10:])
    assert last < 0.8 * first, (first, last)
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert all(p.dtype == torch.float32 for p in net.parameters())  # autocast never casts the weights


@pytest.mark.parametrize("kind", ["strong", "weak", "joint"])
def test_losses_under_autocast_are_float32_with_finite_gradients(tiny_detector, kind):
    targets = {"strong": [strong_target(1), strong_target(2)],
               "weak": [{"image_label": 1}, {"image_label": 2}],
               "joint": [strong_target(2), {"image_label": 1}]}[kind]
    tiny_detector.train()
    tiny_detector.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = tiny_detector(detector_images(2), targets)
    assert set(losses) == set(LOSS_KEYS)
    for k, v in losses.items():
        assert v.dtype == torch.float32 and v.dim() == 0 and torch.isfinite(v), (k, v)
    sum(losses.values()).backward()
    grads = [p.grad for p in tiny_detector.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    if kind != "strong":
        assert losses["loss_mil"] > 0
    if kind != "weak":
        assert losses["loss_classifier"] > 0


def test_bf16_losses_are_close_to_float32(tiny_detector):
    tiny_detector.train()
    targets = [strong_target(2), {"image_label": 1}, {"image_label": 2}]
    out = {}
    for name, enabled in (("fp32", False), ("bf16", True)):
        torch.manual_seed(5)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            out[name] = tiny_detector(detector_images(3), targets)
    for k in ("loss_objectness", "loss_classifier", "loss_mil"):
        # bfloat16 keeps ~3 significant digits; the sampled anchors/RoIs may differ where scores tie
        assert out["bf16"][k].item() == pytest.approx(out["fp32"][k].item(), rel=0.1, abs=0.02), k


def test_boxes_are_decoded_in_float32_under_autocast(tiny_detector):
    tiny_detector.eval()
    seen = {}

    def grab_head(module, inputs, output):
        seen["deltas"] = output[1][0]

    def grab_anchors(module, inputs, output):
        seen["anchors"] = output[0]

    h1 = tiny_detector.rpn.head.register_forward_hook(grab_head)
    h2 = tiny_detector.rpn.anchor_generator.register_forward_hook(grab_anchors)
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            detections = tiny_detector(detector_images(1, size=DETECTOR_SIZE))
            (proposals, logits), = tiny_detector.proposal_logits(detector_images(1, size=DETECTOR_SIZE))
    finally:
        h1.remove()
        h2.remove()
    assert seen["deltas"].dtype == torch.bfloat16           # the network ran in bfloat16 ...
    assert seen["anchors"].dtype == torch.float32           # ... the box arithmetic did not
    assert proposals.dtype == torch.float32
    for key in ("boxes", "scores"):
        assert detections[0][key].dtype == torch.float32
    # Independent check: torchvision's BoxCoder on the same (bf16) deltas, upcast, against float32 anchors gives
    # exactly the candidate boxes the RPN ranked; every kept proposal is one of them (after clipping to the image).
    deltas = seen["deltas"]  # [1, A*4, H, W] -> [H*W*A, 4] in torchvision's order
    n, a4, h, w = deltas.shape
    deltas = deltas.view(n, a4 // 4, 4, h, w).permute(0, 3, 4, 1, 2).reshape(-1, 4).float()
    coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    candidates = coder.decode_single(deltas, seen["anchors"]).clamp(0, DETECTOR_SIZE)
    dist = torch.cdist(proposals, candidates, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
    assert dist.max() < 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_with_grad_scaler_on_cuda():
    from wsbus.data import make_phantom
    from wsbus.engine import Trainer

    data = make_phantom(12, seed=0, size=96)
    torch.manual_seed(0)
    net = build_detector("tiny", min_size=96, max_size=96)
    trainer = Trainer(net, data[:6], data[6:], mode="joint", steps=6, amp=True, device="cuda", seed=0,
                      progress=False, tensorboard=False)
    assert trainer.amp_dtype == torch.float16 and trainer.scaler.is_enabled()
    history = trainer.fit()
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in history)
    net.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        det = net([torch.from_numpy(data[0].image).float().div(255)[None].cuda()])
    assert det[0]["boxes"].dtype == torch.float32 and det[0]["boxes"].device.type == "cuda"
