"""Before/after: the detector of the working tree against the detector of an earlier commit (and torchvision).

``git archive <commit> wsbus`` is unpacked into a temporary folder and imported under another package name, so
both versions run in ONE process, on the same weights (the old model loads the new one's state dict), the same
batches and the same seed per repetition, interleaved, with medians (see ``benchmarks/README.md``). Variants:
``strong`` (3 strong images), ``joint`` (1 strong + 2 weak), ``eval`` (eval forward of 3 images), for ``new``
(working tree), ``old`` (the commit) and ``tv`` (torchvision's FasterRCNN on the same modules; strong and eval).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/compare_commits.py 80970ee                  # tiny, 128 px
    OMP_NUM_THREADS=1 python benchmarks/compare_commits.py 80970ee --backbone vgg16 --size 160 --reps 3
"""
from __future__ import annotations

import argparse
import importlib
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleave, joint_targets, machine_line, make_batch, medians, parse_args  # noqa: E402

import wsbus.models  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def import_at_commit(commit: str, into: Path):
    """Import ``wsbus`` as it was at ``commit`` under the name ``wsbus_<commit>``; returns its models module."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit, "wsbus"],
                             check=True, capture_output=True).stdout
    name = f"wsbus_{commit[:10]}"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    (into / "wsbus").rename(into / name)
    sys.path.insert(0, str(into))
    return importlib.import_module(f"{name}.models")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("commit", help="the earlier commit (e.g. the one before the performance work)")
    args = parse_args(p, argv, size=160, reps=(30, 3), warmup=2, device=False)
    size, reps = args.size, args.reps
    with tempfile.TemporaryDirectory(prefix="wsbus_old_") as tmp:
        old_models = import_at_commit(args.commit, Path(tmp))
        torch.manual_seed(0)
        new = wsbus.models.build_detector(args.backbone, min_size=size, max_size=size)
        old = old_models.build_detector(args.backbone, min_size=size, max_size=size)
        old.load_state_dict(new.state_dict())
        tv = new.as_torchvision()
        images, strong = make_batch(3, size)
        joint = joint_targets(strong)

        def train(model, targets):
            def run(rep):
                model.train()
                torch.manual_seed(rep)
                model.zero_grad(set_to_none=True)
                sum(model(images, targets).values()).backward()
            return run

        def evaluate(model):
            def run(rep):
                model.eval()
                with torch.no_grad():
                    model(images)
            return run

        variants = {"new_strong": train(new, strong), "old_strong": train(old, strong), "tv_strong": train(tv, strong),
                    "new_joint": train(new, joint), "old_joint": train(old, joint),
                    "new_eval": evaluate(new), "old_eval": evaluate(old), "tv_eval": evaluate(tv)}
        times = interleave(variants, reps, warmup=args.warmup)
    print(machine_line(args.threads, "cpu"))
    print(f"backbone={args.backbone} size={size} reps={reps}; old = {args.commit}, new = working tree, "
          f"tv = torchvision FasterRCNN on the same modules")
    result = {}
    for clock in ("cpu", "wall"):
        med = medians(times[clock])
        print(f"[{clock} time] ms per step (3 images)")
        for kind in ("strong", "joint", "eval"):
            n, o = med[f"new_{kind}"], med[f"old_{kind}"]
            line = f"  {kind:6s} new {1e3 * n:8.1f}  old {1e3 * o:8.1f}  new/old {n / o:.3f}"
            if f"tv_{kind}" in med:
                line += f"  tv {1e3 * med[f'tv_{kind}']:8.1f}  new/tv {n / med[f'tv_{kind}']:.3f}  " \
                        f"old/tv {o / med[f'tv_{kind}']:.3f}"
            else:
                line += f"  new/tv_strong {n / med['tv_strong']:.3f}  old/tv_strong {o / med['tv_strong']:.3f}"
            print(line)
        result[clock] = med
    return result


if __name__ == "__main__":
    main()
