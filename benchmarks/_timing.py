"""Shared helpers of the benchmark scripts: common options, interleaved repetitions, medians of CPU and wall time,
synthetic batches.

Every benchmark runs its variants in ONE process, interleaved in a rotating order (so that no variant always runs
first, after the same other one, or during the same burst of load from other processes), and reports medians.
On a shared CPU the main thread's CPU time (``time.thread_time``) is the robust clock: with one intra-op thread it
is all the work of a step and it does not count the time other processes hold the cores. Wall time is printed too;
it is what matters on a GPU (where CPU time only measures the Python and launch overhead).
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch


BACKBONES = ["tiny", "vgg16", "resnet18", "resnet50"]


def parse_args(p: argparse.ArgumentParser, argv, *, size: int, reps: Tuple[int, int], warmup: Optional[int] = None,
               device: bool = True, reps_help: str = "timed repetitions") -> argparse.Namespace:
    """Add the options the detector benchmarks share, parse ``argv`` and apply them.

    The options: ``--backbone`` (:data:`BACKBONES`, default tiny), ``--size`` (default 128 for tiny, ``size``
    otherwise), ``--reps`` (default ``reps[0]`` for tiny, ``reps[1]`` otherwise), ``--warmup`` (only when a
    ``warmup`` default is given), ``--threads`` (default 1) and ``--device`` (default cpu; not with
    ``device=False``). Sets torch's intra-op threads and returns the namespace with ``size`` and ``reps`` resolved
    and ``device`` a :class:`torch.device` (cpu when there is no ``--device``).
    """
    p.add_argument("--backbone", default="tiny", choices=BACKBONES)
    p.add_argument("--size", type=int, default=None, help=f"image side (default 128 tiny, {size} otherwise)")
    p.add_argument("--reps", type=int, default=None,
                   help=f"{reps_help} (default {reps[0]} tiny, {reps[1]} otherwise)")
    if warmup is not None:
        p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--threads", type=int, default=1)
    if device:
        p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tiny = args.backbone == "tiny"
    args.size = args.size or (128 if tiny else size)
    args.reps = args.reps or (reps[0] if tiny else reps[1])
    args.device = torch.device(getattr(args, "device", "cpu"))
    return args


def cuda_sync(device: torch.device) -> Optional[Callable[[], None]]:
    """``torch.cuda.synchronize`` on a CUDA device (the ``sync`` of :func:`interleave`), else None."""
    return torch.cuda.synchronize if device.type == "cuda" else None


def make_batch(n_images: int, size: int, seed: int = 0, width: Optional[int] = None, device=None):
    """``n_images`` synthetic grayscale images ``[1, size, width]`` with one bright box each, and strong targets
    (both moved to ``device`` when one is given)."""
    width = width or size
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for i in range(n_images):
        img = torch.rand(1, size, width, generator=g) * 0.3
        x1, y1 = int(width * (0.2 + 0.1 * (i % 5))), int(size * 0.3)
        x2, y2 = x1 + width // 4, y1 + size // 3
        img[:, y1:y2, x1:x2] += 0.5
        images.append(img.clamp(0, 1))
        targets.append({"boxes": torch.tensor([[x1, y1, x2, y2]], dtype=torch.float32),
                        "labels": torch.tensor([1 + i % 2])})
    if device is not None:
        images = [im.to(device) for im in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    return images, targets


def joint_targets(strong: Sequence[dict]) -> List[dict]:
    """The joint batch's targets: the first image strong (its boxes), the next two weak (image labels 1 and 2)."""
    return [strong[0], {"image_label": 1}, {"image_label": 2}]


def interleave(variants: Mapping[str, Callable[[int], None]], reps: int, warmup: int = 2,
               sync: Optional[Callable[[], None]] = None) -> Dict[str, Dict[str, list]]:
    """Run every variant ``warmup + reps`` times, interleaved in a rotating order.

    ``variants`` maps a name to ``fn(rep)``. Returns ``{"cpu": {name: [seconds...]}, "wall": {...}}`` of the
    timed repetitions. ``sync`` (e.g. ``torch.cuda.synchronize``) is called before reading each clock.
    """
    names = list(variants)
    cpu: Dict[str, list] = {k: [] for k in names}
    wall: Dict[str, list] = {k: [] for k in names}
    for r in range(warmup + reps):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            if sync is not None:
                sync()
            c0, t0 = time.thread_time(), time.perf_counter()
            variants[name](r)
            if sync is not None:
                sync()
            c, w = time.thread_time() - c0, time.perf_counter() - t0
            if r >= warmup:
                cpu[name].append(c)
                wall[name].append(w)
    return {"cpu": cpu, "wall": wall}


def medians(times: Mapping[str, Sequence[float]]) -> Dict[str, float]:
    """Median of each list."""
    return {k: statistics.median(v) for k, v in times.items()}


def machine_line(threads: int, device) -> str:
    """One line describing the run: torch version, threads, device, load average (contention)."""
    try:
        load = "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    except OSError:
        load = "load average n/a"
    return (f"torch {torch.__version__}, {threads} thread(s), device {device}, {os.cpu_count()} CPU cores, {load}")


def children_cpu() -> float:
    """User + system CPU seconds of the reaped child processes (``resource.getrusage(RUSAGE_CHILDREN)``)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime
