"""Loading a trained detector: :func:`load_detector` rebuilds it from a wsbus checkpoint; :func:`input_size` and
:func:`model_settings` read and temporarily change how it sizes its input and thresholds its boxes;
:func:`file_sha256` names a checkpoint by its content (what ``wsbus predict`` records to resume a run).
"""
from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from ..checkpoint import CheckpointError, load_checkpoint
from ..models import DetectorConfig, WeakSemiFasterRCNN

__all__ = ["load_detector", "input_size", "model_settings", "file_sha256"]

Device = Union[str, torch.device, None]


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

    Taught in ``book/08_evaluation.md``.
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


def input_size(model: nn.Module) -> Tuple[int, int]:
    """``(min_size, max_size)`` of a torchvision-style detector's input transform."""
    tr = model.transform
    return int(tr.min_size[-1]), int(tr.max_size)


@contextmanager
def model_settings(model: nn.Module, size: Optional[int], score_thresh: float,
                   detections_per_img: Optional[int] = None):
    """Temporarily resize the input (``size``; the max size, and with it the canvas, scaled by the same factor),
    lower the box head's score threshold to ``score_thresh`` when it is below the model's own and, when given, set
    the box head's ``detections_per_img``."""
    tr, heads = model.transform, model.roi_heads
    saved = (tr.min_size, tr.max_size, heads.score_thresh, heads.detections_per_img)
    try:
        if size is not None:
            lo, hi = input_size(model)
            tr.min_size, tr.max_size = (int(size),), max(int(size), int(round(size * hi / lo)))
        heads.score_thresh = min(float(heads.score_thresh), float(score_thresh))
        if detections_per_img is not None:
            heads.detections_per_img = int(detections_per_img)
        yield
    finally:
        tr.min_size, tr.max_size, heads.score_thresh, heads.detections_per_img = saved


def file_sha256(path: Union[str, "os.PathLike[str]"]) -> str:
    """The SHA-256 of a file's bytes (hex): what identifies a checkpoint when a prediction run is resumed."""
    digest = hashlib.sha256()
    with open(Path(path), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
