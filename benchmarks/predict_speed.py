"""Throughput of ``wsbus.inference.predict`` from image files against torchvision's own eval forward.

Writes ``--images`` phantom scans as PNG files into a temporary folder, builds a detector with random weights
(``pretrained=False``: nothing is downloaded), and times, interleaved (``_timing.interleave``, medians):

* **torchvision**: ``model.as_torchvision().eval()`` -- torchvision's ``FasterRCNN`` on deep copies of the same
  modules -- called under ``torch.no_grad()`` in batches of ``--batch-size`` on tensors decoded beforehand and
  already on the device (the forward alone: no reading, no decoding, no copying);
* **wsbus predict**: ``predict(model, folder, batch_size=..., num_workers=--workers)``: listing the folder,
  reading and decoding the PNGs in DataLoader workers, copying to the device, the forward, the score filter and
  the results moved to the CPU.

It prints images per second of both and the ratio ``predict / torchvision`` (goal >= 0.95) on wall time, which is
what counts here: the workers' decoding runs in other processes, so the main thread's CPU time of ``predict``
leaves it out (printed too, as a check that the main thread does no more work than torchvision's forward).

    OMP_NUM_THREADS=1 python benchmarks/predict_speed.py                                  # tiny, 128 px
    OMP_NUM_THREADS=1 python benchmarks/predict_speed.py --backbone vgg16 --size 224 --images 16 --reps 3
    python benchmarks/predict_speed.py --device cuda --backbone vgg16 --size 600 --images 64 --threads 4
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import cuda_sync, interleave, machine_line, medians, parse_args  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=256, help="PNG files in the folder (default 256)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers of predict (default 1)")
    args = parse_args(p, argv, size=224, reps=(5, 3), warmup=1)

    from PIL import Image

    from wsbus.data import make_phantom, read_gray
    from wsbus.inference import predict
    from wsbus.models import build_detector

    torch.manual_seed(0)
    model = build_detector(args.backbone, min_size=args.size, max_size=2 * args.size).to(args.device).eval()
    reference = model.as_torchvision().to(args.device).eval()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for s in make_phantom(args.images, size=args.size, seed=1):
            Image.fromarray(s.image).save(folder / f"{s.id}.png")
        decoded = [torch.from_numpy(read_gray(f).copy()).to(args.device)[None].float().div_(255)
                   for f in sorted(folder.iterdir())]
        batches = [decoded[i:i + args.batch_size] for i in range(0, len(decoded), args.batch_size)]

        def torchvision_forward(rep: int) -> None:
            torch.manual_seed(rep)
            with torch.no_grad():
                for batch in batches:
                    reference(batch)

        def wsbus_predict(rep: int) -> None:
            torch.manual_seed(rep)
            out = predict(model, folder, device=args.device, batch_size=args.batch_size, num_workers=args.workers)
            assert len(out) == args.images

        times = interleave({"torchvision": torchvision_forward, "predict": wsbus_predict}, args.reps,
                           warmup=args.warmup, sync=cuda_sync(args.device))
    wall, cpu = medians(times["wall"]), medians(times["cpu"])
    print(machine_line(args.threads, args.device))
    print(f"{args.backbone}, {args.size} px, {args.images} PNG images, batch {args.batch_size}, {args.workers} "
          f"worker(s), {args.reps} reps (median)")
    for name in ("torchvision", "predict"):
        print(f"  {name:<12} {args.images / wall[name]:8.2f} images/s wall ({wall[name]:.3f} s), main-thread CPU "
              f"{cpu[name]:.3f} s")
    print(f"throughput ratio predict / torchvision (wall): {wall['torchvision'] / wall['predict']:.3f} "
          f"(goal >= 0.95); main-thread CPU ratio: {cpu['torchvision'] / cpu['predict']:.3f}")


if __name__ == "__main__":
    main()
