"""Throughput of label-free backbone pretraining (wsbus.pretrain): images per second of one step, split into making
the views and the model's forward + backward + optimiser step, per method and input size.

Not a test (timings depend on the machine). Reports main-thread CPU time (``time.thread_time``; with one thread it
is all the work of a step and ignores other processes' load) and wall time; the median over ``--reps`` steps after
one warm-up step. Images: BUS-BRA scans (the argument or ``WSBUS_BUSBRA``) or, without them, the phantom.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/pretrain_speed.py /work/shared/data/BUSBRA --sizes 160 224
    python benchmarks/pretrain_speed.py --methods simclr --batch-size 32 --device cuda
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import machine_line  # noqa: E402

from wsbus.data import make_phantom  # noqa: E402
from wsbus.pretrain import (METHODS, VIEWS, PretrainConfig, batch_indices, build_objective,  # noqa: E402
                            build_pretrain_backbone, make_views, prepare_images)


def images(busbra: str | None, n: int):
    if busbra:
        from wsbus.data import load_busbra
        return load_busbra(busbra)[:n]
    return make_phantom(n, seed=0, size=128)


def time_method(samples, method: str, size: int, batch: int, reps: int, device: torch.device, amp: bool) -> dict:
    config = PretrainConfig(method=method, size=size, batch_size=batch, amp=amp)
    pictures = prepare_images(samples, config.size, config.max_size)
    torch.manual_seed(0)
    objective = build_objective(build_pretrain_backbone(config), config).to(device)
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=config.lr)
    pipeline = VIEWS[config.views].pipeline(config.crop)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    cpu_views, cpu_step, wall = [], [], []
    for k in range(reps + 1):
        w0, t0 = time.perf_counter(), time.thread_time()
        views = make_views(pictures, batch_indices(k, batch, len(pictures), 0), pipeline, objective.n_views, 0, k)
        t1 = time.thread_time()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = objective(views.to(device), k)["loss"]
        loss.backward()
        optimizer.step()
        objective.after_step(k)
        sync()
        if k:  # the first step warms up
            cpu_views.append(t1 - t0)
            cpu_step.append(time.thread_time() - t1)
            wall.append(time.perf_counter() - w0)
    v, s, w = (statistics.median(x) for x in (cpu_views, cpu_step, wall))
    return {"method": method, "size": size, "views_s": v, "model_s": s, "imgs_per_s_cpu": batch / (v + s),
            "imgs_per_s_overlapped": batch / max(v, s), "imgs_per_s_wall": batch / w}


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("busbra", nargs="?", default=os.environ.get("WSBUS_BUSBRA"), help="BUS-BRA folder (optional)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--sizes", nargs="+", type=int, default=[160, 224])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="autocast in bfloat16")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    samples = images(args.busbra, max(2 * args.batch_size, 128))
    print(machine_line(args.threads, device))
    print(f"{len(samples)} images of {'BUS-BRA' if args.busbra else 'the phantom'}, batch {args.batch_size}, "
          f"{'bfloat16 autocast' if args.amp else 'float32'}; img/s CPU: views + model in one thread; img/s 2 procs: "
          f"views in a worker (--workers 1), batch / max(views, model)")
    print(f"{'method':<12} {'size':>4} {'views s':>8} {'model s':>8} {'img/s CPU':>9} {'img/s 2 procs':>13} "
          f"{'img/s wall':>10}")
    rows = []
    for size in args.sizes:
        for method in args.methods:
            r = time_method(samples, method, size, args.batch_size, args.reps, device, args.amp)
            rows.append(r)
            print(f"{method:<12} {size:>4} {r['views_s']:>8.3f} {r['model_s']:>8.3f} {r['imgs_per_s_cpu']:>9.1f} "
                  f"{r['imgs_per_s_overlapped']:>13.1f} {r['imgs_per_s_wall']:>10.1f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
