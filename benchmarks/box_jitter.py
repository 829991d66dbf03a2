"""Soft Teacher's box jitter on the phantom: how unreliable the teacher's pseudo-boxes are, whether the unreliability
separates right boxes from wrong ones, how many boxes a threshold drops in a mean-teacher run, and what it costs.

Small and CPU-only (a few minutes on one thread); not a test and not a result for the book. It

1. trains a joint model (tiny detector) on a phantom split for ``--steps`` steps;
2. takes its pseudo-box of each weak image (the tag filter of :class:`wsbus.teachers.PseudoBoxTeacher` at
   ``--score-thresh``), measures the box's unreliability (:func:`wsbus.teachers.box_unreliability` of
   ``--samples`` jittered copies refined by the model's box head) and its IoU with the hidden box, and prints the
   distribution of the unreliability for right (IoU > 0.5) and wrong boxes and the AUC of ``-sigma`` for "right";
3. times the teacher's work per step (:meth:`wsbus.teachers.PseudoBoxTeacher.before_forward` on 2 weak images,
   main-thread CPU time, interleaved repetitions, medians) without the filter and with it (a threshold that keeps
   every box, so both produce the same targets): the cost of the extra RoI pass;
4. runs the mean teacher from that model for ``--retrain-steps`` steps, once without the filter and once per
   ``--thresholds`` value, and prints the teacher's counts (boxes dropped), CorLoc on the test images and the
   main thread's CPU seconds per step.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/box_jitter.py                       # ~3-4 min on one shared core
    OMP_NUM_THREADS=1 python benchmarks/box_jitter.py --thresholds 0.02 0.04 --json out.json
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import mannwhitneyu
from torchvision.ops import box_iou

from wsbus.data import make_phantom, split
from wsbus.engine import Trainer
from wsbus.models import build_detector
from wsbus.seeding import generator, seeded
from wsbus.self_training import MeanTeacherSettings, self_train
from wsbus.teachers import PseudoBoxTeacher, box_unreliability, jitter_boxes, refined_boxes, tag_filter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleave, machine_line  # noqa: E402


def sigmas(model, weak, score_thresh: float, samples: int, scale: float):
    """(sigma, IoU with the hidden box) of the pseudo-box of each weak image the model gives one."""
    model.eval()
    out = []
    with torch.no_grad():
        for k, s in enumerate(weak):
            image = s.to_tensor(torch.float32)
            det = model([image])[0]
            boxes, _, _ = tag_filter(det, s.image_label, score_thresh, 1)
            if not len(boxes):
                continue
            image_list, _ = model.transform([image], None)
            features = model.features(image_list.tensors)
            size = image_list.image_sizes[0]
            scale_xy = torch.tensor([size[1] / image.shape[-1], size[0] / image.shape[-2]] * 2)
            copies = jitter_boxes(boxes * scale_xy, samples, scale, generator("box_jitter_benchmark", k))
            refined = refined_boxes(model, features, [size], [copies.reshape(-1, 4)], [s.image_label])[0]
            sigma = float(box_unreliability(refined.reshape(samples, -1, 4))[0])
            iou = float(box_iou(boxes, torch.as_tensor(s.boxes, dtype=torch.float32)).max())
            out.append((sigma, iou))
    return np.asarray(out)


def teacher_cost(model, weak, score_thresh: float, samples: int, scale: float, reps: int = 30):
    """Median main-thread CPU seconds of one teacher step on 2 weak images, without and with the filter."""
    images = [s.to_tensor(torch.float32) for s in weak[:2]]
    targets = [{"image_label": torch.tensor(s.image_label)} for s in weak[:2]]

    class Host:  # what a teacher reads from its Trainer
        device = torch.device("cpu")

    Host.model = model
    teachers = {"off": PseudoBoxTeacher(1.0, model, score_thresh=score_thresh),
                "box_jitter": PseudoBoxTeacher(1.0, model, score_thresh=score_thresh, box_jitter=1e9,
                                               jitter_samples=samples, jitter_scale=scale)}
    for t in teachers.values():
        t.attach(Host())
    times = interleave({k: (lambda rep, t=t: t.before_forward(Host(), images, targets)) for k, t in teachers.items()},
                       reps=reps)["cpu"]
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=120, help="phantom images")
    p.add_argument("--size", type=int, default=96, help="image side (px)")
    p.add_argument("--steps", type=int, default=300, help="steps of the joint model")
    p.add_argument("--retrain-steps", type=int, default=60, help="steps of each mean-teacher run")
    p.add_argument("--score-thresh", type=float, default=0.7, help="the teacher's tag-filter threshold")
    p.add_argument("--samples", type=int, default=10, help="jittered copies per box")
    p.add_argument("--scale", type=float, default=0.06, help="jitter scale")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.02, 0.04])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the numbers here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    data = make_phantom(args.n, seed=args.seed, size=args.size, proportions=(0.0, 0.5, 0.5))
    parts = split(data, strong_fraction=0.15, test_fraction=0.25, seed=args.seed)

    def factory():
        return build_detector("tiny", min_size=args.size, max_size=args.size)

    with seeded(0):
        joint = factory()
    kw = dict(batch_strong=1, batch_weak=2, progress=False, tensorboard=False)
    Trainer(joint, parts.strong, parts.weak, mode="joint", steps=args.steps, alpha="gradual", **kw).fit()
    si = sigmas(joint, parts.weak, args.score_thresh, args.samples, args.scale)
    right = si[:, 1] > 0.5
    report = {"args": vars(args), "n_strong": len(parts.strong), "n_weak": len(parts.weak),
              "n_test": len(parts.test), "pseudo_boxes": int(len(si)), "right": int(right.sum()),
              "sigma_quantiles": {f"{q:g}": float(np.quantile(si[:, 0], q)) for q in (0.1, 0.25, 0.5, 0.75, 0.9)},
              "sigma_median_right": float(np.median(si[right, 0])) if right.any() else None,
              "sigma_median_wrong": float(np.median(si[~right, 0])) if (~right).any() else None,
              # P(sigma of a right box < sigma of a wrong box): Mann-Whitney U / (n_right * n_wrong)
              "auc_minus_sigma_for_right": (float(mannwhitneyu(-si[right, 0], -si[~right, 0]).statistic
                                                  / (right.sum() * (~right).sum()))
                                            if 0 < right.sum() < len(si) else None),
              "teacher_step_cpu_s": teacher_cost(joint, parts.weak, args.score_thresh, args.samples, args.scale),
              "machine": machine_line(1, "cpu"), "runs": {}}
    for t in [None] + list(args.thresholds):
        settings = MeanTeacherSettings(decay=0.99, score_thresh=args.score_thresh, keep_mil=True, box_jitter=t,
                                       jitter_samples=args.samples, jitter_scale=args.scale)
        t0 = time.thread_time()
        st = self_train(parts.strong, parts.weak, parts.test, model_factory=factory, initial=copy.deepcopy(joint),
                        procedure="mean_teacher", retrain_steps=args.retrain_steps, mean_teacher=settings,
                        device="cpu", progress=False, n_boot=200, trainer_kwargs=dict(batch_strong=1, batch_weak=2))
        cpu = time.thread_time() - t0
        rows = {m.name: m.overall for m in st.methods}
        report["runs"]["off" if t is None else f"{t:g}"] = {
            "teacher": st.teacher, "corloc_initial": rows["initial"], "corloc_mean_teacher": rows["mean_teacher"],
            "cpu_s_per_step": cpu / args.retrain_steps}
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
