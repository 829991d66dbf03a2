"""COCO in and out: :func:`load_coco` reads a COCO detection file, :func:`to_coco` / :func:`write_coco` export samples.

Layout written by :func:`write_coco` (``wsbus convert --data SOURCE --to coco OUT_DIR``) and read by the
``coco:`` data specs (:func:`load_coco_source`)::

    OUT_DIR/annotations.json     {"images": [...], "annotations": [...], "categories": [...]}
    OUT_DIR/images/<id>.png      8-bit grayscale PNG, one per sample

COCO conventions kept: ``bbox`` is ``[x, y, width, height]`` with ``(x, y)`` the top-left pixel *edge*, which is
wsbus's ``(x1, y1, x2, y2) = (x, y, x + width, y + height)``; image and annotation ids are integers from 1;
categories are ``1 benign`` and ``2 malignant`` (the class indices of :data:`wsbus.data.CLASSES`).

Fields beyond COCO that wsbus writes on an image and reads back, so that ``load_coco(to_coco(x))`` gives ``x``
exactly (ids, pixels, boxes, labels, image labels, patients):

* ``image_label`` -- ``"normal"``, ``"benign"`` or ``"malignant"``; optional on reading (then the worst box
  label, or normal without annotations);
* ``weak`` -- ``true`` for a sample whose boxes are unknown (only its image label is known); its annotations
  are not exported, and such an image is read back as a weak sample;
* ``patient`` -- the patient (``patient_id`` is read too); optional;
* ``sample_id`` -- written only when the sample id is not the file name without its ending (ids holding ``/`` or
  characters unsafe in file names).

Images are read with :func:`wsbus.data.images.read_image` (PNG, JPEG, TIFF, BMP, DICOM) as 2-D ``uint8`` gray,
as every wsbus loader reads them, so the round trip is exact for grayscale samples (an RGB sample comes back as
its luminance).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from .formats import CLASSES, CLASS_TO_INDEX, DataError, Sample, make_output_folder
from .images import read_image

__all__ = ["COCO_CATEGORIES", "ANNOTATIONS_FILE", "IMAGES_FOLDER", "load_coco", "to_coco", "write_coco",
           "load_coco_source"]

PathLike = Union[str, "os.PathLike[str]"]

#: The categories wsbus writes: ids are the class indices of benign and malignant.
COCO_CATEGORIES = ({"id": 1, "name": "benign", "supercategory": "mass"},
                   {"id": 2, "name": "malignant", "supercategory": "mass"})
#: The annotation file and the image folder of the layout of :func:`write_coco`.
ANNOTATIONS_FILE = "annotations.json"
IMAGES_FOLDER = "images"

#: Category names read as no mass (their annotations are skipped, as ``__background__`` in VOC files).
_NO_MASS = {"normal", "background", "__background__"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._() +-]")


def _class_of(name: str, categories: Mapping[str, str], where: str) -> int:
    """Class index of a category name: through ``categories`` first, then by the names of :data:`CLASSES`;
    0 means "no mass" (skipped)."""
    key = str(name).strip().lower()
    target = categories.get(key, key)
    target = str(target).strip().lower()
    if target in _NO_MASS:
        return 0
    if target in ("benign", "malignant"):
        return CLASS_TO_INDEX[target]
    raise DataError(f"{where}: unknown category name {name!r}; expected 'benign' or 'malignant' (or 'normal', "
                    f"'background', skipped), or map it with categories={{{key!r}: 'benign'|'malignant'}}")


def _bbox_from_segmentation(segmentation: Any, height: int, width: int, where: str) -> List[float]:
    """``[x, y, w, h]`` of a polygon list or an RLE (compressed or not), through pycocotools."""
    from pycocotools import mask as mask_utils

    try:
        if isinstance(segmentation, list):
            if not segmentation:
                raise ValueError("an empty polygon list")
            polygons = [list(map(float, p)) for p in segmentation]
            if any(len(p) < 6 or len(p) % 2 for p in polygons):
                raise ValueError("a polygon needs at least three (x, y) points")
            rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        elif isinstance(segmentation, Mapping) and "counts" in segmentation:
            if isinstance(segmentation["counts"], list):
                rle = mask_utils.frPyObjects(dict(segmentation), height, width)
            else:
                counts = segmentation["counts"]
                rle = {"size": list(segmentation.get("size", [height, width])),
                       "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        else:
            raise ValueError(f"expected a polygon list or an RLE dict, got {type(segmentation).__name__}")
        box = mask_utils.toBbox(rle)
    except DataError:
        raise
    except Exception as exc:  # pycocotools raises TypeError/ValueError/... on malformed input
        raise DataError(f"{where}: cannot read the segmentation ({type(exc).__name__}: {exc})") from exc
    return [float(v) for v in np.asarray(box, dtype=np.float64).reshape(4)]


def _sample_id(image: Mapping[str, Any]) -> str:
    if image.get("sample_id") not in (None, ""):
        return str(image["sample_id"])
    name = PurePosixPath(str(image["file_name"]).replace("\\", "/"))
    return str(name.with_suffix("")) if name.suffix else str(name)


def _read_json(annotations: Union[PathLike, Mapping[str, Any]]) -> tuple:
    if isinstance(annotations, Mapping):
        return dict(annotations), "the COCO dict"
    path = Path(annotations)
    if not path.is_file():
        raise DataError(f"{path}: COCO annotation file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read the COCO JSON ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a COCO object with 'images', 'annotations' and 'categories', got a "
                        f"{type(data).__name__} (a results list is not an annotation file)")
    return data, str(path)


def load_coco(annotations_json: Union[PathLike, Mapping[str, Any]], image_dir: Optional[PathLike] = None, *,
              categories: Optional[Mapping[str, str]] = None, mixed: str = "malignant") -> List[Sample]:
    """Load a COCO detection file (and its images) as a list of :class:`Sample`.

    Parameters
    ----------
    annotations_json : the COCO JSON file, or the COCO dict itself (e.g. from :func:`to_coco`).
    image_dir : where the images' ``file_name`` paths start; default the JSON file's folder's ``images/`` when
        there is one (the layout of :func:`write_coco`), else the JSON file's folder (needed with a dict).
    categories : extra category names, ``{coco name: "benign" | "malignant" | "normal"}`` (case-insensitive);
        names ``benign`` and ``malignant`` map to themselves, ``normal`` / ``background`` / ``__background__`` are
        skipped, any other name is an error.
    mixed : an image holding both benign and malignant boxes is labelled malignant (``"malignant"``, the default,
        each box keeping its label) or refused (``"error"``).

    Returns
    -------
    list of :class:`Sample` in the order of ``images``: id = the image's ``sample_id`` or its ``file_name``
    without the ending; boxes from ``bbox``, or when an annotation has no ``bbox`` from its ``segmentation``
    (polygons or RLE, through pycocotools); an image without annotations is normal (K = 0); ``image_label``,
    ``weak`` and ``patient`` (or ``patient_id``) from the image when present (see the module notes).

    Raises
    ------
    DataError
        naming the JSON file (and the image or annotation): unreadable JSON, missing keys, an unknown category
        name, duplicate ids, an annotation of an unknown image or category, an empty or out-of-image box, a
        missing or corrupt image, an image whose size differs from its ``width`` / ``height``, mixed labels with
        ``mixed="error"``.
    """
    if mixed not in ("error", "malignant"):
        raise ValueError(f"mixed must be 'error' or 'malignant', got {mixed!r}")
    data, source = _read_json(annotations_json)
    if image_dir is None:
        if isinstance(annotations_json, Mapping):
            raise ValueError("load_coco needs image_dir when the annotations are given as a dict")
        base = Path(annotations_json).parent
        image_dir = base / IMAGES_FOLDER if (base / IMAGES_FOLDER).is_dir() else base
    classes, images, per_image = _coco_tables(data, source, categories)
    samples: List[Sample] = []
    seen: Dict[str, Any] = {}
    for image_id, im in images.items():
        where = f"{source}: image {image_id!r} ({im['file_name']})"
        sid = _sample_id(im)
        if sid in seen:
            raise DataError(f"{where}: sample id {sid!r} also belongs to image {seen[sid]!r}")
        seen[sid] = image_id
        try:
            samples.append(_coco_sample(im, per_image[image_id], classes, Path(image_dir), source, where, sid, mixed))
        except DataError as exc:
            if str(exc).startswith(source):
                raise
            raise DataError(f"{where}: {exc}") from exc
    return samples


def _coco_tables(data: Mapping[str, Any], source: str, categories: Optional[Mapping[str, str]]):
    """``(class of each category id, image entry of each image id, annotations of each image id)``, checked."""
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{source}: missing or malformed {key!r} list")
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise DataError(f"{source}: 'annotations' must be a list")
    extra = {str(k).strip().lower(): v for k, v in (categories or {}).items()}
    classes: Dict[Any, int] = {}
    for c in data["categories"]:
        if not isinstance(c, Mapping) or "id" not in c or "name" not in c:
            raise DataError(f"{source}: a category needs an 'id' and a 'name', got {c!r}")
        if c["id"] in classes:
            raise DataError(f"{source}: category id {c['id']!r} listed twice")
        classes[c["id"]] = _class_of(c["name"], extra, f"{source}: category {c['id']!r}")
    images: Dict[Any, Mapping[str, Any]] = {}
    for k, im in enumerate(data["images"]):
        if not isinstance(im, Mapping) or "id" not in im or not im.get("file_name"):
            raise DataError(f"{source}: image entry {k} needs an 'id' and a 'file_name', got {im!r}")
        if im["id"] in images:
            raise DataError(f"{source}: image id {im['id']!r} listed twice")
        images[im["id"]] = im
    per_image: Dict[Any, List[Mapping[str, Any]]] = {i: [] for i in images}
    for k, ann in enumerate(annotations):
        where = f"{source}: annotation {ann.get('id', k) if isinstance(ann, Mapping) else k}"
        if not isinstance(ann, Mapping):
            raise DataError(f"{where}: expected an object, got {type(ann).__name__}")
        if ann.get("image_id") not in images:
            raise DataError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
        if ann.get("category_id") not in classes:
            raise DataError(f"{where}: category_id {ann.get('category_id')!r} is not in 'categories'")
        per_image[ann["image_id"]].append(ann)
    return classes, images, per_image


def _coco_sample(im: Mapping[str, Any], anns: List[Mapping[str, Any]], classes: Mapping[Any, int], image_dir: Path,
                 source: str, where: str, sid: str, mixed: str) -> Sample:
    """One image entry and its annotations as a :class:`Sample` (its image read from ``image_dir``)."""
    path = image_dir / str(im["file_name"])
    pixels = read_image(path)
    h, w = pixels.shape[:2]
    declared = (im.get("width"), im.get("height"))
    if None not in declared and (int(declared[0]), int(declared[1])) != (w, h):
        raise DataError(f"{path}: the image is {w}x{h} but {source} says {declared[0]}x{declared[1]}")
    patient = im.get("patient", im.get("patient_id"))
    patient = None if patient is None or str(patient).strip() == "" else str(patient)
    given_label = None
    if im.get("image_label") is not None:
        name = str(im["image_label"]).strip().lower()
        if name not in CLASS_TO_INDEX:
            raise DataError(f"{where}: image_label {im['image_label']!r} is not one of {list(CLASSES)}")
        given_label = CLASS_TO_INDEX[name]
    if im.get("weak"):
        if given_label is None:
            raise DataError(f"{where}: a weak image (no boxes known) needs an 'image_label'")
        return Sample(pixels, None, None, given_label, sid, patient)
    boxes, labels = [], []
    for ann in anns:
        cls = classes[ann["category_id"]]
        if cls == 0:
            continue
        boxes.append(_annotation_box(ann, h, w, f"{source}: annotation {ann.get('id', '?')} of image {im['id']!r}"))
        labels.append(cls)
    kinds = set(labels)
    if len(kinds) > 1 and mixed == "error":
        raise DataError(f"{where}: mixed labels, the image has both benign and malignant boxes (pass "
                        f"mixed='malignant' to label such images malignant)")
    image_label = given_label if given_label is not None else (max(kinds) if kinds else 0)
    return Sample(pixels, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64), image_label,
                  sid, patient)


def _annotation_box(ann: Mapping[str, Any], h: int, w: int, where: str) -> tuple:
    """``(x1, y1, x2, y2)`` of an annotation: its ``bbox``, or the extent of its ``segmentation``."""
    bbox = ann.get("bbox")
    if bbox is None or (isinstance(bbox, (list, tuple)) and len(bbox) == 0):
        if ann.get("segmentation") in (None, [], {}):
            raise DataError(f"{where}: neither a 'bbox' nor a 'segmentation'")
        bbox = _bbox_from_segmentation(ann["segmentation"], h, w, where)
    try:
        x, y, bw, bh = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise DataError(f"{where}: bbox must be [x, y, width, height], got {bbox!r}") from None
    if not (bw > 0 and bh > 0):
        raise DataError(f"{where}: empty or negative bbox {list(bbox)} (width and height must be > 0)")
    return (x, y, x + bw, y + bh)


def _file_names(samples: Sequence[Sample]) -> List[str]:
    """A unique, file-system-safe PNG name per sample, ``<id>.png`` when the id allows it."""
    names, taken = [], set()
    for s in samples:
        base = _UNSAFE.sub("_", s.id).strip(" .") or "image"
        name, n = f"{base}.png", 1
        while name.lower() in taken:  # also unique on case-insensitive file systems
            n += 1
            name = f"{base}-{n}.png"
        taken.add(name.lower())
        names.append(name)
    return names


def to_coco(samples: Sequence[Sample], *, file_names: Optional[Sequence[str]] = None) -> Dict[str, List[dict]]:
    """Samples as a COCO detection dict ``{"images", "annotations", "categories"}``.

    Parameters
    ----------
    samples : the samples (ids must be unique).
    file_names : each image's ``file_name``; default ``<id>.png`` with characters unsafe in file names replaced
        by ``_`` (made unique), the names :func:`write_coco` writes the images under.

    Returns
    -------
    dict with ``images`` (``id`` from 1, ``file_name``, ``width``, ``height``, ``image_label``, and ``patient``,
    ``weak``, ``sample_id`` when needed), ``annotations`` (``id`` from 1, ``image_id``, ``category_id`` 1 benign /
    2 malignant, ``bbox`` ``[x1, y1, x2 - x1, y2 - y1]``, ``area``, ``iscrowd`` 0) and ``categories``
    (:data:`COCO_CATEGORIES`). Weak samples get no annotations and ``weak: true``. Plain JSON data; coordinates
    are the float32 values as Python floats, so :func:`load_coco` reads back the same boxes bit for bit.
    """
    samples = list(samples)
    for k, s in enumerate(samples):
        if not isinstance(s, Sample):
            raise TypeError(f"item {k}: expected a wsbus.data.Sample, got {type(s).__name__}")
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise DataError(f"to_coco: sample ids must be unique, repeated: {dup[:5]}")
    names = list(file_names) if file_names is not None else _file_names(samples)
    if len(names) != len(samples):
        raise ValueError(f"{len(names)} file names for {len(samples)} samples")
    images, annotations = [], []
    for image_id, (s, name) in enumerate(zip(samples, names), start=1):
        entry: Dict[str, Any] = {"id": image_id, "file_name": name, "width": s.width, "height": s.height,
                                 "image_label": CLASSES[s.image_label]}
        if s.patient is not None:
            entry["patient"] = s.patient
        if not s.is_strong:
            entry["weak"] = True
        if _sample_id({"file_name": name}) != s.id:
            entry["sample_id"] = s.id
        images.append(entry)
        if not s.is_strong:
            continue
        for box, label in zip(s.boxes.astype(np.float64), s.labels):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    return {"images": images, "annotations": annotations, "categories": [dict(c) for c in COCO_CATEGORIES]}


def write_coco(samples: Sequence[Sample], out_dir: PathLike, *, overwrite: bool = False) -> Path:
    """Export samples as a COCO folder: ``out_dir/images/<file_name>`` (PNG) and ``out_dir/annotations.json``.

    Every file is written atomically (a temporary file renamed into place), the annotation file last, so a
    folder with an ``annotations.json`` always has all its images. A folder that already holds an
    ``annotations.json`` or a non-empty ``images/`` is refused (:class:`DataError`) unless ``overwrite``, which
    first removes that ``annotations.json`` and ``images/`` (so no image of the earlier export stays behind);
    nothing else in ``out_dir`` is touched. Returns the path of ``annotations.json``.
    """
    from PIL import Image

    from ..checkpoint import atomic_write, atomic_write_json

    samples = list(samples)
    coco = to_coco(samples)
    out_dir = Path(out_dir)
    folder = out_dir / IMAGES_FOLDER
    make_output_folder(out_dir)
    used = [n for n, used in ((ANNOTATIONS_FILE, (out_dir / ANNOTATIONS_FILE).exists()),
                              (f"{IMAGES_FOLDER}/", folder.is_dir() and any(folder.iterdir()))) if used]
    if used and not overwrite:
        raise DataError(f"{out_dir}: already holds {' and '.join(used)} (an earlier export?); pass --overwrite "
                        f"(overwrite=True) to replace them, or choose another folder")
    if used:
        (out_dir / ANNOTATIONS_FILE).unlink(missing_ok=True)  # first: a folder never lists images it lacks
        if folder.is_dir():
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for s, entry in zip(samples, coco["images"]):
        picture = Image.fromarray(np.ascontiguousarray(s.image))
        atomic_write(folder / entry["file_name"], lambda f, im=picture: im.save(f, format="PNG"), "wb")
    return atomic_write_json(coco, out_dir / ANNOTATIONS_FILE)


def load_coco_source(path: PathLike) -> List[Sample]:
    """The samples of a ``coco:`` data spec: ``coco:DIR`` reads ``DIR/annotations.json`` with the images in
    ``DIR/images/`` (or in ``DIR`` when there is no ``images/`` folder); ``coco:FILE.json`` reads that file with
    the images in its folder's ``images/`` (or in its folder). The layout :func:`write_coco` writes."""
    path = Path(path)
    json_path = path / ANNOTATIONS_FILE if path.is_dir() else path
    if path.is_dir() and not json_path.is_file():
        raise DataError(f"{path}: no {ANNOTATIONS_FILE} in the folder (a coco:DIR spec needs DIR/{ANNOTATIONS_FILE}; "
                        f"or give the JSON file itself, coco:FILE.json)")
    return load_coco(json_path)
