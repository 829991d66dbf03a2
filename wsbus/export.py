"""Exporting a trained detector to TorchScript or ONNX, checked against the PyTorch model: :func:`export_detector`.

What is exported is torchvision's own ``FasterRCNN`` rebuilt from the detector's modules
(:meth:`wsbus.models.WeakSemiFasterRCNN.as_torchvision`) with torchvision's plain ``GeneralizedRCNNTransform``
(same sizes and grayscale normalisation), because the wsbus subclasses carry Python the exporters do not take (the
anchor cache, the RGB-to-gray averaging of :class:`wsbus.models.GrayscaleRCNNTransform`). The weak branch only
matters in training, so the detections are the same. The exported models take **one-channel** float images in
[0, 1] (``[1, H, W]``, any size; the model resizes them as the detector does):

* TorchScript (``torch.jit.script``): ``losses, detections = torch.jit.load(path)([image, ...])``, ``detections``
  a list of ``{"boxes", "labels", "scores"}`` (torchvision's scripted detection convention).
* ONNX (``torch.onnx.export``, the TorchScript-based exporter, opset 17 by default): one input ``image``
  ``[1, H, W]`` (height and width dynamic), outputs ``boxes`` ``[D, 4]``, ``labels`` ``[D]``, ``scores`` ``[D]``;
  run it with onnxruntime (the optional extra ``wsbus[export]``).

The check (:func:`check_export`) runs the exported file on the same images as the PyTorch model: the same number
of detections per image, the same labels, boxes within :data:`BOX_TOLERANCE` pixels and scores within
:data:`SCORE_TOLERANCE`, detections matched by label and box (so two detections of equal score may come in either
order). Measured on random-weight models, three phantom scans each: TorchScript 0 px (VGG16, 320 px) and 2.3e-5 px
(tiny, 64 px); ONNX Runtime 6.1e-5 px (VGG16, 320 px) and 1.5e-5 px (tiny, 64 px); scores within 1.2e-7.
"""
from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .checkpoint import atomic_replace
from .data import make_phantom
from .data.images import list_images, read_image
from .inference import input_size, load_detector, model_settings

__all__ = ["EXPORT_FORMATS", "BOX_TOLERANCE", "SCORE_TOLERANCE", "ExportCheck", "torchvision_detector",
           "export_detector", "run_exported", "check_export", "default_check_images"]

PathLike = Union[str, "os.PathLike[str]"]

#: The formats :func:`export_detector` writes.
EXPORT_FORMATS = ("torchscript", "onnx")
#: Largest allowed difference of a box coordinate (pixels) between the exported and the PyTorch model.
BOX_TOLERANCE = {"torchscript": 1e-3, "onnx": 1e-2}
#: Largest allowed difference of a score.
SCORE_TOLERANCE = {"torchscript": 1e-5, "onnx": 1e-4}


@dataclass
class ExportCheck:
    """The exported model against the PyTorch model on the same images.

    Attributes
    ----------
    format, n_images, n_detections : what was compared (detections of the PyTorch model, all images).
    counts_equal : every image has as many detections in both.
    labels_equal : the matched detections have the same labels (and every detection found a match).
    max_box_diff, max_score_diff : the largest absolute differences over the matched detections.
    box_tolerance, score_tolerance : the limits; ``passed`` when all of the above hold within them.
    """

    format: str
    n_images: int
    n_detections: int
    counts_equal: bool
    labels_equal: bool
    max_box_diff: float
    max_score_diff: float
    box_tolerance: float
    score_tolerance: float

    @property
    def passed(self) -> bool:
        return (self.counts_equal and self.labels_equal and self.max_box_diff <= self.box_tolerance
                and self.max_score_diff <= self.score_tolerance)

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (f"check {verdict}: {self.format} vs PyTorch on {self.n_images} image(s), {self.n_detections} "
                f"detection(s); same counts: {self.counts_equal}, same labels: {self.labels_equal}; max |box "
                f"difference| {self.max_box_diff:.3g} px (tolerance {self.box_tolerance:g}), max |score difference| "
                f"{self.max_score_diff:.3g} (tolerance {self.score_tolerance:g})")


def torchvision_detector(model: nn.Module, size: Optional[int] = None) -> nn.Module:
    """torchvision's ``FasterRCNN`` with the detector's modules (deep copies) and torchvision's plain
    ``GeneralizedRCNNTransform`` (same sizes, one-channel normalisation), in eval mode: scriptable and exportable.

    ``size`` sets the input (min) size, the max size scaled by the same factor (as ``wsbus predict --size``).
    """
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    lo, hi = input_size(model)
    if size is not None:
        lo, hi = int(size), max(int(size), int(round(size * hi / lo)))
    tr = model.transform
    tv = model.as_torchvision() if hasattr(model, "as_torchvision") else copy.deepcopy(model)
    tv.transform = GeneralizedRCNNTransform(lo, hi, list(tr.image_mean), list(tr.image_std),
                                            size_divisible=tr.size_divisible, fixed_size=tr.fixed_size)
    return tv.eval()


def default_check_images(model: nn.Module, n: int = 3, size: Optional[int] = None) -> List[torch.Tensor]:
    """``n`` phantom scans (``[1, H, W]`` float in [0, 1]) at the model's input size, the last ones wider than
    tall, so the check covers the resize and padding of non-square images."""
    from .inference import input_size

    side = int(size) if size is not None else input_size(model)[0]
    out = []
    for k in range(n):
        s = make_phantom(1, seed=k, size=(side, side + (side // 4) * k))[0]
        out.append(s.to_tensor(torch.float32))
    return out


def _gray(images: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    out = []
    for k, img in enumerate(images):
        img = torch.as_tensor(img)
        if img.ndim == 2:
            img = img[None]
        if img.dtype == torch.uint8:
            img = img.float().div(255)
        if img.ndim != 3 or img.shape[0] not in (1, 3):
            raise ValueError(f"check image {k}: expected [1, H, W] (or [3, H, W]), got {tuple(img.shape)}")
        out.append((img.mean(0, keepdim=True) if img.shape[0] == 3 else img).float().contiguous())
    return out


def export_detector(model: Union[nn.Module, PathLike, Mapping[str, Any]], out: PathLike, format: str = "torchscript",
                    *, size: Optional[int] = None, check: bool = True, check_images: Optional[Sequence[Any]] = None,
                    opset: int = 17) -> Optional[ExportCheck]:
    """Export a detector to TorchScript or ONNX and check the exported file against the PyTorch model.

    Parameters
    ----------
    model : a detector, or a wsbus checkpoint (file or loaded dict) read with
        :func:`wsbus.inference.load_detector`.
    out : the file to write (replaced atomically; its folder is created).
    format : ``"torchscript"`` or ``"onnx"`` (:data:`EXPORT_FORMATS`).
    size : the exported model's input (min) size instead of the detector's (max size scaled alike).
    check : run :func:`check_export` after writing.
    check_images : the images of the check: ``[C, H, W]`` tensors (float in [0, 1] or uint8, RGB averaged to
        gray), or paths read with :func:`wsbus.data.images.read_image`; default :func:`default_check_images`.
    opset : the ONNX opset.

    Returns
    -------
    :class:`ExportCheck` (``None`` with ``check=False``).

    Raises
    ------
    ValueError for an unknown format; wsbus.checkpoint.CheckpointError for a file that is not a wsbus checkpoint;
    ImportError naming the extra when onnx / onnxruntime are missing; RuntimeError when the exporter fails.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {EXPORT_FORMATS}")
    if not isinstance(model, nn.Module):
        model = load_detector(model, device="cpu")
    model = model.cpu().eval()
    tv = torchvision_detector(model, size)
    out = Path(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notes of torch.jit / the TorchScript-based ONNX exporter
        if format == "torchscript":
            scripted = torch.jit.script(tv)
            atomic_replace(out, lambda tmp: torch.jit.save(scripted, str(tmp)))
        else:
            _require("onnx", "onnx")
            example = _gray(check_images[:1]) if check_images and isinstance(check_images[0], torch.Tensor) else \
                default_check_images(model, 1, size)

            def write(tmp: Path) -> None:
                torch.onnx.export(tv, ([example[0]],), str(tmp), opset_version=int(opset), dynamo=False,
                                  input_names=["image"], output_names=["boxes", "labels", "scores"],
                                  dynamic_axes={"image": [1, 2], "boxes": [0], "labels": [0], "scores": [0]})

            try:
                atomic_replace(out, write)
            except Exception as exc:
                raise RuntimeError(f"torch.onnx.export failed for {out}: {type(exc).__name__}: {exc}") from exc
    if not check:
        return None
    images = _check_images(model, check_images, size)
    return check_export(model, out, format, images, size=size)


def _require(module: str, package: str):
    try:
        return __import__(module)
    except ImportError as exc:
        raise ImportError(f"the ONNX export needs {package}: pip install 'wsbus[export]' (or pip install onnx "
                          f"onnxruntime)") from exc


def _check_images(model: nn.Module, images: Optional[Sequence[Any]], size: Optional[int]) -> List[torch.Tensor]:
    if not images:
        return default_check_images(model, 3, size)
    tensors: List[torch.Tensor] = []
    for x in images:
        if isinstance(x, (str, os.PathLike)):
            for f in list_images(x):
                tensors.append(torch.from_numpy(np.array(read_image(f.path, f.frame)))[None].float().div(255))
        else:
            tensors.append(x)
    return _gray(tensors)


def run_exported(path: PathLike, format: str, images: Sequence[torch.Tensor]) -> List[Dict[str, torch.Tensor]]:
    """Detections of an exported file on ``[1, H, W]`` float images: ``torch.jit.load`` (TorchScript) or an
    onnxruntime CPU session (ONNX), one image per call, one ``dict(boxes, labels, scores)`` per image."""
    images = _gray(images)
    if format == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation note; "RCNN always returns a tuple"
            scripted = torch.jit.load(str(path), map_location="cpu")
            with torch.no_grad():  # one image per call, as the reference: padding a batch changes the borders
                dets = [scripted([img])[1][0] for img in images]
        return [{k: d[k] for k in ("boxes", "labels", "scores")} for d in dets]
    if format == "onnx":
        ort = _require("onnxruntime", "onnxruntime")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = []
        for img in images:
            boxes, labels, scores = session.run(None, {"image": img.numpy()})
            out.append({"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels).long(),
                        "scores": torch.from_numpy(scores)})
        return out
    raise ValueError(f"unknown export format {format!r}; choose one of {EXPORT_FORMATS}")


def _match(ref: Dict[str, torch.Tensor], got: Dict[str, torch.Tensor]):
    """Greedy matching of detections by label and box: ``(all matched, max box diff, max score diff)``."""
    used = np.zeros(len(ref["boxes"]), dtype=bool)
    rb, rl, rs = ref["boxes"].double().numpy(), ref["labels"].numpy(), ref["scores"].double().numpy()
    box_diff = score_diff = 0.0
    matched = True
    for b, lab, sc in zip(got["boxes"].double().numpy(), got["labels"].numpy(), got["scores"].double().numpy()):
        cand = np.flatnonzero(~used & (rl == lab))
        if len(cand) == 0:
            matched = False
            continue
        d = np.abs(rb[cand] - b).max(axis=1) + np.abs(rs[cand] - sc)
        j = cand[int(np.argmin(d))]
        used[j] = True
        box_diff = max(box_diff, float(np.abs(rb[j] - b).max()))
        score_diff = max(score_diff, float(abs(rs[j] - sc)))
    return matched and bool(used.all()), box_diff, score_diff


def check_export(model: nn.Module, path: PathLike, format: str, images: Sequence[torch.Tensor], *,
                 size: Optional[int] = None, box_tolerance: Optional[float] = None,
                 score_tolerance: Optional[float] = None) -> ExportCheck:
    """Run the exported file and the PyTorch ``model`` (eval mode, ``size`` as exported) on the same images and
    compare the detections (see the module notes). Tolerances default to :data:`BOX_TOLERANCE` /
    :data:`SCORE_TOLERANCE` of the format."""
    images = _gray(images)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), model_settings(model, size, float(model.roi_heads.score_thresh)):
            ref = [model([img])[0] for img in images]
    finally:
        model.train(was_training)
    got = run_exported(path, format, images)
    counts = all(len(r["boxes"]) == len(g["boxes"]) for r, g in zip(ref, got)) and len(ref) == len(got)
    labels, box_diff, score_diff = True, 0.0, 0.0
    for r, g in zip(ref, got):
        ok, bd, sd = _match(r, g)
        labels &= ok
        box_diff, score_diff = max(box_diff, bd), max(score_diff, sd)
    return ExportCheck(format, len(images), int(sum(len(r["boxes"]) for r in ref)), bool(counts), bool(labels),
                       box_diff, score_diff,
                       float(box_tolerance if box_tolerance is not None else BOX_TOLERANCE[format]),
                       float(score_tolerance if score_tolerance is not None else SCORE_TOLERANCE[format]))
