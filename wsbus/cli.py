"""The ``wsbus`` command line (also ``python -m wsbus``): ``train``, ``evaluate``, ``self-train``, ``experiment``,
``demo``, ``ablate``, ``predict``, ``convert``, ``export``, ``fetch``.

The library never imports this module. It imports the library lazily, inside each command, so that ``--help`` and
``--version`` answer at once, without loading torch. Training settings not given on the command line come from the
recipe of the data source (:func:`wsbus.experiments.recipe_for`; ``--recipe`` picks another).

Examples
--------
::

    wsbus train --data phantom --mode joint --out runs/joint
    wsbus train --data phantom --mode joint --steps 4000 --out runs/joint --resume   # continue, bit for bit
    torchrun --nproc_per_node=2 -m wsbus train --data busbra:BUSBRA --mode joint --out runs/joint
    wsbus evaluate --checkpoint runs/joint/last.pt
    wsbus self-train --checkpoint runs/joint/last.pt --fractions 0.5 0.75 --out runs/self_training
    wsbus experiment --data busbra:BUSBRA --seeds 0 1 2 --out runs/busbra
    wsbus demo --quick
    wsbus ablate --variants proposed moi_abnormal alternating --out runs/table_ii
    wsbus predict --checkpoint runs/joint/last.pt --images scans/ --out predictions
    wsbus convert --data busbra:BUSBRA --to coco busbra_coco
    wsbus export --checkpoint runs/joint/last.pt --format onnx joint.onnx
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

__all__ = ["main", "build_parser"]

EXIT_ERROR = 2
EXIT_NONFINITE = 3


class CliError(RuntimeError):
    """A user-facing error: printed as ``wsbus: error: ...`` without a traceback."""


# ---------------------------------------------------------------------------------------------------------
# argument types and shared options
# ---------------------------------------------------------------------------------------------------------

def _checked(convert: Callable[[str], Any], ok: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    """An argparse ``type``: ``convert(text)``, refused with ``expected <expected>, got '<text>'`` when the
    conversion fails or ``ok(value)`` is false."""
    def parse(text: str):
        try:
            v = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return v
    return parse


_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
_non_negative_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
_fraction = _checked(float, lambda v: 0 < v <= 1, "a fraction in (0, 1]")
_positive_float = _checked(float, lambda v: v > 0 and math.isfinite(v), "a positive number")
_score = _checked(float, lambda v: 0 <= v <= 1, "a score threshold in [0, 1]")
_RECIPES = ("phantom", "real", "paper")
_DATA_HELP = "phantom, phantom:N, voc:DIR, busi:DIR, busbra:DIR, coco:DIR|FILE.json or masks:DIR"


def _add_checkpoint(p: argparse.ArgumentParser, what: str = "a checkpoint written by `wsbus train` "
                                                            "(DIR/last.pt)") -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--checkpoint", help=what)
    g.add_argument("--model", metavar="NAME", help="a detector shipped with wsbus (busbra; see docs/models.md) "
                                                   "instead of --checkpoint")


def _shipped(args: argparse.Namespace) -> None:
    """``--model NAME``: the shipped detector's file becomes ``--checkpoint`` (``--init`` for ``train``)."""
    name = getattr(args, "model", None)
    if not name:
        return
    from .models import pretrained_path

    path = str(pretrained_path(name))
    if args.command == "train":
        args.init = path
    else:
        args.checkpoint = path


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu; under torchrun "
                        "'cuda' means each process's own GPU)")


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_positive_int, default=1,
                   help="torch CPU threads (default 1: a table then repeats exactly on the same machine; more "
                        "threads change the order of floating-point sums and hence the numbers of short runs)")


def _add_recipe_options(p: argparse.ArgumentParser) -> None:
    """Options that override the recipe's training settings (None: the recipe's)."""
    p.add_argument("--recipe", choices=_RECIPES, default=None,
                   help="settings preset: phantom, real (real scans on a CPU) or paper (VGG16, 60k steps, the "
                        "paper's MoI map); default phantom for the phantom, real otherwise")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="training steps (default: the recipe's; in `train`, the trained method's only: a warm start "
                        "trains the recipe's steps, as in `experiment`)")
    p.add_argument("--backbone", default=None, help="vgg16 (the paper), resnet18, resnet50 or tiny "
                                                    "(default: the recipe's)")
    p.add_argument("--size", type=_positive_int, default=None,
                   help="the detector's input scale (min size; max size twice it) and the phantom's image side "
                        "(default: the recipe's)")


# ---------------------------------------------------------------------------------------------------------
# the parser, one function per command
# ---------------------------------------------------------------------------------------------------------

def _train_parser(sub) -> None:
    t = sub.add_parser("train", help="train one method (strong, weak, joint, ...) into a folder; resumable; DDP "
                                     "under torchrun",
                       description="Split the data as `wsbus experiment` does (same recipe and seed: same split, "
                                   "initial weights and weights after training), train the method (after its warm "
                                   "start in DIR/warm_start/ when the recipe's joint run has one) and keep "
                                   "DIR/last.pt, DIR/log.csv, DIR/config.json and DIR/split.json. Settings not given "
                                   "come from the recipe of the data source. A folder that already holds a run needs "
                                   "--resume (continue it) or --overwrite (replace it). Under `torchrun "
                                   "--nproc_per_node=K -m wsbus train ...` it trains data-parallel: the "
                                   "per-process batch is --batch-strong + --batch-weak images and the global batch K "
                                   "times that.")
    t.add_argument("--data", required=True, help=_DATA_HELP)
    t.add_argument("--mode", choices=("strong", "weak", "joint", "strong_full", "strong_few", "weak_only",
                                      "joint_paper"), default="joint",
                   help="strong (= strong_few: the recipe's few boxed images), weak (= weak_only: image labels "
                        "only), joint (the recipe's joint training, default), strong_full (every training box) or "
                        "joint_paper (the paper's joint training exactly)")
    t.add_argument("--mixing", choices=("combined", "alternating"), default=None,
                   help="joint mode: both streams in every mini-batch (the paper's, default) or alternating steps")
    t.add_argument("--out", required=True, help="output folder (last.pt, log.csv, config.json, split.json)")
    _add_recipe_options(t)
    t.add_argument("--quick", action="store_true", help="the recipe's smoke version (a few steps, few images)")
    t.add_argument("--pretrained", action="store_true", help="ImageNet backbone weights (downloads them)")
    gi = t.add_mutually_exclusive_group()
    gi.add_argument("--init", default=None, metavar="FILE",
                    help="start from this file's weights instead of the initial weights and any warm start: a `wsbus "
                         "train` checkpoint (e.g. a strong run's last.pt) or a `wsbus pretrain` backbone")
    gi.add_argument("--model", default=None, metavar="NAME",
                    help="start from a detector shipped with wsbus (busbra; see docs/models.md) instead of --init")
    g0 = t.add_mutually_exclusive_group()
    g0.add_argument("--n-strong", type=_positive_int, default=None, help="boxed training images (default: the "
                                                                         "recipe's)")
    g0.add_argument("--strong-fraction", type=_fraction, default=None,
                    help="instead of --n-strong: this fraction of the training pool keeps its boxes")
    t.add_argument("--n-test", type=_positive_int, default=None, help="test images (default: the recipe's)")
    t.add_argument("--n-val", type=_non_negative_int, default=None,
                   help="validation images held out from the training patients (default: the recipe's)")
    t.add_argument("--seed", type=int, default=0,
                   help="the experiment seed: split, initial weights and data order (default 0; the same as "
                        "`wsbus experiment --seed`)")
    t.add_argument("--alpha", default=None, help="MIL weight: a number or 'gradual' (default: the recipe's)")
    t.add_argument("--moi-rules", "--rule-map", dest="moi_rules", default=None,
                   help="MoI rules: paper, reference (the TF1 code's), a Table II name or "
                        "'<benign rule>/<malignant rule>' (default: the recipe's)")
    t.add_argument("--batch-strong", type=_positive_int, default=None, help="strong images per step")
    t.add_argument("--batch-weak", type=_positive_int, default=None, help="weak images per step")
    t.add_argument("--lr", type=_positive_float, default=None, help="learning rate (Adam; default: the recipe's)")
    t.add_argument("--weight-decay", type=float, default=None, help="weight decay")
    t.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), default="adam")
    t.add_argument("--clip-grad-norm", type=_positive_float, default=None, help="clip the gradient norm")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue the run in DIR (starts afresh if there is none)")
    g.add_argument("--overwrite", action="store_true", help="replace the run in DIR (its files only)")
    t.add_argument("--checkpoint-every", type=_positive_int, default=1000, help="steps between checkpoints")
    t.add_argument("--keep-every", type=_positive_int, default=None, help="also keep DIR/step_XXXXXX.pt")
    t.add_argument("--log-every", type=_positive_int, default=20, help="steps between progress/TensorBoard "
                                                                       "updates")
    _add_device(t)
    t.add_argument("--amp", action="store_true", help="mixed precision (bf16 on CPU, fp16 on CUDA)")
    t.add_argument("--workers", type=_non_negative_int, default=0, help="DataLoader workers (default 0)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard events")
    t.set_defaults(func=cmd_train)


def _evaluate_parser(sub) -> None:
    iou_thresh = _checked(float, lambda v: 0 < v < 1, "an IoU threshold in (0, 1)")
    score_thresh = _checked(float, lambda v: 0 <= v <= 1, "a score threshold in [0, 1]")
    e = sub.add_parser("evaluate", help="CorLoc per class and overall with 95%% bootstrap CIs, AP50, AP, FROC CPM "
                                        "and malignancy AUC",
                       description="Detect on the test images (or every image of --data) and print CorLoc per class "
                                   "and overall with bootstrap CIs, COCO AP50 and AP@[.5:.95] per class and mAP, the "
                                   "FROC CPM (mean sensitivity at 1/8 ... 8 false positives per image) and the "
                                   "image-level malignancy AUC.")
    _add_checkpoint(e)
    e.add_argument("--data", default=None, help="data spec (default: the one the checkpoint was trained on)")
    e.add_argument("--split", choices=("test", "all"), default="test",
                   help="test: the run's test images (from the checkpoint); all: every image of --data")
    _add_device(e)
    e.add_argument("--batch-size", type=_positive_int, default=8, help="images per forward pass")
    e.add_argument("--iou", type=iou_thresh, default=None,
                   help="IoU threshold in (0, 1) of CorLoc and the FROC: a hit needs IoU > this (default 0.5, "
                        "wsbus.evaluate.CORLOC_IOU_THRESH)")
    e.add_argument("--score-thresh", type=score_thresh, default=None,
                   help="CorLoc counts detections with score >= this, in [0, 1] (default 0.5, "
                        "wsbus.evaluate.CORLOC_SCORE_THRESH); AP and the FROC use every detection")
    e.add_argument("--n-boot", type=_positive_int, default=1000, help="bootstrap resamples")
    e.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    e.add_argument("--json", default=None, metavar="FILE", help="also write every metric to this JSON file")
    e.add_argument("--csv", default=None, metavar="FILE",
                   help="also write the per-image hits and misses to this CSV file (one row per image and mass class)")
    e.set_defaults(func=cmd_evaluate)


def _experiment_parser(sub) -> None:
    x = sub.add_parser("experiment", help="the paper's Table V + IV protocol on a data source: strong_full, "
                                          "strong_few, weak_only, joint, joint_self_training",
                       description="Train the five methods on one patient-level split with shared initial "
                                   "weights, evaluate them on the same test images, and write DIR/results.json, "
                                   "DIR/table_v.md, DIR/table_iv.md and figures. Started again with the same "
                                   "arguments it resumes, skipping finished methods. Settings not given come from "
                                   "the recipe of the data source.")
    x.add_argument("--data", default="phantom", help=_DATA_HELP + " (default phantom)")
    x.add_argument("--out", default="experiment_out", help="output folder (default experiment_out)")
    _add_recipe_options(x)
    x.add_argument("--n-strong", type=_positive_int, default=None, help="boxed training images")
    x.add_argument("--n-test", type=_positive_int, default=None, help="test images")
    x.add_argument("--n-val", type=_non_negative_int, default=None,
                   help="validation images held out from the training patients")
    x.add_argument("--self-training", choices=("paper", "mean_teacher"), default=None,
                   help="the self-training procedure: the paper's offline one or the mean teacher (ours); default: "
                        "the recipe's")
    x.add_argument("--evaluate-on", choices=("test", "val"), default="test",
                   help="score the test set (default; report it once) or the validation set (choosing settings)")
    x.add_argument("--target", default=None, metavar="SOURCE",
                   help="a cross-site experiment: the boxes of --data (all, or --n-strong), the image labels and the "
                        "test images of this source's patients (e.g. a hospital's own scans); methods source_only, "
                        "joint, joint_self_training, and target_few / target_full when the target has boxes")
    x.add_argument("--n-target-strong", type=_non_negative_int, default=0,
                   help="cross-site: target training images that keep their boxes for the target_few reference "
                        "(default 0: none)")
    x.add_argument("--folds", default=None, metavar="FILE.csv",
                   help="a folds file (columns: image id or patient, and fold); with --fold, that fold is the test set "
                        "and validation is carved from the other folds' patients")
    x.add_argument("--fold", type=int, nargs="+", default=None, metavar="K",
                   help="the test fold(s) of --folds (busbra: without --folds, its own 5-fold-cv.csv); several "
                        "folds run one after another into DIR/fold_<K>/ and DIR/summary.json")
    x.add_argument("--jobs", type=_positive_int, default=1,
                   help="train independent methods in this many processes at once (same numbers, bit for bit on "
                        "CPU; each process uses --threads threads)")
    x.add_argument("--seed", type=int, default=0, help="split, initial weights and data order (default 0)")
    x.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="repeat on these seeds (DIR/seed_<s>/) and write DIR/summary.md and DIR/summary.json")
    x.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help="a subset of strong_full strong_few weak_only joint joint_paper joint_self_training (cross-site: "
                        "source_only joint joint_self_training target_few target_full)")
    x.add_argument("--quick", action="store_true", help="the recipe's smoke version")
    x.add_argument("--reuse-results", action="store_true",
                   help="reuse stored method results that other code (another wsbus commit) made; by default they "
                        "are refused")
    _add_device(x)
    _add_threads(x)
    x.add_argument("--no-progress", action="store_true", help="no progress bar")
    x.set_defaults(func=cmd_experiment)


def _demo_parser(sub) -> None:
    d = sub.add_parser("demo", help="the main job on the embedded phantom: strong vs weak vs joint "
                                    "(+ self-training), Table V-shaped results with CIs")
    d.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    d.add_argument("--quick", action="store_true", help="a smaller, faster version")
    _add_device(d)
    d.add_argument("--seed", type=int, default=0)
    _add_threads(d)
    d.set_defaults(func=cmd_demo)


def _ablate_parser(sub) -> None:
    a = sub.add_parser("ablate", help="the paper's Table II on the embedded phantom: each row changes one aspect "
                                      "of the proposed joint training (MoI rule, static alpha, alternating)",
                       description="Train every Table II variant on the split of `wsbus experiment` (same seed: "
                                   "same data, boxed images, test set and initial weights) and print CorLoc with "
                                   "95 %% bootstrap CIs and McNemar p-values against the proposed method. Writes "
                                   "DIR/table_ii.md, DIR/ablation.json and DIR/logs/.")
    a.add_argument("--out", default="ablation_out", help="output folder (default ablation_out)")
    a.add_argument("--quick", action="store_true", help="a smaller, faster version (a smoke run)")
    _add_device(a)
    a.add_argument("--seed", type=int, default=0, help="the experiment seed (data, split, initial weights)")
    a.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="repeat the whole ablation on these seeds (DIR/seed_<s>/) and write DIR/summary.md: each "
                        "variant per seed, the mean, and on how many seeds it beat the proposed row")
    a.add_argument("--variants", nargs="+", default=None, metavar="KEY",
                   help="rows to train (default all): moi_benign, moi_discriminative, moi_abnormal, static_alpha, "
                        "alternating, proposed; must include proposed")
    a.add_argument("--alternating-budget", choices=("images", "updates"), default="images",
                   help="'images': the alternating run trains twice the steps so it sees each stream as often "
                        "as a combined run (default); 'updates': the same number of steps")
    _add_threads(a)
    a.set_defaults(func=cmd_ablate)


def _self_train_parser(sub) -> None:
    s = sub.add_parser("self-train", help="pseudo-boxes from a trained model, retrain with the top fractions "
                                          "moved to the strong set (Table IV)",
                       description="Self-training (Shin et al. Table IV) from a `wsbus train` checkpoint: the "
                                   "checkpoint's model labels its weak images, the most confident fractions move "
                                   "to the strong set with their pseudo-boxes, and a model is retrained for each "
                                   "fraction. Writes DIR/results.json, DIR/table_iv.md, DIR/pseudo_labels.json "
                                   "and DIR/precision_vs_rank.png.")
    _add_checkpoint(s, "DIR/last.pt of a `wsbus train` run (best a joint one)")
    s.add_argument("--data", default=None, help="data spec (default: the one the checkpoint was trained on)")
    s.add_argument("--fractions", type=_fraction, nargs="+", default=[0.5, 0.75],
                   help="shares of the weak set moved to the strong set (default 0.5 0.75, the paper's)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--steps", type=_positive_int, default=None,
                   help="steps of each retraining (default: the checkpoint's training length)")
    s.add_argument("--retrain", choices=("scratch", "finetune"), default="scratch",
                   help="retrain from the initial weights (default, the paper) or fine-tune the checkpoint")
    s.add_argument("--alpha", default=None, help="MIL weight of the retrainings (default: the checkpoint's)")
    _add_device(s)
    s.add_argument("--seed", type=int, default=None, help="training seed (default: the checkpoint's)")
    s.add_argument("--batch-size", type=_positive_int, default=16, help="images per detection batch")
    s.add_argument("--score-thresh", type=_score, default=0.0,
                   help="pseudo-labels: ignore detections scoring below this (default 0: the most confident detection "
                        "of the image's class, whatever its score); CorLoc is scored at score >= 0.5, as everywhere")
    s.add_argument("--n-boot", type=_positive_int, default=1000, help="bootstrap resamples of the CIs")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_self_train)


def _fetch_parser(sub) -> None:
    f = sub.add_parser("fetch", help="download a public data set (sha256-checked, safely extracted)")
    f.add_argument("name", help="data set name, e.g. busi or busbra")
    f.add_argument("--dest", default="data", help="destination folder (default data)")
    f.add_argument("--sha256", default=None,
                   help="expected SHA-256 of the archive (needed when none is pinned; replaces the pinned one)")
    f.set_defaults(func=cmd_fetch)


def _predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="detect masses in new scans (PNG, JPEG, TIFF, DICOM) with a trained detector",
                       description="Run a `wsbus train` checkpoint over image files and folders (DICOM needs "
                                   "pydicom: pip install 'wsbus[dicom]'; each frame of a multi-frame DICOM is an "
                                   "image '<file>#<frame>', frames from 0). Writes DIR/detections.json (COCO "
                                   "results), DIR/images.json (the COCO images list: ids -> files), "
                                   "DIR/detections.csv, DIR/summary.csv and DIR/summary.json (max benign and "
                                   "malignant score per image) and DIR/overlays/<image>.png. A file that cannot be "
                                   "read is reported and skipped; overlays are written as images finish, the tables "
                                   "at the start, every minute and at the end, also when the run is interrupted "
                                   "(Ctrl-C, SIGTERM: then 'complete': false, exit status 130 / 143). Run again "
                                   "into the same DIR with the same checkpoint and settings, it resumes: the images "
                                   "already done are kept, the others predicted; with other settings it refuses "
                                   "unless --overwrite. Exit status 1 when every image failed, or any with "
                                   "--strict.")
    _add_checkpoint(p)
    p.add_argument("--images", required=True, nargs="+", metavar="DIR|FILE",
                   help="image files and/or folders of images (a folder's PNG, JPEG, TIFF, BMP and DICOM files)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--score-thresh", type=_score, default=0.05,
                   help="write detections scoring >= this (default 0.05, the detector's own output threshold; CorLoc "
                        "counts a mass found at score >= 0.5)")
    _add_device(p)
    p.add_argument("--batch-size", type=_positive_int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--size", type=_positive_int, default=None,
                   help="the detector's input min size instead of the checkpoint's (max size scaled alike)")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when any image cannot be read")
    p.add_argument("--workers", type=_non_negative_int, default=1,
                   help="DataLoader processes reading the images while the model runs (default 1; 0: none)")
    p.add_argument("--recursive", action="store_true", help="also read the folders' sub-folders")
    p.add_argument("--no-overlays", action="store_true", help="do not write the overlay PNGs")
    p.add_argument("--overwrite", action="store_true",
                   help="DIR holds the results of a prediction with other settings: remove them (only the files "
                        "predict writes) and start afresh")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)


def _convert_parser(sub) -> None:
    c = sub.add_parser("convert", help="export a data source as a COCO folder (images/*.png + annotations.json)",
                       description="Write the samples of --data as OUT_DIR/images/<id>.png and "
                                   "OUT_DIR/annotations.json (COCO; categories 1 benign, 2 malignant; image labels, "
                                   "patients and weak images kept in extra image fields). `--data coco:OUT_DIR` "
                                   "reads it back exactly. An OUT_DIR that already holds a COCO folder is refused "
                                   "unless --overwrite.")
    c.add_argument("--data", required=True, help="phantom, phantom:N, voc:DIR, busi:DIR, busbra:DIR, coco:DIR, "
                                                 "coco:FILE.json or masks:ROOT")
    c.add_argument("--to", required=True, choices=("coco",), help="the format to write (coco)")
    c.add_argument("out_dir", metavar="OUT_DIR", help="output folder")
    c.add_argument("--size", type=_positive_int, default=128, help="the phantom's image side (default 128)")
    c.add_argument("--seed", type=int, default=0, help="the phantom's seed (default 0)")
    c.add_argument("--overwrite", action="store_true",
                   help="OUT_DIR already holds a COCO folder: replace its images/ and annotations.json")
    c.set_defaults(func=cmd_convert)


def _export_parser(sub) -> None:
    x = sub.add_parser("export", help="export a trained detector to TorchScript or ONNX, checked against PyTorch",
                       description="Export torchvision's FasterRCNN rebuilt from the checkpoint's detector (same "
                                   "resize and fixed canvas) as TorchScript (torch.jit.script) or ONNX (needs pip "
                                   "install 'wsbus[export]'); the exported model takes one-channel float images "
                                   "[1, H, W] in [0, 1]. Before writing OUT, run the exported model and the PyTorch "
                                   "model on the same images and print the check (same detection counts and "
                                   "labels, boxes within a tolerance, down to score 0.001, and at the model's own "
                                   "threshold); OUT is written only when it passes, else exit status 1.")
    _add_checkpoint(x)
    x.add_argument("--format", required=True, choices=("torchscript", "onnx"), help="torchscript or onnx")
    x.add_argument("out", metavar="OUT", help="the file to write (e.g. model.pt or model.onnx)")
    x.add_argument("--size", type=_positive_int, default=None,
                   help="the exported model's input min size instead of the checkpoint's (max size scaled alike)")
    x.add_argument("--images", nargs="+", default=None, metavar="DIR|FILE",
                   help="images of the check (default: three phantom scans of different sizes and aspect ratios "
                        "around the model's size)")
    x.add_argument("--opset", type=_positive_int, default=17, help="ONNX opset (default 17)")
    x.add_argument("--no-check", action="store_true", help="write OUT without the check")
    x.set_defaults(func=cmd_export)


def _pretrain_parser(sub) -> None:
    p = sub.add_parser("pretrain", help="label-free pretraining of the detector's backbone on the training images "
                                        "(SimCLR, BYOL, masked reconstruction or an autoencoder); resumable",
                       description="Pretrain a detector backbone without labels (only the images of --data are read, "
                                   "never their labels or boxes) at the detector's input scale, and write FILE: the "
                                   "backbone's weights, the settings, and the count and ids of the images used. "
                                   "Rerunning the same command continues an interrupted run (its state is kept in "
                                   "NAME.resume.pt beside FILE) or, when FILE is finished, returns at once; other "
                                   "settings or images are refused. `wsbus train --init FILE` starts a detector from "
                                   "it.")
    p.add_argument("--data", required=True, help=_DATA_HELP)
    p.add_argument("--out", required=True, metavar="FILE", help="the pretrained-backbone file to write (e.g. "
                                                                 "runs/fold1/simclr.pt)")
    p.add_argument("--method", choices=("simclr", "byol", "mae", "autoencoder"), default="simclr",
                   help="simclr (contrastive, default), byol (EMA target, no negatives), mae (masked patches "
                        "reconstructed, SimMIM-style) or autoencoder (chapter 10's, through the backbone)")
    p.add_argument("--backbone", default="tiny", help="tiny (default), vgg16, resnet18 or resnet50")
    p.add_argument("--steps", type=_positive_int, default=None, help="optimiser steps (default 1500)")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="images per step (default 64)")
    p.add_argument("--size", type=_positive_int, default=None,
                   help="the detector's input scale: short side in pixels (default: the recipe's, 128 for the "
                        "phantom, whose image side it also sets, 160 for real scans); views are SIZE-px squares")
    p.add_argument("--max-size", type=_positive_int, default=None,
                   help="the longest side after resizing (default: the recipe's, or twice --size when given)")
    p.add_argument("--lr", type=_positive_float, default=None, help="peak learning rate of AdamW (default 1e-3)")
    p.add_argument("--exclude", default=None, metavar="IDS_FILE",
                   help="image ids never to use (e.g. a test fold): a text file, one id per line, or JSON (a list, "
                        "or an object whose 'test'/'val' lists are taken, as a `wsbus train` split.json)")
    p.add_argument("--restart", action="store_true",
                   help="start afresh, overwriting FILE and any interrupted run's state")
    p.add_argument("--checkpoint-every", type=_positive_int, default=100, help="steps between saved states "
                                                                                "(default 100)")
    _add_device(p)
    p.add_argument("--seed", type=int, default=0, help="initial weights, image order, views (default 0)")
    _add_threads(p)
    p.add_argument("--workers", type=_non_negative_int, default=0,
                   help="processes making the augmented views ahead of the model (default 0; 1 overlaps them with "
                        "the model on a second core; the result is the same)")
    p.add_argument("--amp", action="store_true", help="autocast in bfloat16 (about twice as fast on CPUs with "
                                                      "native bfloat16, e.g. AVX512-BF16; other numbers)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pretrain)


_COMMANDS = (_train_parser, _evaluate_parser, _self_train_parser, _experiment_parser, _demo_parser, _ablate_parser,
             _fetch_parser, _predict_parser, _convert_parser, _export_parser, _pretrain_parser)


def build_parser() -> argparse.ArgumentParser:
    """The ``wsbus`` argument parser (no torch import)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="wsbus", description="Joint weakly- and semi-supervised Faster R-CNN for breast ultrasound "
                                  "(Shin et al., IEEE TMI 2019).")
    parser.add_argument("--version", action="version", version=f"wsbus {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    return parser


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------

def _setup_logging(is_main: bool) -> None:
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING, format="%(message)s",
                        stream=sys.stderr)


def _recipe(args: argparse.Namespace, kind: str, **fields: Any):
    """The recipe of ``--recipe`` (default: the data source's), with the command line's overrides."""
    from .experiments import QUICK_RECIPES, RECIPES, recipe_for

    quick = getattr(args, "quick", False)
    if args.recipe and quick and args.recipe not in QUICK_RECIPES:
        raise CliError(f"--recipe {args.recipe} has no --quick version (those with one: {sorted(QUICK_RECIPES)})")
    recipe = ((QUICK_RECIPES if quick else RECIPES)[args.recipe] if args.recipe
              else recipe_for(kind, quick))
    given = {"steps": args.steps, "backbone": args.backbone, **fields}
    changes = {k: v for k, v in given.items() if v is not None}
    for count, fraction in (("n_test", "test_fraction"), ("n_val", "val_fraction")):
        if changes.get(count) is not None:  # a count given on the command line replaces the recipe's fraction
            changes[fraction] = None
    if args.size is not None:
        changes.update(size=args.size, max_size=2 * args.size)
    return recipe.replace(**changes) if changes else recipe


def _alpha_spec(text: Optional[str]) -> Any:
    if text is None or text.strip().lower() == "gradual":
        return text
    try:
        return float(text)
    except ValueError:
        raise CliError(f"--alpha must be a number or 'gradual', got {text!r}") from None


def _plain(args: argparse.Namespace) -> Dict[str, Any]:
    """The parsed arguments as JSON-friendly data (without the handler)."""
    return {k: v for k, v in vars(args).items() if k != "func"}


# ---------------------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------------------

def cmd_train(args: argparse.Namespace) -> int:
    """``wsbus train``: :func:`wsbus.experiments.train_run`, then one line saying what was trained."""
    from .data.sources import parse_source
    from .distributed import resolve_device
    from .experiments import train_run

    resolve_device(args.device)  # an unavailable device is refused before any data is read
    _setup_logging(int(os.environ.get("RANK", "0")) == 0)
    recipe = _recipe(args, parse_source(args.data).kind, steps=None, moi_rules=args.moi_rules,
                     batch_strong=args.batch_strong, batch_weak=args.batch_weak, weight_decay=args.weight_decay,
                     mixing=args.mixing, n_test=args.n_test, n_val=args.n_val, alpha=_alpha_spec(args.alpha))
    if args.n_strong is not None:
        recipe = recipe.replace(n_strong=args.n_strong, strong_fraction=None)
    if args.strong_fraction is not None:
        recipe = recipe.replace(n_strong=None, strong_fraction=args.strong_fraction)
    options = dict(optimizer=args.optimizer, amp=args.amp, clip_grad_norm=args.clip_grad_norm,
                   checkpoint_every=args.checkpoint_every, keep_every=args.keep_every, log_every=args.log_every,
                   num_workers=args.workers, progress=not args.no_progress, tensorboard=not args.no_tensorboard)
    if args.lr is not None:
        options["lr"] = args.lr
    report = train_run(args.data, args.mode, args.out, recipe=recipe, seed=args.seed, device=args.device,
                       resume=args.resume, overwrite=args.overwrite, init=args.init, steps=args.steps,
                       pretrained=args.pretrained, argv=list(sys.argv), **options)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    mil = report.mil
    reach = (f"; the MIL loss reached {mil['reached']} of {mil['weak_images']} weak images "
             f"({mil['image_steps']} image-steps)" if mil["weak_images"] else "")
    loss = f", last loss {report.last_loss:.4f}" if report.last_loss is not None else ""
    if report.warning:
        print(f"wsbus: warning: {report.warning}", file=sys.stderr)
        print(f"ran {report.method} for {report.step} of {report.steps} steps on {report.device}, but it was NOT "
              f"{report.method} training in effect{reach}{loss}; checkpoint {report.checkpoint}")
        return 1
    print(f"trained {report.method} to step {report.step} of {report.steps} on {report.device}, world size "
          f"{report.world_size}{reach}{loss}; checkpoint {report.checkpoint}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``wsbus evaluate``: :func:`wsbus.evaluate.evaluate_detections` of a checkpoint's detections, printed."""
    from .checkpoint import atomic_write_json, load_checkpoint
    from .data.sources import load_source
    from .distributed import resolve_device
    from .evaluate import CORLOC_IOU_THRESH, CORLOC_SCORE_THRESH, evaluate_detections
    from .experiments import checkpoint_split
    from .experiments.data import load_described_samples
    from .inference import detect, load_detector

    iou = CORLOC_IOU_THRESH if args.iou is None else args.iou
    score = CORLOC_SCORE_THRESH if args.score_thresh is None else args.score_thresh
    for option, out in (("--csv", args.csv), ("--json", args.json)):  # refused before the detector runs
        if out and (Path(out).is_dir() or any(p.exists() and not p.is_dir() for p in Path(out).parents)):
            raise CliError(f"{option} {out}: not a file path in a folder (a folder, or below a file)")
    ckpt = load_checkpoint(args.checkpoint, map_location="cpu", require=("model", "config"))
    model = load_detector(ckpt, device=resolve_device(args.device))
    source = f"checkpoint {str(args.checkpoint)!r}"
    if args.split == "test":
        spec, sets = checkpoint_split(ckpt, source, args.data, roles=("test",))
        samples = sets["test"]
    else:
        meta = (ckpt["config"] or {}).get("metadata") or {}
        spec = args.data or meta.get("data")
        if not spec:
            raise CliError(f"{source} does not say which data it was trained on; pass --data")
        if args.data is None and meta.get("samples"):  # the very images the run loaded (the phantom's knobs too)
            samples = load_described_samples(meta["samples"])
        else:
            samples = load_source(spec, size=int(meta.get("phantom_size", 128)))
    weak = [s.id for s in samples if not s.is_strong]
    if weak:
        raise CliError(f"{len(weak)} image(s) of {spec} have no boxes (e.g. {weak[:3]}); CorLoc needs boxes")
    if not samples:
        raise CliError(f"no images to evaluate in {spec} ({args.split})")
    report = evaluate_detections(detect(model, samples, batch_size=args.batch_size), samples, iou_thresh=iou,
                                 score_thresh=score, n_boot=args.n_boot, seed=args.seed)
    print(f"CorLoc of {args.checkpoint} (step {ckpt.get('step', '?')}) on {len(samples)} {args.split} images of "
          f"{spec} (IoU > {iou:g}, score >= {score:g}, 95% bootstrap CI over {args.n_boot} resamples)")
    print(report.summary())
    if args.csv:
        print(f"per-image hits and misses: {report.write_csv(Path(args.csv))}")
    if args.json:
        n, cis = report.corloc.n_images, report.as_dict()["ci_by_class"]
        rows = {k: {"corloc": report.as_json()["corloc"][k], "ci": cis[k] or [None, None], "n": n[k]}
                for k in ("benign", "malignant", "overall")}
        atomic_write_json({"checkpoint": str(args.checkpoint), "step": ckpt.get("step"), "data": spec,
                           "split": args.split, **report.as_dict(), "corloc": rows}, Path(args.json))
    return 0


def cmd_self_train(args: argparse.Namespace) -> int:
    """``wsbus self-train``: :func:`wsbus.experiments.self_train_from_checkpoint`."""
    from .experiments import self_train_from_checkpoint

    result = self_train_from_checkpoint(
        args.checkpoint, args.out, data=args.data, fractions=args.fractions, steps=args.steps,
        retrain=args.retrain, alpha=_alpha_spec(args.alpha), device=args.device, seed=args.seed,
        batch_size=args.batch_size, score_thresh=args.score_thresh, n_boot=args.n_boot,
        progress=not args.no_progress)
    print(result.table())
    if result.precision is not None:
        p = result.precision
        parts = ", ".join(f"top {100 * q:g} %: {100 * p.at_fraction(q):.1f} %" for q in args.fractions)
        print(f"pseudo-box precision (IoU > 0.5 with the hidden boxes): {100 * p.overall:.1f} % of "
              f"{p.n_labelled} pseudo-labelled weak images; {parts}")
    print(f"results in {args.out}")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    """``wsbus experiment``: :func:`wsbus.experiments.run_experiment` (or ``run_experiments`` over seeds)."""
    from .data.sources import parse_source
    from .experiments import run_experiment, run_experiments, run_folds

    recipe = _recipe(args, parse_source(args.data).kind, n_test=args.n_test, n_val=args.n_val,
                     self_training=args.self_training)
    if args.n_strong is not None and args.target is None:
        recipe = recipe.replace(n_strong=args.n_strong, strong_fraction=None)
    if args.target is None and args.n_target_strong:
        raise CliError("--n-target-strong needs --target")
    if args.folds is not None and args.fold is None:
        raise CliError("--folds needs --fold K (the fold that is the test set)")
    if args.fold is not None and args.seeds:
        raise CliError("--fold and --seeds do not combine; repeat a fold study with --seed")
    kwargs = dict(recipe=recipe, methods=args.methods, device=args.device, threads=args.threads,
                  progress=not args.no_progress, evaluate_on=args.evaluate_on, reuse_results=args.reuse_results,
                  jobs=args.jobs)
    if args.target is not None:
        kwargs.update(target=args.target, n_source_strong=args.n_strong, n_target_strong=args.n_target_strong)
    if args.fold is not None and len(args.fold) > 1:
        run_folds(args.data, args.out, folds=args.folds, fold_numbers=args.fold, seed=args.seed, **kwargs)
    elif args.fold is not None:
        run_experiment(args.data, args.out, seed=args.seed, folds=args.folds, fold=args.fold[0], **kwargs)
    elif args.seeds:
        run_experiments(args.data, args.out, seeds=args.seeds, **kwargs)
    else:
        run_experiment(args.data, args.out, seed=args.seed, **kwargs)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``wsbus demo``: :func:`wsbus.experiments.run_demo`."""
    from .experiments import run_demo

    run_demo(args.out, quick=args.quick, device=args.device, seed=args.seed, threads=args.threads)
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    """``wsbus ablate``: :func:`wsbus.experiments.run_ablation` (or ``run_ablations`` over seeds)."""
    from .experiments import run_ablation, run_ablations

    kwargs = dict(quick=args.quick, device=args.device, variants=args.variants,
                  alternating_budget=args.alternating_budget, threads=args.threads)
    if args.seeds:
        run_ablations(args.seeds, args.out, **kwargs)
    else:
        run_ablation(args.out, seed=args.seed, **kwargs)
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    """``wsbus fetch NAME``: :func:`wsbus.data.download.fetch`."""
    from .data.download import fetch

    result = fetch(args.name, dest=args.dest, sha256=args.sha256)
    if result is not None:
        print(result)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """``wsbus predict``: :func:`wsbus.inference.iter_predict` into a :class:`wsbus.inference.PredictionWriter`,
    resumed when DIR holds an earlier run of the same settings; SIGINT / SIGTERM end it with the tables written."""
    from tqdm.auto import tqdm

    from .data.images import list_images
    from .distributed import resolve_device
    from .inference import PredictionWriter, input_size, iter_predict, load_detector
    from .inference.loading import file_sha256
    from .interrupts import Interrupted, signals_as_exceptions

    device = resolve_device(args.device)
    model = load_detector(args.checkpoint, device=device)
    files = list_images(args.images, recursive=args.recursive)  # a missing path or an empty folder stops here
    settings = {"checkpoint": str(args.checkpoint), "checkpoint_sha256": file_sha256(args.checkpoint),
                "backbone": model.config.get("backbone"), "checkpoint_size": list(input_size(model)),
                "size": args.size, "score_thresh": args.score_thresh, "overlays": not args.no_overlays,
                "images": [str(Path(p).expanduser().resolve()) for p in args.images], "recursive": args.recursive,
                "device": str(device), "batch_size": args.batch_size, "workers": args.workers}
    writer, kept = None, 0
    with signals_as_exceptions():
        try:
            with PredictionWriter(args.out, overlays=not args.no_overlays, settings=settings,
                                  overwrite=args.overwrite) as writer:
                todo = writer.resume(files)
                kept = len(files) - len(todo)
                for p in iter_predict(model, todo, device=device, batch_size=args.batch_size,
                                      score_thresh=args.score_thresh, num_workers=args.workers,
                                      progress=not args.no_progress, size=args.size, errors="skip",
                                      keep_images=not args.no_overlays):
                    writer.add(p)
                    if not p.ok:
                        tqdm.write(f"wsbus: skipped {p.error}", file=sys.stderr)
        except Interrupted as exc:
            done = len(writer.predictions) if writer is not None else 0
            print(f"wsbus: interrupted by {exc.name} after {done} of {len(files)} images; partial results in "
                  f"{args.out} (complete: false); rerun the same command to finish", file=sys.stderr)
            return exc.exit_code
    failed = len(writer.failed)
    done = len(writer.predictions) - failed
    n_det = sum(len(p.scores) for p in writer.predictions if p.ok)
    print(f"predicted {done - kept} image(s){f' (and kept {kept} from the earlier run)' if kept else ''} "
          f"({n_det} detection(s) with score >= {args.score_thresh:g}) on {device}"
          f"{f', {failed} failed' if failed else ''}; results in {args.out}")
    if failed and (args.strict or done == 0):
        print(f"wsbus: error: {failed} of {len(writer.predictions)} image(s) could not be read"
              f"{' (--strict)' if done else ''}", file=sys.stderr)
        return 1
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """``wsbus convert --to coco``: :func:`wsbus.data.write_coco` of a data source."""
    from .data import write_coco
    from .data.sources import load_source

    samples = load_source(args.data, size=args.size, seed=args.seed)
    path = write_coco(samples, args.out_dir, overwrite=args.overwrite)
    n_boxes = sum(len(s.boxes) for s in samples if s.is_strong)
    weak = sum(not s.is_strong for s in samples)
    print(f"wrote {len(samples)} image(s) with {n_boxes} box(es){f' ({weak} weak)' if weak else ''} of {args.data} "
          f"to {path}; read them back with --data coco:{args.out_dir}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``wsbus export``: :func:`wsbus.export.export_detector`, then its check printed."""
    from .export import export_detector

    try:
        check = export_detector(args.checkpoint, args.out, args.format, size=args.size, check=not args.no_check,
                                check_images=args.images, opset=args.opset)
    except ImportError as exc:
        raise CliError(str(exc)) from None
    if check is not None and not check.passed:
        print(check)
        print(f"wsbus: error: the exported {args.format} model does not reproduce the detector (the check above); "
              f"{args.out} was not written", file=sys.stderr)
        return 1
    print(f"exported {args.checkpoint} as {args.format} to {args.out}")
    if check is not None:
        print(check)
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    """``wsbus pretrain``: :func:`wsbus.pretrain.pretrain_backbone` on the images of --data (less --exclude)."""
    from .data.sources import load_source, parse_source
    from .distributed import resolve_device
    from .experiments import recipe_for
    from .interrupts import Interrupted, signals_as_exceptions
    from .pretrain import exclude_images, pretrain_backbone, read_ids, resume_path
    from .seeding import cpu_threads

    recipe = recipe_for(parse_source(args.data).kind)
    size = args.size or recipe.size
    max_size = args.max_size or (2 * args.size if args.size else recipe.max_size or recipe.size)
    try:
        device = resolve_device(args.device)
    except RuntimeError as exc:
        raise CliError(str(exc)) from None
    samples = load_source(args.data, size=size, seed=0)
    n_all = len(samples)
    if args.exclude:
        samples = exclude_images(samples, read_ids(args.exclude), where=f"--exclude {args.exclude}")
    settings = {k: v for k, v in dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr).items()
                if v is not None}
    with cpu_threads(args.threads), signals_as_exceptions():
        try:
            result = pretrain_backbone(samples, args.out, method=args.method, backbone=args.backbone, size=size,
                                       max_size=max_size, seed=args.seed, amp=args.amp, device=device,
                                       resume=not args.restart, progress=not args.no_progress,
                                       checkpoint_every=args.checkpoint_every, workers=args.workers, **settings)
        except Interrupted as exc:
            print(f"wsbus: interrupted by {exc.name}; rerun the same command to continue from the state saved in "
                  f"{resume_path(args.out)}", file=sys.stderr)
            return exc.exit_code
    excluded = f" ({n_all - len(samples)} excluded)" if n_all != len(samples) else ""
    how = (f"resumed at step {result.resumed_from} on {device}" if result.resumed_from else f"on {device}")
    done = (f"already done with these settings and images, nothing trained; found {result.path}" if result.cached
            else f"{how}; wrote {result.path}")
    print(f"pretrained the {result.config['backbone']} backbone with {result.config['method']} for {result.step} "
          f"steps on {result.images['n']} images of {args.data}{excluded} at {size} px ({done})")
    return 0


# ---------------------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------------------

def interrupted_message(exc: Any, args: argparse.Namespace) -> str:
    """One line for an interrupted command: the signal, what was saved and how to continue."""
    saved = getattr(exc, "checkpoint", None)
    step = getattr(exc, "step", None)
    where = f" at step {step} of {exc.max_step}" if step is not None and hasattr(exc, "max_step") else ""
    if saved is not None:
        again = {"train": "the same command with --resume", "experiment": "the same command"}.get(
            args.command, "the same command")
        return f"interrupted by {exc.name}{where}; checkpoint {saved} saved; run {again} to continue"
    return f"interrupted by {exc.name}{where}; nothing more was saved"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``wsbus`` command line; returns the exit status.

    Expected failures (bad data, bad arguments, a checkpoint of another run, a missing folder) print
    ``wsbus: error: <message>`` and return 2; a non-finite loss returns 3. Set ``WSBUS_DEBUG=1`` for the
    traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)       # --version and --help exit here, before torch is imported
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    from .checkpoint import CheckpointError
    from .data.formats import DataError
    from .engine import NonFiniteLossError
    from .interrupts import Interrupted, signals_as_exceptions
    try:
        with signals_as_exceptions():
            _shipped(args)
            return int(args.func(args) or 0)
    except Interrupted as exc:
        if os.environ.get("WSBUS_DEBUG"):
            raise
        print(f"wsbus: {interrupted_message(exc, args)}", file=sys.stderr)
        return exc.exit_code
    except NonFiniteLossError as exc:
        if os.environ.get("WSBUS_DEBUG"):
            raise
        print(f"wsbus: error: {exc}", file=sys.stderr)
        return EXIT_NONFINITE
    except (CliError, DataError, CheckpointError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
            FileExistsError, PermissionError) as exc:
        if os.environ.get("WSBUS_DEBUG"):
            raise
        print(f"wsbus: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
