"""How the cost of a training step grows with the image size and with the number of proposals; writes a figure.

For each image side in ``--sizes`` (proposal counts at the preset) and each proposal count R in ``--proposals``
(image side ``--base-size``; the RPN keeps R proposals per image after NMS, in training and testing, and the weak
branch scores R per weak image; pre-NMS is fixed at ``--pre-nms`` so that NMS work does not change with R), it
times, interleaved in one process with medians (see ``benchmarks/README.md``):

* ``ours_joint``: 1 strong + 2 weak images, one forward + backward;
* ``ours_strong``: 3 strong images;
* ``torchvision_strong``: torchvision's FasterRCNN on the same modules and the same 3 strong images;

and plots the CPU time per image of each against size and R (``docs/figures/step_cost_scaling.png``), with the
numbers in ``docs/figures/step_cost_scaling.json``.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/scaling.py                     # tiny: sizes 96..384, R 50..800 (~3 min)
    OMP_NUM_THREADS=1 python benchmarks/scaling.py --backbone vgg16 --sizes 128 192 256 --proposals 100 300 \
        --base-size 192 --reps 3 --out docs/figures/step_cost_scaling_vgg16.png
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import BACKBONES, interleave, joint_targets, machine_line, make_batch, medians  # noqa: E402
from step_time import step_fn  # noqa: E402

from wsbus.models import build_detector  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def measure(backbone: str, size: int, reps: int, warmup: int, **options) -> dict:
    """Medians (s per image, CPU and wall) of the three variants for one configuration."""
    torch.manual_seed(0)
    ours = build_detector(backbone, min_size=size, max_size=size, **options).train()
    theirs = ours.as_torchvision().train()
    images, strong = make_batch(3, size)
    joint = joint_targets(strong)
    times = interleave({"ours_joint": step_fn(ours, images, joint), "ours_strong": step_fn(ours, images, strong),
                        "torchvision_strong": step_fn(theirs, images, strong)}, reps, warmup=warmup)
    return {clock: {k: v / 3 for k, v in medians(times[clock]).items()} for clock in ("cpu", "wall")}


def plot(results: dict, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    styles = {"ours_joint": ("C0", "o", "ours, joint 1 strong + 2 weak"),
              "ours_strong": ("C1", "s", "ours, 3 strong"),
              "torchvision_strong": ("C2", "^", "torchvision FasterRCNN, 3 strong")}
    for ax, key, xlabel in ((axes[0], "sizes", "image side (px)"), (axes[1], "proposals", "proposals per image R")):
        xs = [row["x"] for row in results[key]]
        for name, (color, marker, label) in styles.items():
            ax.plot(xs, [1e3 * row["cpu"][name] for row in results[key]], color=color, marker=marker, label=label,
                    linestyle="--" if name == "torchvision_strong" else "-")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("CPU time per image and step (ms)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs)
        ax.set_xticklabels([str(x) for x in xs])
        ax.set_ylim(bottom=0)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_title("vs image size (proposal counts of the preset)")
    axes[1].set_title(f"vs proposals R (side {results['base_size']} px, pre-NMS {results['pre_nms']})")
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="tiny", choices=BACKBONES)
    p.add_argument("--sizes", type=int, nargs="+", default=[96, 128, 192, 256, 384])
    p.add_argument("--proposals", type=int, nargs="+", default=[50, 100, 200, 400, 800])
    p.add_argument("--base-size", type=int, default=128)
    p.add_argument("--pre-nms", type=int, default=2000)
    p.add_argument("--reps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "docs" / "figures" / "step_cost_scaling.png"))
    p.add_argument("--replot", action="store_true", help="only redraw the figure from the JSON next to --out")
    args = p.parse_args(argv)
    out = Path(args.out)
    title = (f"{args.backbone} detector, one training step (forward + backward), 1 CPU thread; "
             f"median of {args.reps} interleaved repetitions")
    if args.replot:
        results = json.loads(out.with_suffix(".json").read_text())
        plot(results, out, title.replace(f"median of {args.reps}", f"median of {results['reps']}"))
        return results
    torch.set_num_threads(args.threads)
    print(machine_line(args.threads, "cpu"))
    results: dict = {"backbone": args.backbone, "base_size": args.base_size, "pre_nms": args.pre_nms,
                     "reps": args.reps, "sizes": [], "proposals": []}
    for size in args.sizes:
        m = measure(args.backbone, size, args.reps, args.warmup)
        results["sizes"].append({"x": size, **m})
        print(f"size {size:4d}: " + "  ".join(f"{k} {1e3 * v:7.1f}" for k, v in m["cpu"].items()) + "  ms CPU/image")
    for r in args.proposals:
        m = measure(args.backbone, args.base_size, args.reps, args.warmup, weak_proposals=r,
                    rpn_post_nms_top_n=r, rpn_pre_nms_top_n=args.pre_nms, weak_pre_nms_top_n=args.pre_nms)
        results["proposals"].append({"x": r, **m})
        print(f"R {r:7d}: " + "  ".join(f"{k} {1e3 * v:7.1f}" for k, v in m["cpu"].items()) + "  ms CPU/image")
    plot(results, out, title)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return results


if __name__ == "__main__":
    main()
