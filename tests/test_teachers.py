"""Teachers and pseudo-labelled targets: a given mass of interest, the ignore rule, RoI weights, MIL on pseudo-boxes,
the tag filter, the MoI and pseudo-box teachers, their state in checkpoints, and the ultrasound augmentation."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from conftest import DETECTOR_SIZE, detector_images, strong_target
from wsbus.data import make_phantom, split, ultrasound_augmentation
from wsbus.data.transforms import apply
from wsbus.engine import EMATeacher, Trainer
from wsbus.losses import fast_rcnn_loss, mil_loss
from wsbus.models import build_detector
from wsbus.teachers import (MoITeacher, PseudoBoxTeacher, box_unreliability, jitter_boxes, refined_boxes,
                            tag_filter)

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
                                                              augment=ultrasound_augmentation()),
                                     # the box-jitter filter: about half of the pseudo-boxes of this run dropped
                                     lambda: PseudoBoxTeacher(0.9, score_thresh=0.0, max_boxes=3, keep_mil=True,
                                                              weight_by_score=True, box_jitter=0.057)],
                         ids=["moi", "pseudo_box", "box_jitter"])
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
    if isinstance(ref_t, PseudoBoxTeacher):
        assert again_t.summary() == ref_t.summary()      # the counts are part of the teacher's saved state
    if getattr(ref_t, "box_jitter", None) is not None:
        counts = ref_t.summary()["benign"]
        assert 0 < counts["unreliable"] and counts["unreliable_images"] < counts["confident"] + counts["forced"]
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


# ------------------------------------------------------------------------------------------------------------
# Soft Teacher's box jitter: the unreliability of a pseudo-box and the filter of PseudoBoxTeacher(box_jitter=...)
# ------------------------------------------------------------------------------------------------------------
def test_box_unreliability_by_hand():
    # two refinements of one box: x1 and x2 differ by 2 px, y1 and y2 agree. Mean box (1, 0, 11, 20): width 10,
    # height 20; std (n - 1) of (0, 2) is sqrt(2). sigma = (sqrt(2) / 10 + 0 + sqrt(2) / 10 + 0) / 4.
    refined = torch.tensor([[[0.0, 0.0, 10.0, 20.0]], [[2.0, 0.0, 12.0, 20.0]]])
    assert float(box_unreliability(refined)) == pytest.approx(2 ** 0.5 / 20, rel=1e-6)
    same = torch.tensor([[5.0, 6.0, 30.0, 40.0], [1.0, 1.0, 9.0, 9.0]]).expand(7, 2, 4)
    assert box_unreliability(same).tolist() == [0.0, 0.0]           # every copy refined to the same box
    # a degenerate mean box is normalised by 1 px, not divided by zero
    flat = torch.tensor([[[3.0, 3.0, 3.0, 3.0]], [[3.0, 3.0, 3.0, 5.0]]])
    assert float(box_unreliability(flat)) == pytest.approx(2 ** 0.5 / 4, rel=1e-6)   # y2: sqrt(2) / 1


def test_jitter_boxes_scale_with_the_box_and_leave_the_global_random_state_alone():
    boxes = torch.tensor([[10.0, 20.0, 50.0, 30.0], [0.0, 0.0, 0.5, 0.5]])
    state = torch.get_rng_state()
    a = jitter_boxes(boxes, 2000, 0.06, torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, jitter_boxes(boxes, 2000, 0.06, torch.Generator().manual_seed(1)))
    assert a.shape == (2000, 2, 4)
    offsets = (a - boxes) / torch.tensor([[40.0, 10.0, 40.0, 10.0], [1.0, 1.0, 1.0, 1.0]])  # sizes under 1 count as 1
    assert offsets.std(dim=0).flatten().tolist() == pytest.approx([0.06] * 8, rel=0.06)
    assert offsets.mean(dim=0).abs().max() < 0.01


class _BoxesAsFeatures(torch.nn.Module):
    """Stands in for RoIAlign: a RoI's 'features' are its own coordinates; records the RoIs of every call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, features, boxes, image_sizes):
        self.calls.append([b.clone() for b in boxes])
        return torch.cat(boxes)


class _Regressor(torch.nn.Module):
    """Stands in for the box predictor: class ``label`` with confidence, and for every class the regression that
    decodes to ``refine(roi)``."""

    def __init__(self, coder, refine, label):
        super().__init__()
        self.coder, self.refine, self.label = coder, refine, label

    def forward(self, rois):
        logits = torch.full((len(rois), 3), -5.0)
        logits[:, self.label] = 5.0
        return logits, self.coder.encode_single(self.refine(rois), rois).repeat(1, 3)


def _stub_teacher(refine, label, **kw):
    """A PseudoBoxTeacher on the real tiny detector whose box head is ``_Regressor(refine)``: its detections and the
    jittered copies of its pseudo-box are both refined by ``refine``."""
    model = _model().eval()
    heads = model.roi_heads
    heads.box_roi_pool, heads.box_head = _BoxesAsFeatures(), torch.nn.Identity()
    heads.box_predictor = _Regressor(heads.box_coder, refine, label)
    teacher = PseudoBoxTeacher(decay=1.0, model=model, score_thresh=0.5, **kw)

    class T:
        device = torch.device("cpu")
        model = _model()
        logs = []

        def log(self, message):
            self.logs.append(message)

    trainer = T()
    teacher.attach(trainer)
    return teacher, trainer


def test_a_box_head_that_agrees_on_every_jittered_copy_keeps_the_pseudo_box():
    box = torch.tensor([12.0, 16.0, 44.0, 40.0])
    teacher, trainer = _stub_teacher(lambda rois: box.expand(len(rois), 4), 2, box_jitter=1e-6)
    pool = teacher.model.roi_heads.box_roi_pool
    images, targets = detector_images(1), [{"image_label": torch.tensor(2)}]
    _, out = teacher.before_forward(trainer, images, targets)
    assert out[0]["labels"].tolist() == [2]
    torch.testing.assert_close(out[0]["boxes"], box[None], atol=1e-5, rtol=0)   # the detection, decoded
    # one more RoI pass than the detections: the pseudo-box's 10 jittered copies, around the pseudo-box
    assert len(pool.calls) == 2 and pool.calls[1][0].shape == (10, 4)
    assert (pool.calls[1][0] - box).abs().max() < 0.3 * 32
    # sigma = 0 up to float rounding (the decoded boxes agree to ~1e-6 px)
    refined = refined_boxes(teacher.model, {}, [(64, 64)], pool.calls[1], [2])[0]
    assert float(box_unreliability(refined.reshape(10, 1, 4))) < 1e-7
    assert teacher.summary()["malignant"] == {"confident": 1, "forced": 0, "none": 0, "unreliable": 0,
                                              "unreliable_images": 0}


@pytest.mark.parametrize("above", [False, True])
def test_a_box_head_that_follows_the_jitter_drops_the_pseudo_box_above_the_threshold(above):
    """The box head returns each jittered copy where it is (zero regression): sigma is the spread of the copies,
    computed here from the RoIs the head saw, independently of the teacher's code (numpy, float64)."""
    teacher, trainer = _stub_teacher(lambda rois: rois.clone(), 1, box_jitter=1e9, jitter_samples=8)
    torch.manual_seed(11)
    images, targets = detector_images(1, seed=4), [{"image_label": torch.tensor(1)}]
    teacher.before_forward(trainer, images, targets)
    copies = teacher.model.roi_heads.box_roi_pool.calls[-1][0].double().numpy()
    refined = np.clip(copies, 0, 64)                                   # decoded boxes are clipped to the image
    mean = refined.mean(axis=0)
    size = np.maximum(mean[2:] - mean[:2], 1.0)
    sigma = float((refined.std(axis=0, ddof=1) / np.r_[size, size]).mean())
    assert 0.02 < sigma < 0.12                                         # about the jitter's 0.06

    threshold = sigma * (1.001 if above else 0.999)
    teacher, trainer = _stub_teacher(lambda rois: rois.clone(), 1, box_jitter=threshold, jitter_samples=8)
    torch.manual_seed(11)                                              # the step's seed: the same offsets
    _, out = teacher.before_forward(trainer, images, targets)
    np.testing.assert_allclose(teacher.model.roi_heads.box_roi_pool.calls[-1][0].double().numpy(), copies)
    counts = teacher.summary()["benign"]
    if above:
        assert "boxes" in out[0] and counts["unreliable"] == 0
    else:
        assert out[0] is targets[0]                                    # stays weak: its own target, MIL loss
        assert counts == {"confident": 1, "forced": 0, "none": 0, "unreliable": 1, "unreliable_images": 1}
        teacher.after_train(trainer)
        assert any("dropped 1 benign pseudo-box(es) as unreliable" in m for m in trainer.logs)
        assert any("no pseudo-box to any of the 1 benign weak image(s) it saw" in m and "1 for unreliable boxes" in m
                   for m in trainer.logs)


def test_box_jitter_off_or_keeping_everything_trains_the_same_weights():
    """With a threshold no box exceeds, the jitter pass (its own backbone-sharing detections, one more RoI pass,
    offsets from their own generator) changes nothing: the same weights bit for bit as without the option, whose
    summary has no jitter counts."""
    data = make_phantom(30, seed=2, size=DETECTOR_SIZE)
    parts = split(data, strong_fraction=0.3, n_test=6, seed=0)
    runs = {}
    for name, jitter in (("off", None), ("keep_all", 1e9)):
        hook = PseudoBoxTeacher(0.9, score_thresh=0.0, keep_mil=True, weight_by_score=True, box_jitter=jitter,
                                augment=ultrasound_augmentation())
        tr = Trainer(_model(), parts.strong, parts.weak, mode="joint", steps=3, progress=False, tensorboard=False,
                     hooks=[hook])
        tr.fit()
        runs[name] = (tr.model.state_dict(), hook.summary())
    for (k, x), y in zip(runs["off"][0].items(), runs["keep_all"][0].values()):
        assert torch.equal(x, y), k
    assert set(runs["off"][1]["benign"]) == {"confident", "forced", "none"}
    assert runs["keep_all"][1]["benign"]["unreliable"] == 0
    assert {k: runs["keep_all"][1]["benign"][k] for k in ("confident", "forced", "none")} == runs["off"][1]["benign"]


def test_box_jitter_settings_are_checked_and_reach_the_teacher():
    from wsbus.self_training import MeanTeacherSettings

    hook = MeanTeacherSettings(box_jitter=0.02, jitter_samples=4, jitter_scale=0.1).hook(_model())
    assert (hook.box_jitter, hook.jitter_samples, hook.jitter_scale) == (0.02, 4, 0.1)
    assert MeanTeacherSettings().hook(_model()).box_jitter is None
    for bad, match in ((dict(box_jitter=-0.1), "box_jitter"), (dict(box_jitter=float("nan")), "box_jitter"),
                       (dict(box_jitter="0.02"), "box_jitter"), (dict(jitter_samples=1), "jitter_samples"),
                       (dict(jitter_samples=2.5), "jitter_samples"), (dict(jitter_scale=0.0), "jitter_scale")):
        with pytest.raises(ValueError, match=match):
            MeanTeacherSettings(**bad)
        with pytest.raises(ValueError, match=match):
            PseudoBoxTeacher(**bad)
