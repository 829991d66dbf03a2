"""Running a trained detector: :func:`detect` over samples, :func:`load_detector` from a checkpoint.

Everything here runs the model in eval mode without gradient and restores its train/eval mode afterwards.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Sequence, Union

import torch
from torch import nn

from .checkpoint import CheckpointError, load_checkpoint
from .data.formats import Sample
from .distributed import model_device
from .models import DetectorConfig, WeakSemiFasterRCNN

__all__ = ["detect", "load_detector", "DETECTION_KEYS"]

Device = Union[str, torch.device, None]
#: The keys of one image's detections.
DETECTION_KEYS = ("boxes", "labels", "scores")


def detect(model: nn.Module, samples: Sequence[Sample], *, device: Device = None,
           batch_size: int = 16) -> List[Dict[str, torch.Tensor]]:
    """Run a detector in eval mode over samples: one ``dict(boxes, labels, scores)`` per sample, on the CPU.

    Parameters
    ----------
    model : a torchvision-style detector (e.g. :func:`wsbus.models.build_detector`); its train/eval mode is
        restored afterwards.
    samples : the images (their boxes, if any, are not used).
    device : where to run; default the model's device. The model is moved there.
    batch_size : images per forward pass.

    Returns
    -------
    list of dict with ``boxes`` float [D, 4] (input pixel coordinates), ``labels`` int64 [D], ``scores`` [D].

    Taught in ``book/07_self_training.md``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    samples = list(samples)
    for k, s in enumerate(samples):
        if not isinstance(s, Sample):
            raise TypeError(f"item {k}: expected a wsbus.data.Sample, got {type(s).__name__}")
    dev = model_device(model, device)
    model.to(dev)
    was_training = model.training
    model.eval()
    out: List[Dict[str, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for start in range(0, len(samples), batch_size):
                chunk = samples[start:start + batch_size]
                for s, det in zip(chunk, model([s.to_tensor(torch.float32).to(dev) for s in chunk])):
                    missing = [k for k in DETECTION_KEYS if k not in det]
                    if missing:
                        raise KeyError(f"sample {s.id!r}: the detector's output lacks {missing} (got {sorted(det)})")
                    out.append({k: det[k].detach().cpu() for k in DETECTION_KEYS})
    finally:
        model.train(was_training)
    return out


def load_detector(checkpoint: Union[str, "os.PathLike[str]", Mapping[str, Any]],
                  device: Device = "cpu") -> WeakSemiFasterRCNN:
    """The detector of a wsbus checkpoint, rebuilt from the checkpoint's own model config, in eval mode.

    Parameters
    ----------
    checkpoint : a file written by ``wsbus train`` / :class:`wsbus.engine.Trainer` (read with
        ``torch.load(weights_only=True)``), or such a checkpoint already loaded as a dict.
    device : where the model goes.

    Raises
    ------
    wsbus.checkpoint.CheckpointError
        naming the file when it is not a wsbus checkpoint: unreadable, no ``model`` weights, no model config, a
        config of another detector, or weights that do not fit it.

    Notes
    -----
    The weights come from the checkpoint, so the backbone is built with ``pretrained=False`` (nothing is
    downloaded).
    """
    source = "the checkpoint dict" if isinstance(checkpoint, Mapping) else f"checkpoint {str(checkpoint)!r}"
    state = checkpoint if isinstance(checkpoint, Mapping) else load_checkpoint(checkpoint, require=("model",))
    if "model" not in state:
        raise CheckpointError(f"{source} has no 'model' weights; it is not a wsbus checkpoint")
    config = (state.get("config") or {}).get("model") if isinstance(state.get("config"), Mapping) else None
    if not config:
        raise CheckpointError(f"{source} holds no model config (config['model']); it was not written by wsbus "
                              f"(`wsbus train`, wsbus.engine.Trainer)")
    try:
        detector_config = DetectorConfig.from_dict({**config, "pretrained": False})
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: its model config is not a wsbus detector config: {exc}") from exc
    model = WeakSemiFasterRCNN.from_config(detector_config)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: the weights do not fit the detector its config describes: {exc}") from exc
    return model.to(torch.device(device)).eval()
