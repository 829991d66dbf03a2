#!/usr/bin/env python
"""What the fixed canvas costs: the detector padded to its square canvas vs. the same detector padding every batch to
its largest image (torchvision's ``batch_images``, whose detections depend on the batch-mates), on mini-batches of
images shaped like BUS-BRA's (decision 41, issue 20).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/canvas_cost.py [--reps 20] [--size 160] [--batch 4] [--canvas 256]

Prints the median main-thread CPU time of a training step (2 strong + 2 weak images) and of an eval forward for both,
and their ratio, measured interleaved in one run. The image shapes are drawn from BUS-BRA's width/height
distribution (portrait, h/w between 0.83 and 1.42, a few landscape) at the recipe's input size; the canvas is what
``max_size="auto"`` gives for them.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _timing import interleave, machine_line, medians  # noqa: E402
from torchvision.models.detection.transform import GeneralizedRCNNTransform  # noqa: E402

from wsbus.experiments.adapt import canvas_size  # noqa: E402
from wsbus.models import build_detector  # noqa: E402

# (height, width) quantiles of BUS-BRA's images (bus_data.csv: median 383 x 286, 5 % landscape)
SHAPES = [(353, 274), (371, 274), (383, 286), (448, 323), (459, 413), (305, 276), (268, 579), (407, 317)]


def batch_max_padding(model):
    """The same detector with torchvision's batch-max padding (the behaviour before the canvas)."""
    model.transform.batch_images = lambda images, size_divisible=32: GeneralizedRCNNTransform.batch_images(
        model.transform, images, size_divisible)
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--batch", type=int, default=4, help="images per training step (half strong, half weak)")
    p.add_argument("--canvas", type=int, default=None,
                   help="canvas side (default: what max_size='auto' gives for these shapes; the REAL recipe gives "
                        "256 on all of BUS-BRA)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    canvas = args.canvas or canvas_size(SHAPES, args.size)
    models = {}
    for name in ("canvas", "batch-max padding"):
        torch.manual_seed(0)
        m = build_detector("tiny", min_size=args.size, max_size=canvas, anchor_sizes=(28, 60, 140),
                           weak_proposals=30)
        models[name] = m if name == "canvas" else batch_max_padding(m)
    g = torch.Generator().manual_seed(0)

    def images(rep):
        pick = [SHAPES[(rep * args.batch + i) % len(SHAPES)] for i in range(args.batch)]
        return [torch.rand(1, h, w, generator=g) for h, w in pick]

    def targets(imgs):
        half = len(imgs) // 2
        out = []
        for i, img in enumerate(imgs):
            h, w = img.shape[-2:]
            box = torch.tensor([[w * 0.3, h * 0.3, w * 0.6, h * 0.6]])
            out.append({"boxes": box, "labels": torch.tensor([1])} if i < half else {"image_label": torch.tensor(2)})
        return out

    batches = [images(r) for r in range(args.reps + 2)]

    def train_step(model):
        def run(rep):
            model.train()
            imgs = batches[rep % len(batches)]
            loss = sum(model(imgs, targets(imgs)).values())
            loss.backward()
        return run

    def eval_step(model):
        def run(rep):
            model.eval()
            with torch.no_grad():
                model(batches[rep % len(batches)])
        return run

    train = medians(interleave({k: train_step(m) for k, m in models.items()}, args.reps)["cpu"])
    infer = medians(interleave({k: eval_step(m) for k, m in models.items()}, args.reps)["cpu"])
    print(machine_line(args.threads, "cpu"))
    print(f"input {args.size} px, canvas {canvas} px square, {args.batch} images per batch, BUS-BRA shapes")
    for what, t in (("training step", train), ("eval forward", infer)):
        ratio = t["canvas"] / t["batch-max padding"]
        print(f"{what:14s} canvas {1e3 * t['canvas']:7.1f} ms   batch-max padding {1e3 * t['batch-max padding']:7.1f} "
              f"ms   ratio {ratio:.3f}")
    mean_area = sum(min(args.size / min(h, w), canvas / max(h, w)) ** 2 * h * w for h, w in SHAPES) / len(SHAPES)
    print(f"(the canvas holds {canvas ** 2} px; an image covers {mean_area:.0f} px of it on average: "
          f"{100 * mean_area / canvas ** 2:.0f} %)")
    return 0 if all(math.isfinite(v) for v in list(train.values()) + list(infer.values())) else 1


if __name__ == "__main__":
    sys.exit(main())
