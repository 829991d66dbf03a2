"""The experiment runner: ``wsbus demo --quick`` end to end in a subprocess, resuming an interrupted experiment,
bad input, ``wsbus self-train`` from a ``wsbus train`` checkpoint, the recipes and the runner's helpers. (The full
demo is the README's main job, not a test.)"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wsbus.data import make_phantom
from wsbus.evaluate import MethodResult
from wsbus.experiments import (METHODS, PAPER, PHANTOM, PHANTOM_QUICK, REAL, REAL_QUICK, Recipe, check_finding,
                               prepare_data, recipe_for, run_experiment, summarize_experiments)
from wsbus.experiments.figures import moving_average, panel_indices

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
PNG = b"\x89PNG\r\n\x1a\n"


def _run(args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "wsbus", *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG


@pytest.mark.slow
def test_demo_quick_writes_results_in_the_contract_format(tmp_path):
    out = tmp_path / "demo"
    proc = _run(["demo", "--quick", "--out", str(out), "--device", "cpu"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CorLoc [%]" in proc.stdout and "joint_self_training" in proc.stdout  # the Table V on stdout

    results = json.loads((out / "results.json").read_text())
    methods = results["methods"]
    assert [m["name"] for m in methods] == list(METHODS)
    by = {m["name"]: m for m in methods}
    for m in methods:
        assert isinstance(m["n_strong"], int) and isinstance(m["n_weak"], int)
        assert set(m["corloc"]) >= {"overall", "benign", "malignant"}
        for v in m["corloc"].values():
            assert v is None or 0.0 <= v <= 1.0
        lo, hi = m["ci"]
        assert 0.0 <= lo <= m["corloc"]["overall"] <= hi <= 1.0
    # the few-box runs share the same strong images; strong_full and weak_only use every training image
    data = results["data"]
    n_train = data["n_strong"] + data["n_weak"]
    assert by["strong_few"]["n_strong"] == by["joint"]["n_strong"] == data["n_strong"] > 0
    assert (by["strong_full"]["n_strong"], by["strong_full"]["n_weak"]) == (n_train, 0)
    assert (by["weak_only"]["n_strong"], by["weak_only"]["n_weak"]) == (0, n_train)
    assert by["joint"]["n_weak"] == data["n_weak"]
    st = by["joint_self_training"]
    assert st["n_strong"] + st["n_weak"] == n_train and st["n_strong"] > data["n_strong"]
    # p-values against joint, whose own p-value is absent
    assert "p_value" not in by["joint"]
    assert all(0.0 <= by[n]["p_value"] <= 1.0 for n in METHODS if n != "joint")
    assert set(results["finding"]["checks"]) == {"joint_above_strong_few", "strong_few_below_strong_full",
                                                 "weak_only_far_below"}
    assert results["timing"]["total"]["wall"] > 0
    assert results["timing"]["torch_threads"] == 1          # the demo pins one thread (reproducible tables)

    table = (out / "table_v.md").read_text()
    assert all(n in table for n in METHODS) and "p-value" in table
    assert "retrained_50%" in (out / "table_iv.md").read_text()
    for name in ("detections.png", "loss_curves.png", "precision_vs_rank.png"):
        assert _is_png(out / name), name
    assert all((out / "runs" / n / "result.pt").is_file() for n in METHODS)
    assert all((out / "runs" / n / "log.csv").is_file() for n in METHODS[:4])


@pytest.mark.slow
def test_self_train_command_from_a_train_checkpoint(tmp_path):
    run = tmp_path / "joint"
    proc = _run(["train", "--data", "phantom", "--quick", "--size", "64", "--mode", "joint", "--steps", "3",
                 "--strong-fraction", "0.25", "--alpha", "gradual", "--out", str(run), "--no-progress",
                 "--no-tensorboard", "--device", "cpu"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "st"
    proc = _run(["self-train", "--checkpoint", str(run / "last.pt"), "--fractions", "0.5", "1.0", "--steps", "2",
                 "--out", str(out), "--no-progress", "--device", "cpu", "--n-boot", "100"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "retrained_50%" in proc.stdout
    res = json.loads((out / "results.json").read_text())
    names = [m["name"] for m in res["methods"]]
    assert names == ["initial", "retrained_50%", "retrained_100%"]
    split = json.loads((run / "split.json").read_text())
    n_s, n_w = len(split["strong"]), len(split["weak"])
    pseudo = json.loads((out / "pseudo_labels.json").read_text())
    assert pseudo["weak"] == split["weak"] and len(pseudo["pseudo"]) == n_w
    n_lab = sum(p is not None for p in pseudo["pseudo"])
    counts = {m["name"]: (m["n_strong"], m["n_weak"]) for m in res["methods"]}
    assert counts["initial"] == (n_s, n_w)
    assert counts["retrained_50%"] == (n_s + min(n_lab, math.floor(0.5 * n_w + 0.5)),
                                       n_w - min(n_lab, math.floor(0.5 * n_w + 0.5)))
    assert counts["retrained_100%"] == (n_s + n_lab, n_w - n_lab)
    assert res["initial_mode"] == "joint" and res["steps"] == 2
    assert (out / "table_iv.md").is_file()

    bad = _run(["self-train", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(out)], cwd=tmp_path)
    assert bad.returncode == 2 and "nope.pt" in bad.stderr and "does not exist" in bad.stderr


def _method(name, outcomes):
    per = np.asarray(outcomes, bool)
    return MethodResult(name, 1, 1, float(per.mean()), per_image=per)


def test_check_finding_by_hand():
    ok = {"strong_full": _method("strong_full", [1, 1, 1, 1]), "strong_few": _method("strong_few", [1, 1, 0, 0]),
          "weak_only": _method("weak_only", [0, 0, 0, 0]), "joint": _method("joint", [1, 1, 1, 0]),
          "joint_self_training": _method("joint_self_training", [1, 1, 1, 0])}
    f = check_finding(ok, {"strong_few": 0.01})
    assert f["holds"] and f["joint_minus_strong_few"] == pytest.approx(0.25)
    assert f["strong_full_minus_strong_few"] == pytest.approx(0.5) and f["p_joint_vs_strong_few"] == 0.01
    # joint above strong_few counts only when it is significant (and not without a p-value)
    assert not check_finding(ok, {"strong_few": 0.2})["holds"]
    assert check_finding(ok, {"strong_few": 0.2})["checks"]["joint_above_strong_few"] is False
    assert not check_finding(ok)["holds"]
    bad = dict(ok, joint=_method("joint", [1, 1, 0, 0]), weak_only=_method("weak_only", [1, 0, 0, 0]))
    f = check_finding(bad, {"strong_few": 0.01})
    assert not f["holds"]
    assert f["checks"] == {"joint_above_strong_few": False, "strong_few_below_strong_full": True,
                           "weak_only_far_below": True}  # 0.25 < 0.5 - 0.2
    worse = dict(ok, weak_only=_method("weak_only", [1, 1, 0, 0]))
    assert check_finding(worse, {"strong_few": 0.01})["checks"]["weak_only_far_below"] is False


def test_moving_average_is_trailing():
    np.testing.assert_allclose(moving_average([1, 2, 3, 4, 5], 2), [1, 1.5, 2.5, 3.5, 4.5])
    np.testing.assert_allclose(moving_average([1, 2, 3], 1), [1, 2, 3])
    np.testing.assert_allclose(moving_average([2, 4], 5), [2, 3])


def test_panel_indices_take_the_first_images_of_each_class():
    class S:
        def __init__(self, label):
            self.image_label = label
    test = [S(l) for l in (0, 2, 1, 1, 2, 0, 1, 2)]
    assert panel_indices(test, 2) == [2, 3, 1, 4, 0]


def test_presets_are_consistent():
    for recipe in (PHANTOM, PHANTOM_QUICK, REAL, REAL_QUICK, PAPER):
        assert isinstance(recipe, Recipe) and recipe.steps > 0
        json.dumps(recipe.as_dict())  # plain data for results.json
    assert PHANTOM_QUICK.steps < PHANTOM.steps and PHANTOM_QUICK.phantom_images < PHANTOM.phantom_images
    assert recipe_for("phantom") is PHANTOM and recipe_for("phantom", quick=True) is PHANTOM_QUICK
    assert recipe_for("busbra") is REAL and recipe_for("voc", quick=True) is REAL_QUICK
    assert PAPER.moi_rules == "paper" and PAPER.backbone == "vgg16" and PAPER.alpha_stretch == 1.0
    with pytest.raises(ValueError, match="n_strong or strong_fraction"):
        Recipe(n_strong=5, strong_fraction=0.1)


def test_recipe_alpha_climbs_over_a_stretched_horizon():
    a = PHANTOM.alpha_schedule(PHANTOM.steps)                    # default stretch 4: 30 stairs over 3200 steps
    assert PHANTOM.alpha_stretch == 4.0 and a(0) == pytest.approx(0.01)
    assert a(PHANTOM.steps - 1) == pytest.approx(1 - 0.99 * 0.9 ** 7)  # floor(799 / (3200 / 30)) = 7 stairs: 0.52
    plain = PHANTOM.replace(alpha_stretch=1.0).alpha_schedule(PHANTOM.steps)
    assert plain(PHANTOM.steps - 1) == pytest.approx(1 - 0.99 * 0.9 ** 29)   # the paper's staircase scaled to the run
    assert PHANTOM.alpha_schedule(PHANTOM.steps, 0.5) == 0.5
    with pytest.raises(ValueError, match="alpha_stretch must be > 0"):
        PHANTOM.replace(alpha_stretch=0.0)


def test_recipe_detector_options_and_class_weights():
    samples = make_phantom(30, seed=0, size=32, proportions=(0.0, 0.75, 0.25))
    opts = PHANTOM.detector_options(samples)
    n_b, n_m = sum(s.image_label == 1 for s in samples), sum(s.image_label == 2 for s in samples)
    w = opts["mil_class_weights"]
    assert w[0] == 0 and w[1] == pytest.approx(n_m / (n_b + n_m)) and w[2] == pytest.approx(n_b / (n_b + n_m))
    assert opts["backbone"] == "tiny" and opts["min_size"] == 128 and opts["max_size"] == 128
    assert opts["weak_proposals"] == 10 and opts["moi_rules"] == "most_abnormal/most_malignant"
    assert PAPER.detector_options(samples)["mil_class_weights"] == (0.0, 0.2209, 0.7791)
    only_benign = [s for s in samples if s.image_label == 1]
    with pytest.raises(ValueError, match="benign and malignant"):
        PHANTOM.detector_options(only_benign)


TINY = PHANTOM_QUICK.replace(phantom_images=48, size=48, n_test={0: 3, 1: 6, 2: 6}, steps=4, n_boot=50)


def test_prepare_data_splits_by_patient_and_holds_out_validation():
    d = prepare_data("phantom", TINY.replace(n_val=6), seed=1)
    ids = [set(s.id for s in part) for part in (d.strong, d.weak, d.val, d.test)]
    assert all(ids) and sum(len(i) for i in ids) == len(set().union(*ids))      # disjoint, none empty
    largest = max(sum(s.patient == p for s in d.samples) for p in {s.patient for s in d.samples})
    assert abs(len(d.val) - 6) < largest and all(s.is_strong for s in d.val)   # whole patients; boxes kept
    assert not {s.patient for s in d.val} & {s.patient for s in d.weak + d.strong + d.test}
    counts = d.counts()
    assert counts["n_val"] == len(d.val) and counts["n_test"] == len(d.test)
    assert counts["test_classes"] == {c: sum(s.image_label == i for s in d.test)
                                      for i, c in enumerate(("normal", "benign", "malignant"))}


def test_bad_experiments_say_what_is_wrong():
    benign_only = [s for s in make_phantom(40, seed=0, size=32) if s.image_label != 2]
    with pytest.raises(ValueError, match="no malignant image"):
        prepare_data("phantom", TINY, samples=benign_only)
    with pytest.raises(ValueError, match=r"cannot split .*n_strong=500.*but only \d+ are available"):
        prepare_data("phantom", TINY.replace(n_strong=500, strong_fraction=None))
    with pytest.raises(ValueError, match="cannot hold out n_val=900"):
        prepare_data("phantom", TINY.replace(n_val=900))
    with pytest.raises(ValueError, match="unknown method"):
        run_experiment("phantom", "unused", recipe=TINY, methods=["joint", "magic"], progress=False)
    with pytest.raises(ValueError, match="needs? .*joint|include 'joint'"):
        run_experiment("phantom", "unused", recipe=TINY, methods=["joint_self_training"], progress=False)


@pytest.mark.slow
def test_an_interrupted_experiment_resumes_from_the_finished_methods(tmp_path, monkeypatch):
    from wsbus.experiments import runner

    full = run_experiment("phantom", tmp_path / "ref", recipe=TINY, methods=["strong_few", "joint"], progress=False,
                          verbose=False)
    calls = []
    original = runner.Experiment.train

    def crash_on_joint(self, name, bar):
        calls.append(name)
        if name == "joint":
            raise KeyboardInterrupt("killed")
        return original(self, name, bar)

    monkeypatch.setattr(runner.Experiment, "train", crash_on_joint)
    with pytest.raises(KeyboardInterrupt):
        run_experiment("phantom", tmp_path / "run", recipe=TINY, methods=["strong_few", "joint"], progress=False)
    monkeypatch.setattr(runner.Experiment, "train", lambda self, name, bar: (calls.append(name),
                                                                             original(self, name, bar))[1])
    again = run_experiment("phantom", tmp_path / "run", recipe=TINY, methods=["strong_few", "joint"],
                           progress=False, verbose=False)
    assert calls == ["strong_few", "joint", "joint"]                          # strong_few was not trained again
    for a, b in zip(full["methods"], again["methods"]):
        assert a["corloc"] == b["corloc"] and a["ci"] == b["ci"]


def test_summarize_experiments_by_hand():
    def res(few, joint, p):
        return {"methods": [{"name": "strong_few", "corloc": {"overall": few}, "p_value": p},
                            {"name": "joint", "corloc": {"overall": joint}}],
                "finding": {"holds": joint > few}}
    table, data = summarize_experiments([res(0.5, 0.6, 0.01), res(0.4, 0.6, 0.2)], [0, 1])
    assert data["mean"] == {"strong_few": pytest.approx(0.45), "joint": pytest.approx(0.6)}
    assert data["joint_minus_strong_few"] == [pytest.approx(0.1), pytest.approx(0.2)]
    assert "| joint - strong_few | +10.00 (p 0.01) | +20.00 (p 0.2) | +15.00 |" in table
    assert "| strong_few | 50.00 | 40.00 | 45.00 | 7.07 |" in table


@pytest.mark.slow
def test_joint_warm_start_and_moi_teacher_recipe(tmp_path, monkeypatch):
    """The joint run starts from strong_few's final weights and trains with a teacher choosing its MoI."""
    from wsbus.engine import Trainer
    from wsbus.experiments import methods

    recipe = TINY.replace(joint_warm_start=True, joint_steps=2, moi_teacher=dict(decay=0.9, min_confidence=0.2))
    seen = {}
    original = Trainer.__init__

    def spy(self, model, *args, hooks=(), **kw):
        seen[kw["mode"]] = ({k: v.clone() for k, v in model.state_dict().items()}, [type(h).__name__ for h in hooks],
                            kw["steps"])
        original(self, model, *args, hooks=hooks, **kw)

    monkeypatch.setattr(methods.Trainer, "__init__", spy)
    run_experiment("phantom", tmp_path, recipe=recipe, methods=["strong_few", "joint"], progress=False, verbose=False)
    from wsbus.checkpoint import load_checkpoint

    few = load_checkpoint(tmp_path / "runs" / "strong_few" / "last.pt")["model"]
    start, hooks, steps = seen["joint"]
    assert all(torch.equal(start[k], few[k]) for k in few) and hooks == ["MoITeacher"] and steps == 2
    with pytest.raises(ValueError, match="joint_warm_start"):
        run_experiment("phantom", tmp_path / "b", recipe=recipe, methods=["joint"], progress=False)


def test_a_finished_result_of_another_experiment_is_not_reused(tmp_path):
    first = run_experiment("phantom", tmp_path, recipe=TINY.replace(steps=2), methods=["strong_few"], progress=False,
                           verbose=False)
    with pytest.raises(ValueError, match="belongs to another experiment .*recipe"):
        run_experiment("phantom", tmp_path, recipe=TINY.replace(steps=3), methods=["strong_few"], progress=False)
    with pytest.raises(ValueError, match="belongs to another experiment .*seed"):
        run_experiment("phantom", tmp_path, recipe=TINY.replace(steps=2), methods=["strong_few"], seed=1,
                       progress=False)
    # a change of the self-training only keeps the baselines: it is not a field strong_few reads
    other = TINY.replace(steps=2, self_training="mean_teacher", mean_teacher=dict(decay=0.9))
    kept = run_experiment("phantom", tmp_path, recipe=other, methods=["strong_few"], progress=False, verbose=False)
    assert kept["methods"][0]["timing"] == first["methods"][0]["timing"]           # loaded, not retrained


def test_recipe_used_by_resets_only_the_self_training_fields():
    from wsbus.experiments.recipe import SELF_TRAINING_FIELDS

    changed = TINY.replace(self_training="mean_teacher", mean_teacher=dict(decay=0.9), self_training_steps=7,
                           retrain="finetune", per_class=False)
    assert changed.used_by("strong_few") == TINY.used_by("strong_few") != changed
    assert changed.used_by("joint_self_training") is changed
    assert changed.replace(steps=5).used_by("joint") != TINY.used_by("joint")     # other fields still count
    assert set(SELF_TRAINING_FIELDS) <= {f.name for f in dataclasses.fields(TINY)}
