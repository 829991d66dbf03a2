"""Loader for BUSI, the Breast Ultrasound Images data set (Al-Dhabyani et al., Data in Brief 2020).

Taught in ``book/09_real_data.md``.

Layout::

    Dataset_BUSI_with_GT/{benign,malignant,normal}/<c> (<n>).png
                                                  /<c> (<n>)_mask.png      lesion mask
                                                  /<c> (<n>)_mask_1.png    extra lesions (also _mask_2, ...)

437 benign, 210 malignant and 133 normal images. Boxes come from the masks: one box per connected
component (8-connectivity), see :func:`boxes_from_mask`. BUSI contains duplicate images, some of them in
two class folders; :func:`load_busi` gives the members of each duplicate group one common ``patient`` so that
a patient-level :func:`wsbus.data.split` never puts copies on both sides (see :mod:`wsbus.data.dedup`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch
from scipy import ndimage
from torchvision.ops import masks_to_boxes

from .dedup import assign_duplicate_patients
from .formats import CLASS_TO_INDEX, DataError, Sample
from .voc import PathLike, read_gray

_NAME = re.compile(r"^(?P<cls>benign|malignant|normal) \((?P<n>\d+)\)(?P<mask>_mask(?:_(?P<k>\d+))?)?\.png$",
                   re.IGNORECASE)
_FOLDERS = ("benign", "malignant", "normal")


def boxes_from_mask(mask: np.ndarray, *, min_area: int = 1, where: str = "mask") -> np.ndarray:
    """One pixel-edge box per connected component of a lesion mask.

    Parameters
    ----------
    mask : ``H x W`` array; pixels above half of its maximum are foreground (works for 0/1 and 0/255 masks).
    min_area : components with fewer pixels are ignored (specks left by the annotation tool).
    where : name of the mask used in error messages.

    Returns
    -------
    float32 array ``[K, 4]`` of ``(x1, y1, x2, y2)`` with ``x2 = last column + 1`` (pixel edges), components in
    raster order of their first pixel. K = 0 for an empty mask.

    Notes
    -----
    Components come from :func:`scipy.ndimage.label` with 8-connectivity and boxes from
    :func:`torchvision.ops.masks_to_boxes`, whose inclusive maxima are turned into edges by adding 1.
    Taught in ``book/09_real_data.md``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise DataError(f"{where}: a mask must be 2-D, got shape {mask.shape}")
    peak = float(mask.max()) if mask.size else 0.0
    if peak <= 0:
        return np.zeros((0, 4), dtype=np.float32)
    components, count = ndimage.label(mask > peak / 2, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return np.zeros((0, 4), dtype=np.float32)
    areas = np.bincount(components.ravel(), minlength=count + 1)[1:]
    keep = np.flatnonzero(areas >= min_area) + 1
    if len(keep) == 0:
        return np.zeros((0, 4), dtype=np.float32)
    masks = torch.from_numpy(components[None, :, :] == keep[:, None, None])
    boxes = masks_to_boxes(masks)
    boxes[:, 2:] += 1
    return boxes.numpy().astype(np.float32)


def read_mask_boxes(mask_path: PathLike, image_shape: Tuple[int, int], *, min_area: int = 1) -> np.ndarray:
    """Read a lesion-mask file, check it matches its image's size, and return one box per component.

    Raises
    ------
    DataError
        Naming the mask file: unreadable, or a size different from ``image_shape`` (``H, W``).

    Notes
    -----
    Used by :func:`load_busi` and :func:`wsbus.data.load_busbra`.
    """
    mask = read_gray(mask_path)
    if mask.shape != tuple(image_shape):
        raise DataError(f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from the image size "
                        f"{image_shape[1]}x{image_shape[0]}")
    return boxes_from_mask(mask, min_area=min_area, where=str(mask_path))


def _busi_root(root: Path) -> Path:
    for candidate in (root, root / "Dataset_BUSI_with_GT"):
        if any((candidate / f).is_dir() for f in _FOLDERS):
            return candidate
    raise DataError(f"{root}: no BUSI class folders (benign/, malignant/, normal/) here or in "
                    f"{root / 'Dataset_BUSI_with_GT'}")


def _scan_folder(folder: Path) -> Dict[Tuple[str, int], Dict[str, Path]]:
    """Map (class, number) -> {"image": path, "mask": path, "mask_1": path, ...} for one class folder."""
    entries: Dict[Tuple[str, int], Dict[str, Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() != ".png":
            continue  # .DS_Store, Thumbs.db, ... are not data
        m = _NAME.match(path.name)
        if m is None:
            raise DataError(f"{path}: unexpected file name (expected '<class> (<n>).png' or '<class> (<n>)_mask.png')")
        cls = m["cls"].lower()
        if cls != folder.name.lower():
            raise DataError(f"{path}: a {cls!r} file in the {folder.name!r} folder")
        role = "image" if m["mask"] is None else ("mask" if m["k"] is None else f"mask_{int(m['k'])}")
        entries.setdefault((cls, int(m["n"])), {})[role] = path
    return entries


def load_busi(root: PathLike, *, dedup: bool = True, min_area: int = 10) -> List[Sample]:
    """Load BUSI as a list of strong :class:`Sample` (normal images have K = 0 boxes).

    Parameters
    ----------
    root : ``Dataset_BUSI_with_GT`` itself or the folder that contains it.
    dedup : give exact and near duplicates one common ``patient`` (:func:`wsbus.data.dedup.find_duplicates`);
        otherwise every image is its own patient.
    min_area : mask components smaller than this many pixels are ignored (see :func:`boxes_from_mask`).

    Returns
    -------
    list of :class:`Sample` ordered benign, malignant, normal and by image number; ids like
    ``"benign (12)"``; grayscale ``uint8`` images.

    Raises
    ------
    DataError
        Naming the file: empty or missing folders, unexpected file names, corrupt images, a mask without its
        image, a benign/malignant image without a mask or with an empty mask, a mask whose size differs from
        its image, a normal image with a non-empty mask.

    Notes
    -----
    Label conflicts (one picture in two class folders) are kept as they are and reported by
    :func:`wsbus.data.dedup.label_conflicts`. Taught in ``book/09_real_data.md``.
    """
    base = _busi_root(Path(root))
    samples = []
    for cls in _FOLDERS:
        folder = base / cls
        if not folder.is_dir():
            raise DataError(f"{folder}: class folder missing")
        entries = _scan_folder(folder)
        if not entries:
            raise DataError(f"{folder}: no images found")
        for (name, number), files in sorted(entries.items(), key=lambda kv: kv[0][1]):
            sample_id = f"{name} ({number})"
            if "image" not in files:
                raise DataError(f"{next(iter(files.values()))}: mask without its image {sample_id}.png")
            image = read_gray(files["image"])
            mask_keys = sorted((k for k in files if k != "image"), key=lambda k: (k != "mask", k))
            boxes = []
            for key in mask_keys:
                boxes.append(read_mask_boxes(files[key], image.shape, min_area=min_area))
            boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)
            if cls == "normal":
                if len(boxes):
                    raise DataError(f"{files.get('mask', files['image'])}: a normal image with a non-empty mask")
                samples.append(Sample(image, boxes, np.zeros(0, np.int64), 0, sample_id))
                continue
            if not mask_keys:
                raise DataError(f"{files['image']}: no mask ('{sample_id}_mask.png') for a {cls} image")
            if len(boxes) == 0:
                raise DataError(f"{files['mask'] if 'mask' in files else files[mask_keys[0]]}: the mask of a {cls} "
                                f"image is empty (no component of at least {min_area} pixels)")
            labels = np.full(len(boxes), CLASS_TO_INDEX[cls], dtype=np.int64)
            samples.append(Sample(image, boxes, labels, CLASS_TO_INDEX[cls], sample_id))
    if dedup:
        return assign_duplicate_patients(samples, prefix="busi:")
    return [Sample(s.image, s.boxes, s.labels, s.image_label, s.id, "busi:" + s.id) for s in samples]
