"""wsbus.losses: hand-worked numbers and agreement with torchvision's own loss code."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers

from wsbus.losses import REFERENCE_MIL_WEIGHTS, fast_rcnn_loss, mil_loss, rpn_loss

torch.set_num_threads(1)


def _smooth_l1(x, beta=1 / 9):
    """Smooth L1 written out by hand (not torch's), for the hand-worked checks."""
    x = abs(x)
    return 0.5 * x * x / beta if x < beta else x - 0.5 * beta


# --------------------------------------------------------------------------- rpn_loss by hand
def _four_anchor_example():
    # p = sigmoid(logit): 0.5, 0.75, 0.25, (ignored)
    objectness = torch.tensor([0.0, math.log(3.0), -math.log(3.0), 5.0], requires_grad=True)
    labels = torch.tensor([1, 0, 1, -1])
    deltas = torch.tensor([[0.05, -0.5, 0.0, 1.0],
                           [9.0, 9.0, 9.0, 9.0],
                           [0.1, 0.0, 0.0, -0.02],
                           [1.0, 1.0, 1.0, 1.0]], requires_grad=True)
    # Targets of non-positive anchors are never used; make them non-finite as torchvision does for normal images.
    targets = torch.tensor([[0.0, 0.0, 0.0, 0.0],
                            [-math.inf, 0.0, math.inf, 0.0],
                            [0.0, 0.0, 0.0, 0.0],
                            [math.nan, 0.0, 0.0, 0.0]])
    return objectness, deltas, labels, targets


def test_rpn_loss_four_anchors_by_hand():
    objectness, deltas, labels, targets = _four_anchor_example()
    loss_cls, loss_reg = rpn_loss(objectness, deltas, labels, targets)
    # L_cls = -log[p p* + (1-p)(1-p*)]: anchor 0 (p=.5, p*=1) -> ln 2; anchor 1 (p=.75, p*=0) -> ln 4;
    # anchor 2 (p=.25, p*=1) -> ln 4; anchor 3 ignored. N_cls = 3.
    assert loss_cls.item() == pytest.approx((math.log(2) + 2 * math.log(4)) / 3, rel=1e-6)
    reg_sum = (_smooth_l1(0.05) + _smooth_l1(-0.5) + _smooth_l1(0.0) + _smooth_l1(1.0)
               + _smooth_l1(0.1) + _smooth_l1(0.0) + _smooth_l1(0.0) + _smooth_l1(-0.02))
    # hand values of smooth L1 with beta = 1/9: 0.01125 + 0.4444 + 0 + 0.9444 + 0.045 + 0.0018
    assert reg_sum == pytest.approx(0.01125 + (0.5 - 1 / 18) + (1 - 1 / 18) + 0.045 + 0.0018, rel=1e-12)
    assert loss_reg.item() == pytest.approx(reg_sum / 3, rel=1e-6)  # torchvision: N_reg = N_cls = 3

    # The paper's normalisation: lambda = 10, N_reg = number of anchor locations.
    _, loss_reg_paper = rpn_loss(objectness, deltas, labels, targets, lam=10.0, n_reg=2400)
    assert loss_reg_paper.item() == pytest.approx(10 * reg_sum / 2400, rel=1e-6)

    (loss_cls + loss_reg).backward()
    assert torch.isfinite(objectness.grad).all() and torch.isfinite(deltas.grad).all()
    assert objectness.grad[3] == 0 and (deltas.grad[[1, 3]] == 0).all()
    # d/dx of mean BCE = (sigmoid(x) - p*) / N_cls
    assert objectness.grad[:3].tolist() == pytest.approx([(0.5 - 1) / 3, 0.75 / 3, (0.25 - 1) / 3], rel=1e-5)


def test_rpn_loss_degenerate_cases_are_graph_connected_zeros():
    objectness = torch.randn(6, requires_grad=True)
    deltas = torch.randn(6, 4, requires_grad=True)
    targets = torch.full((6, 4), -math.inf)
    loss_cls, loss_reg = rpn_loss(objectness, deltas, torch.full((6,), -1), targets)
    assert loss_cls.item() == 0 and loss_reg.item() == 0
    (loss_cls + loss_reg).backward()
    assert (objectness.grad == 0).all() and (deltas.grad == 0).all()
    # negatives only (a normal image): regression loss is zero, classification is not
    loss_cls, loss_reg = rpn_loss(objectness, deltas, torch.zeros(6, dtype=torch.long), targets)
    assert loss_reg.item() == 0
    assert loss_cls.item() == pytest.approx(F.softplus(objectness).mean().item(), rel=1e-6)


def test_rpn_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match="box_deltas"):
        rpn_loss(torch.zeros(4), torch.zeros(3, 4), torch.zeros(4), torch.zeros(4, 4))
    with pytest.raises(ValueError, match="labels"):
        rpn_loss(torch.zeros(4), torch.zeros(4, 4), torch.zeros(5), torch.zeros(4, 4))


# --------------------------------------------------------------------------- rpn_loss vs torchvision
def _torchvision_rpn_quantities(seed=0):
    torch.manual_seed(seed)
    anchor_gen = AnchorGenerator(sizes=((16, 32, 64),), aspect_ratios=((0.5, 1.0, 2.0),))
    rpn = RegionProposalNetwork(anchor_gen, RPNHead(8, 9), 0.7, 0.3, 256, 0.5,
                                {"training": 500, "testing": 100}, {"training": 100, "testing": 50}, 0.7)
    images = ImageList(torch.zeros(3, 1, 96, 96), [(96, 96)] * 3)
    features = [torch.randn(3, 8, 12, 12)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 50.0, 40.0], [60.0, 50.0, 90.0, 94.0]])},
               {"boxes": torch.zeros((0, 4))},  # a normal image: targets encode to -inf
               {"boxes": torch.tensor([[20.0, 20.0, 44.0, 70.0]])}]
    objectness, deltas = rpn.head(features)
    anchors = rpn.anchor_generator(images, features)
    objectness, deltas = concat_box_prediction_layers(objectness, deltas)
    labels, matched = rpn.assign_targets_to_anchors(anchors, targets)
    regression_targets = rpn.box_coder.encode(matched, anchors)
    return rpn, objectness, deltas, labels, regression_targets


def test_rpn_loss_equals_torchvision_compute_loss():
    rpn, objectness, deltas, labels, regression_targets = _torchvision_rpn_quantities()
    torch.manual_seed(123)
    tv_cls, tv_reg = rpn.compute_loss(objectness, deltas, labels, regression_targets)
    # Same random state -> the same anchors drawn by torchvision's balanced sampler.
    torch.manual_seed(123)
    pos, neg = rpn.fg_bg_sampler(labels)
    pos, neg = torch.cat(pos).bool(), torch.cat(neg).bool()
    sampled = torch.full(pos.shape, -1)
    sampled[neg] = 0
    sampled[pos] = 1
    assert 0 < int(pos.sum()) < int((sampled >= 0).sum()) == 3 * 256
    cls, reg = rpn_loss(objectness, deltas, sampled, torch.cat(regression_targets))
    torch.testing.assert_close(cls, tv_cls, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(reg, tv_reg, rtol=1e-6, atol=1e-7)

    g_tv = torch.autograd.grad(tv_cls + tv_reg, list(rpn.head.parameters()), retain_graph=True)
    g = torch.autograd.grad(cls + reg, list(rpn.head.parameters()))
    for a, b in zip(g, g_tv):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)

    # the paper's normalisation differs from torchvision's by the factor lam * N_cls / N_reg
    n_loc = 3 * 12 * 12
    _, reg_paper = rpn_loss(objectness, deltas, sampled, torch.cat(regression_targets), lam=10.0, n_reg=n_loc)
    torch.testing.assert_close(reg_paper, tv_reg * 10.0 * (3 * 256) / n_loc, rtol=1e-5, atol=1e-8)


# --------------------------------------------------------------------------- fast_rcnn_loss
def test_fast_rcnn_loss_equals_torchvision():
    torch.manual_seed(1)
    logits = torch.randn(10, 3, requires_grad=True)
    box_regression = torch.randn(10, 12, requires_grad=True)
    labels = [torch.tensor([0, 1, 2, 0, 0, 2]), torch.tensor([0, 0, 0, 0])]  # 2nd image: background only
    targets = [torch.randn(6, 4), torch.full((4, 4), -math.inf)]
    tv = fastrcnn_loss(logits, box_regression, labels, targets)
    ours = fast_rcnn_loss(logits, box_regression, labels, targets)
    for a, b in zip(ours, tv):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    g_tv = torch.autograd.grad(sum(tv), [logits, box_regression], retain_graph=True)
    g = torch.autograd.grad(sum(ours), [logits, box_regression])
    for a, b in zip(g, g_tv):
        torch.testing.assert_close(a, b)
    # tensors instead of lists give the same
    cat = fast_rcnn_loss(logits, box_regression, torch.cat(labels), torch.cat(targets))
    torch.testing.assert_close(cat[0], ours[0])
    torch.testing.assert_close(cat[1], ours[1])


def test_fast_rcnn_loss_by_hand():
    logits = torch.zeros(2, 3)
    box_regression = torch.zeros(2, 12)
    box_regression[1, 8:12] = torch.tensor([0.5, 0.0, 0.0, 0.0])  # class-2 deltas of RoI 1
    labels = torch.tensor([0, 2])
    targets = torch.zeros(2, 4)
    cls, box = fast_rcnn_loss(logits, box_regression, labels, targets)
    assert cls.item() == pytest.approx(math.log(3))
    assert box.item() == pytest.approx(_smooth_l1(0.5) / 2)


# --------------------------------------------------------------------------- mil_loss
def test_mil_loss_by_hand():
    # row 0: uniform logits, label benign -> -log(1/3); row 1: p_M = 2 / (1 + 1 + 2), label malignant -> ln 2
    logits = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, math.log(2.0)]], requires_grad=True)
    labels = torch.tensor([1, 2])
    assert mil_loss(logits, labels).item() == pytest.approx((math.log(3) + math.log(2)) / 2, rel=1e-6)
    w_n, w_b, w_m = REFERENCE_MIL_WEIGHTS
    assert (w_n, w_b + w_m) == (0.0, pytest.approx(1.0))
    expected = (w_b * math.log(3) + w_m * math.log(2)) / (w_b + w_m)
    assert mil_loss(logits, labels, REFERENCE_MIL_WEIGHTS).item() == pytest.approx(expected, rel=1e-6)
    # the reference code's reduction divides by the batch size
    expected_batch = (w_b * math.log(3) + w_m * math.log(2)) / 2
    assert mil_loss(logits, labels, REFERENCE_MIL_WEIGHTS, reduction="batch_mean").item() == pytest.approx(
        expected_batch, rel=1e-6)


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 6), seed=st.integers(0, 10_000),
       weights=st.one_of(st.none(), st.tuples(*[st.floats(0.05, 3.0)] * 3)))
def test_mil_loss_equals_cross_entropy(b, seed, weights):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, 3, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, 3, (b,), generator=g)
    w = None if weights is None else torch.tensor(weights, dtype=torch.float64)
    torch.testing.assert_close(mil_loss(logits, labels, w), F.cross_entropy(logits, labels, weight=w))


def test_mil_loss_all_weights_zero_is_zero_with_graph():
    logits = torch.randn(3, 3, requires_grad=True)
    loss = mil_loss(logits, torch.tensor([0, 0, 0]), REFERENCE_MIL_WEIGHTS)  # normal images, w_N = 0
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros(3, 3))
    # F.cross_entropy would give nan here
    assert torch.isnan(F.cross_entropy(logits.detach(), torch.tensor([0, 0, 0]),
                                       weight=torch.tensor(REFERENCE_MIL_WEIGHTS)))
    empty = torch.zeros(0, 3, requires_grad=True)
    loss = mil_loss(empty, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0 and loss.requires_grad


def test_mil_loss_gradients_finite_and_only_on_weighted_rows():
    logits = torch.tensor([[30.0, -30.0, -30.0], [0.0, 1.0, 2.0]], requires_grad=True)
    mil_loss(logits, torch.tensor([0, 2]), (0.0, 1.0, 1.0)).backward()
    assert torch.isfinite(logits.grad).all()
    assert torch.equal(logits.grad[0], torch.zeros(3))
    p = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0)
    torch.testing.assert_close(logits.grad[1], p - torch.tensor([0.0, 0.0, 1.0]))


def test_mil_loss_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        mil_loss(torch.zeros(2, 3), torch.tensor([1, 3]))
    with pytest.raises(ValueError, match="moi_logits"):
        mil_loss(torch.zeros(3), torch.tensor([1]))
    with pytest.raises(ValueError, match="class weights"):
        mil_loss(torch.zeros(2, 3), torch.tensor([1, 2]), (1.0, 1.0))
    with pytest.raises(TypeError, match="integer"):
        mil_loss(torch.zeros(2, 3), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="reduction"):
        mil_loss(torch.zeros(2, 3), torch.tensor([1, 2]), reduction="sum")
