"""Data-parallel training on CPU: two gloo processes launched by torchrun (``torch.distributed.run``).

Checks that both ranks end with identical weights, that only rank 0 writes the checkpoint and logs (and says
the world size), that the checkpoint loads, and that two ranks with per-rank batch B train like one process
with the global batch 2B (same items, gradients averaged).

Run as a script under torchrun (``tests/test_ddp.py child OUT MODE STREAM``) this file is the rank process.
"""
from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import pytest  # noqa: E402
import torch  # noqa: E402

from _fake_model import FakeDetector, TinyBoxes  # noqa: E402
from wsbus.checkpoint import load_checkpoint  # noqa: E402
from wsbus.engine import Trainer  # noqa: E402

STEPS = 6


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_trainer(out, mode, mixing, n_strong, n_weak, **kw):
    torch.manual_seed(0)
    # sampled=16 uses every proposal, so the in-model random sampling cannot differ between rank layouts
    model = FakeDetector(sampled=16)
    strong = TinyBoxes(10, "strong", seed=1) if mode != "weak" else None
    weak = TinyBoxes(14, "weak", seed=2) if mode != "strong" else None
    return Trainer(model, strong, weak, mode=mode, mixing=mixing, batch_strong=n_strong, batch_weak=n_weak, alpha=0.5,
                   steps=STEPS, out_dir=out, checkpoint_every=4, progress=False, tensorboard=False, **kw)


def torchrun(args, timeout=120):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=HERE.parent)


@pytest.mark.slow
@pytest.mark.parametrize("mode,mixing", [("joint", "alternating")])
def test_two_gloo_ranks_agree_and_match_one_process(tmp_path, mode, mixing):
    out = tmp_path / "ddp"
    proc = torchrun([str(HERE / "test_ddp.py"), "child", str(out), mode, mixing])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = torch.load(out / "rank0.pt", weights_only=True)
    r1 = torch.load(out / "rank1.pt", weights_only=True)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k                 # the ranks hold identical weights

    ck = load_checkpoint(out / "last.pt")
    assert ck["step"] == STEPS and ck["config"]["trainer"]["world_size"] == 2
    assert ck["streams"]["weak"]["global_batch_size"] == 2 * 1
    for k in r0:
        assert torch.equal(ck["model"][k], r0[k])
    assert "world size 2" in (out / "train.log").read_text()
    with open(out / "log.csv") as f:                         # rank 0 alone writes the log: no duplicate rows
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(STEPS))

    # One process with the global batch (2 strong + 2 weak) sees the same items and averages the same
    # per-image losses: the same weights up to float summation order.
    torch.set_num_threads(1)
    single = make_trainer(tmp_path / "single", mode, mixing, n_strong=2, n_weak=2)
    single.fit()
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(v, r0[k], rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.slow
def test_torchrun_module_entry_point_trains_the_tiny_detector(tmp_path):
    out = tmp_path / "cli"
    proc = torchrun(["-m", "wsbus", "train", "--data", "phantom:60", "--mode", "joint", "--steps", "3", "--out", str(out),
                     "--checkpoint-every", "2", "--batch-strong", "1", "--batch-weak", "2", "--no-progress",
                     "--no-tensorboard", "--device", "cpu"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("world size 2") == 1               # only rank 0 reports
    ck = load_checkpoint(out / "last.pt")
    assert ck["step"] == 3 and ck["config"]["trainer"]["world_size"] == 2
    assert ck["streams"]["strong"]["global_batch_size"] == 2 and ck["streams"]["weak"]["global_batch_size"] == 4
    assert "world size 2 (global batch = 2 x (1 strong + 2 weak))" in (out / "train.log").read_text()
    from wsbus.models import build_detector

    model = build_detector(**ck["config"]["model"])
    model.load_state_dict(ck["model"])                           # the checkpoint rebuilds the detector


def _child(out: str, mode: str, mixing: str) -> None:
    torch.set_num_threads(1)
    tr = make_trainer(out, mode, mixing, n_strong=1, n_weak=1)
    assert tr.dist.world_size == 2 and tr.dist.backend == "gloo"
    tr.fit()
    torch.save(tr.model.state_dict(), Path(out) / f"rank{tr.dist.rank}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__" and len(sys.argv) >= 2 and sys.argv[1] == "child":
    _child(sys.argv[2], sys.argv[3], sys.argv[4])
