"""Wall and CPU time of ``wsbus demo --quick`` (the smoke version of the main job), in a child process.

Runs ``python -m wsbus demo --quick --out <tmp>`` ``--reps`` times and prints each run's wall time and CPU time
(user + system of the child, from ``resource.getrusage(RUSAGE_CHILDREN)``) and their medians. On a shared
machine the CPU time is the stable number; the wall time is what a user waits. ``--full`` times the full demo
(about 10 minutes on 2 free cores) instead.

Usage::

    python benchmarks/demo_time.py                  # 1 run of the quick demo
    python benchmarks/demo_time.py --reps 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import children_cpu, machine_line  # noqa: E402


def run_once(full: bool, device: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="wsbus_demo_time_") as out:
        cmd = [sys.executable, "-m", "wsbus", "demo", "--out", out, "--device", device]
        if not full:
            cmd.append("--quick")
        c0, t0 = children_cpu(), time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall, cpu = time.perf_counter() - t0, children_cpu() - c0
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed with exit code {proc.returncode}:\n{proc.stderr[-3000:]}")
        results = json.loads((Path(out) / "results.json").read_text())
    return {"wall": wall, "cpu": cpu, "methods": [m["name"] for m in results["methods"]]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--full", action="store_true", help="time the full demo instead of --quick")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    print(machine_line(threads, args.device))
    runs = []
    for r in range(args.reps):
        run = run_once(args.full, args.device)
        runs.append(run)
        print(f"run {r}: wall {run['wall']:7.1f} s   CPU (child) {run['cpu']:7.1f} s   methods {run['methods']}")
    med = {k: statistics.median(x[k] for x in runs) for k in ("wall", "cpu")}
    print(f"wsbus demo {'(full)' if args.full else '--quick'}: median wall {med['wall']:.1f} s, "
          f"median CPU {med['cpu']:.1f} s over {len(runs)} run(s)")
    return med


if __name__ == "__main__":
    main()
