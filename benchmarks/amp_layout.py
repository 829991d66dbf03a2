"""Speed options of a training step: bfloat16/float16 autocast, channels_last, torch.compile of the backbone.

Variants (same weights, same batch of 1 strong + 2 weak images, same seed per repetition; interleaved, medians):

* ``fp32``: the default;
* ``amp``: ``torch.autocast`` (bfloat16 on CPU, float16 on CUDA — where the Trainer adds a GradScaler);
* ``channels_last``: ``build_detector(..., channels_last=True)`` (backbone and RPN head in NHWC);
* ``channels_last+amp``;
* ``compiled`` (with ``--compile``): ``model.backbone.compile()`` (TorchInductor; the detection heads stay eager:
  their data-dependent shapes — NMS, sampling — would break the graph every step). Compilation time is printed
  separately and is not in the medians.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/amp_layout.py                               # tiny, 128 px
    OMP_NUM_THREADS=1 python benchmarks/amp_layout.py --backbone vgg16 --size 224 --reps 4
    OMP_NUM_THREADS=1 python benchmarks/amp_layout.py --compile
    python benchmarks/amp_layout.py --device cuda --threads 4 --mode eval
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import (cuda_sync, interleave, joint_targets, machine_line, make_batch, medians,  # noqa: E402
                     parse_args)

from wsbus.models import build_detector  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", default="train", choices=["train", "eval"])
    p.add_argument("--compile", action="store_true", help="add the torch.compile(backbone) variant")
    args = parse_args(p, argv, size=224, reps=(30, 4), warmup=2)
    device, size, reps = args.device, args.size, args.reps
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    torch.manual_seed(0)
    base = build_detector(args.backbone, min_size=size, max_size=size).to(device)
    nhwc = copy.deepcopy(base).set_channels_last(True)
    models = {"fp32": (base, False), "amp": (base, True), "channels_last": (nhwc, False),
              "channels_last+amp": (nhwc, True)}
    if args.compile:
        compiled = copy.deepcopy(base)
        compiled.backbone.compile()
        models["compiled"] = (compiled, False)

    images, strong = make_batch(3, size, device=device)
    targets = joint_targets(strong)

    def variant(model, amp):
        def run(rep):
            torch.manual_seed(rep)
            ctx = torch.autocast(device.type, dtype=amp_dtype) if amp else nullcontext()
            if args.mode == "eval":
                model.eval()
                with torch.no_grad(), ctx:
                    model(images)
            else:
                model.train()
                model.zero_grad(set_to_none=True)
                with ctx:
                    losses = model(images, targets)
                sum(losses.values()).backward()
        return run

    print(machine_line(args.threads, device))
    if args.compile:
        t0 = time.perf_counter()
        variant(*models["compiled"])(0)
        variant(*models["compiled"])(0)
        print(f"torch.compile(backbone): first two steps took {time.perf_counter() - t0:.1f} s (compilation)")
    times = interleave({k: variant(*v) for k, v in models.items()}, reps, warmup=args.warmup, sync=cuda_sync(device))
    print(f"backbone={args.backbone} size={size} mode={args.mode} amp dtype={amp_dtype} reps={reps} "
          f"(batch: 1 strong + 2 weak{'' if args.mode == 'train' else ', eval forward'})")
    result = {}
    for clock in ("cpu", "wall"):
        med = medians(times[clock])
        print(f"[{clock} time]")
        for k, v in med.items():
            print(f"  {k:18s} {1e3 * v:9.1f} ms/step   x{v / med['fp32']:.3f} of fp32")
        result[clock] = med
    return result


if __name__ == "__main__":
    main()
