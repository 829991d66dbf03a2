#!/usr/bin/env python
"""Make the published BUS-BRA results on the authors' five folds: ``docs/results/busbra_folds/`` (the one documented
command of README and chapter 09).

Usage::

    python scripts/busbra_folds.py --data ../shared/data/BUSBRA                 # everything (hours on 2 cores)
    python scripts/busbra_folds.py --data ../shared/data/BUSBRA --folds 1 2     # some folds (then run all to collect)
    python scripts/busbra_folds.py --data ../shared/data/BUSBRA --reuse-results # collect finished runs

For each test fold K of BUS-BRA's ``5-fold-cv.csv`` (patient-level), ``wsbus experiment`` with the ``REAL`` recipe
trains on the other folds' patients, with 50 boxed images (every method: strong_full, strong_few, weak_only, joint
(ours), joint_paper (the paper's), joint_self_training (ours)) and with 10 boxed images (strong_few, joint,
joint_paper, joint_self_training; ``--methods-10`` chooses), each scored once on fold K. Validation images are carved
from the training patients and never used here (they were used to choose the recipe:
``docs/results/busbra_levers/``). One more experiment, on the GE Logiq 5 images alone (one scanner, 809 images,
a random patient split), checks the finding on
a data set of another size and scanner. Training goes to ``--runs`` (resumable: run the same command again after an
interruption); ``--out`` receives:

``summary.json``  ``{"folds": [results.json of fold K with "fold": K and "methods_10": the 10-box methods]}``
                  (each method with ``per_image``: 1 where a test mass was found, in the test set's order;
                  strong_full, strong_few, joint and the mean teacher also with ``located``: per IoU level, a
                  string with 1 where a detection of either class found the mass, :func:`attach_hits`),
                  plus ``"budget"`` (the methods' CPU seconds per fold) and ``"logiq5"`` (the scanner subset's
                  results.json)
``summary.md``    per fold and mean +- sd: CorLoc, AP50, FROC CPM and malignancy AUC of every method, the joint
                  runs' differences from strong_few with McNemar's p, the 10-box CorLoc beside strong_full,
                  the few-box goals (mean teacher against strong_full), where the mass is against how tight
                  the box is (class-free CorLoc at IoU 0.1-0.7, a diagnosis of the stored test detections that
                  chooses nothing), and the compute budget
``fold_K/``       each fold's ``table_v.md``, ``table_iv.md``, ``froc.png``, ``detections.png``
``froc.png``      every method's FROC curve, one panel per fold
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from wsbus.checkpoint import atomic_write_json, atomic_write_text, load_checkpoint  # noqa: E402
from wsbus.evaluate import corloc, mcnemar_exact, render_table  # noqa: E402
from wsbus.experiments import REAL, prepare_data, run_experiment  # noqa: E402
from wsbus.experiments.data import load_samples  # noqa: E402

METHODS_50 = ("strong_full", "strong_few", "weak_only", "joint", "joint_paper", "joint_self_training")
#: the 10-box methods run by default (the paper's joint was added after the first publication: decision 66)
METHODS_10 = ("strong_few", "joint", "joint_paper", "joint_self_training")
#: IoU levels of the localisation split (a mass counts as found, whatever class is named, when a detection scoring
#: >= 0.5 overlaps it by more than the level): 0.1 points at the mass, 0.5 is CorLoc's box, 0.7 a tight box
IOU_LEVELS = (0.1, 0.3, 0.5, 0.7)
LOCATED = ("strong_full", "strong_few", "joint", "joint_self_training")
PUBLISHED = ("table_v.md", "table_iv.md", "froc.png", "detections.png")
LABEL = {"strong_full": "strong_full (all boxes)", "strong_few": "strong_few", "weak_only": "weak_only",
         "joint": "joint (ours)", "joint_paper": "joint_paper (the paper's)",
         "joint_self_training": "joint + mean teacher (ours)"}


def run_fold(source: str, fold: int, runs: Path, args, samples) -> dict:
    common = dict(recipe=REAL, fold=fold, progress=False, verbose=False, jobs=args.jobs, threads=args.threads,
                  reuse_results=args.reuse_results, samples=samples)
    fifty = run_experiment(source, runs / f"fold_{fold}" / "boxes50", methods=METHODS_50, **common)
    if 10 not in args.boxes:
        return {**fifty, "fold": fold}
    ten = run_experiment(source, runs / f"fold_{fold}" / "boxes10", methods=args.methods_10,
                         **{**common, "recipe": REAL.replace(n_strong=10)})
    return {**fifty, "fold": fold, "methods_10": ten["methods"], "finding_10": ten["finding"],
            "data_10": ten["data"]}


def attach_hits(source: str, folds: list, runs: Path, samples) -> None:
    """Attach each method's per-image CorLoc hits (``per_image``: 1 where a test mass was found, in the test set's
    order) and, for the :data:`LOCATED` methods, ``located``: for each IoU level of :data:`IOU_LEVELS`, a string
    with one character per test image, ``1`` where class-free CorLoc (``corloc(..., class_free=True)``) found the
    mass (a detection scoring >= 0.5, of either class, overlapping it by more than the level). Each ``result.pt`` is
    read once; the class-aware CorLoc recomputed from its stored detections must equal its ``per_image``, which
    checks the images' order."""
    for f in folds:
        test = prepare_data(source, REAL, 0, samples=samples, fold=f["fold"]).test
        for boxes, key in ((50, "methods"), (10, "methods_10")):
            for m in f.get(key, []):
                path = runs / f"fold_{f['fold']}" / f"boxes{boxes}" / "runs" / m["name"] / "result.pt"
                stored = load_checkpoint(path, require=("per_image", "detections"))
                m["per_image"] = [int(x) for x in stored["per_image"].tolist()]
                if m["name"] not in LOCATED:
                    continue
                detections = stored["detections"]
                if corloc(detections, test).per_image.astype(int).tolist() != m["per_image"]:
                    raise SystemExit(f"{path}: its detections do not give its published per-image CorLoc")
                m["located"] = {f"{t:g}": "".join("01"[int(x)] for x in corloc(detections, test, iou_thresh=t,
                                                                                  class_free=True).per_image)
                                for t in IOU_LEVELS}


def located(method: dict, iou: float) -> np.ndarray:
    """A method's per-image class-free hits at one IoU level of :data:`IOU_LEVELS` (stored as a string of 0 / 1)."""
    return np.array([c == "1" for c in method["located"][f"{iou:g}"]])


def localisation_table(folds: list, key: str) -> str:
    """Class-free CorLoc of the mean teacher minus strong_full's, per fold and IoU level, with McNemar's p, and
    both means."""
    header = ["IoU >"] + [f"fold {f['fold']}" for f in folds] + ["mean, MT", "mean, all boxes"]
    body = []
    for t in IOU_LEVELS:
        cells, ours, full = [], [], []
        for f in folds:
            a = located(_method(f, "joint_self_training", key), t)
            b = located(_method(f, "strong_full"), t)
            cells.append(f"{100 * (a.mean() - b.mean()):+.1f} (p {mcnemar_exact(a, b)[2]:.2g})")
            ours.append(a.mean())
            full.append(b.mean())
        body.append([f"{t:g}"] + cells + [f"{100 * statistics.fmean(ours):.1f}", f"{100 * statistics.fmean(full):.1f}"])
    return render_table(header, body, ["l"] + ["r"] * (len(folds) + 2))


def _method(fold: dict, name: str, key: str = "methods") -> dict:
    """The entry of method ``name`` in a fold's ``key`` list (``methods`` or ``methods_10``)."""
    return next(m for m in fold[key] if m["name"] == name)


def _cell(values):
    return f"{100 * statistics.fmean(values):.1f} +- {100 * statistics.stdev(values):.1f}" if len(values) > 1 \
        else f"{100 * values[0]:.1f}"


def summary_table(folds: list, key: str, methods_key: str, names) -> str:
    header = ["method"] + [f"fold {f['fold']}" for f in folds] + ["mean +- sd"]
    body = []
    for name in names:
        vals = []
        for f in folds:
            m = _method(f, name, methods_key)
            v = m["corloc"]["overall"] if key == "corloc" else (m[key]["mAP"] if key in ("ap50", "ap") else m[key])
            vals.append(float(v))
        body.append([LABEL[name]] + [f"{100 * v:.1f}" for v in vals] + [_cell(vals)])
    return render_table(header, body, ["l"] + ["r"] * (len(folds) + 1))


def ci_table(folds: list, names) -> str:
    """CorLoc's 95 % bootstrap interval (over the test images) of each method on each fold, in whole percent."""
    header = ["method"] + [f"fold {f['fold']}" for f in folds]
    body = [[LABEL[name]] + ["{:.0f}-{:.0f}".format(*(100 * x for x in _method(f, name)["ci"])) for f in folds]
            for name in names]
    return render_table(header, body, ["l"] + ["r"] * len(folds))


def difference_table(folds: list, boxes: int) -> str:
    methods_key = "methods" if boxes == 50 else "methods_10"
    header = ["difference from strong_few"] + [f"fold {f['fold']}" for f in folds] + ["mean"]
    body = []
    for name in ("joint", "joint_paper", "joint_self_training"):
        if not all(any(m["name"] == name for m in f[methods_key]) for f in folds):
            continue
        cells, diffs = [], []
        for f in folds:
            by = {m["name"]: m for m in f[methods_key]}
            d = by[name]["corloc"]["overall"] - by["strong_few"]["corloc"]["overall"]
            p = mcnemar_exact(by[name]["per_image"], by["strong_few"]["per_image"])[2]
            cells.append(f"{100 * d:+.1f} (p {p:.2g})")
            diffs.append(d)
        body.append([LABEL[name]] + cells + [f"{100 * statistics.fmean(diffs):+.1f}"])
    return render_table(header, body, ["l"] + ["r"] * (len(folds) + 1))


def goals_table(folds: list, ten: bool) -> str:
    """Issue 22's goals per fold: the mean teacher (50 boxes) minus strong_full with McNemar's p, and the 10-box
    mean teacher as a fraction of strong_full."""
    header = ["goal"] + [f"fold {f['fold']}" for f in folds] + ["mean"]
    full = [_method(f, "strong_full")["corloc"]["overall"] for f in folds]
    mt = [_method(f, "joint_self_training")["corloc"]["overall"] for f in folds]
    cells = []
    for f, a, b in zip(folds, mt, full):
        p = mcnemar_exact(_method(f, "joint_self_training")["per_image"], _method(f, "strong_full")["per_image"])[2]
        cells.append(f"{100 * (a - b):+.1f} (p {p:.2g})")
    body = [["50 boxes + MT minus strong_full, points"] + cells
            + [f"{100 * statistics.fmean(mt) - 100 * statistics.fmean(full):+.1f}"]]
    if ten:
        mt10 = [_method(f, "joint_self_training", "methods_10")["corloc"]["overall"] for f in folds]
        body.append(["10 boxes + MT / strong_full"] + [f"{a / b:.2f}" for a, b in zip(mt10, full)]
                    + [f"{statistics.fmean(mt10) / statistics.fmean(full):.2f}"])
    return render_table(header, body, ["l"] + ["r"] * (len(folds) + 1))


def froc_figure(folds: list, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(folds), 1, figsize=(6.5, 2.4 * len(folds)), sharex=True, squeeze=False)
    for ax, f in zip(axes[:, 0], folds):
        for m in f["methods"]:
            fr = m.get("froc") or {}
            if fr.get("fp_per_image"):  # the reference code's FROC, both classes together ("overall")
                x = np.array([np.nan if v is None else v for v in fr["fp_per_image"]["overall"]], float)
                y = np.array([np.nan if v is None else v for v in fr["sensitivity"]["overall"]], float)
                ax.plot(x, y, label=LABEL[m["name"]], lw=1.2)
        ax.set_xscale("log")
        ax.set_xlim(1 / 8, 8)
        ax.set_xticks([1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8], ["1/8", "1/4", "1/2", "1", "2", "4", "8"])
        ax.minorticks_off()
        ax.set_ylim(0, 1)
        ax.set_ylabel("sensitivity", fontsize=8)
        ax.set_title(f"test fold {f['fold']} (50 boxed images)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("false positives per image", fontsize=8)
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="the BUS-BRA folder")
    ap.add_argument("--folds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--runs", default="runs/busbra_folds", help="training runs (resumable)")
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "busbra_folds"), help="published files")
    ap.add_argument("--jobs", type=int, default=2, help="processes per experiment (independent methods)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--boxes", type=int, nargs="+", default=[50, 10], choices=[50, 10],
                    help="the boxed-image budgets to run (50 is always run; 10 adds the few-box experiment)")
    ap.add_argument("--methods-10", nargs="+", default=list(METHODS_10),
                    choices=["strong_few", "joint", "joint_paper", "joint_self_training"],
                    help="the 10-box methods (default: %(default)s)")
    ap.add_argument("--skip-logiq5", action="store_true", help="do not run the one-scanner experiment")
    ap.add_argument("--reuse-results", action="store_true", help="collect results that earlier code made")
    args = ap.parse_args()
    source, runs, out = f"busbra:{args.data}", Path(args.runs), Path(args.out)
    t0, c0 = time.perf_counter(), time.process_time()
    folds = []
    samples = load_samples(source, REAL, 0)  # a folder source is the same for every recipe: read it once
    for k in args.folds:
        folds.append(run_fold(source, k, runs, args, samples))
        print(f"fold {k}: " + ", ".join(f"{m['name']} {100 * m['corloc']['overall']:.1f}"
                                        for m in folds[-1]["methods"]), flush=True)
    logiq5 = None if args.skip_logiq5 else run_experiment(
        f"{source}?device=Logiq 5", runs / "logiq5", recipe=REAL, methods=METHODS_50, progress=False, verbose=False,
        jobs=args.jobs, threads=args.threads, reuse_results=args.reuse_results)
    budget = {"method_cpu_s": {str(f["fold"]): sum(m["timing"]["cpu"] for m in f["methods"]) for f in folds},
              "method_cpu_s_10": {str(f["fold"]): sum(m["timing"]["cpu"] for m in f.get("methods_10", []))
                                  for f in folds},
              "this_command_wall_s": time.perf_counter() - t0, "this_command_cpu_s": time.process_time() - c0,
              "jobs": args.jobs, "threads_per_process": args.threads}
    attach_hits(source, folds, runs, samples)  # per-image hits for paired tests, and where the mass was found
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json({"folds": folds, "logiq5": logiq5, "budget": budget}, out / "summary.json")
    for f in folds:
        sub = out / f"fold_{f['fold']}"
        sub.mkdir(exist_ok=True)
        for name in PUBLISHED:
            src = runs / f"fold_{f['fold']}" / "boxes50" / name
            if src.is_file():
                shutil.copyfile(src, sub / name)
    froc_figure(folds, out / "froc.png")
    parts = [f"BUS-BRA, the authors' 5-fold patient partition: each test fold scored once (folds {args.folds})\n"]
    for title, key, mk, names in (("CorLoc [%], 50 boxed images", "corloc", "methods", METHODS_50),
                                  ("COCO AP50 (mAP) [%], 50 boxed images", "ap50", "methods", METHODS_50),
                                  ("FROC CPM [%], 50 boxed images", "froc_cpm", "methods", METHODS_50),
                                  ("Malignancy AUC [%], 50 boxed images", "auc", "methods", METHODS_50),
                                  ("CorLoc [%], 10 boxed images", "corloc", "methods_10", args.methods_10)):
        if mk == "methods_10" and 10 not in args.boxes:
            continue
        table = summary_table(folds, key, mk, names)
        if mk == "methods_10":  # strong_full (all boxes) of the 50-box experiment as the reference row
            ref = summary_table(folds, key, "methods", ["strong_full"]).splitlines()[-1]
            table = table.rstrip("\n") + "\n" + ref + "\n"
        parts.append(f"{title}\n\n" + table + "\n")
    parts.append("CorLoc's 95 % bootstrap interval [%], 50 boxed images\n\n" + ci_table(folds, METHODS_50) + "\n")
    parts.append("joint runs against strong_few, CorLoc points (McNemar's exact p), 50 boxed images\n\n"
                 + difference_table(folds, 50) + "\n")
    if 10 in args.boxes:
        parts.append("joint runs against strong_few, CorLoc points (McNemar's exact p), 10 boxed images\n\n"
                     + difference_table(folds, 10) + "\n")
    parts.append("Goals: self-training with few boxes against all boxes, CorLoc\n\n"
                 + goals_table(folds, 10 in args.boxes) + "\n")
    for boxes, key in ((50, "methods"), (10, "methods_10")):
        if key == "methods_10" and 10 not in args.boxes:
            continue
        parts.append(f"Where the mass is against how tight the box is, {boxes} boxed images: class-free CorLoc [%] "
                     "(a detection scoring >= 0.5 of either class overlapping the mass by more than the IoU level) "
                     "of joint + mean teacher minus strong_full's (all boxes), points (McNemar's exact p)\n\n"
                     + localisation_table(folds, key) + "\n")
    cpu_min = ", ".join(f"fold {k} {v / 60:.0f}" for k, v in budget["method_cpu_s"].items())
    cpu_10 = ", ".join(f"fold {k} {v / 60:.0f}" for k, v in budget["method_cpu_s_10"].items() if v)
    parts.append(f"Compute: every method trained in a process of {args.threads} torch thread(s) on a 2-core CPU shared "
                 f"with other work (one or two methods side by side: `--jobs` gives the same numbers, bit for bit); "
                 f"CPU minutes of the six 50-box methods: {cpu_min}"
                 + (f"; of the 10-box methods: {cpu_10}" if cpu_10 else "")
                 + "; plus each experiment's label-free pretraining (8-11 CPU minutes; the 10-box split has its own, "
                 "as its training images differ: decision 66).\n")
    atomic_write_text("\n".join(parts), out / "summary.md")
    print("\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
