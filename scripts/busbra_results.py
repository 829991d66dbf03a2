#!/usr/bin/env python
"""Make the published BUS-BRA results: ``docs/results/busbra/`` (the one documented command of README and
chapter 09).

Usage::

    python scripts/busbra_results.py --data ../shared/data/BUSBRA            # all of it (a few hours on 2 cores)
    python scripts/busbra_results.py --data ../shared/data/BUSBRA --seeds 0  # one split seed

It runs, for each split seed, ``wsbus experiment`` with the ``REAL`` recipe (50 boxed images: the five methods of
Table V, self-training with the recipe's procedure) and with 10 boxed images (strong_few, joint and self-training),
each scored once on its test split; then the paper's offline self-training from the same joint models, so that
Table IV compares the two procedures on the same images. Training runs go to ``--runs`` (resumable: run the same
command again after an interruption); the files that are published are written to ``--out``:

``results.json``, ``table_v.md``, ``table_iv.md``, ``detections.png``, ``froc.png``, ``loss_curves.png`` (split seed
0, 50 boxes), ``summary.md`` / ``summary.json`` (every seed, 50 boxes), ``boxes10/summary.md`` / ``.json`` and
``self_training.json`` (both procedures, both settings, every seed).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from wsbus.checkpoint import atomic_write_json, atomic_write_text  # noqa: E402
from wsbus.data import load_busbra  # noqa: E402
from wsbus.experiments import REAL, Experiment, prepare_data, run_experiment, summarize_experiments  # noqa: E402
from wsbus.seeding import cpu_threads  # noqa: E402
from wsbus.self_training import self_train  # noqa: E402

PUBLISHED = ("results.json", "table_v.md", "table_iv.md", "detections.png", "froc.png", "loss_curves.png")


def paper_self_training(source: str, samples, recipe, seed: int, out: Path, threads: int) -> dict:
    """The paper's offline self-training from the experiment's joint model, on its test split: the top half of each
    class moved, a new model trained from the initial weights for the recipe's ``steps`` (as strong_few)."""
    done = out / f"paper_self_training_seed_{seed}.json"
    if done.is_file():
        return json.loads(done.read_text())
    with cpu_threads(threads):
        data = prepare_data(source, recipe, seed, samples=samples)
        exp = Experiment(data, recipe, out / f"seed_{seed}", seed=seed, methods=("strong_few", "joint"),
                         progress=False)
        joint = exp.build_model()
        joint.load_state_dict(exp.trained_weights("joint"))
        st = self_train(data.strong, data.weak, data.test, model_factory=exp.build_model, initial=joint,
                        procedure="paper", fractions=(recipe.self_training_fraction,), steps=recipe.steps,
                        retrain_steps=recipe.steps, retrain=recipe.retrain,
                        per_class=recipe.per_class, seed=exp.train_seed, init_seed=exp.init_seed,
                        n_boot=recipe.n_boot, progress=False,
                        trainer_kwargs=dict(recipe.trainer_options(), alpha=recipe.alpha_schedule(recipe.steps),
                                            mixing=recipe.mixing))
    js = st.to_json()
    row = {"corloc": st.methods[-1].overall, "benign": st.methods[-1].benign, "malignant": st.methods[-1].malignant,
           "precision": (js["pseudo_box_precision"] or {}).get("overall"), "class_accuracy": js["class_accuracy"]}
    atomic_write_json(row, done)
    return row


def setting(source: str, samples, recipe, seeds, runs: Path, methods, threads: int) -> dict:
    results = [run_experiment(source, runs / f"seed_{s}", recipe=recipe, seed=s, methods=methods, samples=samples,
                              threads=threads, progress=True, verbose=True) for s in seeds]
    table, summary = summarize_experiments(results, seeds)
    rows = []
    for s, res in zip(seeds, results):
        by = {m["name"]: m for m in res["methods"]}
        paper = paper_self_training(source, samples, recipe, s, runs, threads)
        rows.append({"seed": s, "joint": by["joint"]["corloc"]["overall"],
                     "mean_teacher": by["joint_self_training"]["corloc"]["overall"], "paper": paper["corloc"],
                     "strong_few": by["strong_few"]["corloc"]["overall"],
                     "mean_teacher_precision": (res["pseudo_box_precision"] or {}).get("overall"),
                     "mean_teacher_class_accuracy": res["self_training_class_accuracy"],
                     "paper_precision": paper["precision"], "paper_class_accuracy": paper["class_accuracy"]})
    return {"results": results, "table": table, "summary": summary,
            "self_training": {"n_strong": recipe.n_strong, "evaluated_on": "test", "per_seed": rows}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="the BUSBRA folder")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--seeds-10", type=int, nargs="*", default=None,
                   help="split seeds of the 10-box setting (default: --seeds; none: skip it)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of each training run")
    p.add_argument("--runs", default=str(REPO / "runs" / "busbra"), help="where the training runs go (resumable)")
    p.add_argument("--out", default=str(REPO / "docs" / "results" / "busbra"), help="the published files")
    args = p.parse_args(argv)
    source, runs, out = f"busbra:{args.data}", Path(args.runs), Path(args.out)
    samples = load_busbra(args.data)
    return publish(args, source, samples, runs, out)


def publish(args, source, samples, runs: Path, out: Path) -> int:
    fifty = setting(source, samples, REAL, args.seeds, runs / "boxes50",
                    methods=("strong_full", "strong_few", "weak_only", "joint", "joint_self_training"),
                    threads=args.threads)
    seeds10 = args.seeds if args.seeds_10 is None else args.seeds_10
    ten = setting(source, samples, REAL.replace(n_strong=10), seeds10, runs / "boxes10",
                  methods=("strong_few", "joint", "joint_self_training"), threads=args.threads) if seeds10 else None
    out.mkdir(parents=True, exist_ok=True)
    first = runs / "boxes50" / f"seed_{args.seeds[0]}"
    for name in PUBLISHED:
        if (first / name).is_file():
            shutil.copyfile(first / name, out / name)
    atomic_write_text(f"# BUS-BRA, 50 boxed images, split seeds {args.seeds}\n\n" + fifty["table"], out / "summary.md")
    atomic_write_json(fifty["summary"], out / "summary.json")
    if ten is not None:
        (out / "boxes10").mkdir(exist_ok=True)
        atomic_write_text(f"# BUS-BRA, 10 boxed images, split seeds {seeds10}\n\n" + ten["table"],
                          out / "boxes10" / "summary.md")
        atomic_write_json(ten["summary"], out / "boxes10" / "summary.json")
    atomic_write_json({"about": "Table IV on BUS-BRA: the joint model, the paper's offline self-training and the "
                                "mean teacher (ours) from that joint model, CorLoc on each split's test images",
                       "command": "python scripts/busbra_results.py --data BUSBRA",
                       "recipe": {"self_training": REAL.self_training, "mean_teacher": dict(REAL.mean_teacher)},
                       "settings": [fifty["self_training"]] + ([ten["self_training"]] if ten else [])},
                      out / "self_training.json")
    print(f"published in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
