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
own training images; and ``docs/models.md``, the same card for people. ``--check`` retrains into a scratch folder and compares the weights bit for bit with the
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

from wsbus.checkpoint import atomic_save, atomic_write_json, atomic_write_text, load_checkpoint  # noqa: E402
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


def model_card_markdown(card: dict) -> str:
    """docs/models.md: the card for people, written from the JSON card (so the two never disagree)."""
    td, acc, inp = card["training_data"], card["held_out_accuracy"], card["input"]
    prov = card["provenance"]
    git = (prov.get("git") or {}).get("commit", "unknown")
    lines = [
        "# Model card: `busbra`, the detector shipped with wsbus", "",
        card["summary"], "",
        "Load it with `wsbus.models.pretrained(\"busbra\")`, or `--model busbra` wherever a command takes "
        "`--checkpoint` or `--init` (`predict`, `evaluate`, `export`, `self-train`, `train`). The weights are in the "
        "package (`wsbus/models/weights/busbra.pt`, "
        f"{card['size_mb']:.1f} MB); nothing is downloaded. Every load checks the file's SHA-256 against "
        "`busbra.json`, the machine-readable version of this card.", "",
        "## Training data", "",
        f"BUS-BRA: all {td['images']} images of {td['patients']} patients ({td['benign']} benign, {td['malignant']} "
        f"malignant; no normal images), from {len(td['scanners'])} scanners: {', '.join(td['scanners'])}. Every image "
        "was used with its box (from the lesion mask); none was held out, so its accuracy below comes from the same "
        "recipe on held-out patients, never from its own training images.", "",
        f"Citation (required by the data set's licence: {td['licence']}): {td['citation']}.", "",
        "## How it was made", "",
        f"Method `{card['method']}` (every box) with the `REAL` recipe of `wsbus.experiments`, {card['steps']} steps, "
        f"one torch thread, experiment seed 0; the recipe's settings are in `busbra.json` (`recipe`). Command: "
        f"`{card['command']}` (add `--check` to retrain and compare with the shipped weights bit for bit; this "
        f"needs the same CPU kind and library versions). Made by wsbus {prov['wsbus']} (commit {git[:10]}), torch "
        f"{prov['torch']}, torchvision {prov['torchvision']}.", "",
        "## Input", "",
        f"Expects {inp['expects']}. It is resized so its short side is "
        f"{inp['min_size']} px (its long side at most {inp['canvas']} px) and padded to a {inp['canvas']} px square; "
        "boxes come back in the image's own pixels. Classes: 1 benign, 2 malignant.", "",
        "## Accuracy on held-out patients", "",
    ]
    if "per_fold" in acc:
        lines += [acc["protocol"] + ":", "",
                  "| test fold | CorLoc [%] | 95 % CI [%] | AP50 [%] | FROC CPM [%] | malignancy AUC |",
                  "|---|---:|---:|---:|---:|---:|"]
        for k, v in acc["per_fold"].items():
            lines.append(f"| {k} | {100 * v['corloc']:.1f} | {100 * v['ci'][0]:.1f}–{100 * v['ci'][1]:.1f} | "
                         f"{100 * v['ap50']:.1f} | {100 * v['froc_cpm']:.1f} | {v['auc']:.3f} |")
        lines += ["", f"Mean ± sd over the folds: CorLoc {100 * acc['corloc']['mean']:.1f} ± "
                      f"{100 * acc['corloc']['sd']:.1f} %, AP50 {100 * acc['ap50']['mean']:.1f} ± "
                      f"{100 * acc['ap50']['sd']:.1f} %, FROC CPM {100 * acc['froc_cpm']['mean']:.1f} ± "
                      f"{100 * acc['froc_cpm']['sd']:.1f} % (CorLoc: a mass found when a detection of its class "
                      "scoring at least 0.5 overlaps its box with IoU above 0.5).", ""]
    else:
        lines += [acc.get("note", "not measured"), ""]
    lines += [
        "## Intended use", "", card["intended_use"] + ".", "",
        "## Known limits", "",
        "- Trained on one public data set of one country's hospitals; another scanner, population or acquisition "
        "protocol lowers its accuracy (chapter 14 measures this on a simulated scanner; "
        "`docs/results/busbra_cross_site/` between BUS-BRA's scanners). Measure it on your own annotated scans "
        "before relying on it, and fine-tune with your site's labels (`wsbus train --model busbra`).",
        "- BUS-BRA has no normal scans: the detector was never shown an image without a mass, so its false positives "
        "on normal images are unmeasured.",
        "- One mass per image in its training data; several masses in one image are untested.",
        "- A tiny CNN trained from scratch at a small input size on a CPU: far smaller than the paper's VGG16.",
        "- It is a research tool. It has not been validated clinically and must not be used for diagnosis.", ""]
    return "\n".join(lines)


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
    # the code that trained the weights (the run's checkpoint says; a rerun that only rewrites the card keeps it)
    made_by = load_checkpoint(runs / "strong_full" / "last.pt").get("provenance") or provenance("cpu")
    atomic_save({"model": state, "config": config, "step": run.trainer.step, "provenance": made_by}, path)
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
        "provenance": made_by, "torch_threads": args.threads,
        "held_out_accuracy": held_out_accuracy(),
        "intended_use": "research on breast-ultrasound detection; a starting point for fine-tuning on a site's own "
                        "scans; NOT for diagnosis",
    }
    card["size_mb"] = path.stat().st_size / 1e6
    atomic_write_json(card, WEIGHTS_DIR / "busbra.json")
    atomic_write_text(model_card_markdown(card), REPO / "docs" / "models.md")
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, sha256 {card['sha256'][:12]}...) and its card")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
