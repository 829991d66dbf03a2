"""Checkpoints and exact resume: atomic writes, weights_only loading, resume in every mode, and real
``kill -9`` interruptions (at chosen moments, including in the middle of a checkpoint write, and at random
moments) followed by ``--resume``, compared bit for bit with an uninterrupted run.

Run as a script (``python tests/test_resume.py child OUT STEPS KILL``) this file is the child training process.
"""
from __future__ import annotations

import csv
import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import pytest  # noqa: E402
import torch  # noqa: E402

from _fake_model import FakeDetector, TinyBoxes  # noqa: E402
from wsbus.checkpoint import CheckpointError, atomic_save, load_checkpoint  # noqa: E402
from wsbus.engine import Trainer  # noqa: E402

torch.set_num_threads(1)


def make_trainer(out, mode="joint", mixing="combined", init_seed=0, steps=12, n_strong_images=10,
                 n_weak=2, **kw):
    torch.manual_seed(init_seed)
    model = FakeDetector()
    strong = TinyBoxes(n_strong_images, "strong", seed=1) if mode != "weak" else None
    weak = TinyBoxes(16, "weak", seed=2) if mode != "strong" else None
    kw.setdefault("checkpoint_every", 4)
    return Trainer(model, strong, weak, mode=mode, mixing=mixing, batch_weak=n_weak, alpha=0.5, steps=steps,
                   out_dir=out, progress=False, tensorboard=False, **kw)


def assert_same_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for p in sa:
        for k in sa[p]:
            assert torch.equal(torch.as_tensor(sa[p][k]), torch.as_tensor(sb[p][k])), (p, k)


# --------------------------------------------------------------------------------------------------------
# in-process
# --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode,mixing", [("strong", "combined"), ("weak", "combined"), ("joint", "combined"),
                                         ("joint", "alternating")])
def test_resume_is_exact_in_every_mode(tmp_path, mode, mixing):
    ref = make_trainer(tmp_path / "ref", mode, mixing)
    ref.fit()
    first = make_trainer(tmp_path / "run", mode, mixing)
    first.fit(steps=7)                                  # checkpoints at 4 and at the end (7)
    # A fresh model with another initialisation and a disturbed global RNG: the checkpoint must restore all.
    torch.manual_seed(1234)
    second = make_trainer(tmp_path / "run", mode, mixing, init_seed=99)
    assert not torch.equal(second.model.rpn.weight, first.model.rpn.weight)
    hist = second.fit(resume=True)
    assert second.step == 12 and hist.steps == list(range(12))
    assert_same_state(ref.state_dict(), second.state_dict())
    assert hist.losses == ref.history.losses           # the history tail came back with the checkpoint
    with open(tmp_path / "run" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    with open(tmp_path / "ref" / "log.csv") as f:
        ref_rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == [str(k) for k in range(12)]
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]


def test_checkpoint_content_loads_weights_only(tmp_path):
    tr = make_trainer(tmp_path, steps=4, keep_every=2)
    tr.fit()
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    for key in ("model", "optimizer", "step", "scaler", "config", "rng", "streams", "history", "version"):
        assert key in ck
    assert ck["step"] == 4
    assert ck["config"]["model"] == {"backbone": "fake", "num_classes": 3, "channels": 6, "sampled": 8}
    assert ck["config"]["trainer"]["mode"] == "joint" and ck["config"]["trainer"]["world_size"] == 1
    assert ck["streams"]["strong"]["position"] == 4 and ck["streams"]["weak"]["position"] == 4
    assert set(ck["rng"]) >= {"torch", "numpy", "python", "cuda"}
    assert [r["step"] for r in ck["history"]] == [0, 1, 2, 3]
    assert (tmp_path / "step_000002.pt").is_file() and (tmp_path / "step_000004.pt").is_file()
    assert torch.load(tmp_path / "step_000002.pt", weights_only=True)["step"] == 2
    assert not list(tmp_path.glob(".*.tmp"))


def test_alternating_positions_are_stored(tmp_path):
    tr = make_trainer(tmp_path, "joint", "alternating", steps=5)
    tr.fit()
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["streams"]["strong"]["position"] == 3 and ck["streams"]["weak"]["position"] == 2


def test_resume_refuses_a_different_run(tmp_path):
    make_trainer(tmp_path, steps=4).fit()
    with pytest.raises(CheckpointError, match="batch_weak"):
        make_trainer(tmp_path, n_weak=3).fit(resume=True)
    with pytest.raises(CheckpointError, match=r"n_strong_images.*\n.*strong stream n"):
        make_trainer(tmp_path, n_strong_images=11).fit(resume=True)
    with pytest.raises(CheckpointError, match="mixing"):
        make_trainer(tmp_path, mixing="alternating").fit(resume=True)


def test_resume_without_checkpoint_starts_from_zero(tmp_path):
    tr = make_trainer(tmp_path, steps=3)
    tr.fit(resume=True)
    assert tr.step == 3
    assert "no checkpoint" in (tmp_path / "train.log").read_text()


def test_resume_when_already_done_is_a_no_op(tmp_path):
    make_trainer(tmp_path, steps=4).fit()
    before = (tmp_path / "last.pt").read_bytes()
    tr = make_trainer(tmp_path, steps=4, init_seed=5)
    hist = tr.fit(resume=True)
    assert tr.step == 4 and len(hist) == 4
    assert (tmp_path / "last.pt").read_bytes() == before


def test_atomic_save_failure_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    atomic_save({"step": 1, "w": torch.ones(3)}, target)
    real_save = torch.save

    def broken(obj, f, *a, **k):
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[:10])
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"step": 2, "w": torch.zeros(3)}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]      # the temporary file was removed


def test_atomic_replace_writes_by_name_or_keeps_the_old_file(tmp_path):
    from wsbus.checkpoint import atomic_replace

    target = tmp_path / "model.onnx"
    atomic_replace(target, lambda tmp: tmp.write_bytes(b"first"))
    assert target.read_bytes() == b"first"

    def half_then_fail(tmp):
        tmp.write_bytes(b"sec")
        raise RuntimeError("exporter crashed (simulated)")

    with pytest.raises(RuntimeError, match="exporter crashed"):
        atomic_replace(target, half_then_fail)
    assert target.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_load_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt.*does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    atomic_save({"step": 1, "w": torch.ones(100)}, tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt.*cannot be read"):
        load_checkpoint(tmp_path / "cut.pt", require=())
    with pytest.raises(CheckpointError, match=r"full.pt.*lacks the keys \['version', 'model'"):
        load_checkpoint(tmp_path / "full.pt")

    torch.save({"model": Path("x")}, tmp_path / "evil.pt")    # an arbitrary pickled object: refused
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(tmp_path / "evil.pt", require=("model",))
    atomic_save({"model": {}, "version": 99}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(tmp_path / "future.pt", require=("model",))


# --------------------------------------------------------------------------------------------------------
# kill -9 in a subprocess
# --------------------------------------------------------------------------------------------------------

STEPS, EVERY = 22, 5


def _run_child(out: Path, kill: str, *, wait: bool = True, slow: float = 0.0):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "child", str(out), str(STEPS), kill, str(slow)]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    return proc


def _ckpt_step(out: Path) -> int:
    return int(load_checkpoint(out / "last.pt")["step"])


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    proc = _run_child(out, "none")
    assert proc.returncode == 0, proc.stderr
    return out


def _assert_matches_reference(out: Path, ref: Path) -> None:
    assert_same_state(load_checkpoint(ref / "last.pt"), load_checkpoint(out / "last.pt"))
    with open(ref / "log.csv") as f:
        ref_rows = [{k: v for k, v in r.items() if k != "time"} for r in csv.DictReader(f)]
    with open(out / "log.csv") as f:
        rows = [{k: v for k, v in r.items() if k != "time"} for r in csv.DictReader(f)]
    assert rows == ref_rows                                # every step logged once, same values to the bit
    assert not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_kill9_at_chosen_moments_then_resume_is_bit_exact(tmp_path, reference_run):
    out = tmp_path / "run"
    # (kill spec, checkpoint step expected on disk afterwards, a stray temporary file expected?)
    plan = [("after_step:7", 5, False),       # killed between checkpoints
            ("mid_write:10", 5, True),        # killed with half of the new checkpoint written
            ("before_replace:15", 10, True),  # written and fsync-ed, not yet renamed
            ("after_replace:20", 20, False)]  # renamed, directory not yet fsync-ed
    for kill, expect_step, expect_tmp in plan:
        proc = _run_child(out, kill)
        assert proc.returncode == -signal.SIGKILL, (kill, proc.returncode, proc.stderr[-2000:])
        assert _ckpt_step(out) == expect_step, kill
        assert bool(list(out.glob(".last.pt.*.tmp"))) == expect_tmp, kill
    proc = _run_child(out, "none")
    assert proc.returncode == 0, proc.stderr
    assert "removed the stale temporary file" in (out / "train.log").read_text()
    _assert_matches_reference(out, reference_run)


@pytest.mark.slow
def test_kill9_at_random_moments_then_resume_is_bit_exact(tmp_path, reference_run):
    out = tmp_path / "run"
    rng = random.Random(20190301)
    kills = 0
    for _ in range(2):
        child = _run_child(out, "none", wait=False, slow=0.02)
        assert child.stdout.readline().strip() == "started"       # printed just before fit()
        time.sleep(rng.uniform(0.0, 0.5))
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
        kills += child.returncode == -signal.SIGKILL
    assert kills >= 1
    proc = _run_child(out, "none")
    assert proc.returncode == 0, proc.stderr
    _assert_matches_reference(out, reference_run)


# --------------------------------------------------------------------------------------------------------
# the child process
# --------------------------------------------------------------------------------------------------------

def _child(out: str, steps: int, kill: str, slow: float) -> None:
    what, _, at = kill.partition(":")
    at = int(at) if at else -1
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)  # noqa: E731
    trainer = None

    if what == "mid_write":
        real_save = torch.save

        def save(obj, f, *a, **k):
            if isinstance(obj, dict) and obj.get("step") == at:
                buf = io.BytesIO()
                real_save(obj, buf, *a, **k)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
                die()
            return real_save(obj, f, *a, **k)

        torch.save = save
    if what in ("before_replace", "after_replace"):
        real_replace = os.replace

        def replace(src, dst, *a, **k):
            hit = Path(dst).name == "last.pt" and trainer is not None and trainer.step == at
            if hit and what == "before_replace":
                die()
            real_replace(src, dst, *a, **k)
            if hit:
                die()

        os.replace = replace

    def callback(tr, record):
        if what == "after_step" and record["step"] == at:
            die()
        if slow:
            time.sleep(slow)

    trainer = make_trainer(out, steps=steps, checkpoint_every=EVERY, callbacks=[callback])
    print("started", flush=True)
    trainer.fit(resume=True)


if __name__ == "__main__" and len(sys.argv) >= 2 and sys.argv[1] == "child":
    _child(sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5]))
