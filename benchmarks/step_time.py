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
import statistics
import time

import torch

from wsbus.models import build_detector


def make_batch(n_images: int, size: int, seed: int = 0):
    """Synthetic grayscale images with one bright box each, and their strong targets."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for i in range(n_images):
        img = torch.rand(1, size, size, generator=g) * 0.3
        x1, y1 = int(size * (0.2 + 0.1 * i)), int(size * 0.3)
        x2, y2 = x1 + size // 4, y1 + size // 3
        img[:, y1:y2, x1:x2] += 0.5
        images.append(img.clamp(0, 1))
        targets.append({"boxes": torch.tensor([[x1, y1, x2, y2]], dtype=torch.float32),
                        "labels": torch.tensor([1 + i % 2])})
    return images, targets


def timed_step(model, images, targets, seed: int) -> tuple[float, float]:
    """(CPU time of this thread, wall time) of one forward + backward."""
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    c0, t0 = time.thread_time(), time.perf_counter()
    losses = model(images, targets)
    sum(losses.values()).backward()
    return time.thread_time() - c0, time.perf_counter() - t0


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="tiny", choices=["tiny", "vgg16", "resnet18", "resnet50"])
    p.add_argument("--size", type=int, default=None, help="image side (default: 128 for tiny, 224 otherwise)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default: 40 tiny, 5 otherwise)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size = args.size or (128 if args.backbone == "tiny" else 224)
    reps = args.reps or (40 if args.backbone == "tiny" else 5)

    torch.manual_seed(0)
    ours = build_detector(args.backbone, min_size=size, max_size=size).to(device).train()
    theirs = ours.as_torchvision().to(device).train()  # deep copies of the same modules and weights

    images, strong = make_batch(3, size)
    images = [im.to(device) for im in images]
    strong = [{k: v.to(device) for k, v in t.items()} for t in strong]
    joint = [strong[0], {"image_label": 1}, {"image_label": 2}]

    variants = {
        "ours_strong": (ours, strong),
        "torchvision_strong": (theirs, strong),
        "ours_joint": (ours, joint),
    }
    cpu = {k: [] for k in variants}
    wall = {k: [] for k in variants}
    for r in range(args.warmup + reps):
        # interleave, rotating the order so that no variant always runs first
        order = list(variants)[r % 3:] + list(variants)[: r % 3]
        for name in order:
            model, targets = variants[name]
            c, w = timed_step(model, images, targets, seed=r)
            if r >= args.warmup:
                cpu[name].append(c)
                wall[name].append(w)
    print(f"backbone={args.backbone} size={size} threads={args.threads} device={device} reps={reps}")
    result = {}
    # CPU time of the main thread is the primary measure on a shared CPU (with one thread it is all the work);
    # wall time is shown too and is what matters on a GPU.
    for clock, times in (("cpu", cpu), ("wall", wall)):
        med = {k: statistics.median(v) for k, v in times.items()}
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
