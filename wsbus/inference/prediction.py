"""Predicting on new scans: :func:`predict` / :func:`iter_predict` run a detector over files, folders, arrays or
samples (read in DataLoader workers by :mod:`wsbus.inference.inputs`) and give one :class:`Prediction` per image.

The forward is the detector's own eval forward, batched: every image is padded to the detector's fixed canvas
(:mod:`wsbus.models.transform`), so its detections do not depend on ``batch_size`` or on its batch-mates, and equal
those of :func:`wsbus.inference.detect` and of the exported models (:mod:`wsbus.export`).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import torch
from torch import nn

from ..data.formats import CLASSES, DataError
from ..distributed import model_device
from .detection import DETECTION_KEYS
from .inputs import ImageInput, close_loader, group_inputs, image_loader
from .loading import model_settings

__all__ = ["Prediction", "predict", "iter_predict"]


@dataclass
class Prediction:
    """The detections of one image (or why it could not be read).

    Attributes
    ----------
    name : the image's name: for a file its name (``sub/a.png`` below a folder, ``cine.dcm#3`` for a frame), a
        sample's id, ``"image <k>"`` for the k-th array.
    boxes, labels, scores : float32 ``[D, 4]`` (x1, y1, x2, y2, pixel edges of the image as read), int64 ``[D]``
        (1 benign, 2 malignant), float32 ``[D]``, on the CPU, highest score first; ``None`` when ``error``.
    width, height : the image's size (0 when ``error``).
    path, frame : the file and the 0-based DICOM frame the image came from (``None`` for arrays and samples).
    error : why the image could not be read (the message names the file), else ``None``.
    image : the image as read, ``uint8`` ``[C, H, W]``, when :func:`predict` was asked to ``keep_images``.
    """

    name: str
    boxes: Optional[torch.Tensor]
    labels: Optional[torch.Tensor]
    scores: Optional[torch.Tensor]
    width: int = 0
    height: int = 0
    path: Optional[Path] = None
    frame: Optional[int] = None
    error: Optional[str] = None
    image: Optional[torch.Tensor] = None

    @property
    def ok(self) -> bool:
        """Whether the image was read (and so has detections, maybe none)."""
        return self.error is None

    @property
    def file(self) -> Optional[str]:
        """The file the image came from, as a string (``None`` for arrays and samples)."""
        return str(self.path) if self.path is not None else None

    @property
    def key(self) -> Tuple[str, Optional[str], Optional[int]]:
        """``(name, file, frame)``: which image this is, across runs (what a resumed ``wsbus predict`` skips)."""
        return self.name, self.file, self.frame

    def max_score(self, label: int) -> float:
        """The highest score of a detection of class ``label`` (0.0 when there is none)."""
        if not self.ok:
            return float("nan")
        hit = self.scores[self.labels == int(label)]
        return float(hit.max()) if len(hit) else 0.0

    def summary(self) -> Dict[str, Any]:
        """Image-level result: ``max_benign`` and ``max_malignant`` scores, the number of detections and
        ``predicted``, the class of the highest-scoring detection (``normal`` without any)."""
        if not self.ok:
            return {"image": self.name, "file": self.file, "frame": self.frame, "status": "failed",
                    "error": self.error}
        top = CLASSES[int(self.labels[int(self.scores.argmax())])] if len(self.labels) else CLASSES[0]
        return {"image": self.name, "file": self.file, "frame": self.frame, "status": "ok", "width": self.width,
                "height": self.height, "n_detections": int(len(self.scores)), "max_benign": self.max_score(1),
                "max_malignant": self.max_score(2), "predicted": top}


def _check_arguments(batch_size, num_workers, errors, size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
    if size is not None and (isinstance(size, bool) or int(size) < 1):
        raise ValueError(f"size must be a positive integer, got {size!r}")


def _as_uint8(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.uint8 else t.clamp(0, 1).mul(255).round().to(torch.uint8)


def _forward(model: nn.Module, images: List[torch.Tensor], dev: torch.device,
             score_thresh: float) -> List[Dict[str, torch.Tensor]]:
    """The detections of a batch of read images (uint8 scaled to [0, 1]), those scoring at least
    ``score_thresh``, on the CPU."""
    inputs = []
    for t in images:
        t = t.to(dev, non_blocking=True)
        inputs.append(t.to(torch.float32).div_(255.0) if t.dtype == torch.uint8 else t)
    with torch.no_grad():
        out = model(inputs)
    dets = []
    for det in out:
        keep = det["scores"] >= score_thresh
        dets.append({k: det[k][keep].detach().cpu() for k in DETECTION_KEYS})
    return dets


def iter_predict(model: nn.Module, images: Union[ImageInput, Iterable[ImageInput]], *, device=None,
                 batch_size: int = 8, score_thresh: float = 0.05, num_workers: int = 0, progress: bool = False,
                 size: Optional[int] = None, errors: str = "raise", keep_images: bool = False
                 ) -> Iterator[Prediction]:
    """:func:`predict`, one :class:`Prediction` at a time, in input order, as soon as its batch is done.

    The model is in eval mode (and, with ``size`` / a low ``score_thresh``, resized / re-thresholded) while the
    generator runs; its mode and settings come back, and the reading workers are shut down, when the generator is
    exhausted, closed, or stopped by an exception (an interrupt included).
    """
    _check_arguments(batch_size, num_workers, errors, size)
    score_thresh = float(score_thresh)
    items = group_inputs(images)
    if not items:
        return
    dev = model_device(model, device)
    model.to(dev)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(items), unit="image", desc="predict", disable=not progress, file=sys.stderr)
    was_training = model.training
    model.eval()
    batches = None
    try:
        with model_settings(model, size, score_thresh):
            batches = iter(image_loader(items, batch_size, num_workers))
            for packed in batches:
                batch = list(zip(packed.indices, packed.images(), packed.errors))
                good = [(i, t) for i, t, err in batch if err is None]
                dets = dict(zip([i for i, _ in good], _forward(model, [t for _, t in good], dev, score_thresh))) \
                    if good else {}
                for i, tensor, err in batch:
                    name, _, path, frame = items[i]
                    if err is not None:
                        if errors == "raise":
                            raise DataError(err)
                        yield Prediction(name, None, None, None, path=path, frame=frame, error=err)
                        continue
                    d = dets[i]
                    yield Prediction(name, d["boxes"], d["labels"], d["scores"], width=int(tensor.shape[-1]),
                                     height=int(tensor.shape[-2]), path=path, frame=frame,
                                     image=_as_uint8(tensor) if keep_images else None)
                bar.update(len(batch))
    finally:
        close_loader(batches)
        bar.close()
        model.train(was_training)


def predict(model: nn.Module, images: Union[ImageInput, Iterable[ImageInput]], *, device=None, batch_size: int = 8,
            score_thresh: float = 0.05, num_workers: int = 0, progress: bool = False, size: Optional[int] = None,
            errors: str = "raise", keep_images: bool = False) -> List[Prediction]:
    """Run a detector over new scans: image files, folders, arrays or samples; one :class:`Prediction` per image.

    Reading and decoding run in a ``torch.utils.data.DataLoader`` (``num_workers`` processes, so the next batch
    is decoded while the model runs on this one); the forward is the model's own eval forward, batched. An image's
    detections do not depend on ``batch_size`` (every image is padded to the detector's fixed canvas).

    Parameters
    ----------
    model : a wsbus (or torchvision-style) detector, e.g. from :func:`load_detector`; its train/eval mode and
        settings are restored afterwards.
    images : one or several of: a file (PNG, JPEG, TIFF, BMP, DICOM; read by :func:`wsbus.data.images.read_image`
        as 2-D ``uint8`` gray, a multi-frame DICOM giving one image per frame), a folder (its image files, see
        :func:`wsbus.data.images.list_images`), a ``uint8`` numpy array ``H x W`` / ``H x W x 3``, a tensor
        ``[C, H, W]`` (uint8, or float in [0, 1]), a :class:`wsbus.data.Sample` (its boxes are not used).
    device : where to run; default the model's device (the model is moved there).
    batch_size : images per forward pass.
    score_thresh : keep detections scoring at least this (the box head's own threshold is lowered for the call
        when it is higher).
    num_workers : DataLoader worker processes (0: read in this process, no overlap).
    progress : a tqdm progress bar on stderr.
    size : the detector's input (min) size for this call instead of the model's; the max size is scaled by the
        same factor.
    errors : an image that cannot be read raises :class:`wsbus.data.DataError` naming the file (``"raise"``) or
        comes back as a :class:`Prediction` with ``error`` set (``"skip"``).
    keep_images : also return each image as read (``Prediction.image``), e.g. to draw overlays.

    Returns
    -------
    list of :class:`Prediction` in input order (a folder's files sorted by name, a DICOM's frames in order).

    Raises
    ------
    wsbus.data.DataError
        naming the path for a missing file or folder or a folder without images; with ``errors="raise"`` naming
        the file that cannot be read and why.

    Taught in ``book/08_evaluation.md``.
    """
    return list(iter_predict(model, images, device=device, batch_size=batch_size, score_thresh=score_thresh,
                             num_workers=num_workers, progress=progress, size=size, errors=errors,
                             keep_images=keep_images))
