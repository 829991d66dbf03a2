"""Training-step time of wsbus's WeakSemiFasterRCNN against torchvision's FasterRCNN built from the same modules.

Measures, in one process, with interleaved repetitions and medians (see benchmarks/README.md):

(a) our strong training step / torchvision's strong training step, same images, targets, weights and seed
    (goal <= 1.02: the weak-branch plumbing costs nothing when there is no weak image);
(b) our joint step (1 strong + 2 weak images, one backbone pass) per image / torchvision's strong step per image
    (goal <= 1.10).

A step is forward + backward (zero_grad included); the optimiser update is identical for both models and left
out so that the weights, and hence the sampled anchors and RoIs, stay the same in every repetition.

Usage::

    python benchmarks/step_time.py                       # tiny backbone, 128 px, 1 thread
    python benchmarks/step_time.py --backbone vgg16 --size 224 --reps 5
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import (cuda_sync, interleave, joint_targets, machine_line, make_batch, medians,  # noqa: E402
                     parse_args)

from wsbus.models import build_detector  # noqa: E402


def step_fn(model, images, targets):
    """One forward + backward (zero_grad included), seeded per repetition so every variant samples alike."""
    def run(rep: int) -> None:
        torch.manual_seed(rep)
        model.zero_grad(set_to_none=True)
        losses = model(images, targets)
        sum(losses.values()).backward()
    return run


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args = parse_args(p, argv, size=224, reps=(40, 5), warmup=3)
    device, size, reps = args.device, args.size, args.reps

    torch.manual_seed(0)
    ours = build_detector(args.backbone, min_size=size, max_size=size).to(device).train()
    theirs = ours.as_torchvision().to(device).train()  # deep copies of the same modules and weights

    images, strong = make_batch(3, size, device=device)
    joint = joint_targets(strong)

    variants = {
        "ours_strong": step_fn(ours, images, strong),
        "torchvision_strong": step_fn(theirs, images, strong),
        "ours_joint": step_fn(ours, images, joint),
    }
    times = interleave(variants, reps, warmup=args.warmup, sync=cuda_sync(device))
    cpu, wall = times["cpu"], times["wall"]
    print(machine_line(args.threads, device))
    print(f"backbone={args.backbone} size={size} threads={args.threads} device={device} reps={reps}")
    result = {}
    # CPU time of the main thread is the primary measure on a shared CPU (with one thread it is all the work);
    # wall time is shown too and is what matters on a GPU.
    for clock, per_variant in (("cpu", cpu), ("wall", wall)):
        med = medians(per_variant)
        ratio_a = med["ours_strong"] / med["torchvision_strong"]
        ratio_b = (med["ours_joint"] / 3) / (med["torchvision_strong"] / 3)  # both batches hold 3 images
        print(f"[{clock} time]")
        for k, v in med.items():
            print(f"  median {k:20s} {1000 * v:8.1f} ms/step  ({1000 * v / 3:6.1f} ms/image)")
        print(f"  (a) ours strong / torchvision strong            = {ratio_a:.3f}  (goal <= 1.02)")
        print(f"  (b) ours joint 1S+2W / torchvision strong, /img = {ratio_b:.3f}  (goal <= 1.10)")
        result[clock] = {"medians": med, "ratio_strong": ratio_a, "ratio_joint_per_image": ratio_b}
    return result


if __name__ == "__main__":
    main()
