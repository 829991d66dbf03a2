"""Data-loading throughput (DetectionDataset + train_transforms through a DataLoader) against what a step consumes.

Loader: ``DataLoader(DetectionDataset(phantom, kind="strong", transforms=train_transforms()), batch_size=3,
num_workers=N, collate_fn=collate)`` over ``(index, aug_seed)`` items, as the Trainer draws them; one repetition
loads ``--images`` images, for N = 0, 1, 2 worker processes (a fresh loader per repetition, so worker start-up is
counted, as at every Trainer.fit). Step: a joint training step of ``build_detector(backbone)`` on 1 strong + 2
weak images of the same size (forward + backward + Adam update). The two are interleaved in one process and the
medians compared: ``loader images/s / step images/s`` must stay well above 1 (the loader is never the
bottleneck; with N >= 1 it also runs in parallel with the step).

Clocks: wall time (what the loop sees) and CPU time. The CPU time of the loader is the main process's plus its
worker processes' (``resource.getrusage(RUSAGE_CHILDREN)``, counted when the workers exit); on a shared machine
wall times include the other jobs' load, CPU times do not.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/data_throughput.py                       # phantom 128 px, tiny step
    OMP_NUM_THREADS=1 python benchmarks/data_throughput.py --size 512 --backbone vgg16 --reps 3 --images 12
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import BACKBONES, children_cpu, machine_line  # noqa: E402

from wsbus.data import DetectionDataset, collate, make_phantom, train_transforms  # noqa: E402
from wsbus.models import build_detector  # noqa: E402


def load_once(ds, n_images: int, workers: int, rep: int) -> tuple[float, float, float]:
    """Load ``n_images`` augmented images with ``workers`` processes.

    Returns (steady-state wall seconds per image after the first batch, start-up wall seconds until the first
    batch, CPU seconds per image including the workers' and their start-up).
    """
    items = [(i % len(ds), rep * n_images + i) for i in range(n_images)]
    batches = [items[i:i + 3] for i in range(0, n_images, 3)]
    c0, k0, t0 = time.process_time(), children_cpu(), time.perf_counter()
    loader = DataLoader(ds, batch_sampler=batches, num_workers=workers, collate_fn=collate)
    count, t_first = 0, None
    for images, _ in loader:
        count += len(images)
        if t_first is None:
            t_first, first = time.perf_counter(), len(images)
    t_end = time.perf_counter()
    del loader  # workers exit here; their CPU time reaches RUSAGE_CHILDREN once they are reaped
    assert count == n_images
    cpu = (time.process_time() - c0) + (children_cpu() - k0)
    return (t_end - t_first) / (n_images - first), t_first - t0, cpu / n_images


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128, help="phantom image side")
    p.add_argument("--backbone", default="tiny", choices=BACKBONES)
    p.add_argument("--images", type=int, default=60, help="images loaded per repetition (multiple of 3)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    samples = make_phantom(24, seed=0, size=args.size)
    ds = DetectionDataset(samples, kind="strong", transforms=train_transforms(), seed=0)

    torch.manual_seed(0)
    model = build_detector(args.backbone, min_size=args.size, max_size=args.size).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    img, tgt = ds[(0, 0)]
    weak = [ds[(1, 1)][0], ds[(2, 2)][0]]
    images = [img] + weak
    targets = [{"boxes": tgt["boxes"], "labels": tgt["labels"]}, {"image_label": 1}, {"image_label": 2}]

    def step() -> tuple[float, float]:
        c0, t0 = time.process_time(), time.perf_counter()
        opt.zero_grad(set_to_none=True)
        sum(model(images, targets).values()).backward()
        opt.step()
        return time.perf_counter() - t0, time.process_time() - c0

    step()
    names = [f"loader_N{w}" for w in args.workers] + ["step"]
    wall = {k: [] for k in names}
    cpu = {k: [] for k in names}
    startup = {k: [] for k in names[:-1]}
    for r in range(args.reps + 1):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            if name == "step":
                w, c = step()
                w, c = w / 3, c / 3  # per image
            else:
                w, s0, c = load_once(ds, args.images, int(name[len("loader_N"):]), r)
                if r:
                    startup[name].append(s0)
            if r:  # the first round is warm-up
                wall[name].append(w)
                cpu[name].append(c)
    print(machine_line(args.threads, "cpu"))
    print(f"phantom {args.size} px, train_transforms, {args.images} images per loader repetition, step = "
          f"{args.backbone} joint 1 strong + 2 weak with Adam, reps={args.reps}")
    result = {}
    for clock, times in (("wall", wall), ("cpu", cpu)):
        med = {k: statistics.median(v) for k, v in times.items()}
        step_rate = 1.0 / med["step"]
        what = "steady state, after the first batch" if clock == "wall" else "incl. workers and their start-up"
        print(f"[{clock} time, {what}]  step consumes {step_rate:8.1f} images/s")
        for k in names[:-1]:
            rate = 1.0 / med[k]
            extra = f"   start-up {1e3 * statistics.median(startup[k]):6.0f} ms" if clock == "wall" else ""
            print(f"  {k:10s} {rate:8.1f} images/s   loader / step = {rate / step_rate:6.1f}x{extra}")
        result[clock] = {k: 1.0 / v for k, v in med.items()}
    return result


if __name__ == "__main__":
    main()
