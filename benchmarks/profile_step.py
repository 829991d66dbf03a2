"""Profile a training step and the eval forward of a detector; count the host-device synchronisations.

Three views of the same workload (batch of 3 synthetic images: 3 strong, or 1 strong + 2 weak for ``joint``):

* ``--view ops`` (default): ``torch.profiler`` table of the operators, sorted by self CPU time;
* ``--view python``: a pyinstrument call tree (``pip install pyinstrument``), which shows where the Python goes;
* ``--view syncs``: every call in the forward that forces a CUDA host sync when the tensors live on a GPU
  (``.item()``, ``.tolist()``, ``bool(t)``, ``int(t)``, ``float(t)``, ``nonzero``, one-argument ``torch.where``,
  boolean-mask indexing, ``.cpu()``; ``.to("cpu")`` of a GPU tensor is one too but cannot be told
  apart from a no-op on a CPU run), attributed to the innermost wsbus or torchvision source line. The count
  does not depend on the device, so it is measured on the CPU (there is no GPU here).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/profile_step.py --backbone tiny --mode joint
    OMP_NUM_THREADS=1 python benchmarks/profile_step.py --backbone vgg16 --size 320 --mode eval --reps 2
    python benchmarks/profile_step.py --mode joint --view syncs
"""
from __future__ import annotations

import argparse
import collections
import sys
import traceback
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import joint_targets, make_batch, parse_args  # noqa: E402

from wsbus.models import build_detector  # noqa: E402

_SYNC_METHODS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu", "nonzero",
                 "argwhere", "masked_select", "unique", "unique_consecutive"}


def _is_sync(func, args, kwargs) -> bool:
    name = getattr(func, "__name__", "")
    if name in _SYNC_METHODS:
        return True
    if name == "where" and len(args) + len(kwargs or {}) == 1:  # torch.where(cond) is nonzero
        return True
    if name == "__getitem__" and len(args) == 2:  # x[bool_mask] needs the number of True entries
        idx = args[1] if isinstance(args[1], tuple) else (args[1],)
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in idx)
    return False


class SyncCounter(TorchFunctionMode):
    """Count the calls that force a host-device synchronisation on CUDA, by source line (wsbus / torchvision)."""

    def __init__(self):
        super().__init__()
        self.sites: collections.Counter = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if _is_sync(func, args, kwargs):
            frames = [f for f in traceback.extract_stack()[:-1]
                      if "/wsbus/" in f.filename or "/torchvision/" in f.filename]
            if frames:
                f = frames[-1]
                path = f.filename[f.filename.rfind("/wsbus/") + 1:] if "/wsbus/" in f.filename else \
                    f.filename[f.filename.rfind("/torchvision/") + 1:]
                self.sites[(path, f.lineno, getattr(func, "__name__", "?"), (f.line or "").strip())] += 1
        return func(*args, **(kwargs or {}))

    def by_package(self) -> dict:
        out = collections.Counter()
        for (path, *_), n in self.sites.items():
            out[path.split("/")[0]] += n
        return dict(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", default="joint", choices=["joint", "strong", "eval"])
    p.add_argument("--view", default="ops", choices=["ops", "python", "syncs"])
    p.add_argument("--rows", type=int, default=25)
    args = parse_args(p, argv, size=320, reps=(10, 2), device=False, reps_help="profiled steps")
    size, reps = args.size, args.reps
    torch.manual_seed(0)
    model = build_detector(args.backbone, min_size=size, max_size=size)
    images, strong = make_batch(3, size)
    targets = strong if args.mode == "strong" else joint_targets(strong)

    def step(backward: bool = True):
        if args.mode == "eval":
            model.eval()
            with torch.no_grad():
                model(images)
        else:
            model.train()
            model.zero_grad(set_to_none=True)
            losses = model(images, targets)
            if backward:
                sum(losses.values()).backward()

    step()
    step()
    print(f"backbone={args.backbone} size={size} mode={args.mode} view={args.view} reps={reps}")
    if args.view == "syncs":
        with SyncCounter() as counter:
            step(backward=False)
        for (path, line, name, src), n in sorted(counter.sites.items()):
            print(f"{n:3d} x {name:12s} {path}:{line}  {src}")
        print("host syncs per forward, by package:", counter.by_package())
        return counter
    if args.view == "python":
        from pyinstrument import Profiler

        prof = Profiler(interval=0.0005)
        prof.start()
        for _ in range(reps):
            step()
        prof.stop()
        print(prof.output_text(unicode=False, color=False))
        return prof
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=50))
    return prof


if __name__ == "__main__":
    main()
