"""Running a trained detector: :func:`detect` over samples, :func:`load_detector` from a checkpoint, and
:func:`predict` / :func:`iter_predict` over new scans (files, folders, arrays, samples) with the results written by
:class:`PredictionWriter` (what ``wsbus predict`` does).

Everything here runs the model in eval mode without gradient and restores its train/eval mode afterwards.
"""
from __future__ import annotations

import csv
import io
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .checkpoint import CheckpointError, atomic_write, atomic_write_json, atomic_write_text, load_checkpoint
from .data.formats import CLASSES, DataError, Sample
from .data.images import ImageFile, list_grouped, read_image
from .distributed import model_device
from .models import DetectorConfig, WeakSemiFasterRCNN
from .viz.samples import CLASS_COLORS

__all__ = ["detect", "load_detector", "DETECTION_KEYS", "predict", "iter_predict", "Prediction",
           "PredictionWriter", "draw_detections", "input_size", "model_settings"]

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


# ---------------------------------------------------------------------------------------------------------
# predict: new scans through a DataLoader
# ---------------------------------------------------------------------------------------------------------

#: What :func:`predict` takes as one image.
ImageInput = Union[str, "os.PathLike[str]", np.ndarray, torch.Tensor, Sample, ImageFile]


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
            return {"image": self.name, "file": _file_of(self), "frame": self.frame, "status": "failed",
                    "error": self.error}
        top = CLASSES[int(self.labels[int(self.scores.argmax())])] if len(self.labels) else CLASSES[0]
        return {"image": self.name, "file": _file_of(self), "frame": self.frame, "status": "ok", "width": self.width,
                "height": self.height, "n_detections": int(len(self.scores)), "max_benign": self.max_score(1),
                "max_malignant": self.max_score(2), "predicted": top}


def _file_of(p: Prediction) -> Optional[str]:
    return str(p.path) if p.path is not None else None


def _group_inputs(images: Union[ImageInput, Iterable[ImageInput]]) -> List[Tuple[str, Any, Optional[Path],
                                                                                  Optional[int]]]:
    """``(name, source, path, frame)`` per image, in input order; paths and folders expanded by
    :func:`wsbus.data.images.list_images` (all together, so that names are unique across them)."""
    if isinstance(images, (str, os.PathLike, np.ndarray, torch.Tensor, Sample, ImageFile)):
        images = [images]
    images = list(images)
    paths = [x for x in images if isinstance(x, (str, os.PathLike))]
    by_input = list_grouped(paths) if paths else []
    out, k_path = [], 0
    for k, x in enumerate(images):
        if isinstance(x, (str, os.PathLike)):
            out.extend((f.name, f, f.path, f.frame) for f in by_input[k_path])
            k_path += 1
        elif isinstance(x, ImageFile):
            out.append((x.name, x, x.path, x.frame))
        elif isinstance(x, Sample):
            out.append((x.id, x, None, None))
        elif isinstance(x, (np.ndarray, torch.Tensor)):
            out.append((f"image {k}", x, None, None))
        else:
            raise TypeError(f"image {k}: expected a path, a numpy array, a tensor or a wsbus.data.Sample, got "
                            f"{type(x).__name__}")
    return out


def _to_chw(x: Any, where: str) -> torch.Tensor:
    """An image as a ``[C, H, W]`` tensor (C = 1 or 3): uint8 kept, floats in [0, 1] as float32."""
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8:
            raise DataError(f"{where}: a numpy image must be uint8 (H x W or H x W x 3), got {x.dtype}")
        if x.ndim == 3 and x.shape[2] == 1:
            x = x[..., 0]
        if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[2] != 3) or min(x.shape[:2]) < 1:
            raise DataError(f"{where}: a numpy image must be H x W or H x W x 3, got shape {x.shape}")
        t = torch.from_numpy(np.ascontiguousarray(x) if x.flags.writeable else np.array(x))
        return t[None] if t.ndim == 2 else t.permute(2, 0, 1).contiguous()
    t = x
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[0] not in (1, 3) or min(t.shape[1:]) < 1:
        raise DataError(f"{where}: a tensor image must be [C, H, W] with C = 1 or 3 (or [H, W]), got shape "
                        f"{tuple(x.shape)}")
    if t.dtype == torch.uint8:
        return t.contiguous()
    if not t.is_floating_point():
        raise DataError(f"{where}: a tensor image must be uint8 or float in [0, 1], got {t.dtype}")
    return t.detach().to(torch.float32).cpu().contiguous()


class _ImageDataset(torch.utils.data.Dataset):
    """Reads one image per item, in a DataLoader worker: ``(index, [C, H, W] tensor or None, error or None)``."""

    def __init__(self, items: Sequence[Tuple[str, Any, Optional[Path], Optional[int]]]):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        name, src, path, frame = self.items[i]
        where = f"{path}#{frame}" if frame is not None else (str(path) if path is not None else name)
        try:
            if isinstance(src, ImageFile):
                image = _to_chw(read_image(src.path, src.frame), where)
            elif isinstance(src, Sample):
                image = src.to_tensor()
            else:
                image = _to_chw(src, where)
            return i, image, None
        except DataError as exc:
            return i, None, str(exc)
        except Exception as exc:  # anything a decoder may raise: report the file, go on with the others
            return i, None, f"{where}: cannot read image ({type(exc).__name__}: {exc})"


class _Batch:
    """One DataLoader batch, packed in the worker: the uint8 images of the batch in ONE flat numpy array, which
    crosses from the worker pickled through the pipe (cheaper for the main process than one shared-memory tensor
    per image, each received through its own socket); float images (tensor inputs) as they are."""

    def __init__(self, items):
        self.indices = [i for i, _, _ in items]
        self.errors = [err for _, _, err in items]
        self.shapes = [tuple(t.shape) if t is not None else None for _, t, _ in items]
        packed = [t.reshape(-1) for _, t, _ in items if t is not None and t.dtype == torch.uint8]
        self.flat = torch.cat(packed).numpy() if packed else None
        self.other = {k: t for k, (_, t, _) in enumerate(items) if t is not None and t.dtype != torch.uint8}

    def images(self) -> List[Optional[torch.Tensor]]:
        """The images in batch order (None where reading failed), views into the packed array."""
        flat = torch.from_numpy(self.flat) if self.flat is not None else None
        out, offset = [], 0
        for k, shape in enumerate(self.shapes):
            if shape is None:
                out.append(None)
            elif k in self.other:
                out.append(self.other[k])
            else:
                n = int(np.prod(shape))
                out.append(flat[offset:offset + n].view(shape))
                offset += n
        return out


def _collate_items(items) -> _Batch:
    return _Batch(items)


def input_size(model: nn.Module) -> Tuple[int, int]:
    """``(min_size, max_size)`` of a torchvision-style detector's input transform."""
    tr = model.transform
    return int(tr.min_size[-1]), int(tr.max_size)


@contextmanager
def model_settings(model: nn.Module, size: Optional[int], score_thresh: float):
    """Temporarily resize the input (``size``; the max size scaled by the same factor) and lower the box head's
    score threshold to ``score_thresh`` when it is below the model's own."""
    tr, heads = model.transform, model.roi_heads
    saved = (tr.min_size, tr.max_size, heads.score_thresh)
    try:
        if size is not None:
            lo, hi = input_size(model)
            tr.min_size, tr.max_size = (int(size),), max(int(size), int(round(size * hi / lo)))
        heads.score_thresh = min(float(heads.score_thresh), float(score_thresh))
        yield
    finally:
        tr.min_size, tr.max_size, heads.score_thresh = saved


def iter_predict(model: nn.Module, images: Union[ImageInput, Iterable[ImageInput]], *, device=None,
                 batch_size: int = 8, score_thresh: float = 0.05, num_workers: int = 0, progress: bool = False,
                 size: Optional[int] = None, errors: str = "raise", keep_images: bool = False
                 ) -> Iterator[Prediction]:
    """:func:`predict`, one :class:`Prediction` at a time, in input order, as soon as its batch is done.

    The model is in eval mode (and, with ``size`` / a low ``score_thresh``, resized / re-thresholded) while the
    generator runs; its mode and settings come back when the generator is exhausted or closed.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
    if size is not None and (isinstance(size, bool) or int(size) < 1):
        raise ValueError(f"size must be a positive integer, got {size!r}")
    score_thresh = float(score_thresh)
    items = _group_inputs(images)
    if not items:
        return
    dev = model_device(model, device)
    model.to(dev)
    loader = torch.utils.data.DataLoader(
        _ImageDataset(items), batch_size=batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=_collate_items,
        prefetch_factor=4 if num_workers else None)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(items), unit="image", desc="predict", disable=not progress, file=sys.stderr)
    was_training = model.training
    model.eval()
    try:
        with model_settings(model, size, score_thresh):
            for packed in loader:
                batch = list(zip(packed.indices, packed.images(), packed.errors))
                good = [(i, t) for i, t, err in batch if err is None]
                dets: Dict[int, Dict[str, torch.Tensor]] = {}
                if good:
                    inputs = []
                    for _, t in good:
                        t = t.to(dev, non_blocking=True)
                        inputs.append(t.to(torch.float32).div_(255.0) if t.dtype == torch.uint8 else t)
                    with torch.no_grad():
                        out = model(inputs)
                    for (i, _), det in zip(good, out):
                        keep = det["scores"] >= score_thresh
                        dets[i] = {k: det[k][keep].detach().cpu() for k in DETECTION_KEYS}
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
        bar.close()
        model.train(was_training)


def _as_uint8(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.uint8 else t.clamp(0, 1).mul(255).round().to(torch.uint8)


def predict(model: nn.Module, images: Union[ImageInput, Iterable[ImageInput]], *, device=None, batch_size: int = 8,
            score_thresh: float = 0.05, num_workers: int = 0, progress: bool = False, size: Optional[int] = None,
            errors: str = "raise", keep_images: bool = False) -> List[Prediction]:
    """Run a detector over new scans: image files, folders, arrays or samples; one :class:`Prediction` per image.

    Reading and decoding run in a ``torch.utils.data.DataLoader`` (``num_workers`` processes, so the next batch
    is decoded while the model runs on this one); the forward is the model's own eval forward, batched.

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


# ---------------------------------------------------------------------------------------------------------
# results on disk
# ---------------------------------------------------------------------------------------------------------

def _hex_rgb(color: str) -> Tuple[int, int, int]:
    color = color.lstrip("#")
    return tuple(int(color[i:i + 2], 16) for i in (0, 2, 4))


def draw_detections(image: Union[np.ndarray, torch.Tensor], boxes: Any, labels: Any, scores: Any = None, *,
                    width: int = 2) -> np.ndarray:
    """An RGB ``uint8`` ``H x W x 3`` picture of an image with its detections: boxes coloured by class (the
    colours of :mod:`wsbus.viz`, benign green, malignant red) captioned ``"<class> <score>"``, drawn with
    ``torchvision.utils.draw_bounding_boxes``.

    ``image`` is ``uint8`` ``H x W``, ``H x W x 3`` or ``[C, H, W]``; boxes ``[D, 4]`` pixel edges (the outline is
    drawn on the outermost pixels inside each box).
    """
    from torchvision.utils import draw_bounding_boxes

    t = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    if t.ndim == 2:
        t = t[None]
    elif t.ndim == 3 and t.shape[0] not in (1, 3) and t.shape[-1] in (1, 3):
        t = t.permute(2, 0, 1)
    if t.dtype != torch.uint8 or t.ndim != 3 or t.shape[0] not in (1, 3):
        raise ValueError(f"draw_detections: expected a uint8 image H x W, H x W x 3 or [C, H, W], got "
                         f"{t.dtype} of shape {tuple(t.shape)}")
    t = t.expand(3, -1, -1).contiguous() if t.shape[0] == 1 else t.contiguous()
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4).clone()
    if len(b):
        h, w = t.shape[1:]
        b[:, 2:] -= 1
        b[:, 0::2] = b[:, 0::2].clamp(0, w - 1)
        b[:, 1::2] = b[:, 1::2].clamp(0, h - 1)
        b[:, 2:] = torch.maximum(b[:, 2:], b[:, :2])
        lab = [int(x) for x in torch.as_tensor(labels).reshape(-1)]
        sc = [float(x) for x in torch.as_tensor(scores).reshape(-1)] if scores is not None else None
        captions = [f"{CLASSES[k] if 0 <= k < len(CLASSES) else k}" + (f" {sc[j]:.2f}" if sc else "")
                    for j, k in enumerate(lab)]
        colors = [_hex_rgb(CLASS_COLORS.get(k, "#ffbf00")) for k in lab]
        t = draw_bounding_boxes(t, b, labels=captions, colors=colors, width=width, label_colors="white",
                                label_background_colors=colors, fill_labels=True)
    return t.permute(1, 2, 0).numpy()


def _overlay_file(name: str) -> str:
    """``overlays/``-relative PNG name of an image: its name (sub-folders kept, ``#k`` -> ``_frame<k>``) with
    ``.png`` appended unless it already ends so: ``a.png``, ``b.jpg.png``, ``cine.dcm_frame3.png``."""
    base, sep, frame = name.rpartition("#")
    if sep and frame.isdigit():
        name = f"{base}_frame{frame}"
    parts = [p for p in PurePath(name.replace("\\", "/")).parts if p not in ("", ".", "..", "/")]
    parts = [p.replace(":", "_") for p in parts if not p.endswith(":\\")] or ["image"]
    rel = "/".join(parts)
    return rel if rel.lower().endswith(".png") else rel + ".png"


class PredictionWriter:
    """Writes the results of :func:`iter_predict` into a folder, as ``wsbus predict`` does.

    Files (COCO category ids 1 benign, 2 malignant; boxes in the pixels of the image as read)::

        overlays/<name>.png    one per image, written as soon as the image is done (see ``_overlay_file``)
        detections.json        COCO *results*: [{image_id, category_id, bbox [x, y, w, h], score}]
        images.json            {"images": [{id, file_name, name, frame, width, height, overlay}], "categories",
                                "failed": [{file, frame, name, error}], "complete", "settings"}: with
                                detections.json, pycocotools' COCO(images.json).loadRes(detections.json) works
        detections.csv         image, x1, y1, x2, y2, class, score
        summary.csv/.json      per image: max_benign, max_malignant, n_detections, predicted (or the error)

    Every file is written atomically (a temporary file renamed into place). The overlays are written one by one;
    the tables are rewritten every ``flush_seconds`` and at :meth:`close`, which a ``with`` block calls also when
    the run stops on an error or Ctrl-C: nothing done is lost, and ``complete`` in ``images.json`` and
    ``summary.json`` says whether the run finished.
    """

    def __init__(self, out_dir: Union[str, "os.PathLike[str]"], *, overlays: bool = True,
                 settings: Optional[Mapping[str, Any]] = None, flush_seconds: float = 60.0):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.overlays = overlays
        self.settings = dict(settings or {})
        self.flush_seconds = float(flush_seconds)
        self.predictions: List[Prediction] = []
        self._overlay_names: Dict[int, str] = {}
        self._taken: set = set()
        self._last_flush = time.monotonic()

    @property
    def failed(self) -> List[Prediction]:
        return [p for p in self.predictions if not p.ok]

    def add(self, p: Prediction) -> None:
        """Record one result; write its overlay now (when it has an image, which is then dropped from ``p``)."""
        k = len(self.predictions)
        self.predictions.append(p)
        if self.overlays and p.ok and p.image is not None:
            name = _overlay_file(p.name)
            stem, n = name[:-4], 1
            while name.lower() in self._taken:
                n += 1
                name = f"{stem}-{n}.png"
            self._taken.add(name.lower())
            self._overlay_names[k] = f"overlays/{name}"
            from PIL import Image

            picture = Image.fromarray(draw_detections(p.image, p.boxes, p.labels, p.scores))
            atomic_write(self.out_dir / "overlays" / name, lambda f: picture.save(f, format="PNG"), "wb")
            p.image = None  # the picture is on disk; do not keep every image in memory
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.write_tables(complete=False)

    def write_tables(self, complete: bool) -> None:
        """(Re)write the JSON and CSV files from the results so far."""
        from .data.coco import COCO_CATEGORIES

        images, results, failed, rows = [], [], [], []
        for k, p in enumerate(self.predictions):
            if not p.ok:
                failed.append({"file": _file_of(p), "frame": p.frame, "name": p.name, "error": p.error})
                continue
            image_id = len(images) + 1
            entry = {"id": image_id, "file_name": _file_of(p) or p.name, "name": p.name, "frame": p.frame,
                     "width": p.width, "height": p.height}
            if k in self._overlay_names:
                entry["overlay"] = self._overlay_names[k]
            images.append(entry)
            for box, label, score in zip(p.boxes.tolist(), p.labels.tolist(), p.scores.tolist()):
                x1, y1, x2, y2 = box
                results.append({"image_id": image_id, "category_id": int(label),
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
                rows.append([p.name, x1, y1, x2, y2, CLASSES[int(label)], score])
        atomic_write_json(results, self.out_dir / "detections.json")
        atomic_write_json({"images": images, "categories": [dict(c) for c in COCO_CATEGORIES], "failed": failed,
                           "complete": bool(complete), "settings": self.settings}, self.out_dir / "images.json")
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["image", "x1", "y1", "x2", "y2", "class", "score"])
        w.writerows(rows)
        atomic_write_text(buf.getvalue(), self.out_dir / "detections.csv")
        summaries = [p.summary() for p in self.predictions]
        columns = ["image", "file", "frame", "status", "width", "height", "n_detections", "max_benign",
                   "max_malignant", "predicted", "error"]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        w.writerows(summaries)
        atomic_write_text(buf.getvalue(), self.out_dir / "summary.csv")
        atomic_write_json({"images": summaries, "n_images": len(summaries), "n_failed": len(failed),
                           "complete": bool(complete), "settings": self.settings}, self.out_dir / "summary.json")
        self._last_flush = time.monotonic()

    def close(self, complete: bool = True) -> None:
        """Write the tables (``complete`` says whether every image was processed)."""
        self.write_tables(complete)

    def __enter__(self) -> "PredictionWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(complete=exc_type is None)
