#!/usr/bin/env python
"""The levers of the BUS-BRA recipe, each measured on a validation split (never a test fold): ``docs/results/
busbra_levers/``.

Usage::

    python scripts/busbra_levers.py --data ../shared/data/BUSBRA                    # every lever, fold 1
    python scripts/busbra_levers.py --data ../shared/data/BUSBRA --levers base simclr --jobs 2

Each lever is the ``REAL`` recipe without the two changes it adopted from this study (``BASE``) with one change
(:data:`LEVERS`). It is trained on the training patients of
BUS-BRA's fold ``--fold`` (the authors' 5-fold partition; that fold's test images are never loaded into any run's
evaluation) and scored on the validation images carved from those training patients: strong_few, joint (ours),
joint + self-training (the recipe's mean teacher), and for the ``base`` lever also strong_full, weak_only and
joint_paper. Runs go to ``--runs`` (resumable); ``--out`` receives ``levers_N.json`` (every lever's results, with
its recipe change and the code that made it) and ``levers_N.md`` (the table: CorLoc, AP50 and CPM on validation,
each lever's difference from its reference (``base``, or :data:`REFERENCE`) with McNemar's p on the same
validation images, and how tight the boxes are: class-free CorLoc at IoU > 0.7, ``tight``, with its per-image hits
as a string of 0 / 1, ``tight_per_image``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from wsbus.checkpoint import atomic_write_json, atomic_write_text, load_checkpoint  # noqa: E402
from wsbus.evaluate import corloc, mcnemar_exact, render_table  # noqa: E402
from wsbus.experiments import REAL, prepare_data, run_experiment  # noqa: E402
from wsbus.experiments.data import load_samples  # noqa: E402

PRETRAIN = {"steps": 1500, "amp": True}
#: The recipe every lever changes one field of: REAL as it was before this study adopted two levers (no
#: pretraining, and the teacher's confidence gate closed at 0.98; the study adopted ``autoencoder`` and ``no_gate``).
BASE = REAL.replace(pretrain={}, moi_teacher={**REAL.moi_teacher, "min_confidence": 0.98})
#: Each lever: the recipe fields it changes from BASE.
LEVERS = {
    "base": {},
    "simclr": {"pretrain": {"method": "simclr", **PRETRAIN}},
    "byol": {"pretrain": {"method": "byol", **PRETRAIN}},
    "autoencoder": {"pretrain": {"method": "autoencoder", **PRETRAIN}},
    "mae": {"pretrain": {"method": "mae", **PRETRAIN}},
    "size224": {"size": 224},
    "wide": {"detector": {**BASE.detector, "width": 2.0}},
    "anchors_fixed": {"detector": {**BASE.detector, "anchor_sizes": (32, 64, 128)}},
    "weak4": {"batch_weak": 4},
    "mt_augment": {"mean_teacher": {**BASE.mean_teacher, "augment": True}},
    "mt_balance": {"mean_teacher": {**BASE.mean_teacher, "balance_classes": True}},
    "mt_jitter": {"mean_teacher": {**BASE.mean_teacher, "box_jitter": 0.04}},
    # Our joint run, one of our changes undone at a time (towards the paper's joint, `joint_paper`):
    "no_warm_start": {"joint_warm_start": False, "epochs": {"strong_full": 15.0, "joint_self_training": 2.4},
                      "joint_steps": 3000 + 1469},        # from the shared initial weights, the same total steps
    "no_teacher": {"moi_teacher": {}},                     # the MoI chosen by the head being trained
    "no_gate": {"moi_teacher": {**BASE.moi_teacher, "min_confidence": 0.0}},
    "paper_rules": {"moi_rules": "paper"},                 # most malignant for both labels
    "gradual_alpha": {"alpha": "gradual", "alpha_stretch": 1.0},
    "constant_lr": {"joint_trainer": {}},                  # Adam at a constant 5e-4
    # The recipe as adopted (REAL: the autoencoder and the open gate), then one self-training lever on top of it:
    "real": {"pretrain": REAL.pretrain, "moi_teacher": REAL.moi_teacher},
    "real_mt_balance": {"pretrain": REAL.pretrain, "moi_teacher": REAL.moi_teacher,
                        "mean_teacher": {**REAL.mean_teacher, "balance_classes": True}},
    "real_mt_long": {"pretrain": REAL.pretrain, "moi_teacher": REAL.moi_teacher,   # twice the self-training steps
                     "epochs": {**REAL.epochs, "joint_self_training": 2 * REAL.epochs["joint_self_training"]}},
}
#: The lever each lever is compared with (``base`` unless named here) and whose finished runs it reuses where the
#: recipe, as a method reads it, is the same (the pretrained backbone too, when the pretraining is the same).
REFERENCE = {"real": "autoencoder", "real_mt_balance": "real", "real_mt_long": "real"}
LEVER_METHODS = ("strong_few", "joint", "joint_self_training")
#: Levers that change the detector are measured first where their effect shows first (the detector trained on the
#: boxes alone) and go further only if that pays off (measured CPU cost of strong_few on 2 cores: size224 1.1 x, wide
#: 1.7 x the base's); those that undo one of our changes to joint training stop at joint.
FIRST_METHODS = {"size224": ("strong_few",), "wide": ("strong_few",),
                 **{k: ("strong_few", "joint") for k in ("no_warm_start", "no_teacher", "no_gate", "paper_rules",
                                                         "gradual_alpha", "constant_lr")}}
#: Methods trained beyond a lever's usual ones: strong_full on the adopted recipe, to see whether its pretraining lifts
#: the detector trained on every box too (``base`` trains it without).
EXTRA_METHODS = {"real": ("strong_full",)}
BASE_METHODS = ("strong_full", "strong_few", "weak_only", "joint", "joint_paper", "joint_self_training")


def lever_recipe(name: str, n_strong: int):
    if name not in LEVERS:
        raise SystemExit(f"unknown lever {name!r}; levers: {', '.join(LEVERS)}")
    return BASE.replace(n_strong=n_strong, **LEVERS[name])


def table(results: dict) -> str:
    header = ["lever", "strong_few", "joint", "joint vs ref.", "joint + MT", "joint + MT vs ref.", "AP50", "CPM"]
    body = []
    for name, r in results.items():
        by = {m["name"]: m for m in r["methods"]}
        ref = REFERENCE.get(name, "base")
        base = {m["name"]: m for m in results[ref]["methods"]} if ref in results else {}

        def pct(method, key="corloc"):
            m = by.get(method)
            if m is None:
                return "-"
            v = m[key]["overall"] if key == "corloc" else (m[key]["mAP"] if key == "ap50" else m[key])
            return f"{100 * v:.1f}" if v is not None else "-"
        j, j0 = by.get("joint"), base.get("joint")
        joint_diff = ""
        if name != "base" and j and j0:
            joint_diff = (f"{100 * (j['corloc']['overall'] - j0['corloc']['overall']):+.1f} "
                          f"({mcnemar_exact(j['per_image'], j0['per_image'])[2]:.2g})")
        st, st0 = by.get("joint_self_training"), base.get("joint_self_training")
        if name != "base" and st and st0:
            _, _, p = mcnemar_exact(st["per_image"], st0["per_image"])
            diff = f"{100 * (st['corloc']['overall'] - st0['corloc']['overall']):+.1f} ({p:.2g})"
        else:
            diff = ""
        body.append([name, pct("strong_few"), pct("joint"), joint_diff, pct("joint_self_training"), diff,
                     pct("joint_self_training", "ap50"), pct("joint_self_training", "froc_cpm")])
    return render_table(header, body, ["l"] + ["r"] * 7)


def tight_table(results: dict) -> str:
    """How tight each lever's boxes are: class-free CorLoc at IoU > 0.7 of every method it trained."""
    names = ("strong_full", "strong_few", "joint", "joint_self_training")
    body = []
    for name, r in results.items():
        by = {m["name"]: m for m in r["methods"]}
        body.append([name] + [f"{100 * by[m]['tight']:.1f}" if m in by else "-" for m in names])
    return render_table(["lever", "strong_full", "strong_few", "joint", "joint + MT"], body, ["l"] + ["r"] * 4)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="the BUS-BRA folder")
    ap.add_argument("--levers", nargs="+", default=list(LEVERS), help="levers to run (default all)")
    ap.add_argument("--fold", type=int, default=1, help="whose training patients are used (default 1)")
    ap.add_argument("--n-strong", type=int, default=50, help="boxed images (default 50)")
    ap.add_argument("--runs", default="runs/busbra_levers", help="training runs (resumable)")
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "busbra_levers"), help="published files")
    ap.add_argument("--jobs", type=int, default=1, help="processes per experiment (independent methods)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--reuse-results", action="store_true", help="collect results that earlier code made")
    args = ap.parse_args()
    source = f"busbra:{args.data}"
    samples = load_samples(source, REAL, 0)
    results = {}
    for name in args.levers:
        methods = BASE_METHODS if name == "base" else \
            FIRST_METHODS.get(name, LEVER_METHODS) + EXTRA_METHODS.get(name, ())
        folder = Path(args.runs) / f"boxes{args.n_strong}" / name
        if name != "base":
            share_base_runs(source, samples, name, args, folder)
        r = run_experiment(source, folder, recipe=lever_recipe(name, args.n_strong), fold=args.fold,
                           evaluate_on="val", methods=methods, progress=False, verbose=False, jobs=args.jobs,
                           threads=args.threads, reuse_results=args.reuse_results, samples=samples)
        val = prepare_data(source, lever_recipe(name, args.n_strong), 0, samples=samples, fold=args.fold).val
        for m in r["methods"]:  # keep the per-image outcomes for the paired tests, and how tight the boxes are
            stored = _result(Path(args.runs) / f"boxes{args.n_strong}" / name, m["name"])
            m["per_image"] = [bool(x) for x in stored["per_image"].tolist()]
            tight = corloc(stored["detections"], val, iou_thresh=0.7, class_free=True).per_image
            m["tight"], m["tight_per_image"] = float(tight.mean()), "".join("01"[int(x)] for x in tight)
        results[name] = {"change": LEVERS[name], "methods": r["methods"], "pretrain": r.get("pretrain"),
                         "provenance": r["provenance"], "data": r["data"], "config": r["config"]}
        print(f"{name}: " + ", ".join(f"{m['name']} {100 * m['corloc']['overall']:.1f}" for m in r["methods"]),
              flush=True)
    out = Path(args.out)
    if "base" in results:
        text = table(results)
        tight = tight_table(results)
        atomic_write_text(f"# BUS-BRA levers, fold {args.fold}'s validation split, {args.n_strong} boxed images\n\n"
                          + text + "\n\nCorLoc [%] of strong_few, joint (ours) and joint + MT, AP50 [%] and FROC CPM "
                          f"[%] of joint + MT, on the validation images carved from fold {args.fold}'s training "
                          "patients (the test fold is never scored here); joint + MT: joint (ours) then "
                          "self-training with the mean teacher (ours); vs ref.: CorLoc points over the reference "
                          "lever's run of the same method (base; real_mt_balance and real_mt_long against real, "
                          "real against autoencoder), with McNemar's exact p on the same images.\n\n"
                          "How tight the boxes are: class-free CorLoc [%] at IoU > 0.7 (a detection of either "
                          "class scoring >= 0.5 overlaps the mass by more than 0.7) of every method each lever "
                          "trained, on the same validation images.\n\n" + tight + "\n",
                          out / f"levers_{args.n_strong}.md")
        print(text + "\n" + tight)
    atomic_write_json({"fold": args.fold, "n_strong": args.n_strong, "levers": results},
                      out / f"levers_{args.n_strong}.json")
    return 0


def share_base_runs(source: str, samples, name: str, args, folder: Path) -> None:
    """Link the finished runs of the lever's reference (:data:`REFERENCE`, ``base`` by default) for the methods this
    lever trains exactly as the reference does (the recipe as that method reads it, ``Recipe.used_by``, is the
    same), and the reference's pretrained backbone, so a lever that only changes the self-training retrains only
    the self-training. The runner still checks every reused run against this lever's split."""
    ref = REFERENCE.get(name, "base")
    theirs = prepare_data(source, lever_recipe(ref, args.n_strong), 0, samples=samples, fold=args.fold)
    mine = prepare_data(source, lever_recipe(name, args.n_strong), 0, samples=samples, fold=args.fold)
    if [s.id for s in theirs.val] != [s.id for s in mine.val] or mine.recipe.pretrain != theirs.recipe.pretrain:
        return
    root = Path(args.runs) / f"boxes{args.n_strong}" / ref
    links = [(root / "pretrain", folder / "pretrain")] if mine.recipe.pretrain else []
    for method in LEVER_METHODS:
        if mine.recipe.used_by(method) == theirs.recipe.used_by(method):
            links.append((root / "runs" / method, folder / "runs" / method))
    for src, dst in links:
        done = (src / "result.pt").is_file() or (src / "backbone.pt").is_file()
        if done and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src.resolve(), target_is_directory=True)
            print(f"{name}: {src.name} is {ref}'s (linked)", flush=True)


def _result(folder: Path, method: str) -> dict:
    return load_checkpoint(folder / "runs" / method / "result.pt", require=("per_image", "detections"))


if __name__ == "__main__":
    sys.exit(main())
