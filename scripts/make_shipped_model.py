#!/usr/bin/env python
"""Build the detector shipped in the package, ``wsbus/models/weights/busbra.pt`` and its card ``busbra.json``.

Usage::

    python scripts/make_shipped_model.py --data ../shared/data/BUSBRA                      # train and write
    python scripts/make_shipped_model.py --data ../shared/data/BUSBRA --check              # retrain, compare

It trains ``strong_full`` with the ``REAL`` recipe (the settings of the folds study: input size, canvas, anchors
and steps from the data, the recipe's label-free pretraining of the backbone when it has one) on **every** BUS-BRA
image with its box, one torch thread, experiment seed 0, and writes the weights (model and config only, no
optimiser state) with a card: the training data and its citation, the recipe, the command, the code that ran
(provenance), the SHA-256 of the file and of the weights, and the accuracy the same recipe reached on held-out
patients in the folds study (``docs/results/busbra_folds/summary.json``: strong_full on each test fold), never on its
own training images. ``--check`` retrains into a scratch folder and compares the weights bit for bit with the
shipped ones (the same CPU kind and library versions are needed for bit-for-bit equality).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from wsbus.checkpoint import atomic_save, atomic_write_json  # noqa: E402
from wsbus.experiments import REAL, ExperimentData, pretrained_backbone, train_method  # noqa: E402
from wsbus.experiments.data import load_samples  # noqa: E402
from wsbus.models.zoo import WEIGHTS_DIR, file_sha256, weights_sha256  # noqa: E402
from wsbus.provenance import provenance  # noqa: E402
from wsbus.seeding import cpu_threads  # noqa: E402

CITATION = ("W. Gomez-Flores, M. J. Gregorio-Calas, W. C. de Albuquerque Pereira, \"BUS-BRA: A Breast Ultrasound "
            "Dataset for Assessing Computer-aided Diagnosis Systems\", Medical Physics 51(4), 2024 (Zenodo "
            "10.5281/zenodo.7730709)")
FOLDS = REPO / "docs" / "results" / "busbra_folds" / "summary.json"


def held_out_accuracy() -> dict:
    """strong_full's results on each test fold of the folds study (the recipe this model was trained with)."""
    if not FOLDS.is_file():
        return {"note": "the folds study (docs/results/busbra_folds/summary.json) is not there yet"}
    folds = json.loads(FOLDS.read_text())["folds"]
    rows = [(f["fold"], next(m for m in f["methods"] if m["name"] == "strong_full")) for f in folds]
    out = {"protocol": "BUS-BRA's 5-fold patient partition; each fold's test images scored once by a model trained "
                       "on the other folds' patients with this recipe (strong_full)",
           "per_fold": {str(k): {"corloc": m["corloc"]["overall"], "ci": m["ci"], "ap50": m["ap50"]["mAP"],
                                 "froc_cpm": m["froc_cpm"], "auc": m["auc"]} for k, m in rows}}
    for key in ("corloc", "ap50", "froc_cpm", "auc"):
        values = [v[key] for v in out["per_fold"].values()]
        out[key] = {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out


def train(data_dir: str, runs: Path, threads: int):
    source = f"busbra:{data_dir}"
    samples = load_samples(source, REAL, 0)
    boxed = [s for s in samples if s.is_strong]
    recipe = REAL.resolve(boxed, [])
    data = ExperimentData(source, samples, boxed, [], [], [], recipe=recipe)
    with cpu_threads(threads):
        backbone = pretrained_backbone(data, recipe, 0, runs / "pretrain" / "backbone.pt")
        run = train_method("strong_full", data, recipe, runs / "strong_full", seed=0, backbone=backbone,
                           progress=False, tensorboard=False, checkpoint_every=1000)
    return data, recipe, run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="the BUS-BRA folder")
    ap.add_argument("--runs", default="runs/shipped_busbra", help="the training run (resumable)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--check", action="store_true", help="retrain and compare with the shipped weights")
    args = ap.parse_args()
    runs = Path(args.runs)
    data, recipe, run = train(args.data, runs, args.threads)
    state = {k: v.detach().cpu() for k, v in run.model.state_dict().items()}
    digest = weights_sha256(state)
    if args.check:
        card = json.loads((WEIGHTS_DIR / "busbra.json").read_text())
        same = digest == card["weights_sha256"]
        print(f"retrained weights {'EQUAL' if same else 'DIFFER FROM'} the shipped ones ({digest[:12]} vs "
              f"{card['weights_sha256'][:12]})")
        return 0 if same else 1
    path = WEIGHTS_DIR / "busbra.pt"
    config = {"model": run.model.config, "metadata": {"data": "busbra:BUSBRA", "method": "strong_full",
                                                      "split_ids": None}}
    atomic_save({"model": state, "config": config, "step": run.trainer.step, "provenance": provenance("cpu")}, path)
    patients = {s.patient for s in data.samples}
    devices = sorted({s.meta.get("device", "?") for s in data.samples})
    card = {
        "name": "busbra", "file": path.name, "sha256": file_sha256(path), "weights_sha256": digest,
        "summary": "Tiny Faster R-CNN (wsbus) that localises and classifies breast masses (benign / malignant) in "
                   "grayscale B-mode ultrasound, trained on every BUS-BRA image with its box.",
        "training_data": {"name": "BUS-BRA", "images": len(data.samples), "patients": len(patients),
                          "benign": sum(s.image_label == 1 for s in data.samples),
                          "malignant": sum(s.image_label == 2 for s in data.samples), "scanners": devices,
                          "citation": CITATION, "licence": "free use, copying and redistribution on condition that "
                                                           "work using it cites the paper above (LICENSE.txt)"},
        "method": "strong_full", "steps": run.trainer.step, "recipe": recipe.as_dict(),
        "input": {"channels": 1, "min_size": run.model.config["min_size"], "canvas": run.model.config["max_size"],
                  "expects": "a grayscale B-mode image (PNG/JPEG/TIFF 8 or 16 bit, or DICOM), any size"},
        "classes": {"1": "benign", "2": "malignant"},
        "command": "python scripts/make_shipped_model.py --data BUSBRA",
        "provenance": provenance("cpu"), "torch_threads": args.threads,
        "held_out_accuracy": held_out_accuracy(),
        "intended_use": "research on breast-ultrasound detection; a starting point for fine-tuning on a site's own "
                        "scans; NOT for diagnosis",
    }
    atomic_write_json(card, WEIGHTS_DIR / "busbra.json")
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, sha256 {card['sha256'][:12]}...) and its card")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
