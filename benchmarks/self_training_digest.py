"""Digests (SHA-256 of the state dicts, 16 hex digits) of the models that :func:`wsbus.self_training.self_train` trains
on a tiny phantom, both procedures, and of their ``to_json()``: run it under two versions of the code (``PYTHONPATH``)
to check that a change leaves self-training bit for bit the same. Not a timing; ~10 s on one thread.

Usage::

    git archive a0bff2c wsbus | tar -x -C /tmp/base                     # the code before the change
    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/base python benchmarks/self_training_digest.py > before.json
    OMP_NUM_THREADS=1 python benchmarks/self_training_digest.py > after.json && diff before.json after.json
    OMP_NUM_THREADS=1 python benchmarks/self_training_digest.py '{"box_jitter": 1e9}'   # extra MeanTeacherSettings
"""
from __future__ import annotations

import hashlib
import json
import sys

import torch

from wsbus.data.phantom import make_phantom
from wsbus.models import build_detector
from wsbus.self_training import MeanTeacherSettings, self_train


def digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    extra = json.loads(argv[0]) if argv else {}
    torch.set_num_threads(1)
    data = make_phantom(14, seed=5, size=64, proportions=(0.0, 0.5, 0.5))
    strong, weak, test = data[:3], data[3:11], data[11:]
    kw = dict(model_factory=lambda: build_detector("tiny", min_size=64, max_size=64), steps=3, device="cpu",
              progress=False, n_boot=20, trainer_kwargs=dict(batch_strong=1, batch_weak=2))
    mt = self_train(strong, weak, test, procedure="mean_teacher", retrain_steps=4,
                    mean_teacher=MeanTeacherSettings(decay=0.9, score_thresh=0.0, keep_mil=True, augment=True,
                                                     weight_by_score=True, **extra), **kw)
    paper = self_train(strong, weak, test, procedure="paper", fractions=(0.5, 1.0), rounds=2, **kw)
    out = {"mean_teacher": {k: digest(m) for k, m in mt.models.items()}, "teacher": mt.teacher,
           "paper": {k: digest(m) for k, m in paper.models.items()},
           "paper_json": hashlib.sha256(json.dumps(paper.to_json(), sort_keys=True).encode()).hexdigest()[:16],
           "mean_teacher_json": hashlib.sha256(json.dumps(mt.to_json(), sort_keys=True).encode()).hexdigest()[:16]}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
