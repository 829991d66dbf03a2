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
from PIL import Image
from scipy import ndimage

from .dedup import assign_duplicate_patients
from .formats import CLASS_TO_INDEX, DataError, Sample
from .voc import PathLike, read_gray

_NAME = re.compile(r"^(?P<cls>benign|malignant|normal) \((?P<n>\d+)\)(?P<mask>_mask(?:_(?P<k>\d+))?)?\.png$",
                   re.IGNORECASE)
_FOLDERS = ("benign", "malignant", "normal")
_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity for scipy.ndimage.label


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

    Raises
    ------
    DataError
        Naming ``where``: the mask is not 2-D.

    Notes
    -----
    Components come from :func:`scipy.ndimage.label` with 8-connectivity, run on the crop to the foreground's
    bounding rows and columns only (all of a component lies inside it, so the components, their raster order and
    their areas are those of the full mask), and each box from :func:`scipy.ndimage.find_objects`: a
    component's bounding slices ``start:stop`` are its pixel edges (``stop`` = last index + 1), shifted back by
    the crop's offset. These are exactly the boxes of :func:`torchvision.ops.masks_to_boxes` on the dense
    per-component masks plus 1 on the maxima (the earlier implementation, kept in ``tests/test_data_busi.py``
    to check equality), without building one full-size mask per component. For integer masks the threshold
    ``value > max / 2`` is evaluated as ``value > max // 2``, the same set of pixels for integers.
    Taught in ``book/09_real_data.md``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise DataError(f"{where}: a mask must be 2-D, got shape {mask.shape}")
    empty = np.zeros((0, 4), dtype=np.float32)
    if mask.size == 0:
        return empty
    if mask.dtype == bool:
        foreground = mask  # max 1 (or 0): foreground is > 0.5, the True pixels
        if not foreground.any():
            return empty
    else:
        peak = mask.max()
        if not peak > 0:  # also NaN
            return empty
        if mask.dtype.kind in "ui" and mask.dtype.itemsize <= 4:
            foreground = mask > (peak // 2)  # integers: v > p / 2 exactly when v > floor(p / 2)
        else:
            foreground = mask > float(peak) / 2
    rows = np.flatnonzero(foreground.any(axis=1))
    if rows.size == 0:
        return empty
    cols = np.flatnonzero(foreground.any(axis=0))
    r0, c0 = int(rows[0]), int(cols[0])
    return _component_boxes(foreground[r0:int(rows[-1]) + 1, c0:int(cols[-1]) + 1], c0, r0, min_area)


def _component_boxes(crop: np.ndarray, c0: int, r0: int, min_area: int) -> np.ndarray:
    """Boxes of the 8-connected components of the boolean ``crop`` (whose first and last rows and columns hold
    foreground) with at least ``min_area`` pixels, shifted by the crop's offset ``(c0, r0)``."""
    components, count = ndimage.label(crop, structure=_EIGHT)
    if count == 1:  # the usual lesion mask: the one component's box is the crop, its area the foreground's
        if np.count_nonzero(crop) < min_area:
            return np.zeros((0, 4), dtype=np.float32)
        return np.array([[c0, r0, c0 + crop.shape[1], r0 + crop.shape[0]]], dtype=np.float32)
    areas = np.bincount(components.ravel(), minlength=count + 1)[1:]
    slices = ndimage.find_objects(components, max_label=count)
    boxes = [(sx.start + c0, sy.start + r0, sx.stop + c0, sy.stop + r0)
             for (sy, sx), area in zip(slices, areas) if area >= min_area]
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def read_mask_boxes(mask_path: PathLike, image_shape: Tuple[int, int], *, min_area: int = 1) -> np.ndarray:
    """Read a lesion-mask file, check it matches its image's size, and return one box per component.

    Returns
    -------
    The boxes of :func:`boxes_from_mask` on the mask as :func:`~wsbus.data.read_gray` reads it, bit for bit.

    Raises
    ------
    DataError
        Naming the mask file: unreadable, or a size different from ``image_shape`` (``H, W``).

    Notes
    -----
    A PNG mask in mode ``"1"`` (BUS-BRA's masks) or ``"L"`` (BUSI's) is cropped by Pillow to the bounding box of
    its nonzero pixels (:meth:`PIL.Image.Image.getbbox`, in C, on the decoded image) before it becomes an array:
    every foreground pixel (above half the maximum) is nonzero, so the crop holds every component, and the boxes
    found in it are shifted back by its offset. Any other file or mode goes through
    :func:`~wsbus.data.read_gray` as a whole. Used by :func:`load_busi` and :func:`wsbus.data.load_busbra`.
    """
    mask_path = Path(mask_path)
    crop = _read_png_mask_crop(mask_path, image_shape)
    if crop is None:  # not a mode "1" / "L" PNG: the general reader
        mask = read_gray(mask_path)
        _check_mask_size(mask_path, mask.shape, image_shape)
        return boxes_from_mask(mask, min_area=min_area, where=str(mask_path))
    array, (x0, y0) = crop
    if array.dtype == bool and array.size:  # mode "1": foreground = nonzero, so the crop is its exact extent
        return _component_boxes(array, x0, y0, min_area)
    boxes = boxes_from_mask(array, min_area=min_area, where=str(mask_path))
    if len(boxes) and (x0 or y0):
        boxes += np.array([x0, y0, x0, y0], dtype=np.float32)  # small integers: exact in float32
    return boxes


def _check_mask_size(mask_path: Path, shape: Tuple[int, int], image_shape: Tuple[int, int]) -> None:
    if tuple(shape) != tuple(image_shape):
        raise DataError(f"{mask_path}: mask size {shape[1]}x{shape[0]} differs from the image size "
                        f"{image_shape[1]}x{image_shape[0]}")


def _read_png_mask_crop(mask_path: Path, image_shape: Tuple[int, int]):
    """``(array of the nonzero bounding box, (x0, y0))`` of a mode "1" / "L" PNG mask, ``(empty, (0, 0))`` for an
    all-zero one, or ``None`` for any other file (left to :func:`read_gray`). Errors as :func:`read_gray`'s."""
    if mask_path.suffix.lower() != ".png":
        return None
    try:
        with Image.open(mask_path) as im:
            if im.format != "PNG" or im.mode not in ("1", "L"):
                return None
            im.load()  # decode now, so that truncated files fail here (as in read_gray)
            _check_mask_size(mask_path, (im.height, im.width), image_shape)
            bbox = im.getbbox()
            if bbox is None:
                return np.zeros((0, 0), dtype=np.uint8), (0, 0)
            return np.asarray(im.crop(bbox)), bbox[:2]
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{mask_path}: image file not found") from None
    except Exception as exc:  # PIL.UnidentifiedImageError, OSError, ValueError, ... (read_gray's message)
        raise DataError(f"{mask_path}: cannot read image ({type(exc).__name__}: {exc})") from exc


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
                samples.append(Sample(image, boxes, np.zeros(0, np.int64), 0, sample_id, "busi:" + sample_id))
                continue
            if not mask_keys:
                raise DataError(f"{files['image']}: no mask ('{sample_id}_mask.png') for a {cls} image")
            if len(boxes) == 0:
                raise DataError(f"{files['mask'] if 'mask' in files else files[mask_keys[0]]}: the mask of a {cls} "
                                f"image is empty (no component of at least {min_area} pixels)")
            labels = np.full(len(boxes), CLASS_TO_INDEX[cls], dtype=np.int64)
            samples.append(Sample(image, boxes, labels, CLASS_TO_INDEX[cls], sample_id, "busi:" + sample_id))
    if dedup:
        # Every sample starts as its own patient "busi:<id>"; a duplicate group takes its first member's, the
        # same ids as prefix="busi:" on patient-less samples, but only the linked samples are rebuilt.
        return assign_duplicate_patients(samples, prefix="busi:")
    return samples
