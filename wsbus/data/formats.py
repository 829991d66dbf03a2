"""The one in-memory record every loader returns: :class:`Sample`.

Taught in ``book/02_data.md``.

Classes everywhere: 0 = background / normal, 1 = benign, 2 = malignant.
"""
from __future__ import annotations

import os

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import torch

CLASSES = ("normal", "benign", "malignant")
CLASS_TO_INDEX = {name: i for i, name in enumerate(CLASSES)}


class DataError(ValueError):
    """Bad input data; the message names the file (or sample) and what is wrong. Taught in ``book/02_data.md``."""


@dataclass
class Sample:
    """One ultrasound image with its annotation.

    Attributes
    ----------
    image : uint8 array, H x W (grayscale) or H x W x 3.
    boxes : float32 [K, 4] (x1, y1, x2, y2, pixels, 0 <= x1 < x2 <= W) or None when unknown (weak).
    labels : int64 [K] in {1, 2} or None.
    image_label : int, 0 normal, 1 benign, 2 malignant.
    id : str, unique within a data set.
    patient : str or None, used by :func:`wsbus.data.split` so no patient is in two subsets.
    meta : further attributes of the image as text (``{"device": "GE Logiq 7 @10-14MHz", ...}``; empty when the
        source has none), which source filters read (``busbra:DIR?device=Logiq 7``, :mod:`wsbus.data.sources`).

    A sample is *strong* when ``boxes`` is known and *weak* otherwise. A normal image is strong
    with K = 0. Construction validates everything and raises :class:`DataError` naming ``id``.

    Taught in ``book/02_data.md``.
    """

    image: np.ndarray
    boxes: Optional[np.ndarray]
    labels: Optional[np.ndarray]
    image_label: int
    id: str
    patient: Optional[str] = None
    meta: Dict[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        where = f"sample {self.id!r}"
        img = np.asarray(self.image)
        if img.dtype != np.uint8:
            raise DataError(f"{where}: image must be uint8, got {img.dtype}")
        if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
            raise DataError(f"{where}: image must be HxW or HxWx3, got shape {img.shape}")
        if min(img.shape[:2]) < 1:
            raise DataError(f"{where}: empty image of shape {img.shape}")
        self.image = img
        if int(self.image_label) not in (0, 1, 2):
            raise DataError(f"{where}: image_label must be 0, 1 or 2, got {self.image_label}")
        self.image_label = int(self.image_label)
        if (self.boxes is None) != (self.labels is None):
            raise DataError(f"{where}: boxes and labels must both be given or both be None")
        if self.boxes is None:
            return
        boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(boxes) != len(labels):
            raise DataError(f"{where}: {len(boxes)} boxes but {len(labels)} labels")
        h, w = img.shape[:2]
        for k, (x1, y1, x2, y2) in enumerate(boxes):
            if not np.all(np.isfinite([x1, y1, x2, y2])):
                raise DataError(f"{where}: box {k} has a non-finite coordinate {boxes[k].tolist()}")
            if not (x1 < x2 and y1 < y2):
                raise DataError(f"{where}: box {k} {boxes[k].tolist()} is inverted or empty (need x1 < x2, y1 < y2)")
            if x1 < 0 or y1 < 0 or x2 > w or y2 > h:
                raise DataError(f"{where}: box {k} {boxes[k].tolist()} lies outside the {w}x{h} image")
        if np.any((labels != 1) & (labels != 2)):
            raise DataError(f"{where}: box labels must be 1 (benign) or 2 (malignant), got {sorted(set(labels.tolist()))}")
        if len(labels) and int(labels.max()) != self.image_label:
            # The image label is the worst finding (malignant dominates); loaders decide whether a
            # mixed benign/malignant image is allowed at all.
            raise DataError(
                f"{where}: image_label {self.image_label} disagrees with box labels {sorted(set(labels.tolist()))}")
        if len(labels) == 0 and self.image_label != 0:
            raise DataError(f"{where}: a {CLASSES[self.image_label]} image with known boxes needs at least one box")
        self.boxes, self.labels = boxes, labels

    @property
    def is_strong(self) -> bool:
        return self.boxes is not None

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    def to_tensor(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """The image as a ``[C, H, W]`` tensor: ``uint8`` as stored (``dtype=None``), or a floating ``dtype``
        scaled to [0, 1] (what the detector takes). The one place where a sample becomes a tensor; a read-only
        array (Pillow's) is copied rather than shared, so no caller can write into it."""
        img = self.image if self.image.flags.writeable and self.image.flags.c_contiguous else np.array(self.image)
        tensor = torch.from_numpy(img)
        tensor = tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)
        if dtype is None:
            return tensor
        return tensor.to(dtype).div_(255.0)

    def as_weak(self) -> "Sample":
        """The same image with its boxes hidden (only ``image_label`` is kept)."""
        return Sample(self.image, None, None, self.image_label, self.id, self.patient, dict(self.meta))


def make_output_folder(path: Union[str, "os.PathLike[str]"]) -> Path:
    """Create the folder ``path`` (and its parents), or raise :class:`~wsbus.data.DataError` in one line naming
    what is in the way (a file where a folder must go, no permission)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
        raise DataError(f"{path}: cannot create the output folder: {blocker} is a file, not a folder") from None
    except PermissionError:
        raise DataError(f"{path}: cannot create the output folder: permission denied") from None
    return path
