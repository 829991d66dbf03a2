"""The ``wsbus`` command line (also ``python -m wsbus``): ``train``, ``evaluate``, ``self-train``, ``demo``,
``ablate``, ``fetch``.

Taught in ``book/06_joint_training.md`` (train, resume, torchrun), ``book/07_self_training.md`` (self-train) and
``book/08_evaluation.md`` (evaluate).

Examples
--------
::

    wsbus train --data phantom --mode joint --steps 2000 --out runs/joint
    wsbus train --data phantom --mode joint --steps 4000 --out runs/joint --resume   # continue, bit for bit
    torchrun --nproc_per_node=2 -m wsbus train --data busi:data/Dataset_BUSI_with_GT --mode joint ...
    wsbus evaluate --checkpoint runs/joint/last.pt
    wsbus self-train --checkpoint runs/joint/last.pt --fractions 0.5 0.75 --out runs/self_training
    wsbus demo --quick
    wsbus ablate --variants proposed moi_abnormal alternating --out runs/table_ii
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["main", "build_parser"]

EXIT_ERROR = 2
EXIT_NONFINITE = 3


class CliError(RuntimeError):
    """A user-facing error: printed as ``wsbus: error: ...`` without a traceback."""


# ---------------------------------------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------------------------------------

def _checked(convert, ok, expected: str):
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


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu; under torchrun "
                        "'cuda' means each process's own GPU)")


def build_parser() -> argparse.ArgumentParser:
    """The ``wsbus`` argument parser. Taught in ``book/06_joint_training.md``."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="wsbus", description="Joint weakly- and semi-supervised Faster R-CNN for breast ultrasound "
                                  "(Shin et al., IEEE TMI 2019).")
    parser.add_argument("--version", action="version", version=f"wsbus {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train a detector (strong, weak or joint); resumable; DDP under torchrun",
                       description="Split the data, train, and keep DIR/last.pt, DIR/log.csv, DIR/config.json "
                                   "and DIR/split.json. Under `torchrun --nproc_per_node=K -m wsbus train ...` "
                                   "it trains data-parallel: the per-process batch is --batch-strong + "
                                   "--batch-weak images and the global batch K times that.")
    t.add_argument("--data", required=True, help="phantom, phantom:N, voc:DIR, busi:DIR or busbra:DIR")
    t.add_argument("--mode", choices=("strong", "weak", "joint"), default="joint",
                   help="strong: boxes only (baseline); weak: image labels only (MIL baseline, every training "
                        "image used without its boxes); joint: L_s + alpha L_ws (default)")
    t.add_argument("--stream", choices=("combined", "alternating"), default="combined",
                   help="joint mode: one mini-batch of both kinds per step (default) or alternating steps")
    t.add_argument("--steps", type=_positive_int, default=60000, help="total training steps (reference 60000)")
    t.add_argument("--out", required=True, help="output folder (last.pt, log.csv, config.json, split.json)")
    t.add_argument("--backbone", default=None,
                   help="vgg16 (the paper), resnet18, resnet50 or tiny; default tiny on the phantom, else vgg16")
    t.add_argument("--pretrained", action="store_true", help="ImageNet backbone weights (downloads them)")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--n-strong", type=_positive_int, default=None, help="strong (boxed) training images")
    g.add_argument("--strong-fraction", type=_fraction, default=None,
                   help="fraction of the training pool that keeps its boxes (default 0.2)")
    g2 = t.add_mutually_exclusive_group()
    g2.add_argument("--n-test", type=_positive_int, default=None, help="test images")
    g2.add_argument("--test-fraction", type=_fraction, default=None, help="fraction of images for test "
                                                                           "(default 0.2)")
    t.add_argument("--split-seed", type=int, default=0, help="seed of the patient-level split (default 0)")
    t.add_argument("--alpha", default="0.5", help="MIL weight: a number (default 0.5) or 'gradual'")
    t.add_argument("--rule-map", default="paper",
                   help="MoI rules: paper (default), reference (the TF1 code's), a Table II name or "
                        "'<benign rule>/<malignant rule>'")
    t.add_argument("--batch-strong", type=_positive_int, default=1, help="strong images per step (default 1)")
    t.add_argument("--batch-weak", type=_positive_int, default=2, help="weak images per step (default 2)")
    t.add_argument("--lr", type=float, default=5e-4, help="learning rate (Adam; default 5e-4)")
    t.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay (default 5e-4)")
    t.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), default="adam")
    t.add_argument("--clip-grad-norm", type=float, default=None, help="clip the gradient norm to this value")
    t.add_argument("--resume", action="store_true", help="continue from DIR/last.pt (starts afresh if none)")
    t.add_argument("--checkpoint-every", type=_positive_int, default=1000, help="steps between checkpoints")
    t.add_argument("--keep-every", type=_positive_int, default=None, help="also keep DIR/step_XXXXXX.pt")
    t.add_argument("--log-every", type=_positive_int, default=20, help="steps between progress/TensorBoard "
                                                                       "updates")
    _add_device(t)
    t.add_argument("--seed", type=int, default=3, help="training seed (reference 3)")
    t.add_argument("--amp", action="store_true", help="mixed precision (bf16 on CPU, fp16 on CUDA)")
    t.add_argument("--workers", type=_non_negative_int, default=0, help="DataLoader workers (default 0)")
    t.add_argument("--size", type=_positive_int, default=None,
                   help="phantom image side (default 128) and the detector's input scale (min size; max size "
                        "5/3 of it); default: the backbone's preset")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard events")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="CorLoc per class and overall with 95%% bootstrap CIs")
    e.add_argument("--checkpoint", required=True, help="a checkpoint written by `wsbus train` (DIR/last.pt)")
    e.add_argument("--data", default=None, help="data spec (default: the one the checkpoint was trained on)")
    e.add_argument("--split", choices=("test", "all"), default="test",
                   help="test: the run's test images (from the checkpoint); all: every image of --data")
    _add_device(e)
    e.add_argument("--batch-size", type=_positive_int, default=8, help="images per forward pass")
    e.add_argument("--iou", type=float, default=0.5, help="IoU threshold (CorLoc: IoU > this)")
    e.add_argument("--score-thresh", type=float, default=0.5, help="detections need score >= this")
    e.add_argument("--n-boot", type=_positive_int, default=1000, help="bootstrap resamples")
    e.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    e.add_argument("--json", default=None, help="also write the results to this JSON file")
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("demo", help="the main job on the embedded phantom: strong vs weak vs joint "
                                    "(+ self-training), Table V-shaped results with CIs")
    d.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    d.add_argument("--quick", action="store_true", help="a smaller, faster version")
    _add_device(d)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=_positive_int, default=1,
                   help="torch CPU threads (default 1: the table then repeats exactly; more threads change the "
                        "order of floating-point sums and hence the numbers of these short runs)")
    d.set_defaults(func=cmd_demo)

    from .ablation import TABLE_II_VARIANTS  # light: no torch model is built at import

    a = sub.add_parser("ablate", help="the paper's Table II on the embedded phantom: each row changes one aspect "
                                      "of the proposed joint training (MoI rule, static alpha, alternating)",
                       description="Train every Table II variant on the phantom split of `wsbus demo` (same seed: "
                                   "same data, boxed images, test set and initial weights) and print CorLoc with "
                                   "95 %% bootstrap CIs and McNemar p-values against the proposed method. Writes "
                                   "DIR/table_ii.md, DIR/ablation.json and DIR/logs/.")
    a.add_argument("--out", default="ablation_out", help="output folder (default ablation_out)")
    a.add_argument("--quick", action="store_true", help="a smaller, faster version (a smoke run)")
    _add_device(a)
    a.add_argument("--seed", type=int, default=0, help="the demo seed (data, split, initial weights)")
    a.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="repeat the whole ablation on these seeds (DIR/seed_<s>/) and write DIR/summary.md: each "
                        "variant per seed, the mean, and on how many seeds it beat the proposed row")
    a.add_argument("--variants", nargs="+", default=None, choices=[v.key for v in TABLE_II_VARIANTS],
                   metavar="KEY", help="rows to train (default all): "
                                       + ", ".join(v.key for v in TABLE_II_VARIANTS) + "; must include proposed")
    a.add_argument("--alternating-budget", choices=("images", "updates"), default="images",
                   help="'images': the alternating run trains twice the steps so it sees each stream as often "
                        "as a combined run (default); 'updates': the same number of steps")
    a.add_argument("--threads", type=_positive_int, default=1, help="torch CPU threads (default 1, as for demo)")
    a.set_defaults(func=cmd_ablate)

    s = sub.add_parser("self-train", help="pseudo-boxes from a trained model, retrain with the top fractions "
                                          "moved to the strong set (Table IV)",
                       description="Self-training (Shin et al. Table IV) from a `wsbus train` checkpoint: the "
                                   "checkpoint's model labels its weak images, the most confident fractions move "
                                   "to the strong set with their pseudo-boxes, and a model is retrained for each "
                                   "fraction. Writes DIR/results.json, DIR/table_iv.md, DIR/pseudo_labels.json "
                                   "and DIR/precision_vs_rank.png.")
    s.add_argument("--checkpoint", required=True, help="DIR/last.pt of a `wsbus train` run (best a joint one)")
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
    s.add_argument("--score-thresh", type=float, default=0.0, help="ignore detections scoring below this")
    s.add_argument("--n-boot", type=_positive_int, default=1000, help="bootstrap resamples of the CIs")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_self_train)

    f = sub.add_parser("fetch", help="download a public data set (sha256-checked, safely extracted)")
    f.add_argument("name", help="data set name, e.g. busi or busbra")
    f.add_argument("--dest", default="data", help="destination folder (default data)")
    f.set_defaults(func=cmd_fetch)
    return parser


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------

def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
    os.replace(tmp, path)


def _rule_map_spec(name: str) -> str:
    return "reference_code" if name == "reference" else name


def _detector_size_options(size: Optional[int]) -> Dict[str, int]:
    if size is None:
        return {}
    return {"min_size": int(size), "max_size": int(math.ceil(size * 1000 / 600))}


def _setup_logging(is_main: bool) -> None:
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING, format="%(message)s",
                        stream=sys.stderr)


def _ids(samples) -> List[str]:
    return [s.id for s in samples]


# ---------------------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------------------

def cmd_train(args: argparse.Namespace) -> int:
    """``wsbus train``: split, build, train, checkpoint. Taught in ``book/06_joint_training.md``."""
    import torch

    from .data import split as split_samples
    from .data.sources import load_source, parse_source
    from .distributed import cleanup_distributed, init_distributed
    from .models import build_detector
    from .seeding import seed_everything
    from .train import Trainer

    info, device = init_distributed(args.device)
    _setup_logging(info.is_main)
    try:
        kind = parse_source(args.data).kind
        backbone = args.backbone or ("tiny" if kind == "phantom" else "vgg16")
        phantom_size = args.size or 128
        samples = load_source(args.data, size=phantom_size, seed=0)
        split_params: Dict[str, Any] = {"seed": args.split_seed}
        if args.n_strong is not None:
            split_params["n_strong"] = args.n_strong
        else:
            split_params["strong_fraction"] = args.strong_fraction if args.strong_fraction is not None else 0.2
        if args.n_test is not None:
            split_params["n_test"] = args.n_test
        else:
            split_params["test_fraction"] = args.test_fraction if args.test_fraction is not None else 0.2
        parts = split_samples(samples, **split_params)
        split_ids = {"strong": _ids(parts.strong), "weak": _ids(parts.weak), "test": _ids(parts.test)}
        if args.mode == "strong":
            strong, weak = parts.strong, None
        elif args.mode == "weak":   # the weak-only baseline learns from every training image, without boxes
            strong, weak = None, list(parts.strong) + list(parts.weak)
        else:
            strong, weak = parts.strong, parts.weak
        if strong is not None and not strong:
            raise CliError(f"the split of {args.data} left no strong training image ({split_params})")
        if weak is not None and not weak:
            raise CliError(f"the split of {args.data} left no weak training image ({split_params}); "
                           f"lower --n-strong/--strong-fraction")

        out = Path(args.out)
        split_file = out / "split.json"
        if args.resume and split_file.is_file():
            with open(split_file) as fh:
                saved = json.load(fh)
            for role in ("strong", "weak", "test"):
                if saved.get(role) != split_ids[role]:
                    raise CliError(f"--resume: the {role} images differ from {split_file} (the data or the split "
                                   f"options changed since the run started)")

        seed_everything(args.seed)          # the model's initial weights
        model = build_detector(backbone, num_classes=3, pretrained=args.pretrained,
                               moi_rules=_rule_map_spec(args.rule_map), **_detector_size_options(args.size))
        metadata = {"data": args.data, "phantom_size": phantom_size, "split": split_params,
                    "split_ids": split_ids, "argv": list(sys.argv)}
        trainer = Trainer(model, strong, weak, mode=args.mode, stream=args.stream, n_strong=args.batch_strong,
                          n_weak=args.batch_weak, alpha=args.alpha, lr=args.lr, weight_decay=args.weight_decay,
                          optimizer=args.optimizer, steps=args.steps, device=device, amp=args.amp,
                          clip_grad_norm=args.clip_grad_norm, out_dir=out, checkpoint_every=args.checkpoint_every,
                          keep_every=args.keep_every, log_every=args.log_every, seed=args.seed,
                          num_workers=args.workers, progress=not args.no_progress,
                          tensorboard=not args.no_tensorboard, metadata=metadata)
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            _write_json(split_file, {"data": args.data, "params": split_params, **split_ids})
            _write_json(out / "config.json", {"command": "train", "args": _vars_plain(args), "model": model.config,
                                              "trainer": trainer.config()})
        history = trainer.fit(resume=args.resume)
        if info.is_main:
            last = history[-1] if len(history) else None
            tail = f", last loss {last['loss']:.4f}" if last else ""
            print(f"trained {args.mode} ({args.stream}) to step {trainer.step} on {trainer.device}, "
                  f"world size {info.world_size}{tail}; checkpoint {out / 'last.pt'}")
    finally:
        cleanup_distributed()
    return 0


def _vars_plain(args: argparse.Namespace) -> Dict[str, Any]:
    """The parsed arguments as JSON-friendly data (without the handler)."""
    return {k: v for k, v in vars(args).items() if k != "func"}


# ---------------------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------------------

def cmd_evaluate(args: argparse.Namespace) -> int:
    """``wsbus evaluate``: CorLoc per class and overall with bootstrap CIs. Taught in ``book/08_evaluation.md``."""
    from .checkpoint import load_checkpoint
    from .data.sources import load_source
    from .distributed import resolve_device
    from .evaluate import corloc
    from .models import build_detector
    from .self_training import detect

    device = resolve_device(args.device)
    ckpt = load_checkpoint(args.checkpoint, map_location="cpu", require=("model", "config"))
    config = ckpt["config"]
    model_config = dict(config.get("model") or {})
    if not model_config:
        raise CliError(f"checkpoint {args.checkpoint!r} has no model config; it was not written by `wsbus train`")
    meta = config.get("metadata") or {}
    model_config["pretrained"] = False            # the checkpoint holds the weights; nothing to download
    model = build_detector(**model_config)
    model.load_state_dict(ckpt["model"])
    model.to(device)

    spec = args.data or meta.get("data")
    if not spec:
        raise CliError(f"checkpoint {args.checkpoint!r} does not say which data it was trained on; pass --data")
    samples = load_source(spec, size=int(meta.get("phantom_size", 128)), seed=0)
    if args.split == "test":
        test_ids = (meta.get("split_ids") or {}).get("test")
        if test_ids is None:
            raise CliError(f"checkpoint {args.checkpoint!r} holds no test split; use --split all")
        by_id = {s.id: s for s in samples}
        missing = [i for i in test_ids if i not in by_id]
        if missing:
            raise CliError(f"{len(missing)} test image(s) of the checkpoint are not in {spec} "
                           f"(e.g. {missing[:3]}); is it the same data?")
        samples = [by_id[i] for i in test_ids]
    weak = [s.id for s in samples if not s.is_strong]
    if weak:
        raise CliError(f"{len(weak)} image(s) of {spec} have no boxes (e.g. {weak[:3]}); CorLoc needs boxes")
    if not samples:
        raise CliError(f"no images to evaluate in {spec} ({args.split})")

    detections = detect(model, samples, device=device, batch_size=args.batch_size)
    result = corloc(detections, samples, iou_thresh=args.iou, score_thresh=args.score_thresh)
    cis = result.ci(n_boot=args.n_boot, seed=args.seed)
    step = ckpt.get("step", "?")
    print(f"CorLoc of {args.checkpoint} (step {step}) on {len(samples)} {args.split} images of {spec} "
          f"(IoU > {args.iou:g}, score >= {args.score_thresh:g}, 95% bootstrap CI over {args.n_boot} resamples)")
    print(f"{'class':<10} {'images':>6} {'CorLoc':>8}   95% CI")
    rows = {}
    for key in ("benign", "malignant", "overall"):
        v, (lo, hi), n = getattr(result, key), cis[key], result.n_images[key]
        fmt = (lambda x: "   n/a" if math.isnan(x) else f"{100 * x:6.2f}")
        print(f"{key:<10} {n:>6} {fmt(v):>7}%   [{fmt(lo).strip()}, {fmt(hi).strip()}]")
        rows[key] = {"corloc": None if math.isnan(v) else v, "ci": [None if math.isnan(lo) else lo,
                                                                    None if math.isnan(hi) else hi], "n": n}
    if args.json:
        _write_json(Path(args.json), {"checkpoint": str(args.checkpoint), "step": step, "data": spec,
                                      "split": args.split, "corloc": rows})
    return 0


# ---------------------------------------------------------------------------------------------------------
# self-train
# ---------------------------------------------------------------------------------------------------------

def cmd_self_train(args: argparse.Namespace) -> int:
    """``wsbus self-train``: calls :func:`wsbus.self_training.self_train_from_checkpoint`.

    Taught in ``book/07_self_training.md``.
    """
    from .self_training import self_train_from_checkpoint

    alpha = args.alpha
    if alpha is not None and alpha.strip().lower() != "gradual":
        try:
            alpha = float(alpha)
        except ValueError:
            raise CliError(f"--alpha must be a number or 'gradual', got {args.alpha!r}") from None
    result = self_train_from_checkpoint(
        args.checkpoint, args.out, data=args.data, fractions=args.fractions, steps=args.steps,
        retrain=args.retrain, alpha=alpha, device=args.device, seed=args.seed, batch_size=args.batch_size,
        score_thresh=args.score_thresh, n_boot=args.n_boot, progress=not args.no_progress)
    print(result.table())
    if result.precision is not None:
        p = result.precision
        parts = ", ".join(f"top {100 * q:g} %: {100 * p.at_fraction(q):.1f} %" for q in args.fractions)
        print(f"pseudo-box precision (IoU > 0.5 with the hidden boxes): {100 * p.overall:.1f} % of "
              f"{p.n_labelled} pseudo-labelled weak images; {parts}")
    print(f"results in {args.out}")
    return 0


# ---------------------------------------------------------------------------------------------------------
# demo, fetch
# ---------------------------------------------------------------------------------------------------------

def cmd_demo(args: argparse.Namespace) -> int:
    """``wsbus demo``: calls :func:`wsbus.demo.run_demo`. Taught in ``book/01_introduction.md``."""
    if importlib.util.find_spec("wsbus.demo") is None:
        raise CliError("`wsbus demo` is not available yet: this installation has no wsbus.demo module")
    from .demo import run_demo

    run_demo(args.out, quick=args.quick, device=args.device, seed=args.seed, threads=args.threads)
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    """``wsbus ablate``: calls :func:`wsbus.ablation.run_ablation`. Taught in ``book/06_joint_training.md``."""
    from .ablation import run_ablation, run_ablations

    kwargs = dict(quick=args.quick, device=args.device, variants=args.variants,
                  alternating_budget=args.alternating_budget, threads=args.threads)
    if args.seeds:
        run_ablations(args.seeds, args.out, **kwargs)
    else:
        run_ablation(args.out, seed=args.seed, **kwargs)
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    """``wsbus fetch NAME``: calls :func:`wsbus.data.download.fetch`. Taught in ``book/09_real_data.md``."""
    if importlib.util.find_spec("wsbus.data.download") is None:
        raise CliError("`wsbus fetch` is not available yet: this installation has no wsbus.data.download module")
    from .data.download import fetch

    result = fetch(args.name, dest=args.dest)
    if result is not None:
        print(result)
    return 0


# ---------------------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``wsbus`` command line; returns the exit status.

    Expected failures (bad data, bad arguments, a checkpoint of another run, a missing folder) print
    ``wsbus: error: <message>`` and return 2; a non-finite loss returns 3. Set ``WSBUS_DEBUG=1`` for the
    traceback.

    Taught in ``book/06_joint_training.md``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)       # --version and --help exit here, before torch is imported
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    from .checkpoint import CheckpointError
    from .data.formats import DataError
    from .train import NonFiniteLossError
    try:
        return int(args.func(args) or 0)
    except NonFiniteLossError as exc:
        if os.environ.get("WSBUS_DEBUG"):
            raise
        print(f"wsbus: error: {exc}", file=sys.stderr)
        return EXIT_NONFINITE
    except (CliError, DataError, CheckpointError, FileNotFoundError, NotADirectoryError, ValueError) as exc:
        if os.environ.get("WSBUS_DEBUG"):
            raise
        print(f"wsbus: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
