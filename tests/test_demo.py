"""``wsbus demo --quick`` end to end in a subprocess, ``wsbus self-train`` from a ``wsbus train`` checkpoint, and the
demo's helpers. (The full demo is the README's main job, not a test.)"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wsbus.demo import FULL, METHODS, QUICK, DemoConfig, _check_finding, _panel_indices, _smooth
from wsbus.evaluate import MethodResult

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
    assert all((out / "logs" / f"{n}.csv").is_file() for n in METHODS)


@pytest.mark.slow
def test_self_train_command_from_a_train_checkpoint(tmp_path):
    run = tmp_path / "joint"
    proc = _run(["train", "--data", "phantom:40", "--size", "64", "--mode", "joint", "--steps", "3",
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
    f = _check_finding(ok)
    assert f["holds"] and f["joint_minus_strong_few"] == pytest.approx(0.25)
    assert f["strong_full_minus_strong_few"] == pytest.approx(0.5)
    bad = dict(ok, joint=_method("joint", [1, 1, 0, 0]), weak_only=_method("weak_only", [1, 0, 0, 0]))
    f = _check_finding(bad)
    assert not f["holds"]
    assert f["checks"] == {"joint_above_strong_few": False, "strong_few_below_strong_full": True,
                           "weak_only_far_below": True}  # 0.25 < 0.5 - 0.2
    worse = dict(ok, weak_only=_method("weak_only", [1, 1, 0, 0]))
    assert _check_finding(worse)["checks"]["weak_only_far_below"] is False


def test_smooth_is_a_trailing_moving_average():
    np.testing.assert_allclose(_smooth([1, 2, 3, 4, 5], 2), [1, 1.5, 2.5, 3.5, 4.5])
    np.testing.assert_allclose(_smooth([1, 2, 3], 1), [1, 2, 3])
    np.testing.assert_allclose(_smooth([2, 4], 5), [2, 3])


def test_panel_indices_take_the_first_images_of_each_class():
    class S:
        def __init__(self, label):
            self.image_label = label
    test = [S(l) for l in (0, 2, 1, 1, 2, 0, 1, 2)]
    assert _panel_indices(test, 2) == [2, 3, 1, 4, 0]


def test_presets_are_consistent():
    for cfg in (FULL, QUICK):
        assert isinstance(cfg, DemoConfig)
        assert 0 < cfg.strong_fraction < 1 and cfg.steps > 0 and sum(cfg.n_test.values()) < cfg.n_images
        d = cfg.as_dict()
        json.dumps(d)  # plain data for results.json
    assert QUICK.steps < FULL.steps and QUICK.n_images < FULL.n_images


def test_demo_alpha_climbs_over_a_stretched_horizon():
    from dataclasses import replace

    from wsbus.demo import _alpha

    a = _alpha(FULL, "gradual", FULL.steps)                       # default stretch 4: 30 stairs over 3200 steps
    assert FULL.alpha_stretch == 4.0 and a(0) == pytest.approx(0.01)
    assert a(FULL.steps - 1) == pytest.approx(1 - 0.99 * 0.9 ** 7)  # floor(799 / (3200 / 30)) = 7 stairs: 0.52
    plain = _alpha(replace(FULL, alpha_stretch=1.0), "gradual", FULL.steps)
    assert plain(FULL.steps - 1) == pytest.approx(1 - 0.99 * 0.9 ** 29)   # the paper's staircase scaled to the run
    assert _alpha(FULL, 0.5, FULL.steps) == 0.5 and _alpha(FULL, "constant", 10) == "constant"
    with pytest.raises(ValueError, match="alpha_stretch must be > 0"):
        _alpha(replace(FULL, alpha_stretch=0.0), "gradual", 10)
