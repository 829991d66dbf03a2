#!/usr/bin/env python
"""The cross-site experiment on BUS-BRA's scanners: ``docs/results/busbra_cross_site/``.

Usage::

    python scripts/busbra_cross_site.py --data ../shared/data/BUSBRA --evaluate-on val    # choose settings
    python scripts/busbra_cross_site.py --data ../shared/data/BUSBRA                      # the test, once

The source is the GE Logiq 7 patients of BUS-BRA (902 images, all with their boxes); the target is every other
scanner's patients (GE Logiq 5, Toshiba, U-Systems: 973 images), split by patient into test, validation and
training images, whose image labels only are used (BUS-BRA's ``Device`` column; no patient was scanned on two
devices). ``wsbus experiment --data SOURCE --target TARGET`` trains ``source_only`` (the source's boxes),
``joint`` (+ the target's image labels, the REAL recipe's joint: ours), ``joint_self_training`` (the mean teacher,
ours) and the references ``target_few`` (50 target boxes) and ``target_full`` (every target training box), and
scores them on the target's test (or validation) patients; p-values are McNemar's against ``source_only``. The goal
(issue 23): joint at least 5 CorLoc points above source_only with p < 0.05, self-training not below joint.

Training goes to ``--runs`` (resumable); ``--out`` receives the experiment's ``results.json``, ``table_v.md``,
``table_iv.md`` and ``froc.png`` (``val/`` or ``test/``).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from wsbus.experiments import REAL, run_experiment  # noqa: E402

SOURCE = "busbra:{data}?device=Logiq 7"
TARGET = "busbra:{data}?device!=Logiq 7"
PUBLISHED = ("results.json", "table_v.md", "table_iv.md", "froc.png")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="the BUS-BRA folder")
    ap.add_argument("--evaluate-on", choices=("val", "test"), default="test")
    ap.add_argument("--n-target-strong", type=int, default=50, help="target boxes of the target_few reference")
    ap.add_argument("--runs", default="runs/busbra_cross_site", help="training runs (resumable)")
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "busbra_cross_site"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reuse-results", action="store_true")
    ap.add_argument("--methods", nargs="+", default=None,
                    help="a subset of the methods (default all: source_only, joint, joint_self_training, target_few, "
                         "target_full)")
    args = ap.parse_args()
    runs = Path(args.runs) / args.evaluate_on
    result = run_experiment(SOURCE.format(data=args.data), runs, target=TARGET.format(data=args.data), recipe=REAL,
                            n_target_strong=args.n_target_strong, evaluate_on=args.evaluate_on, progress=False,
                            methods=args.methods,
                            jobs=args.jobs, threads=args.threads, reuse_results=args.reuse_results)
    out = Path(args.out) / args.evaluate_on
    out.mkdir(parents=True, exist_ok=True)
    for name in PUBLISHED:
        if (runs / name).is_file():
            shutil.copyfile(runs / name, out / name)
    print(f"finding: {result['finding']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
