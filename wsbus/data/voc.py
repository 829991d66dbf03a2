"""Loader for the VOC-style breast-ultrasound folders of the reference code (SNUBH format).

Taught in ``book/09_real_data.md`` and ``book/02_data.md``.

Layout (the one of github.com/syshin1014/wssdl_bus, ``SNUBH_BUS/``)::

    <root>/Annotations/<id>.xml          PASCAL VOC XML, one <object> per mass
    <root>/TIFFImages/<id>.tif           8-bit grayscale, possibly PackBits-compressed
           (or JPEGImages/<id>.jpg|.jpeg, or PNGImages/<id>.png)
    <root>/ImageSets/Main/<split>.txt    optional lists of ids, one per line

An ``<object>`` named ``benign`` or ``malignant`` is a mass; objects named ``__background__`` are
annotation aids of the reference data and are skipped; any other name is an error. Extra tags such as
``<BIRADS>`` or ``<segmented>`` are ignored. VOC boxes are 1-based and inclusive, so
``(xmin, ymin, xmax, ymax)`` becomes the pixel-edge box ``(xmin - 1, ymin - 1, xmax, ymax)``.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import List, Optional, Union

import numpy as np
from PIL import Image

from .formats import CLASS_TO_INDEX, DataError, Sample

PathLike = Union[str, "os.PathLike[str]"]

#: Image folders searched, in order, with the file extensions accepted in each.
IMAGE_FOLDERS = (("TIFFImages", (".tif", ".tiff")), ("JPEGImages", (".jpg", ".jpeg")), ("PNGImages", (".png",)))

_MASS_NAMES = {"benign": CLASS_TO_INDEX["benign"], "malignant": CLASS_TO_INDEX["malignant"]}
_SKIPPED_NAMES = {"__background__"}


def read_gray(path: PathLike) -> np.ndarray:
    """Read an image file as a 2-D ``uint8`` grayscale array.

    TIFF files are read with :mod:`tifffile` (which decodes PackBits without extra codecs), every other
    format with Pillow. RGB(A) images are converted to luminance (ITU-R 601-2, Pillow's ``"L"`` mode).

    Parameters
    ----------
    path : the image file.

    Returns
    -------
    ``uint8`` array of shape ``(H, W)``, C-contiguous and writable (Pillow's array view of an image is read-only;
    it is copied then, so that ``torch.from_numpy`` on it is safe and silent).

    Raises
    ------
    DataError
        When the file is missing, unreadable, corrupt, multi-page, or not 8-bit; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                if len(tif.pages) == 0:
                    raise DataError(f"{path}: cannot read image (no image data: a corrupt or truncated TIFF)")
                if len(tif.series) != 1 or len(tif.pages) != 1:
                    raise DataError(f"{path}: expected a single-page TIFF, found {len(tif.pages)} pages")
                array = tif.asarray()
        else:
            with Image.open(path) as im:
                im.load()  # decode now, so that truncated files fail here and not later
                if im.mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr"):
                    im = im.convert("L")
                array = np.asarray(im)
    except DataError:
        raise
    except Exception as exc:  # PIL.UnidentifiedImageError, OSError, tifffile.TiffFileError, ValueError, ...
        raise DataError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc
    array = _to_gray_uint8(array, path)
    if not array.flags.writeable:
        array = array.copy()
    return array


def to_gray(image: np.ndarray) -> np.ndarray:
    """``uint8`` luminance (ITU-R 601-2: 0.299 R + 0.587 G + 0.114 B) of an ``H x W x 3(4)`` image; 2-D passes.
    """
    if image.ndim == 2:
        return image
    rgb = image[..., :3].astype(np.float32)
    return np.rint(rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).clip(0, 255).astype(np.uint8)


def _to_gray_uint8(array: np.ndarray, path: Path) -> np.ndarray:
    """Check dtype and channels; RGB(A) arrays (e.g. from an RGB TIFF) become luminance."""
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8:
        raise DataError(f"{path}: expected an 8-bit image, got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[2] in (3, 4):
        array = to_gray(array)
    elif array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise DataError(f"{path}: expected a 2-D grayscale image, got shape {array.shape}")
    if min(array.shape) < 1:
        raise DataError(f"{path}: empty image of shape {array.shape}")
    return np.ascontiguousarray(array)


def _find_image(root: Path, image_id: str) -> Path:
    tried = []
    for folder, extensions in IMAGE_FOLDERS:
        for ext in extensions:
            for candidate in (root / folder / f"{image_id}{ext}", root / folder / f"{image_id}{ext.upper()}"):
                if candidate.is_file():
                    return candidate
            tried.append(f"{folder}/{image_id}{ext}")
    raise DataError(f"{root / 'Annotations' / (image_id + '.xml')}: no image found for id {image_id!r} "
                    f"(looked for {', '.join(tried)} under {root})")


def _coordinate(obj: ET.Element, tag: str, where: str) -> float:
    node = obj.find(f"bndbox/{tag}")
    if node is None or node.text is None or not node.text.strip():
        raise DataError(f"{where}: missing <bndbox>/<{tag}>")
    try:
        return float(node.text)
    except ValueError:
        raise DataError(f"{where}: <{tag}> is not a number: {node.text!r}") from None


def _parse_annotation(xml_path: Path, width: int, height: int, mixed: str):
    """Return (boxes [K,4] float32, labels [K] int64, image_label, patient) from one VOC XML file."""
    try:
        tree = ET.parse(xml_path)
    except ET.ParseError as exc:
        raise DataError(f"{xml_path}: broken XML ({exc})") from exc
    root = tree.getroot()
    size = root.find("size")
    if size is not None:
        declared = tuple(_int_or_none(size.findtext(k)) for k in ("width", "height"))
        if None not in declared and declared != (width, height):
            raise DataError(f"{xml_path}: <size> says {declared[0]}x{declared[1]} but the image is {width}x{height}")
    boxes, labels = [], []
    for k, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip().lower()
        where = f"{xml_path}: object {k} ({name or 'unnamed'})"
        if name in _SKIPPED_NAMES:
            continue
        if name not in _MASS_NAMES:
            raise DataError(f"{xml_path}: object {k} has unknown class name {name!r} "
                            f"(expected one of {sorted(_MASS_NAMES)} or '__background__')")
        xmin, ymin, xmax, ymax = (_coordinate(obj, t, where) for t in ("xmin", "ymin", "xmax", "ymax"))
        box = (xmin - 1.0, ymin - 1.0, xmax, ymax)  # 1-based inclusive -> 0-based pixel edges
        if not (box[0] < box[2] and box[1] < box[3]):
            raise DataError(f"{where}: inverted box xmin={xmin:g} ymin={ymin:g} xmax={xmax:g} ymax={ymax:g}")
        if box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height:
            raise DataError(f"{where}: box xmin={xmin:g} ymin={ymin:g} xmax={xmax:g} ymax={ymax:g} (VOC, 1-based) "
                            f"lies outside the {width}x{height} image")
        boxes.append(box)
        labels.append(_MASS_NAMES[name])
    kinds = set(labels)
    if len(kinds) > 1 and mixed == "error":
        raise DataError(f"{xml_path}: mixed labels, the image has both benign and malignant masses "
                        f"(pass mixed='malignant' to label such images malignant)")
    image_label = max(kinds) if kinds else CLASS_TO_INDEX["normal"]
    patient = root.findtext("patient")
    patient = patient.strip() if patient and patient.strip() else None
    return (np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64),
            image_label, patient)


def _int_or_none(text: Optional[str]) -> Optional[int]:
    try:
        return int(float(text)) if text is not None and text.strip() else None
    except ValueError:
        return None


def _read_ids(root: Path, split: Optional[str]) -> List[str]:
    if split is not None:
        list_file = root / "ImageSets" / "Main" / f"{split}.txt"
        if not list_file.is_file():
            raise DataError(f"{list_file}: split file not found (split={split!r})")
        ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        if not ids:
            raise DataError(f"{list_file}: the split file lists no image ids")
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise DataError(f"{list_file}: ids listed more than once: {dup[:5]}")
        return ids
    annotations = root / "Annotations"
    if not annotations.is_dir():
        raise DataError(f"{annotations}: annotation folder not found (is {root} a VOC-BUS folder?)")
    ids = sorted(p.stem for p in annotations.glob("*.xml"))
    if not ids:
        raise DataError(f"{annotations}: no annotations (*.xml) found")
    return ids


def load_voc(root: PathLike, split: Optional[str] = None, *, mixed: str = "error") -> List[Sample]:
    """Load a VOC-BUS folder (the SNUBH format of the reference code) as a list of :class:`Sample`.

    Parameters
    ----------
    root : the folder holding ``Annotations/`` and ``TIFFImages/`` (or ``JPEGImages/``/``PNGImages/``).
    split : name of an ``ImageSets/Main/<split>.txt`` list (e.g. ``"test"``); ``None`` loads every
        ``Annotations/*.xml``, sorted by id.
    mixed : what to do with an image holding both benign and malignant masses: ``"error"`` (default)
        raises :class:`DataError`; ``"malignant"`` labels the image malignant, each box keeping its label.

    Returns
    -------
    list of :class:`Sample`, all *strong*: grayscale ``uint8`` images, boxes in pixel-edge coordinates
    ``(xmin - 1, ymin - 1, xmax, ymax)``, ``image_label`` = class of the masses (normal when there are none),
    ``patient`` from an optional ``<patient>`` tag.

    Raises
    ------
    DataError
        Naming the file: missing/corrupt image, broken XML, unknown class name, inverted or out-of-image box,
        mixed labels, no annotations, missing split file.

    Notes
    -----
    Taught in ``book/09_real_data.md``.
    """
    if mixed not in ("error", "malignant"):
        raise ValueError(f"mixed must be 'error' or 'malignant', got {mixed!r}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: VOC-BUS folder not found")
    samples = []
    for image_id in _read_ids(root, split):
        xml_path = root / "Annotations" / f"{image_id}.xml"
        if not xml_path.is_file():
            raise DataError(f"{xml_path}: annotation file not found for id {image_id!r}")
        image_path = _find_image(root, image_id)
        image = read_gray(image_path)
        boxes, labels, image_label, patient = _parse_annotation(xml_path, image.shape[1], image.shape[0], mixed)
        samples.append(Sample(image, boxes, labels, image_label, image_id, patient))
    return samples
