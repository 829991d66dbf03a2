"""Cost of the MIL branch's own work (MoI selection + mil_loss) against the box-head forward it needs.

For a mini-batch of weak images the weak branch (``WeakSemiRoIHeads.weak_moi_boxes`` + ``loss_mil``) does:

1. ``head_scoring``: RoIAlign + box head + predictor on each image's top ``weak_proposals`` proposals, without
   gradient (this is torchvision's box-head forward, the reference for the ratio);
2. ``select_moi``: the rule scores and the arg-max per image (:func:`wsbus.mil.select_moi_batch`, vectorised over
   the batch) and the gather of the chosen boxes;
3. ``mil_loss``: forward + backward of :func:`wsbus.losses.mil_loss` on the MoI logits.

It also times ``select_moi_loop``: one :func:`wsbus.mil.select_moi` call per image (the per-image Python loop the
vectorised form replaces). Interleaved repetitions, medians, one process (see ``benchmarks/README.md``).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/mil_cost.py                        # tiny, 128 px, 100 proposals/image
    OMP_NUM_THREADS=1 python benchmarks/mil_cost.py --backbone vgg16 --size 320 --reps 10
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import cuda_sync, interleave, machine_line, make_batch, medians, parse_args  # noqa: E402

from wsbus.losses import mil_loss  # noqa: E402
from wsbus.mil import select_moi  # noqa: E402
from wsbus.models import build_detector  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weak", type=int, default=2, help="weak images per mini-batch (reference: 2)")
    p.add_argument("--inner", type=int, default=20, help="calls per timed repetition of the small variants")
    args = parse_args(p, argv, size=320, reps=(60, 15))
    device, size, reps = args.device, args.size, args.reps
    torch.manual_seed(0)
    model = build_detector(args.backbone, min_size=size, max_size=size).to(device).eval()
    heads = model.roi_heads
    images, _ = make_batch(args.weak, size, device=device)
    with torch.no_grad():
        image_list, _ = model.transform(images, None)
        features = model.features(image_list.tensors)
        proposals, _ = model.rpn(image_list, features, None)
    shapes = image_list.image_sizes
    candidates = [pr[: heads.weak_proposals] for pr in proposals]
    counts = [len(c) for c in candidates]
    labels = torch.tensor([1 + i % 2 for i in range(args.weak)], device=device)
    with torch.no_grad():
        logits = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, candidates, shapes)))[0]
    per_image = list(logits.split(counts))
    rules = [heads.moi_rules[int(y)] for y in labels]
    moi_logits = torch.randn(args.weak, 3, device=device, requires_grad=True)

    def head_scoring(_):
        with torch.no_grad():
            heads.box_predictor(heads.box_head(heads.box_roi_pool(features, candidates, shapes)))

    def select_vectorised(_):
        moi = heads.select_moi(per_image, labels)
        padded = torch.nn.utils.rnn.pad_sequence(candidates, batch_first=True)
        padded[torch.arange(len(candidates), device=device), moi]

    def select_loop(_):
        for lg, c, r in zip(per_image, candidates, rules):
            c[select_moi(lg, r, by=heads.moi_by)]

    def loss(_):
        moi_logits.grad = None
        mil_loss(moi_logits, labels).backward()

    # The small variants run ``inner`` times per timed call (their cost is tens of microseconds, close to the
    # clocks' jitter and to the cache effects of the large head pass that precedes them); times are per call.
    inner = args.inner

    def repeat(fn):
        def run(rep):
            for _ in range(inner):
                fn(rep)
        return run

    variants = {"head_scoring": head_scoring, "select_moi": repeat(select_vectorised),
                "select_moi_loop": repeat(select_loop), "mil_loss": repeat(loss)}
    per_call = {"head_scoring": 1, "select_moi": inner, "select_moi_loop": inner, "mil_loss": inner}
    times = interleave(variants, reps, warmup=3, sync=cuda_sync(device))
    print(machine_line(args.threads, device))
    print(f"backbone={args.backbone} size={size} weak images={args.weak} proposals/image={counts} reps={reps}")
    result = {}
    for clock in ("cpu", "wall"):
        med = {k: v / per_call[k] for k, v in medians(times[clock]).items()}
        ratio = (med["select_moi"] + med["mil_loss"]) / med["head_scoring"]
        print(f"[{clock} time]")
        for k, v in med.items():
            print(f"  median {k:16s} {1e3 * v:9.3f} ms")
        print(f"  (select_moi + mil_loss) / head_scoring = {ratio:.4f}")
        print(f"  select_moi_loop / select_moi           = {med['select_moi_loop'] / med['select_moi']:.2f}")
        result[clock] = {"medians": med, "ratio": ratio}
    return result


if __name__ == "__main__":
    main()
