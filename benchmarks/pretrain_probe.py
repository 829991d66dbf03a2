"""Sanity check of label-free pretraining (wsbus.pretrain) on the phantom: does the backbone learn something a
detector could use?

Pretrain the tiny backbone with each method on ``--pretrain-images`` phantom images (their labels and boxes never
read), then freeze it and measure how well pooled features separate benign from malignant masses, against randomly
initialised backbones (``--random-seeds`` of them, the spread of the baseline):

* ``image``: mean + max pooling of the whole image's feature map;
* ``box``: mean + max of a 7x7 RoIAlign of the mass's box (what the detector's box head sees of it).

Probe classifiers: k-NN (k = 5) and an L2-regularised logistic regression, trained on the masses of the pretraining
images and tested on the masses of a fresh phantom set (another seed). Writes a JSON file with every number.

Usage (about 10 minutes on one CPU thread with --amp)::

    OMP_NUM_THREADS=1 python benchmarks/pretrain_probe.py --amp --out docs/results/phantom/pretrain_probe.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from wsbus.data import make_phantom
from wsbus.pretrain import (METHODS, PretrainConfig, build_pretrain_backbone, knn_accuracy, linear_probe_accuracy,
                            pooled_features, pretrain_backbone)


def probe(backbone, train, test, size: int) -> dict:
    out = {}
    for region in ("image", "box"):
        a = pooled_features(backbone, train, size=size, max_size=size, region=region)
        b = pooled_features(backbone, test, size=size, max_size=size, region=region)
        ya = torch.tensor([s.image_label for s in train])
        yb = torch.tensor([s.image_label for s in test])
        out[region] = {"knn": knn_accuracy(a, ya, b, yb, k=5), "linear": linear_probe_accuracy(a, ya, b, yb)}
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--pretrain-images", type=int, default=300)
    p.add_argument("--test-images", type=int, default=400)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--random-seeds", type=int, default=3)
    p.add_argument("--amp", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON file to write")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pool = make_phantom(args.pretrain_images, seed=0, size=args.size)
    fresh = make_phantom(args.test_images, seed=1, size=args.size)
    train = [s for s in pool if s.image_label in (1, 2)]
    test = [s for s in fresh if s.image_label in (1, 2)]
    print(f"pretraining on {len(pool)} phantom images; probe: {len(train)} masses (train), {len(test)} (test), "
          f"benign share of test {sum(s.image_label == 1 for s in test) / len(test):.2f}", flush=True)
    rows = {}
    for seed in range(args.random_seeds):
        torch.manual_seed(seed)
        rows[f"random_{seed}"] = probe(build_pretrain_backbone(PretrainConfig(size=args.size)), train, test, args.size)
        print(f"random_{seed}: {rows[f'random_{seed}']}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            started = time.process_time()
            result = pretrain_backbone(pool, Path(tmp) / f"{method}.pt", method=method, size=args.size,
                                       max_size=args.size, steps=args.steps, batch_size=args.batch_size,
                                       amp=args.amp, device="cpu", progress=False)
            cpu = time.process_time() - started
            losses = [h["loss"] for h in result.history]
            rows[method] = {**probe(result.backbone, train, test, args.size), "cpu_s": cpu,
                            "loss_first10": sum(losses[:10]) / 10, "loss_last10": sum(losses[-10:]) / 10}
            print(f"{method}: {rows[method]}", flush=True)
    report = {"command": " ".join(["python", "benchmarks/pretrain_probe.py", *(argv or sys.argv[1:])]),
              "settings": vars(args), "n_train_masses": len(train), "n_test_masses": len(test), "results": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
