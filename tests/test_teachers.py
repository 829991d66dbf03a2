"""Teachers and pseudo-labelled targets: a given mass of interest, the ignore rule, RoI weights, MIL on pseudo-boxes,
the tag filter, the MoI and pseudo-box teachers, their state in checkpoints, and the ultrasound augmentation."""
from __future__ import annotations

import copy

import pytest
import torch
from torchvision import tv_tensors

from conftest import DETECTOR_SIZE, detector_images, strong_target
from wsbus.data import make_phantom, split, ultrasound_augmentation
from wsbus.data.transforms import apply
from wsbus.engine import EMATeacher, Trainer
from wsbus.losses import fast_rcnn_loss, mil_loss
from wsbus.models import build_detector
from wsbus.teachers import MoITeacher, PseudoBoxTeacher, tag_filter

torch.set_num_threads(1)


def _model(seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_detector("tiny", min_size=DETECTOR_SIZE, max_size=DETECTOR_SIZE, anchor_sizes=(16, 32),
                          rpn_post_nms_top_n={"training": 60, "testing": 30}, box_batch_size_per_image=16,
                          weak_proposals=10, **kw)


def test_a_given_mass_of_interest_is_what_the_mil_loss_trains():
    model = _model().train()
    images = detector_images(2)
    box = torch.tensor([8.0, 10.0, 40.0, 38.0])
    losses = model(images, [{"image_label": 2, "moi_box": box}, {"image_label": 1, "moi_box": box + 4}])
    model.eval()
    with torch.no_grad():
        il, _ = model.transform(images, None)
        feats = model.features(il.tensors)
        heads = model.roi_heads   # images are already DETECTOR_SIZE: the transform does not move the boxes
        logits, _ = heads.box_predictor(heads.box_head(heads.box_roi_pool(feats, [box[None], (box + 4)[None]],
                                                                          il.image_sizes)))
    expected = mil_loss(logits, torch.tensor([2, 1]), heads.mil_class_weights)
    assert float(losses["loss_mil"].detach()) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ValueError, match="moi_box .* degenerate"):
        model.train()(images[:1], [{"image_label": 1, "moi_box": torch.tensor([5.0, 5.0, 5.0, 9.0])}])


def test_a_teacher_equal_to_the_student_chooses_the_students_own_mass_of_interest():
    """A frozen teacher that is a copy of the student picks, among the same candidates, the same MoI: the step-0 MIL
    loss is the same with and without the teacher (an independent path: eval-mode proposals of the teacher)."""
    data = make_phantom(30, seed=1, size=DETECTOR_SIZE)
    parts = split(data, strong_fraction=0.3, n_test=6, seed=0)
    first = {}
    for name, hooks in (("own", []), ("teacher", [MoITeacher(decay=1.0)])):
        tr = Trainer(_model(), parts.strong, parts.weak, mode="joint", steps=1, progress=False, tensorboard=False,
                     hooks=hooks)
        first[name] = tr.fit()[0]["loss_mil"]
    assert first["own"] == pytest.approx(first["teacher"], rel=1e-5)


def test_partial_overlaps_with_a_pseudo_box_are_ignored_not_background():
    heads = _model().roi_heads
    gt = [torch.tensor([[10.0, 10.0, 30.0, 30.0]])]
    proposals = [torch.tensor([[10.0, 10.0, 30.0, 30.0],      # IoU 1: foreground
                               [10.0, 10.0, 30.0, 20.0],      # IoU 0.5 (fg threshold 0.5: >= is foreground)
                               [10.0, 10.0, 20.0, 20.0],      # IoU 0.25: partial overlap
                               [25.0, 25.0, 45.0, 45.0],      # IoU 25 / 775: a sliver
                               [50.0, 50.0, 60.0, 60.0]])]    # IoU 0: background
    _, plain = heads.assign_targets_to_proposals(proposals, gt, [torch.tensor([2])])
    heads._ignore_iou = [0.1]
    try:
        _, ignoring = heads.assign_targets_to_proposals(proposals, gt, [torch.tensor([2])])
    finally:
        heads._ignore_iou = None
    assert plain[0].tolist() == [2, 2, 0, 0, 0]
    assert ignoring[0].tolist() == [2, 2, -1, 0, 0]    # 0.25 > 0.1 ignored; 0.032 and 0 stay background


def test_weighted_fast_rcnn_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    regression = torch.zeros(3, 12)
    labels = torch.tensor([0, 1, 2])
    targets = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0], [0.0, 0.05, 0.0, 0.0]])
    w = torch.tensor([1.0, 0.5, 0.25])
    ce = -torch.log_softmax(logits, 1)[torch.arange(3), labels]
    smooth = torch.tensor([0.0, 0.5 - 0.5 / 9, 0.5 * 0.05 ** 2 * 9])   # smooth-L1 (beta 1/9) of each RoI's error
    cls, reg = fast_rcnn_loss(logits, regression, labels, targets, weights=w)
    assert float(cls) == pytest.approx(float((w * ce).sum() / 3), rel=1e-6)
    assert float(reg) == pytest.approx(float((w * smooth).sum() / 3), rel=1e-5)
    ones = fast_rcnn_loss(logits, regression, labels, targets, weights=torch.ones(3))
    plain = fast_rcnn_loss(logits, regression, labels, targets)
    assert [float(x) for x in ones] == pytest.approx([float(x) for x in plain], rel=1e-6)
    with pytest.raises(ValueError, match="weights must be"):
        fast_rcnn_loss(logits, regression, labels, targets, weights=torch.ones(2))


def test_pseudo_targets_with_mil_give_both_losses_and_weights_scale_the_head_loss():
    images = detector_images(2, seed=3)
    base = {"boxes": torch.tensor([[10.0, 12.0, 40.0, 44.0]]), "labels": torch.tensor([2])}
    model = _model()
    torch.manual_seed(5)
    plain = model.train()(images, [dict(base), dict(base)])
    torch.manual_seed(5)
    with_mil = model(images, [{**base, "mil": True, "image_label": 2}, dict(base)])
    assert float(plain["loss_mil"].detach()) == 0.0 and float(with_mil["loss_mil"].detach()) > 0.0
    assert float(with_mil["loss_classifier"].detach()) == pytest.approx(float(plain["loss_classifier"].detach()), rel=1e-5)
    torch.manual_seed(5)
    zero_w = model(images, [{**base, "box_weights": torch.zeros(1)}, {**base, "box_weights": torch.zeros(1)}])
    assert float(zero_w["loss_box_reg"].detach()) == 0.0 < float(plain["loss_box_reg"].detach())
    assert float(zero_w["loss_classifier"].detach()) < float(plain["loss_classifier"].detach())
    with pytest.raises(ValueError, match="box_weights must be"):
        model(images[:1], [{**base, "box_weights": torch.ones(2)}])
    with pytest.raises(ValueError, match="needs its image_label"):
        model(images[:1], [{**base, "mil": True}])


def test_tag_filter_by_hand():
    det = {"boxes": torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [2, 2, 12, 12], [3, 3, 13, 13]]),
           "labels": torch.tensor([1, 2, 2, 1]), "scores": torch.tensor([0.9, 0.4, 0.8, 0.3])}
    boxes, scores, forced = tag_filter(det, 2, 0.7)
    assert boxes.tolist() == [[2, 2, 12, 12]] and scores.tolist() == pytest.approx([0.8]) and not forced
    boxes, scores, forced = tag_filter(det, 1, 0.95)            # none passes: the best benign box is forced
    assert boxes.tolist() == [[0, 0, 10, 10]] and forced
    boxes, scores, forced = tag_filter(det, 1, 0.2, max_boxes=None)
    assert boxes.tolist() == [[0, 0, 10, 10], [3, 3, 13, 13]] and not forced
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}
    boxes, scores, forced = tag_filter(empty, 2, 0.5)
    assert boxes.shape == (0, 4) and not forced


class _Blind(torch.nn.Module):
    """A 'teacher' that detects nothing but benign boxes."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images):
        return [{"boxes": torch.tensor([[5.0, 5.0, 30.0, 30.0]]), "labels": torch.tensor([1]),
                 "scores": torch.tensor([0.9])} for _ in images]


def test_a_class_the_teacher_never_detects_stays_weak_and_is_reported(caplog):
    teacher = PseudoBoxTeacher(decay=1.0, model=_Blind(), score_thresh=0.5)

    class T:
        device = torch.device("cpu")
        model = _model()
        logs = []

        def log(self, message):
            self.logs.append(message)

    trainer = T()
    teacher.attach(trainer)
    images = detector_images(3)
    targets = [{"image_label": torch.tensor(1)}, {"image_label": torch.tensor(2)}, strong_target(1)]
    _, out = teacher.before_forward(trainer, images, targets)
    assert out[0]["boxes"].tolist() == [[5.0, 5.0, 30.0, 30.0]] and out[0]["labels"].tolist() == [1]
    assert "boxes" not in out[1] and out[1]["image_label"] == 2       # malignant: nothing to pseudo-label
    assert out[2] is targets[2]                                      # strong images are left alone
    teacher.after_train(trainer)
    assert teacher.summary() == {"benign": {"confident": 1, "forced": 0, "none": 0},
                                 "malignant": {"confident": 0, "forced": 0, "none": 1}}
    assert any("no pseudo-box to any of the 1 malignant" in m for m in trainer.logs)


@pytest.mark.parametrize("teacher", [lambda: MoITeacher(0.9),
                                     lambda: PseudoBoxTeacher(0.9, score_thresh=0.0, keep_mil=True,
                                                              ignore_iou=0.1, weight_by_score=True,
                                                              augment=ultrasound_augmentation())])
def test_resume_with_a_teacher_is_exact(tmp_path, teacher):
    data = make_phantom(30, seed=2, size=DETECTOR_SIZE)
    parts = split(data, strong_fraction=0.3, n_test=6, seed=0)

    def run(out, steps, resume):
        hook = teacher()
        tr = Trainer(_model(), parts.strong, parts.weak, mode="joint", steps=steps, progress=False,
                     tensorboard=False, hooks=[hook], out_dir=out, checkpoint_every=2)
        tr.fit(resume=resume)
        return tr, hook

    ref, ref_t = run(tmp_path / "ref", 4, False)
    run(tmp_path / "run", 2, False)
    again, again_t = run(tmp_path / "run", 4, True)
    for a, b in ((ref.model, again.model), (ref_t.model, again_t.model)):
        for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x, y), k
    with pytest.raises(Exception, match="no state of the hook"):
        Trainer(_model(), parts.strong, parts.weak, mode="joint", steps=4, progress=False, tensorboard=False,
                hooks=[teacher(), EMATeacher(0.5)], out_dir=tmp_path / "run").fit(resume=True)


def test_the_ema_update_by_hand():
    student = torch.nn.Linear(2, 1)
    teacher = EMATeacher(decay=0.75, model=copy.deepcopy(student))
    teacher.model = teacher.model.eval()
    with torch.no_grad():
        student.weight.fill_(1.0)
        teacher.model.weight.fill_(0.0)
    teacher.update(student)
    assert teacher.model.weight.tolist() == [[0.25, 0.25]]
    frozen = EMATeacher(decay=1.0, model=copy.deepcopy(teacher.model))
    frozen.update(student)
    assert frozen.model.weight.tolist() == [[0.25, 0.25]]
    with pytest.raises(ValueError, match="decay"):
        EMATeacher(decay=1.5)


def test_ultrasound_augmentation_keeps_boxes_and_repeats_with_its_seed():
    image = torch.rand(1, 64, 64, generator=torch.Generator().manual_seed(0))
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[10.0, 12.0, 40.0, 44.0]]), format="XYXY", canvas_size=(64, 64))
    a = apply(ultrasound_augmentation(), image, {"boxes": boxes}, seed=4)
    b = apply(ultrasound_augmentation(), image, {"boxes": boxes}, seed=4)
    c = apply(ultrasound_augmentation(), image, {"boxes": boxes}, seed=5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"]) and not torch.equal(a[0], c[0])
    out, box = a[0], a[1]["boxes"].as_subclass(torch.Tensor)[0]
    assert out.shape == image.shape and 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert 0 <= box[0] < box[2] <= 64 and 0 <= box[1] < box[3] <= 64
    assert abs(float(box[2] - box[0]) - 30.0) < 3.0       # a small zoom: the box keeps about its size


def test_a_zero_mil_weight_silences_an_images_mil_term():
    model = _model().train()
    images = detector_images(2)
    box = torch.tensor([8.0, 10.0, 40.0, 38.0])
    both = model(images, [{"image_label": 2, "moi_box": box}, {"image_label": 1, "moi_box": box + 4}])
    first = model(images[:1], [{"image_label": 2, "moi_box": box}])
    gated = model(images, [{"image_label": 2, "moi_box": box}, {"image_label": 1, "moi_box": box + 4,
                                                                 "mil_weight": 0.0}])
    assert float(gated["loss_mil"].detach()) == pytest.approx(float(first["loss_mil"].detach()), rel=1e-5)
    assert float(gated["loss_mil"].detach()) != pytest.approx(float(both["loss_mil"].detach()), rel=1e-3)
    nothing = model(images[:1], [{"image_label": 2, "moi_box": box, "mil_weight": 0.0}])
    assert float(nothing["loss_mil"].detach()) == 0.0 and nothing["loss_mil"].requires_grad
    with pytest.raises(ValueError, match="mil_weight"):
        model(images[:1], [{"image_label": 2, "mil_weight": -1.0}])


def test_moi_teacher_confidence_gate_counts_and_weights():
    data = make_phantom(30, seed=1, size=DETECTOR_SIZE)
    parts = split(data, strong_fraction=0.3, n_test=6, seed=0)
    gate = MoITeacher(decay=1.0, min_confidence=1.0)          # nothing is that confident: no MIL at all
    tr = Trainer(_model(), parts.strong, parts.weak, mode="joint", steps=2, progress=False, tensorboard=False,
                 hooks=[gate])
    history = tr.fit()
    assert gate.seen == 2 * 2 and gate.passed == 0 and all(r["loss_mil"] == 0.0 for r in history)
    open_gate = MoITeacher(decay=1.0, min_confidence=0.0)
    Trainer(_model(), parts.strong, parts.weak, mode="joint", steps=2, progress=False, tensorboard=False,
            hooks=[open_gate]).fit()
    assert open_gate.seen == 4 and open_gate.passed == 0       # without a gate nothing is counted as passed


def test_moi_teacher_regressed_box_and_abnormal_confidence():
    """With ``regress=True`` the MoI is the teacher's regressed box of the image's class around the chosen
    proposal, as its own head would output; ``confidence="abnormal"`` gates on 1 - p_normal."""
    model = _model(seed=3)
    images = detector_images(2, seed=7)
    targets = [{"image_label": torch.tensor(1)}, {"image_label": torch.tensor(2)}]

    class T:
        device = torch.device("cpu")

    T.model = model
    plain, regressed = MoITeacher(decay=1.0), MoITeacher(decay=1.0, regress=True, min_confidence=0.5,
                                                         confidence="abnormal")
    plain.attach(T())
    regressed.attach(T())
    _, a = plain.before_forward(T(), images, targets)
    _, b = regressed.before_forward(T(), images, targets)
    triples = model.proposal_predictions(images, weak=True)
    for t_a, t_b, (props, logits, boxes), label in zip(a, b, triples, (1, 2)):
        k = next(j for j in range(len(props)) if torch.equal(props[j], t_a["moi_box"]))
        assert torch.equal(t_b["moi_box"], boxes[k, label]) or torch.equal(t_b["moi_box"], props[k])
        p = torch.softmax(logits[k], 0)
        assert t_b["mil_weight"] == (1.0 if float(1 - p[0]) >= 0.5 else 0.0)
    with pytest.raises(ValueError, match="confidence"):
        MoITeacher(confidence="benign")


def test_class_balanced_pseudo_boxes_weigh_by_inverse_frequency():
    from wsbus.self_training import MeanTeacherSettings

    weak = [s for s in make_phantom(20, seed=3, size=DETECTOR_SIZE) if s.image_label > 0]
    n_b, n_m = sum(s.image_label == 1 for s in weak), sum(s.image_label == 2 for s in weak)
    hook = MeanTeacherSettings(balance_classes=True).hook(_model(), weak)
    assert hook.class_weights[1] == pytest.approx(len(weak) / (2 * n_b))
    assert hook.class_weights[2] == pytest.approx(len(weak) / (2 * n_m))
    assert (n_b * hook.class_weights[1] + n_m * hook.class_weights[2]) / len(weak) == pytest.approx(1.0)
    teacher = PseudoBoxTeacher(decay=1.0, model=_Blind(), score_thresh=0.5, class_weights={1: 0.25, 2: 4.0})

    class T:
        device = torch.device("cpu")
        model = _model()

    teacher.attach(T())
    _, out = teacher.before_forward(T(), detector_images(1), [{"image_label": torch.tensor(1)}])
    assert out[0]["box_weights"].tolist() == [0.25]
