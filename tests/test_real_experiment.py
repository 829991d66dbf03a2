"""Training and the experiment runner on real BUS-BRA scans. The data's path comes from ``WSBUS_BUSBRA``; without it
the module is skipped (users and their CI do not have the data)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = os.environ.get("WSBUS_BUSBRA")
if not ROOT:
    pytest.skip("WSBUS_BUSBRA is not set (the path of the BUS-BRA data set)", allow_module_level=True)

from wsbus.data import load_busbra, split  # noqa: E402
from wsbus.engine import Trainer  # noqa: E402
from wsbus.experiments import REAL, REAL_QUICK, run_experiment  # noqa: E402
from wsbus.models import build_detector  # noqa: E402


@pytest.fixture(scope="module")
def subset():
    """A patient-level subset of the real scans: enough of both classes for a quick experiment."""
    samples = load_busbra(ROOT)
    parts = split(samples, n_strong=60, n_test=40, seed=0)
    return list(parts.strong) + list(parts.test) + list(parts.weak)[:60]


def test_a_joint_training_step_on_real_scans(subset):
    torch.set_num_threads(1)
    strong = [s for s in subset[:60]][:4]
    weak = [s.as_weak() for s in subset[-6:]]
    recipe = REAL.resolve(strong, weak)  # the canvas and anchors of REAL are "auto": measured from the images
    torch.manual_seed(0)
    model = build_detector(**recipe.detector_options(strong + weak))
    tr = Trainer(model, strong, weak, mode="joint", steps=2, progress=False, tensorboard=False,
                 **recipe.trainer_options())
    history = tr.fit()
    assert len(history) == 2 and all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in history)
    assert all(r["batch"] == "strong+weak" and r["loss_mil"] > 0 for r in history)


@pytest.mark.slow
def test_the_quick_experiment_on_a_real_subset(subset, tmp_path):
    results = run_experiment(f"busbra:{ROOT}", tmp_path / "x", recipe=REAL_QUICK, samples=subset, progress=False,
                             verbose=False)
    assert [m["name"] for m in results["methods"]] == ["strong_full", "strong_few", "weak_only", "joint",
                                                      "joint_paper", "joint_self_training"]
    assert results["data"]["n_strong"] > 0 and results["data"]["n_test"] > 0
    assert all(0.0 <= m["corloc"]["overall"] <= 1.0 for m in results["methods"])
    assert "sensitivity" in results["methods"][0]["froc"]
    assert (tmp_path / "x" / "table_v.md").is_file() and (tmp_path / "x" / "froc.png").is_file()


@pytest.mark.slow
def test_wsbus_experiment_quick_on_real_data_from_the_command_line(tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "wsbus", "experiment", "--data", f"busbra:{ROOT}", "--quick",
                           "--methods", "strong_few", "joint", "--out", str(out), "--no-progress", "--device", "cpu"],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [m["name"] for m in results["methods"]] == ["strong_few", "joint"]
    assert results["config"]["n_strong"] == REAL_QUICK.n_strong and results["data"]["source"].startswith("busbra:")
    assert Path(out / "detections.png").stat().st_size > 1000
