"""Structural performance invariants: cheap checks that catch a cost regression without timing anything.

* the weak branch sends exactly ONE RoI per weak image through the box head with gradient, and at most
  ``weak_proposals`` per weak image through the no-grad scoring pass; strong RoIs are not scored twice;
* weak images skip the RPN's anchor matching and loss;
* anchors are computed once per feature-map geometry (cached), equal torchvision's, and stay float32 under autocast;
* wsbus code adds no host-device synchronisation (``.item()``, ``.tolist()``, ``bool(t)``, ``nonzero``...) to a
  forward beyond a fixed, reviewed list of sites — counted with a ``TorchFunctionMode`` on the CPU, since the count
  does not depend on the device (see ``benchmarks/profile_step.py --view syncs``);
* ``channels_last`` feeds the backbone NHWC tensors and computes the same losses.

The timings themselves live in ``benchmarks/`` and ``docs/performance.md``.
"""
from __future__ import annotations

import collections
import traceback
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

import wsbus
from conftest import DETECTOR_SIZE, detector_images, strong_target
from wsbus.models import LOSS_KEYS, build_detector
from wsbus.models import CachedAnchorGenerator

torch.set_num_threads(1)

WSBUS_DIR = str(Path(wsbus.__file__).resolve().parent)
TORCHVISION_DIR = str(Path(__import__("torchvision").__file__).resolve().parent)



class HeadRows:
    """Forward hook on the box head: rows of each call and whether it ran with gradient."""

    def __init__(self, module):
        self.calls = []
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, inputs, output):
        self.calls.append((inputs[0].shape[0], torch.is_grad_enabled()))

    def remove(self):
        self.handle.remove()


def _head_calls(model, images, targets, seed=0):
    hook = HeadRows(model.roi_heads.box_head)
    try:
        model.train()
        torch.manual_seed(seed)
        losses = model(images, targets)
    finally:
        hook.remove()
    return hook.calls, losses


# --------------------------------------------------------------------------------------------------------
# the weak branch's RoI counts
# --------------------------------------------------------------------------------------------------------
def test_weak_only_batch_sends_one_roi_per_weak_image_with_gradient(tiny_detector):
    weak = [{"image_label": 1}, {"image_label": 2}, {"image_label": 0}]
    calls, losses = _head_calls(tiny_detector, detector_images(3), weak)
    grad_rows = [n for n, g in calls if g]
    nograd_rows = [n for n, g in calls if not g]
    assert grad_rows == [3]                      # exactly one MoI per weak image in the gradient pass
    assert len(nograd_rows) == 1                 # one scoring pass for the whole mini-batch
    assert 3 <= nograd_rows[0] <= 3 * tiny_detector.rpn.weak_post_nms_top_n
    assert losses["loss_mil"].requires_grad


def test_joint_batch_adds_exactly_the_weak_images_to_the_strong_head_pass(tiny_detector):
    images = detector_images(3)
    strong_calls, _ = _head_calls(tiny_detector, images[:1], [strong_target()], seed=4)
    joint = [strong_target(), {"image_label": 1}, {"image_label": 2}]
    joint_calls, _ = _head_calls(tiny_detector, images, joint, seed=4)
    # strong only: one pass with gradient over the sampled RoIs, no scoring pass
    assert [g for _, g in strong_calls] == [True]
    (n_strong,) = [n for n, _ in strong_calls]
    assert n_strong == tiny_detector.roi_heads.fg_bg_sampler.batch_size_per_image
    # joint: the same sampled RoIs plus one MoI per weak image, in ONE gradient pass; the scoring pass holds
    # only weak proposals (the strong image contributes no row to it)
    grad_rows = [n for n, g in joint_calls if g]
    nograd_rows = [n for n, g in joint_calls if not g]
    assert grad_rows == [n_strong + 2]
    assert len(nograd_rows) == 1 and nograd_rows[0] <= 2 * tiny_detector.rpn.weak_post_nms_top_n


def test_weak_images_skip_anchor_matching(tiny_detector, monkeypatch):
    seen = []
    original = tiny_detector.rpn.assign_targets_to_anchors

    def spy(anchors, targets):
        seen.append(len(targets))
        return original(anchors, targets)

    monkeypatch.setattr(tiny_detector.rpn, "assign_targets_to_anchors", spy)
    tiny_detector.train()
    tiny_detector(detector_images(3), [strong_target(), {"image_label": 1}, {"image_label": 2}])
    losses = tiny_detector(detector_images(2), [{"image_label": 1}, {"image_label": 2}])
    assert seen == [1]  # the strong image only; the weak-only batch matched nothing
    assert losses["loss_objectness"].item() == 0 and losses["loss_rpn_box_reg"].item() == 0


# --------------------------------------------------------------------------------------------------------
# anchors
# --------------------------------------------------------------------------------------------------------
def test_anchors_are_cached_per_geometry_and_equal_torchvision(monkeypatch):
    gen = CachedAnchorGenerator(sizes=((16, 32, 64),), aspect_ratios=((0.5, 1.0, 2.0),))
    reference = AnchorGenerator(sizes=((16, 32, 64),), aspect_ratios=((0.5, 1.0, 2.0),))
    calls = []
    original = gen.grid_anchors
    monkeypatch.setattr(gen, "grid_anchors", lambda *a: calls.append(1) or original(*a))

    def inputs(h, w, n=2):
        return ImageList(torch.zeros(n, 1, h, w), [(h, w)] * n), [torch.zeros(n, 8, h // 8, w // 8)]

    for _ in range(3):
        got = gen(*inputs(64, 96))
    assert len(calls) == 1                               # computed once, then served from the cache
    want = reference(*inputs(64, 96))
    assert len(got) == 2
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    gen(*inputs(96, 64, n=1))                            # a new geometry is a new entry
    assert len(calls) == 2 and len(gen._anchor_cache) == 2
    gen.to(torch.device("cpu"))                          # moving the module empties the cache
    assert len(gen._anchor_cache) == 0


def test_anchor_cache_is_bounded():
    gen = CachedAnchorGenerator(sizes=((16,),), aspect_ratios=((1.0,),), cache_size=3)
    for side in (32, 40, 48, 56, 64):
        gen(ImageList(torch.zeros(1, 1, side, side), [(side, side)]), [torch.zeros(1, 4, side // 8, side // 8)])
    assert len(gen._anchor_cache) == 3


def test_anchors_stay_float32_under_autocast():
    gen = CachedAnchorGenerator(sizes=((128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))
    images = ImageList(torch.zeros(1, 1, 608, 1008), [(608, 1008)])
    bf16_features = [torch.zeros(1, 8, 38, 63, dtype=torch.bfloat16)]
    (anchors,) = gen(images, bf16_features)
    assert anchors.dtype == torch.float32
    (exact,) = AnchorGenerator(sizes=((128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))(
        images, [bf16_features[0].float()])
    torch.testing.assert_close(anchors, exact, rtol=0, atol=0)
    # what torchvision's own generator gives on bfloat16 features: coordinates rounded by up to several pixels
    (rounded,) = AnchorGenerator(sizes=((128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))(images, bf16_features)
    assert rounded.dtype == torch.bfloat16 and (rounded.float() - exact).abs().max() >= 1.0


# --------------------------------------------------------------------------------------------------------
# host-device synchronisations added by wsbus code
# --------------------------------------------------------------------------------------------------------
_SYNC_NAMES = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu", "nonzero",
               "argwhere", "masked_select", "unique", "unique_consecutive"}


class SyncSites(TorchFunctionMode):
    """Calls that force a host-device sync on a GPU, attributed to the innermost wsbus/torchvision frame."""

    def __init__(self):
        super().__init__()
        self.sites = collections.Counter()

    @staticmethod
    def _is_sync(func, args, kwargs):
        name = getattr(func, "__name__", "")
        if name in _SYNC_NAMES:
            return True
        if name == "where" and len(args) + len(kwargs or {}) == 1:
            return True
        if name == "__getitem__" and len(args) == 2:
            idx = args[1] if isinstance(args[1], tuple) else (args[1],)
            return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in idx)
        return False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self._is_sync(func, args, kwargs):
            for frame in reversed(traceback.extract_stack()[:-1]):
                path = str(Path(frame.filename).resolve())
                if path.startswith(WSBUS_DIR):
                    self.sites[(Path(path).relative_to(WSBUS_DIR).as_posix(), frame.name)] += 1
                    break
                if path.startswith(TORCHVISION_DIR):
                    break
        return func(*args, **(kwargs or {}))


# The reviewed sites: one reduced validation flag per training forward, and rpn_loss's two nonzero() calls, which
# follow torchvision's sampler's own syncs on the same labels (see the comment in wsbus/losses.py).
ALLOWED_TRAINING_SYNCS = collections.Counter({("models/checks.py", "check_targets"): 1,
                                              ("losses.py", "rpn_loss"): 2})


@pytest.mark.parametrize("kind", ["joint", "strong", "weak"])
def test_training_forward_adds_no_unreviewed_host_syncs(tiny_detector, kind):
    targets = {"joint": [strong_target(), {"image_label": torch.tensor(1)}, {"image_label": 2}],
               "strong": [strong_target(1), strong_target(2), strong_target(1)],
               "weak": [{"image_label": torch.tensor(1)}, {"image_label": torch.tensor(2)}, {"image_label": 0}]}[kind]
    tiny_detector.train()
    with SyncSites() as counter:
        losses = tiny_detector(detector_images(3), targets)
    assert set(losses) == set(LOSS_KEYS)
    allowed = dict(ALLOWED_TRAINING_SYNCS)
    if kind == "weak":
        allowed.pop(("losses.py", "rpn_loss"))  # no strong image: no RPN loss is computed
    assert dict(counter.sites) == allowed


def test_eval_forward_adds_no_host_syncs(tiny_detector):
    tiny_detector.eval()
    with torch.no_grad(), SyncSites() as counter:
        tiny_detector(detector_images(2))
    assert dict(counter.sites) == {}


def test_sync_counter_would_catch_a_sync_added_to_the_weak_branch(monkeypatch):
    """The counter is not blind: a ``.item()`` slipped into the weak branch shows up as a new site."""
    from wsbus.models import WeakSemiRoIHeads

    original = WeakSemiRoIHeads.select_moi

    def select_moi_with_item(self, logits, labels):
        labels.sum().item()  # the kind of regression the training test must catch
        return original(self, logits, labels)

    monkeypatch.setattr(WeakSemiRoIHeads, "select_moi", select_moi_with_item)
    m = build_detector("tiny", min_size=DETECTOR_SIZE, max_size=DETECTOR_SIZE).train()
    with SyncSites() as counter:
        m(detector_images(1), [{"image_label": torch.tensor(1)}])
    # attributed to the innermost wsbus frame, the weak branch that called the patched method
    assert counter.sites[("models/roi_heads.py", "weak_moi_boxes")] == 1
    assert dict(counter.sites) != {("models/checks.py", "check_targets"): 1}


def test_sync_counter_attributes_wsbus_sites():
    from wsbus.mil import select_moi

    with SyncSites() as counter:
        select_moi(torch.randn(5, 3), "most_malignant")  # returns a Python int: one sync, by design
    assert counter.sites == {("mil.py", "select_moi"): 1}


# --------------------------------------------------------------------------------------------------------
# channels_last
# --------------------------------------------------------------------------------------------------------
def test_channels_last_feeds_the_backbone_nhwc_and_computes_the_same_losses():
    torch.manual_seed(0)
    nchw = build_detector("tiny", min_size=DETECTOR_SIZE, max_size=DETECTOR_SIZE)
    torch.manual_seed(0)
    nhwc = build_detector("tiny", min_size=DETECTOR_SIZE, max_size=DETECTOR_SIZE, channels_last=True)
    assert "channels_last" not in nhwc.config  # a layout option, not architecture: checkpoints load either way
    nhwc.load_state_dict(nchw.state_dict())
    assert nhwc.backbone[3].weight.is_contiguous(memory_format=torch.channels_last)
    formats = []
    nhwc.backbone[0].register_forward_hook(
        lambda m, i, o: formats.append(i[0].is_contiguous(memory_format=torch.channels_last)))
    targets = [strong_target(), {"image_label": 2}]
    out = {}
    for name, m in (("nchw", nchw), ("nhwc", nhwc)):
        m.train()
        torch.manual_seed(3)
        out[name] = m(detector_images(2), targets)
    assert formats == [True]
    for k in LOSS_KEYS:
        torch.testing.assert_close(out["nhwc"][k], out["nchw"][k], rtol=1e-4, atol=1e-5)
    nhwc.set_channels_last(False)
    assert nhwc.backbone[3].weight.is_contiguous()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_sync_debug_mode_reports_only_the_reviewed_wsbus_lines():
    """On a GPU, CUDA's own sync detector (which also sees blocking host-to-device copies such as
    ``torch.tensor(x, device="cuda")``, invisible to :class:`SyncSites`) flags no other wsbus line."""
    import warnings

    m = build_detector("tiny", min_size=DETECTOR_SIZE, max_size=DETECTOR_SIZE).cuda().train()
    images = [im.cuda() for im in detector_images(3)]
    targets = [{k: v.cuda() for k, v in strong_target().items()}, {"image_label": torch.tensor(1, device="cuda")},
               {"image_label": 2}]
    m(images, targets)  # warm-up: anchors cached, kernels loaded
    torch.cuda.synchronize()
    allowed = set()
    for rel, marker in (("models/detector.py", "if flags and bool("), ("losses.py", "= torch.where(labels")):
        for lineno, line in enumerate(Path(WSBUS_DIR, rel).read_text().splitlines(), start=1):
            if marker in line:
                allowed.add((rel, lineno))
    assert len(allowed) == 3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            m(images, targets)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    flagged = set()
    for w in caught:
        path = str(Path(w.filename).resolve())
        if "synchroniz" in str(w.message).lower() and path.startswith(WSBUS_DIR):
            flagged.add((Path(path).relative_to(WSBUS_DIR).as_posix(), w.lineno))
    assert flagged <= allowed, sorted(flagged - allowed)
