"""The one training path as a user drives it: `wsbus train` gives the experiment's weights, survives interrupts and
reruns, protects its folder, says what the MIL loss reached, and records which code made a result."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from wsbus.checkpoint import atomic_save, load_checkpoint
from wsbus.experiments import PHANTOM_QUICK, QUICK_RECIPES, REAL_QUICK, prepare_data, run_experiment, train_run

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
QUIET = ("--no-progress", "--no-tensorboard", "--device", "cpu")


def wsbus(*args, timeout=300, umask=None, **kw):
    def pre():
        if umask is not None:
            os.umask(umask)
    return subprocess.run([sys.executable, "-m", "wsbus", *map(str, args)], env=ENV, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, preexec_fn=pre, **kw)


def weights(path):
    return load_checkpoint(path)["model"]


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def files_state(folder):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(Path(folder).rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ one training path
@pytest.mark.parametrize("recipe_name, recipe", [("phantom", PHANTOM_QUICK), ("real", REAL_QUICK)])
def test_train_gives_the_experiments_weights_bit_for_bit(tmp_path, recipe_name, recipe):
    """The same data, recipe and seed: `wsbus train --mode joint` and `wsbus experiment`'s joint end with the same
    weights (the real recipe's joint warm-starts from strong_few and trains with a frozen MoI teacher)."""
    proc = wsbus("train", "--data", "phantom", "--recipe", recipe_name, "--quick", "--mode", "joint", "--out",
                 tmp_path / "train", *QUIET)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_experiment("phantom", tmp_path / "exp", recipe=recipe, methods=["strong_few", "joint"], progress=False,
                   verbose=False)
    assert same(weights(tmp_path / "train" / "last.pt"), weights(tmp_path / "exp" / "runs" / "joint" / "last.pt"))
    if recipe.joint_warm_start:  # its warm start is the experiment's strong_few
        assert same(weights(tmp_path / "train" / "warm_start" / "last.pt"),
                    weights(tmp_path / "exp" / "runs" / "strong_few" / "last.pt"))
    config = json.loads((tmp_path / "train" / "config.json").read_text())
    data = prepare_data("phantom", recipe, 0)
    assert config["split"]["n_strong"] == len(data.strong) and config["split"]["n_test"] == len(data.test)
    assert "the MIL loss reached" in proc.stdout


@pytest.mark.skipif(not os.environ.get("WSBUS_BUSBRA"), reason="WSBUS_BUSBRA is not set")
def test_train_gives_the_experiments_weights_on_real_scans(tmp_path):
    data = f"busbra:{os.environ['WSBUS_BUSBRA']}?device=Toshiba"
    proc = wsbus("train", "--data", data, "--quick", "--mode", "joint", "--out", tmp_path / "train", *QUIET,
                 timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_experiment(data, tmp_path / "exp", recipe=REAL_QUICK, methods=["strong_few", "joint"], progress=False,
                   verbose=False)
    assert same(weights(tmp_path / "train" / "last.pt"), weights(tmp_path / "exp" / "runs" / "joint" / "last.pt"))


# ------------------------------------------------------------------------------------------------ interrupts
def _run_until(args, out, rows, sig):
    """Start `wsbus` with ``args``, send ``sig`` once ``out/log.csv`` has ``rows`` data rows, return the process."""
    proc = subprocess.Popen([sys.executable, "-m", "wsbus", *map(str, args)], env=ENV, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    log = Path(out) / "log.csv"
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) > rows:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"finished before the signal: {proc.communicate()[1][-2000:]}"
    proc.send_signal(sig)
    out_text, err_text = proc.communicate(timeout=120)
    return proc.returncode, out_text, err_text


SIGNAL_RUN = ("train", "--data", "phantom", "--recipe", "real", "--quick", "--mode", "joint", "--steps", "40",
              "--checkpoint-every", "1000", "--device", "cpu")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    proc = wsbus(*SIGNAL_RUN, "--out", out, "--no-progress", "--no-tensorboard")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return weights(out / "last.pt")


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_the_step_reached_and_a_resume_with_toggled_flags_ends_identically(tmp_path, uninterrupted,
                                                                                          sig, code):
    out = tmp_path / "cut"
    rc, _, err = _run_until(SIGNAL_RUN + ("--out", out, "--no-progress"), out, rows=5, sig=sig)
    assert rc == code, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"wsbus: interrupted by {signal.Signals(sig).name} at step") and "checkpoint" in last
    step = load_checkpoint(out / "last.pt")["step"]
    assert 0 < step < 40 and f"at step {step} of 40" in last      # saved at the step reached, not at a multiple
    assert "Traceback" not in err
    # continue with other logging hooks: hook state (the MoI teacher's) is keyed by name, not by position
    resumed = wsbus(*SIGNAL_RUN, "--out", out, "--resume", "--no-tensorboard", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert same(weights(out / "last.pt"), uninterrupted)


@pytest.mark.slow
def test_an_interrupted_experiment_keeps_its_finished_methods_and_resumes(tmp_path):
    out = tmp_path / "x"
    args = ("experiment", "--quick", "--out", out, "--no-progress", "--device", "cpu", "--methods", "strong_few",
            "joint")
    proc = subprocess.Popen([sys.executable, "-m", "wsbus", *map(str, args)], env=ENV, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not (out / "runs" / "strong_few" / "result.pt").is_file():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the experiment finished before the signal arrived")
    assert proc.returncode == 143 and err.strip().splitlines()[-1].startswith("wsbus: interrupted by SIGTERM")
    again = wsbus(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((out / "results.json").read_text())["methods"][0]["name"] == "strong_few"


# ------------------------------------------------------------------------------------------------ the run folder
def test_a_used_folder_needs_resume_or_overwrite_and_a_refused_resume_changes_nothing(tmp_path):
    out = tmp_path / "run"
    args = ("train", "--data", "phantom", "--quick", "--mode", "strong", "--out", out, *QUIET)
    assert wsbus(*args).returncode == 0
    before = files_state(out)
    again = wsbus(*args)
    assert again.returncode == 2 and "already holds a run" in again.stderr and "--overwrite" in again.stderr
    other = wsbus(*args, "--resume", "--n-strong", "5")          # another split: refused
    assert other.returncode == 2 and "differ from" in other.stderr
    lr = wsbus(*args, "--resume", "--lr", "0.01")                 # another optimiser setting: refused
    assert lr.returncode == 2 and "lr" in lr.stderr
    assert files_state(out) == before                             # nothing written, nothing touched
    fresh = wsbus(*args, "--overwrite", "--steps", "3")
    assert fresh.returncode == 0 and load_checkpoint(out / "last.pt")["step"] == 3


def test_out_under_a_file_is_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    proc = wsbus("train", "--data", "phantom", "--quick", "--out", tmp_path / "f" / "run", *QUIET)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "is a file" in proc.stderr


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_written_files_follow_the_users_umask(tmp_path, umask, mode):
    out = tmp_path / "run"
    assert wsbus("train", "--data", "phantom", "--quick", "--mode", "strong", "--out", out, *QUIET,
                 umask=umask).returncode == 0
    for name in ("last.pt", "config.json", "split.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == mode, name


# ------------------------------------------------------------------------------------------------ honest reports
def test_a_joint_run_whose_mil_loss_reached_nothing_says_so(tmp_path, monkeypatch, capsys):
    from wsbus.cli import main

    gate = dict(REAL_QUICK.moi_teacher, min_confidence=1.0)   # a gate no region can pass
    monkeypatch.setitem(QUICK_RECIPES, "real", REAL_QUICK.replace(moi_teacher=gate))
    rc = main(["train", "--data", "phantom", "--recipe", "real", "--quick", "--mode", "joint", "--out",
               str(tmp_path / "run"), *QUIET])
    out, err = capsys.readouterr()
    assert rc == 1 and "NOT joint training in effect" in out and "trained" not in out
    assert "the MIL loss reached none of the" in err
    report = train_run("phantom", "joint", tmp_path / "run", recipe=QUICK_RECIPES["real"], resume=True,
                       progress=False, tensorboard=False)
    assert report.mil["reached"] == 0 and report.warning


def test_the_experiment_records_code_and_refuses_results_of_other_code(tmp_path):
    out = tmp_path / "x"
    first = run_experiment("phantom", out, recipe=PHANTOM_QUICK, methods=["strong_few"], progress=False,
                           verbose=False)
    assert first["provenance"]["wsbus"] and first["methods"][0]["provenance"]["torch"]
    path = out / "runs" / "strong_few" / "result.pt"
    state = load_checkpoint(path, require=("name",))
    state["extra"]["code"] = dict(state["extra"]["code"], git={"commit": "0" * 40, "dirty": False, "changes": None})
    atomic_save(state, path)
    with pytest.raises(ValueError, match="was made by .*commit 0000000.*--reuse-results"):
        run_experiment("phantom", out, recipe=PHANTOM_QUICK, methods=["strong_few"], progress=False, verbose=False)
    again = run_experiment("phantom", out, recipe=PHANTOM_QUICK, methods=["strong_few"], progress=False,
                           verbose=False, reuse_results=True)
    assert again["methods"][0]["corloc"] == first["methods"][0]["corloc"]


def test_jobs_give_the_same_numbers_as_one_process(tmp_path):
    methods = ["strong_few", "weak_only", "joint", "joint_paper", "joint_self_training"]
    one = run_experiment("phantom", tmp_path / "one", recipe=PHANTOM_QUICK, methods=methods, progress=False,
                         verbose=False)
    two = run_experiment("phantom", tmp_path / "two", recipe=PHANTOM_QUICK, methods=methods, progress=False,
                         verbose=False, jobs=2)
    for a, b in zip(one["methods"], two["methods"]):
        assert (a["name"], a["corloc"], a["ap50"]) == (b["name"], b["corloc"], b["ap50"])
    for m in methods[:-1]:
        assert same(weights(tmp_path / "one" / "runs" / m / "last.pt"), weights(tmp_path / "two" / "runs" / m /
                                                                                 "last.pt"))
