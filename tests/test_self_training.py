"""Tests of wsbus.self_training: pseudo-labels, reconfiguration, pseudo-box precision, and the whole loop.

The constructed cases use a stub detector returning hand-written detections, so that every ranking, move and
precision below is worked out by hand; the integration test trains the real tiny detector for a few steps.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops import box_iou

from wsbus.data.formats import Sample
from wsbus.inference import detect
from wsbus.self_training import (PseudoBoxPrecision, PseudoLabel, n_moved, pseudo_box_precision, pseudo_label,
                                 reconfigure, self_train)

H = W = 40


def _sample(i: int, label: int, box=None, hidden: bool = True) -> Sample:
    image = np.full((H, W), 10 * i % 250, np.uint8)
    if label == 0:
        boxes, labels = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    else:
        boxes, labels = np.asarray([box], np.float32), np.asarray([label], np.int64)
    if not hidden:
        boxes = labels = None
    return Sample(image, boxes, labels, label, f"w{i}", f"P{i}")


class StubDetector(nn.Module):
    """Returns fixed detections per image, looked up by the image's first pixel value (= 10 * i)."""

    def __init__(self, table):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.table = table  # first pixel value -> (boxes, labels, scores)
        self.seen_training = []

    def forward(self, images, targets=None):
        self.seen_training.append(self.training)
        out = []
        for img in images:
            key = int(round(float(img[0, 0, 0]) * 255))
            boxes, labels, scores = self.table.get(key, ([], [], []))
            out.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "labels": torch.tensor(labels, dtype=torch.int64),
                        "scores": torch.tensor(scores, dtype=torch.float32)})
        return out


GT = {1: [5, 5, 15, 15], 2: [20, 20, 30, 34], 3: [0, 0, 10, 10], 4: [10, 10, 30, 30], 5: [2, 2, 12, 12]}


@pytest.fixture
def case():
    """Five weak images (plus a normal one) and the detections of a stub model, hand-checked below.

    w1 benign:    benign 0.9 on its mass (IoU 1), malignant 0.95 elsewhere (wrong class: ignored)
    w2 malignant: malignant 0.6 shifted by 5 px (IoU 70/210 < 0.5, wrong), malignant 0.3 exact (lower score)
    w3 benign:    only a malignant detection -> no pseudo-label, stays weak
    w4 malignant: malignant 0.8 exact (IoU 1), malignant 0.8 elsewhere later (tie: the first wins)
    w5 benign:    benign 0.7, IoU 0.81 (correct)
    w6 normal:    benign 0.99 -> never a pseudo-label (normal images stay weak)
    """
    weak = [_sample(1, 1, GT[1]), _sample(2, 2, GT[2]), _sample(3, 1, GT[3]), _sample(4, 2, GT[4]),
            _sample(5, 1, GT[5]), _sample(6, 0)]
    table = {
        10: ([[20, 20, 30, 30], [5, 5, 15, 15]], [2, 1], [0.95, 0.9]),
        20: ([[25, 20, 35, 34], [20, 20, 30, 34]], [2, 2], [0.6, 0.3]),
        30: ([[0, 0, 10, 10]], [2], [0.99]),
        40: ([[10, 10, 30, 30], [0, 0, 20, 20]], [2, 2], [0.8, 0.8]),
        50: ([[3, 3, 12, 12]], [1], [0.7]),
        60: ([[1, 1, 9, 9]], [1], [0.99]),
    }
    strong = [_sample(20, 2, [1, 1, 20, 20])]
    return strong, weak, StubDetector(table)


def test_pseudo_label_picks_most_confident_detection_of_the_image_class(case):
    _, weak, model = case
    model.train()
    pseudo = pseudo_label(model, weak, device="cpu", batch_size=4)
    assert model.training and model.seen_training == [False, False]  # ran in eval mode, mode restored
    assert len(pseudo) == len(weak)
    p1, p2, p3, p4, p5, p6 = pseudo
    assert p3 is None and p6 is None
    assert (p1.id, p1.label, p1.score) == ("w1", 1, pytest.approx(0.9))
    np.testing.assert_array_equal(p1.box, [5, 5, 15, 15])
    assert (p2.label, p2.score) == (2, pytest.approx(0.6))
    np.testing.assert_array_equal(p2.box, [25, 20, 35, 34])
    np.testing.assert_array_equal(p4.box, [10, 10, 30, 30])  # tie at 0.8: the first detection
    assert p5.score == pytest.approx(0.7)


def test_pseudo_label_score_threshold(case):
    _, weak, model = case
    pseudo = pseudo_label(model, weak, device="cpu", score_thresh=0.75)
    assert [p is not None for p in pseudo] == [True, False, False, True, False, False]
    with pytest.raises(ValueError, match="score_thresh"):
        pseudo_label(model, weak, score_thresh=1.5)


def test_reconfigure_moves_top_fraction_by_confidence(case):
    strong, weak, model = case
    pseudo = pseudo_label(model, weak)
    # ranking by score: w1 0.9, w4 0.8, w5 0.7, w2 0.6; w3 and w6 have none. 6 weak images.
    new_strong, new_weak = reconfigure(strong, weak, pseudo, 0.5)  # floor(3 + 0.5) = 3 moved
    assert [s.id for s in new_strong] == ["w20", "w1", "w4", "w5"]
    assert [s.id for s in new_weak] == ["w2", "w3", "w6"]
    assert new_strong[0] is strong[0]
    moved = {s.id: s for s in new_strong[1:]}
    np.testing.assert_array_equal(moved["w4"].boxes, [[10, 10, 30, 30]])
    assert moved["w4"].labels.tolist() == [2] and moved["w4"].image_label == 2
    np.testing.assert_array_equal(moved["w5"].boxes, [[3, 3, 12, 12]])  # the pseudo-box, not the hidden GT
    assert moved["w5"].patient == "P5" and moved["w5"].image is weak[4].image
    # the staying weak images are the original objects, hidden ground truth intact
    assert new_weak[0] is weak[1]
    np.testing.assert_array_equal(new_weak[0].boxes, [GT[2]])
    # the inputs are untouched
    assert len(strong) == 1 and len(weak) == 6


def test_reconfigure_edge_fractions(case):
    strong, weak, model = case
    pseudo = pseudo_label(model, weak)
    s0, w0 = reconfigure(strong, weak, pseudo, 0.0)
    assert [s.id for s in s0] == ["w20"] and [s.id for s in w0] == [s.id for s in weak]
    s1, w1 = reconfigure(strong, weak, pseudo, 1.0)  # all 4 pseudo-labelled move; w3 and w6 stay weak
    assert [s.id for s in s1] == ["w20", "w1", "w4", "w5", "w2"]
    assert [s.id for s in w1] == ["w3", "w6"]
    s75, _ = reconfigure(strong, weak, pseudo, 0.75)  # floor(4.5 + 0.5) = 5, capped at the 4 labelled
    assert len(s75) == 5
    for bad in (-0.1, 1.1, float("nan")):
        with pytest.raises(ValueError, match="fraction"):
            reconfigure(strong, weak, pseudo, bad)


def test_n_moved_rounding():
    assert [n_moved(4974, 0.5), n_moved(5014, 0.75), n_moved(3, 0.5), n_moved(0, 1.0)] == [2487, 3761, 2, 0]


def test_reconfigure_checks_alignment(case):
    strong, weak, model = case
    pseudo = pseudo_label(model, weak)
    with pytest.raises(ValueError, match="6 weak images"):
        reconfigure(strong, weak, pseudo[:-1], 0.5)
    with pytest.raises(ValueError, match="'w2'"):
        reconfigure(strong, weak, [pseudo[1], pseudo[0]] + pseudo[2:], 0.5)


def test_pseudo_box_precision_exact(case):
    _, weak, model = case
    pseudo = pseudo_label(model, weak)
    prec = pseudo_box_precision(pseudo, weak)
    assert isinstance(prec, PseudoBoxPrecision)
    assert prec.ids == ["w1", "w4", "w5", "w2"] and prec.n_weak == 6 and prec.n_labelled == 4
    # independent IoUs with torchvision
    expect = [float(box_iou(torch.from_numpy(p.box[None]), torch.tensor([GT[int(p.id[1:])]], dtype=torch.float32)))
              for p in (pseudo[0], pseudo[3], pseudo[4], pseudo[1])]
    np.testing.assert_allclose(prec.ious, expect, rtol=1e-6)
    # w5: [3,3,12,12] inside [2,2,12,12]: 81 / 100. w2: [25,20,35,34] vs [20,20,30,34]: intersection 5 x 14 = 70,
    # union 140 + 140 - 70 = 210 -> 1/3.
    np.testing.assert_allclose(prec.ious, [1.0, 1.0, 0.81, 1 / 3], rtol=1e-6)
    assert prec.correct.tolist() == [True, True, True, False]
    assert prec.overall == pytest.approx(0.75)
    np.testing.assert_allclose(prec.precision_at_rank, [1, 1, 1, 0.75])
    assert prec.at_fraction(0.5) == pytest.approx(1.0)   # top 3 moved
    assert prec.at_fraction(1.0) == pytest.approx(0.75)  # all 4 labelled
    assert math.isnan(prec.at_fraction(0.0))
    d = prec.as_dict()
    assert d["overall"] == pytest.approx(0.75) and d["at_fraction"]["0.5"] == pytest.approx(1.0)


def test_precision_w2_iou_by_hand():
    iou = box_iou(torch.tensor([[25.0, 20, 35, 34]]), torch.tensor([[20.0, 20, 30, 34]]))
    assert float(iou) == pytest.approx(1 / 3)


def test_precision_class_mismatch_counts_as_wrong():
    # A benign pseudo-box on a mass annotated malignant is wrong even when it overlaps perfectly.
    s = Sample(np.zeros((H, W), np.uint8), np.array([[5, 5, 15, 15], [20, 20, 30, 30]], np.float32),
               np.array([1, 2]), 2, "mix")
    p = PseudoLabel("mix", np.array([5, 5, 15, 15], np.float32), 2, 0.9)
    prec = pseudo_box_precision([p], [s])
    assert prec.correct.tolist() == [False] and prec.ious[0] == pytest.approx(0.0)


def test_precision_needs_hidden_ground_truth(case):
    _, weak, model = case
    pseudo = pseudo_label(model, weak)
    blind = [s.as_weak() for s in weak]
    with pytest.raises(ValueError, match="'w1' has no hidden ground-truth"):
        pseudo_box_precision(pseudo, blind)


def test_pseudo_box_clipped_to_image_and_degenerate_dropped():
    s = _sample(1, 1, GT[1])
    # The 0.9 box lies right of the 40 px image: empty after clipping, so the 0.5 box wins, clipped.
    model = StubDetector({10: ([[-3, 2, 50, 45], [41, 0, 45, 10]], [1, 1], [0.5, 0.9])})
    (p,) = pseudo_label(model, [s])
    assert p.score == pytest.approx(0.5)
    np.testing.assert_array_equal(p.box, [0, 2, 40, 40])
    model = StubDetector({10: ([[41, 0, 45, 10]], [1], [0.9])})
    assert pseudo_label(model, [s]) == [None]


def test_detect_returns_cpu_dicts_and_rejects_bad_input(case):
    _, weak, model = case
    dets = detect(model, weak, batch_size=2)
    assert len(dets) == 6 and all(d["boxes"].device.type == "cpu" for d in dets)
    with pytest.raises(TypeError, match="item 0"):
        detect(model, [weak[0].image])
    with pytest.raises(ValueError, match="batch_size"):
        detect(model, weak, batch_size=0)


def test_self_train_end_to_end_tiny_detector():
    from wsbus.data.phantom import make_phantom
    from wsbus.models import build_detector

    torch.set_num_threads(1)
    data = make_phantom(14, seed=5, size=64, proportions=(0.0, 0.5, 0.5))
    strong, weak, test = data[:3], data[3:11], data[11:]
    steps = []
    res = self_train(strong, weak, test, model_factory=lambda: build_detector("tiny", min_size=64, max_size=64),
                     fractions=(0.5, 1.0), steps=3, device="cpu", progress=False, n_boot=50,
                     trainer_kwargs=dict(alpha="gradual", batch_strong=1, batch_weak=1),
                     on_step=lambda name, trainer, record: steps.append(name))
    names = [m.name for m in res.methods]
    assert names == ["initial", "retrained_50%", "retrained_100%"]
    assert steps == ["initial"] * 3 + ["retrained_50%"] * 3 + ["retrained_100%"] * 3
    assert len(res.pseudo) == len(weak) and res.precision is not None
    assert len(res.moved["retrained_100%"]) == sum(p is not None for p in res.pseudo)
    n_lab = sum(p is not None for p in res.pseudo)
    assert res.sets["initial"] == (3, 8)
    assert res.sets["retrained_50%"] == (3 + min(4, n_lab), 8 - min(4, n_lab))
    assert res.sets["retrained_100%"] == (3 + n_lab, 8 - n_lab)
    for m in res.methods:
        assert 0.0 <= m.overall <= 1.0 and m.ci[0] <= m.overall <= m.ci[1]
    table = res.table()
    assert "retrained_50%" in table and "# strong" in table
    js = res.to_json()
    assert [m["name"] for m in js["methods"]] == names and "0.5" in js["pseudo_box_precision"]["at_fraction"]


def test_self_train_argument_checks():
    s = _sample(1, 1, GT[1])
    with pytest.raises(ValueError, match="retrain"):
        self_train([s], [s], [s], model_factory=lambda: None, retrain="warm")
    with pytest.raises(ValueError, match="weak set is empty"):
        self_train([s], [], [s], model_factory=lambda: None)
    with pytest.raises(ValueError, match="must not set 'mode'"):
        self_train([s], [s], [s], model_factory=lambda: None, trainer_kwargs={"mode": "weak"})


def test_reconfigure_per_class_keeps_the_class_balance():
    # four benign images ranked above two malignant ones: ranked together, the top half is all benign
    weak = [_sample(i, 1, GT[1]) for i in range(1, 5)] + [_sample(i, 2, GT[2]) for i in range(5, 7)]
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    pseudo = [PseudoLabel(s.id, np.asarray(GT[1] if s.image_label == 1 else GT[2], np.float32), s.image_label, sc)
              for s, sc in zip(weak, scores)]
    together, _ = reconfigure([], weak, pseudo, 0.5)
    assert [s.id for s in together] == ["w1", "w2", "w3"]
    per_class, rest = reconfigure([], weak, pseudo, 0.5, per_class=True)
    # benign: floor(4 * 0.5 + 0.5) = 2 moved, malignant: floor(2 * 0.5 + 0.5) = 1 moved; most confident first
    assert [s.id for s in per_class] == ["w1", "w2", "w5"]
    assert [s.id for s in rest] == ["w3", "w4", "w6"]
    # a class whose images have no pseudo-label moves nothing; the others are unaffected
    pseudo[4] = pseudo[5] = None
    per_class, _ = reconfigure([], weak, pseudo, 1.0, per_class=True)
    assert [s.id for s in per_class] == ["w1", "w2", "w3", "w4"]


def test_precision_of_moved_ids(case):
    strong, weak, model = case
    pseudo = pseudo_label(model, weak)
    prec = pseudo_box_precision(pseudo, weak)
    moved, _ = reconfigure(strong, weak, pseudo, 1.0)
    ids = [s.id for s in moved[1:]]
    assert prec.of_ids(ids) == pytest.approx(0.75) and prec.of_ids(["w2"]) == 0.0
    assert math.isnan(prec.of_ids([]))
    with pytest.raises(KeyError, match="w3"):
        prec.of_ids(["w3"])


def test_retrain_finetune_starts_from_the_initial_model():
    """``retrain="finetune"`` continues from a copy of the initial model (left untouched); ``"scratch"`` restarts
    from the factory's weights."""
    from wsbus.data.phantom import make_phantom
    from wsbus.models import build_detector

    torch.set_num_threads(1)
    data = make_phantom(12, seed=7, size=48, proportions=(0.0, 0.5, 0.5))
    strong, weak, test = data[:3], data[3:9], data[9:]

    def factory():
        return build_detector("tiny", min_size=48, max_size=48)

    torch.manual_seed(123)  # not self_train's init_seed (0), so "scratch" starts elsewhere
    initial = factory()
    before = {k: v.clone() for k, v in initial.state_dict().items()}
    kw = dict(fractions=(1.0,), steps=0, retrain_steps=1, device="cpu", progress=False, n_boot=20,
              trainer_kwargs=dict(batch_strong=1, batch_weak=1, lr=1e-12))
    fine = self_train(strong, weak, test, model_factory=factory, initial=initial, retrain="finetune", **kw)
    scratch = self_train(strong, weak, test, model_factory=factory, initial=initial, retrain="scratch", **kw)
    assert all(torch.equal(before[k], v) for k, v in initial.state_dict().items())      # the initial model is kept
    tuned = fine.models["retrained_100%"].state_dict()
    fresh = scratch.models["retrained_100%"].state_dict()
    # one step at a negligible learning rate: the fine-tuned model is still (almost) the initial one, the scratch
    # model is the factory's fresh initialisation
    assert all(torch.allclose(tuned[k].float(), before[k].float(), atol=1e-6) for k in before)
    assert not all(torch.allclose(fresh[k].float(), before[k].float(), atol=1e-6) for k in before)


def test_mean_teacher_procedure_and_paper_rounds_end_to_end():
    from wsbus.data.phantom import make_phantom
    from wsbus.models import build_detector
    from wsbus.self_training import MeanTeacherSettings

    torch.set_num_threads(1)
    data = make_phantom(14, seed=5, size=64, proportions=(0.0, 0.5, 0.5))
    strong, weak, test = data[:3], data[3:11], data[11:]

    def factory():
        return build_detector("tiny", min_size=64, max_size=64)

    kw = dict(model_factory=factory, steps=2, device="cpu", progress=False, n_boot=50,
              trainer_kwargs=dict(batch_strong=1, batch_weak=1))
    mt = self_train(strong, weak, test, procedure="mean_teacher",
                    mean_teacher=MeanTeacherSettings(decay=0.9, score_thresh=0.0, keep_mil=True), **kw)
    assert [m.name for m in mt.methods] == ["initial", "mean_teacher"] and mt.procedure == "mean_teacher"
    assert len(mt.histories["mean_teacher"]) == 2 and mt.sets["mean_teacher"] == (3, 8)
    assert sum(sum(c.values()) for c in mt.teacher.values()) == 2     # 2 steps x 1 weak image annotated
    assert 0.0 <= mt.class_accuracy <= 1.0 and len(mt.pseudo) == len(weak)
    js = mt.to_json()
    assert js["procedure"] == "mean_teacher" and js["pseudo_box_precision"]["n_weak"] == len(weak)
    rounds = self_train(strong, weak, test, procedure="paper", fractions=(0.5,), rounds=2, **kw)
    assert [m.name for m in rounds.methods] == ["initial", "retrained_50%", "retrained_50%_round2"]
    with pytest.raises(ValueError, match="procedure"):
        self_train(strong, weak, test, procedure="online", **kw)
    with pytest.raises(ValueError, match="rounds"):
        self_train(strong, weak, test, rounds=0, **kw)


class _SeesBoth(nn.Module):
    """A labelling 'detector' that finds a benign and a malignant box in every image: every benign or malignant weak
    image gets a pseudo-label, so a fraction of 1 moves the whole weak set."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, images, targets=None):
        return [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0], [10.0, 10.0, 42.0, 42.0]]),
                 "labels": torch.tensor([1, 2]), "scores": torch.tensor([0.9, 0.8])} for _ in images]


def test_a_strong_mode_retraining_ignores_the_weak_batch_size(tmp_path):
    """With every weak image moved the retraining runs in strong mode, which has no weak stream: its checkpoint does
    not record ``batch_weak``, so a rerun into the same folder with another weak batch size resumes the finished
    retraining (the same weights) instead of refusing it for a setting the retraining never used."""
    from wsbus.data.phantom import make_phantom
    from wsbus.models import build_detector

    torch.set_num_threads(1)
    data = make_phantom(10, seed=5, size=64, proportions=(0.0, 0.5, 0.5))
    strong, weak, test = data[:2], data[2:7], data[7:]

    def run(batch_weak):
        return self_train(strong, weak, test, model_factory=lambda: build_detector("tiny", min_size=64, max_size=64),
                          initial=_SeesBoth(), fractions=(1.0,), steps=1, device="cpu", progress=False, n_boot=20,
                          trainer_kwargs=dict(batch_strong=1, batch_weak=batch_weak, mixing="alternating"),
                          out_dir=tmp_path)

    first = run(1)
    assert first.sets["retrained_100%"] == (len(strong) + len(weak), 0)
    saved = torch.load(tmp_path / "retrained_100pct" / "last.pt", weights_only=True)["config"]["trainer"]
    assert saved["mode"] == "strong" and saved["batch_weak"] == 2     # the default: the given 1 was not used
    again = run(3)
    for (k, x), y in zip(first.models["retrained_100%"].state_dict().items(),
                         again.models["retrained_100%"].state_dict().values()):
        assert torch.equal(x, y), k


def test_mean_teacher_box_jitter_counts_reach_the_results():
    """``MeanTeacherSettings(box_jitter=0)`` keeps only pseudo-boxes the teacher's head places identically from every
    jittered copy, which a real detector never does: every pseudo-box is dropped, every image stays weak, and the
    result's teacher summary (results.json's ``self_training_teacher``) says so."""
    from wsbus.data.phantom import make_phantom
    from wsbus.models import build_detector
    from wsbus.self_training import MeanTeacherSettings

    torch.set_num_threads(1)
    data = make_phantom(12, seed=5, size=64, proportions=(0.0, 0.5, 0.5))
    strong, weak, test = data[:3], data[3:9], data[9:]
    res = self_train(strong, weak, test, model_factory=lambda: build_detector("tiny", min_size=64, max_size=64),
                     procedure="mean_teacher", steps=1, retrain_steps=2, device="cpu", progress=False, n_boot=20,
                     mean_teacher=MeanTeacherSettings(decay=0.9, score_thresh=0.0, box_jitter=0.0),
                     trainer_kwargs=dict(batch_strong=1, batch_weak=2))
    teacher = res.to_json()["teacher"]
    labelled = sum(c["confident"] + c["forced"] for c in teacher.values())
    assert labelled == 4 and sum(c["none"] for c in teacher.values()) == 0         # 2 steps x 2 weak images
    assert sum(c["unreliable"] for c in teacher.values()) == labelled
    assert sum(c["unreliable_images"] for c in teacher.values()) == labelled
