"""Exporting a trained detector to TorchScript or ONNX, checked against the PyTorch model: :func:`export_detector`.

What is exported is torchvision's own ``FasterRCNN`` rebuilt from the detector's modules
(:meth:`wsbus.models.WeakSemiFasterRCNN.as_torchvision`), because the wsbus subclasses carry Python the exporters do
not take (the anchor cache, the weak branch, the RGB-to-gray averaging). Two pieces make it compute what the
detector computes, image by image (:func:`torchvision_detector`):

* the input transform is a :class:`wsbus.models.transform.CanvasRCNNTransform` (every image padded to the same
  fixed square canvas, as in training, evaluation and ``wsbus predict``), whose resize computes the output size in
  double precision as eager PyTorch does (torchvision's scripted and traced resize compute the scale in float32 and
  can lose a pixel: a 100 x 50 image at 64 px became 63 x 31 instead of 64 x 32);
* the RPN drops the anchors centred on the canvas's padding, as :class:`wsbus.models.rpn.WeakSemiRPN` does.

The weak branch only matters in training. The exported models take **one-channel** float images in [0, 1]
(``[1, H, W]``, any size; the model resizes them as the detector does):

* TorchScript (``torch.jit.script``): ``losses, detections = torch.jit.load(path)([image, ...])`` (after
  ``import torchvision``, which registers the detection ops), ``detections`` a list of ``{"boxes", "labels",
  "scores"}`` (torchvision's scripted detection convention).
* ONNX (``torch.onnx.export``, the TorchScript-based exporter, opset 17 by default): one input ``image``
  ``[1, H, W]`` (height and width dynamic), outputs ``boxes`` ``[D, 4]``, ``labels`` ``[D]``, ``scores`` ``[D]``;
  run it with onnxruntime (the optional extra ``wsbus[export]``).

The check (:func:`check_export`) runs an exported file and the PyTorch model on the same images, of several sizes
and aspect ratios: the same number of detections per image, the same labels, boxes within :data:`BOX_TOLERANCE`
pixels and scores within :data:`SCORE_TOLERANCE`, detections matched by label and box (so two detections of equal
score may come in either order). :func:`export_detector` compares at :data:`CHECK_SCORE_THRESH` without a cap on
the number of detections (so that even a random-weight model has hundreds to compare) and again the file as
exported, at the model's own threshold; a check that compared no detection fails. The file is written only when
the check passed.
"""
from __future__ import annotations

import copy
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers

from .checkpoint import atomic_replace
from .data import make_phantom
from .data.images import list_images, read_image
from .inference import input_size, load_detector, model_settings
from .data.formats import make_output_folder
from .models.rpn import anchors_inside
from .models.transform import CanvasRCNNTransform

__all__ = ["EXPORT_FORMATS", "BOX_TOLERANCE", "SCORE_TOLERANCE", "CHECK_SCORE_THRESH", "ExportCheck",
           "ExportTransform", "CanvasRPN", "torchvision_detector", "export_detector", "run_exported", "check_export",
           "default_check_images"]

PathLike = Union[str, "os.PathLike[str]"]

#: The formats :func:`export_detector` writes.
EXPORT_FORMATS = ("torchscript", "onnx")
#: Largest allowed difference of a box coordinate (pixels) between the exported and the PyTorch model.
BOX_TOLERANCE = {"torchscript": 1e-3, "onnx": 1e-2}
#: Largest allowed difference of a score.
SCORE_TOLERANCE = {"torchscript": 1e-5, "onnx": 1e-4}
#: The score threshold of :func:`export_detector`'s check (detections are compared down to it, uncapped).
CHECK_SCORE_THRESH = 0.001
_UNCAPPED = 100_000
_SUFFIX = {"torchscript": ".pt", "onnx": ".onnx"}


@torch.jit.unused
def _traced_size(v):
    # type: (Tensor) -> List[int]
    """ONNX tracing passes the size tensors through (so that they stay dynamic); TorchScript never calls this.
    (Typed by a comment: TorchScript cannot read this module's postponed annotations on an unused function.)"""
    return [v[0], v[1]]


class ExportTransform(CanvasRCNNTransform):
    """:class:`~wsbus.models.transform.CanvasRCNNTransform` whose resize gives the output size eager PyTorch gives,
    also when scripted or traced (evaluation only: targets are not resized)."""

    def resize(self, image: Tensor, target: Optional[Dict[str, Tensor]] = None
               ) -> Tuple[Tensor, Optional[Dict[str, Tensor]]]:
        """Scale so that the short side becomes ``min_size`` unless the long side would exceed ``max_size``; the
        output size is ``int(side * scale)`` with the scale in double precision, as eager torchvision computes it."""
        if torchvision._is_tracing():
            hw = torch._shape_as_tensor(image)[-2:].to(torch.float64)
            # tensor / tensor: a scalar divided by a tensor is exported as a reciprocal times the scalar, which
            # rounds differently (64 * (1 / 83) * 83 < 64)
            limits = torch.tensor([float(self.min_size[-1]), float(self.max_size)], dtype=torch.float64)
            scale = (limits / torch.stack([hw.min(), hw.max()])).min()
            out = (hw * scale).to(torch.int64)  # truncation: int() of a positive number, as eager PyTorch
            size = _traced_size(out)
        else:
            h, w = int(image.shape[-2]), int(image.shape[-1])
            scale = min(float(self.min_size[-1]) / float(min(h, w)), float(self.max_size) / float(max(h, w)))
            size = [int(float(h) * scale), int(float(w) * scale)]
        image = torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        return image, target


class CanvasRPN(RegionProposalNetwork):
    """torchvision's ``RegionProposalNetwork`` (evaluation) whose anchors centred on the canvas's padding propose
    nothing, as in :class:`wsbus.models.rpn.WeakSemiRPN`."""

    def forward(self, images: ImageList, features: Dict[str, Tensor],
                targets: Optional[List[Dict[str, Tensor]]] = None) -> Tuple[List[Tensor], Dict[str, Tensor]]:
        """The proposals of every image (no losses: the exported model only predicts)."""
        feature_list = list(features.values())
        objectness, pred_bbox_deltas = self.head(feature_list)
        anchors = self.anchor_generator(images, feature_list)
        num_images = len(anchors)
        shapes = [o[0].shape for o in objectness]
        num_anchors_per_level = [s[0] * s[1] * s[2] for s in shapes]
        objectness, pred_bbox_deltas = concat_box_prediction_layers(objectness, pred_bbox_deltas)
        proposals = self.box_coder.decode(pred_bbox_deltas.detach(), anchors).view(num_images, -1, 4)
        inside = anchors_inside(anchors, images.image_sizes)
        scores = objectness.detach().masked_fill(~inside.reshape(-1, 1), float("-inf"))
        proposals = proposals.masked_fill(~inside.unsqueeze(-1), 0.0)
        boxes, _ = self.filter_proposals(proposals, scores, images.image_sizes, num_anchors_per_level)
        losses: Dict[str, Tensor] = {}
        return boxes, losses


@dataclass
class ExportCheck:
    """The exported model against the PyTorch model on the same images.

    Attributes
    ----------
    format, n_images : what was compared. score_thresh : the score threshold of both models in the comparison.
    n_detections : the PyTorch model's detections on all images at ``score_thresh``.
    counts_equal : every image has as many detections in both.
    labels_equal : the matched detections have the same labels (and every detection found a match).
    max_box_diff, max_score_diff : the largest absolute differences over the matched detections.
    box_tolerance, score_tolerance : the limits.
    as_exported : the same comparison of the file as written, at the model's own threshold (may find nothing).
    ``passed`` when all of the above hold within the limits, here and in ``as_exported``, and ``n_detections``
    is not zero: a check that compared nothing fails.
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
    score_thresh: float = float("nan")
    as_exported: Optional["ExportCheck"] = None

    @property
    def agrees(self) -> bool:
        """Same counts and labels, boxes and scores within the tolerances (whatever the number compared)."""
        return (self.counts_equal and self.labels_equal and self.max_box_diff <= self.box_tolerance
                and self.max_score_diff <= self.score_tolerance)

    @property
    def passed(self) -> bool:
        return self.agrees and self.n_detections > 0 and (self.as_exported is None or self.as_exported.agrees)

    def _details(self) -> str:
        return (f"same counts: {self.counts_equal}, same labels: {self.labels_equal}; max |box difference| "
                f"{self.max_box_diff:.3g} px (tolerance {self.box_tolerance:g}), max |score difference| "
                f"{self.max_score_diff:.3g} (tolerance {self.score_tolerance:g})")

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        text = (f"check {verdict}: {self.format} vs PyTorch on {self.n_images} image(s), {self.n_detections} "
                f"detection(s) at score >= {self.score_thresh:g}; {self._details()}")
        if self.n_detections == 0:
            text += "; compared nothing: the PyTorch model found no detection on the check images"
        if self.as_exported is not None:
            a = self.as_exported
            text += (f"; the file as exported (score >= {a.score_thresh:g}): {a.n_detections} detection(s), "
                     f"{'the same' if a.agrees else 'DIFFERENT: ' + a._details()}")
        return text


def torchvision_detector(model: nn.Module, size: Optional[int] = None) -> nn.Module:
    """torchvision's ``FasterRCNN`` with the detector's modules (deep copies), an :class:`ExportTransform` (the
    fixed canvas, same sizes and one-channel normalisation) and a :class:`CanvasRPN`, in eval mode: scriptable and
    exportable, and image by image the same detections as the detector.

    ``size`` sets the input (min) size, the max size (and the canvas) scaled by the same factor (as
    ``wsbus predict --size``).
    """
    lo, hi = input_size(model)
    if size is not None:
        lo, hi = int(size), max(int(size), int(round(size * hi / lo)))
    tr = model.transform
    tv = model.as_torchvision() if hasattr(model, "as_torchvision") else copy.deepcopy(model)
    tv.transform = ExportTransform(lo, hi, list(tr.image_mean), list(tr.image_std),
                                   size_divisible=tr.size_divisible, fixed_size=tr.fixed_size)
    tv.rpn.__class__ = CanvasRPN
    return tv.eval()


def default_check_images(model: nn.Module, n: int = 3, size: Optional[int] = None) -> List[torch.Tensor]:
    """``n`` phantom scans (``[1, H, W]`` float in [0, 1]) of different sizes and aspect ratios around the model's
    input size: square, wide and smaller, tall and larger, ..., so the check covers the resize and the padding of
    the canvas on both sides."""
    side = int(size) if size is not None else input_size(model)[0]
    shapes = [(1.0, 1.0), (0.75, 1.3), (1.5, 0.8), (0.6, 0.6), (1.2, 2.0)]
    out = []
    for k in range(n):
        fh, fw = shapes[k % len(shapes)]
        h, w = max(16, int(round(side * fh))), max(16, int(round(side * fw)))
        out.append(make_phantom(1, seed=k, size=(h, w))[0].to_tensor(torch.float32))
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


def _require(module: str, package: str):
    try:
        return __import__(module)
    except ImportError as exc:
        raise ImportError(f"the ONNX export needs {package}: pip install 'wsbus[export]' (or pip install onnx "
                          f"onnxruntime)") from exc


def _write(tv: nn.Module, path: Path, format: str, example: torch.Tensor, opset: int) -> None:
    """Write ``tv`` as TorchScript or ONNX to ``path``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notes of torch.jit / the TorchScript-based ONNX exporter
        if format == "torchscript":
            torch.jit.save(torch.jit.script(tv), str(path))
            return
        try:
            torch.onnx.export(tv, ([example],), str(path), opset_version=int(opset), dynamo=False,
                              input_names=["image"], output_names=["boxes", "labels", "scores"],
                              dynamic_axes={"image": [1, 2], "boxes": [0], "labels": [0], "scores": [0]})
        except Exception as exc:
            raise RuntimeError(f"torch.onnx.export failed for {path}: {type(exc).__name__}: {exc}") from exc


class _CheckFailed(Exception):
    def __init__(self, check: "ExportCheck"):
        super().__init__(str(check))
        self.check = check


def _check_written(model: nn.Module, tv: nn.Module, path: Path, format: str, images: List[torch.Tensor],
                   size: Optional[int], opset: int) -> ExportCheck:
    """The check of :func:`export_detector`: at :data:`CHECK_SCORE_THRESH` uncapped (TorchScript: the file itself
    with its threshold and cap changed; ONNX: a twin exported with them, the threshold being a constant of the
    graph), then the file as written at the model's own threshold."""
    low = min(float(model.roi_heads.score_thresh), CHECK_SCORE_THRESH)
    own = check_export(model, path, format, images, size=size)
    if format == "torchscript":
        check = check_export(model, path, format, images, size=size, score_thresh=low, detections_per_img=_UNCAPPED)
    else:
        twin = copy.deepcopy(tv)
        twin.roi_heads.score_thresh, twin.roi_heads.detections_per_img = low, _UNCAPPED
        fd, name = tempfile.mkstemp(suffix=".onnx")
        os.close(fd)
        try:
            _write(twin, Path(name), format, images[0], opset)
            check = check_export(model, name, format, images, size=size, score_thresh=low,
                                 detections_per_img=_UNCAPPED)
        finally:
            os.unlink(name)
    check.as_exported = own
    return check


def export_detector(model: Union[nn.Module, PathLike, Mapping[str, Any]], out: PathLike, format: str = "torchscript",
                    *, size: Optional[int] = None, check: bool = True, check_images: Optional[Sequence[Any]] = None,
                    opset: int = 17) -> Optional[ExportCheck]:
    """Export a detector to TorchScript or ONNX, check the exported model against the PyTorch model, and write it
    to ``out`` only when the check passed.

    Parameters
    ----------
    model : a detector, or a wsbus checkpoint (file or loaded dict) read with
        :func:`wsbus.inference.load_detector`.
    out : the file to write (replaced atomically; its folder is created). The model is exported to a temporary
        file beside it, checked, and renamed onto ``out`` only when the check passed (or ``check=False``).
    format : ``"torchscript"`` or ``"onnx"`` (:data:`EXPORT_FORMATS`).
    size : the exported model's input (min) size instead of the detector's (max size scaled alike).
    check : compare the exported model with the PyTorch model (see the module notes) before writing ``out``.
    check_images : the images of the check: ``[C, H, W]`` tensors (float in [0, 1] or uint8, RGB averaged to
        gray), or image files and folders read with :func:`wsbus.data.images.read_image` (read before anything is
        exported: a bad file stops the export); default :func:`default_check_images`.
    opset : the ONNX opset.

    Returns
    -------
    :class:`ExportCheck` (``None`` with ``check=False``); when it did not pass, ``out`` was not written.

    Raises
    ------
    ValueError for an unknown format or an ``out`` that is a folder; wsbus.checkpoint.CheckpointError for a file
    that is not a wsbus checkpoint; wsbus.data.DataError for a check image that cannot be read or an ``out`` whose
    folder cannot be created; ImportError naming the extra when onnx / onnxruntime are missing; RuntimeError when
    the exporter fails.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {EXPORT_FORMATS}")
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"{out}: is a folder; give the file to write (e.g. {out / f'model{_SUFFIX[format]}'})")
    if format == "onnx":
        _require("onnx", "onnx")
        if check:
            _require("onnxruntime", "onnxruntime")
    if not isinstance(model, nn.Module):
        model = load_detector(model, device="cpu")
    model = model.cpu().eval()
    images = _check_images(model, check_images, size)  # a bad check image stops here, before anything is written
    make_output_folder(out.parent)
    tv = torchvision_detector(model, size)
    result: List[ExportCheck] = []

    def write_and_check(tmp: Path) -> None:
        _write(tv, tmp, format, images[0], opset)
        if check:
            result.append(_check_written(model, tv, tmp, format, images, size, opset))
            if not result[0].passed:
                raise _CheckFailed(result[0])

    try:
        atomic_replace(out, write_and_check)
    except _CheckFailed as failed:
        return failed.check
    return result[0] if result else None


def run_exported(path: PathLike, format: str, images: Sequence[torch.Tensor], *, score_thresh: Optional[float] = None,
                 detections_per_img: Optional[int] = None) -> List[Dict[str, torch.Tensor]]:
    """Detections of an exported file on ``[1, H, W]`` float images: ``torch.jit.load`` (TorchScript) or an
    onnxruntime CPU session (ONNX), one image per call, one ``dict(boxes, labels, scores)`` per image.

    ``score_thresh`` / ``detections_per_img`` change the box head's threshold and cap of a TorchScript model for
    the call (an ONNX graph holds them as constants: export it with the values wanted instead).
    """
    images = _gray(images)
    if format == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation note; "RCNN always returns a tuple"
            scripted = torch.jit.load(str(path), map_location="cpu")
            if score_thresh is not None:
                scripted.roi_heads.score_thresh = float(score_thresh)
            if detections_per_img is not None:
                scripted.roi_heads.detections_per_img = int(detections_per_img)
            with torch.no_grad():
                dets = [scripted([img])[1][0] for img in images]
        return [{k: d[k] for k in ("boxes", "labels", "scores")} for d in dets]
    if format == "onnx":
        if score_thresh is not None or detections_per_img is not None:
            raise ValueError("an ONNX model's score threshold and detection cap are constants of its graph; export "
                             "it with the values wanted instead")
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
                 size: Optional[int] = None, score_thresh: Optional[float] = None,
                 detections_per_img: Optional[int] = None, box_tolerance: Optional[float] = None,
                 score_tolerance: Optional[float] = None) -> ExportCheck:
    """Run the exported file and the PyTorch ``model`` (eval mode, ``size`` as exported) on the same images and
    compare the detections (see the module notes).

    ``score_thresh`` (at most the model's own) and ``detections_per_img`` set both models' box threshold and cap
    for the comparison: on a TorchScript file for the call (:func:`run_exported`); an ONNX file must have been
    exported with them. Default: the file's and the model's own. Tolerances default to
    :data:`BOX_TOLERANCE` / :data:`SCORE_TOLERANCE` of the format.
    """
    images = _gray(images)
    thresh = float(model.roi_heads.score_thresh) if score_thresh is None else float(score_thresh)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), model_settings(model, size, thresh, detections_per_img):
            ref = [model([img])[0] for img in images]
    finally:
        model.train(was_training)
    if format == "onnx" and (score_thresh is not None or detections_per_img is not None):
        got = run_exported(path, format, images)  # an ONNX twin exported with these values
    else:
        got = run_exported(path, format, images, score_thresh=score_thresh, detections_per_img=detections_per_img)
    counts = all(len(r["boxes"]) == len(g["boxes"]) for r, g in zip(ref, got)) and len(ref) == len(got)
    labels, box_diff, score_diff = True, 0.0, 0.0
    for r, g in zip(ref, got):
        ok, bd, sd = _match(r, g)
        labels &= ok
        box_diff, score_diff = max(box_diff, bd), max(score_diff, sd)
    return ExportCheck(format, len(images), int(sum(len(r["boxes"]) for r in ref)), bool(counts), bool(labels),
                       box_diff, score_diff,
                       float(box_tolerance if box_tolerance is not None else BOX_TOLERANCE[format]),
                       float(score_tolerance if score_tolerance is not None else SCORE_TOLERANCE[format]),
                       score_thresh=thresh)
