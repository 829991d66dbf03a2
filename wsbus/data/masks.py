"""Images + lesion masks + a label table, the layout of most public breast-ultrasound sets: :func:`load_masks`.

Layout of the ``masks:ROOT`` data spec (:func:`load_masks_source`), every name configurable::

    ROOT/images/<stem>.png       the scans (PNG, JPEG, TIFF, BMP or DICOM)
    ROOT/masks/<stem>.png        the lesion mask of each scan (name pattern "{stem}.png")
    ROOT/labels.csv              id,label[,patient]  (id = <stem> or the image's file name)
    ROOT/masks.json              optional: keyword arguments of load_masks, e.g.
                                 {"mask_pattern": "{stem}_mask.png", "label_column": "Pathology",
                                  "label_map": {"B": "benign", "M": "malignant"}}
                                 and "images", "masks", "labels" to rename the two folders and the table

Masks are either *binary* (every lesion one colour, the class from the table; pixels above half the mask's
maximum are lesion) or *colour-coded* (``colors={"benign": [0, 255, 0], "malignant": [255, 0, 0]}``: pixels of
exactly a class's colour are that class, so the table is optional). Each connected component (8-connectivity)
of at least ``min_area`` pixels becomes one box (:func:`wsbus.data.busi.boxes_from_mask`).

An image labelled normal has no box (no mask, or an empty one); a benign or malignant image needs a non-empty
mask, or with ``missing_mask="weak"`` becomes a weak sample when its mask is missing.
"""
from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from .busi import boxes_from_mask, read_mask_boxes
from .formats import CLASSES, CLASS_TO_INDEX, DataError, Sample
from .images import DICOM_SUFFIXES, IMAGE_SUFFIXES, read_image

__all__ = ["DEFAULT_LABEL_VALUES", "load_masks", "load_masks_source", "MASKS_SETTINGS_FILE"]

PathLike = Union[str, "os.PathLike[str]"]

#: Label values understood without a ``label_map`` (case-insensitive).
DEFAULT_LABEL_VALUES = {"normal": 0, "benign": 1, "malignant": 2, "0": 0, "1": 1, "2": 2}
#: The optional settings file of a ``masks:ROOT`` folder.
MASKS_SETTINGS_FILE = "masks.json"
_LAYOUT_KEYS = {"images": "images", "masks": "masks", "labels": "labels.csv"}


def _pattern(mask_pattern: Union[str, "re.Pattern[str]"]):
    """``("format", str)`` or ``("regex", compiled)``; strings starting with ``re:`` are regular expressions."""
    if isinstance(mask_pattern, re.Pattern):
        regex = mask_pattern
    elif isinstance(mask_pattern, str) and mask_pattern.startswith("re:"):
        try:
            regex = re.compile(mask_pattern[3:])
        except re.error as exc:
            raise ValueError(f"mask_pattern {mask_pattern!r} is not a valid regular expression: {exc}") from None
    elif isinstance(mask_pattern, str):
        if "{stem}" not in mask_pattern and "{name}" not in mask_pattern:
            raise ValueError(f"mask_pattern {mask_pattern!r} must contain {{stem}} or {{name}} (or be a regular "
                             f"expression 're:...' with a (?P<stem>...) group)")
        return "format", mask_pattern
    else:
        raise TypeError(f"mask_pattern must be a str or a compiled regular expression, got "
                        f"{type(mask_pattern).__name__}")
    if "stem" not in regex.groupindex:
        raise ValueError(f"the mask regular expression {regex.pattern!r} needs a named group (?P<stem>...)")
    return "regex", regex


def _files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _find_masks(images: List[Path], masks_dir: Path, pattern) -> Dict[Path, List[Path]]:
    kind, spec = pattern
    found: Dict[Path, List[Path]] = {p: [] for p in images}
    if kind == "format":
        for p in images:
            candidate = masks_dir / _format(spec, p)
            if candidate.is_file() and candidate != p:
                found[p].append(candidate)
        return found
    by_stem: Dict[str, Path] = {}
    for p in images:
        by_stem.setdefault(p.stem, p)
    for m in _files(masks_dir):
        match = spec.fullmatch(m.name)
        if match and match["stem"] in by_stem and m not in found:
            found[by_stem[match["stem"]]].append(m)
    return found


def _format(spec: str, p: Path) -> str:
    try:
        return spec.format(stem=p.stem, name=p.name, suffix=p.suffix)
    except (KeyError, IndexError) as exc:
        raise ValueError(f"mask_pattern {spec!r}: unknown placeholder {exc}; use {{stem}}, {{name}} or "
                         f"{{suffix}}") from None


def _drop_masks(candidates: List[Path], pattern) -> List[Path]:
    """The image files of a folder that also holds the masks (as in BUSI): files that are some other file's mask
    (format pattern) or that match the mask expression (regex) are masks, not images."""
    kind, spec = pattern
    if kind == "regex":
        return [p for p in candidates if spec.fullmatch(p.name) is None]
    mask_names = {n for p, n in ((p, _format(spec, p)) for p in candidates) if n != p.name}
    return [p for p in candidates if p.name not in mask_names]


def _read_table(labels_csv: Path, id_column: str, label_column: str, patient_column: Optional[str]):
    """Rows of the label table: ``[(id, label text, patient or None, line)]``; columns matched case-insensitively."""
    try:
        with open(labels_csv, newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{labels_csv}: cannot read the label table ({type(exc).__name__}: {exc})") from exc
    if not text.strip():
        raise DataError(f"{labels_csv}: the label table is empty")
    try:
        dialect = csv.Sniffer().sniff(text.splitlines()[0], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(text.splitlines(), dialect)
    try:
        header = [h.strip() for h in next(reader)]
        rows = list(reader)
    except csv.Error as exc:
        raise DataError(f"{labels_csv}: broken csv ({exc})") from exc
    lower = [h.lower() for h in header]

    def column(name: Optional[str], what: str) -> Optional[int]:
        if name is None:
            return None
        if name.lower() not in lower:
            raise DataError(f"{labels_csv}: no {what} column {name!r}; the columns are {header}")
        return lower.index(name.lower())

    ic, lc, pc = column(id_column, "id"), column(label_column, "label"), column(patient_column, "patient")
    out = []
    for line, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        cells = [c.strip() for c in row] + [""] * (len(header) - len(row))
        if not cells[ic]:
            raise DataError(f"{labels_csv}, line {line}: empty {id_column!r}")
        out.append((cells[ic], cells[lc], (cells[pc] or None) if pc is not None else None, line))
    if not out:
        raise DataError(f"{labels_csv}: the label table has no rows")
    return out


def _colour_boxes(mask_path: Path, shape: Tuple[int, int], colors: Mapping[int, List[Tuple[int, int, int]]],
                  min_area: int) -> Tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    try:
        with Image.open(mask_path) as im:
            im.load()
            rgb = np.asarray(im.convert("RGB"))
    except Exception as exc:
        raise DataError(f"{mask_path}: cannot read mask ({type(exc).__name__}: {exc})") from exc
    if rgb.shape[:2] != tuple(shape):
        raise DataError(f"{mask_path}: mask size {rgb.shape[1]}x{rgb.shape[0]} differs from the image size "
                        f"{shape[1]}x{shape[0]}")
    boxes, labels = [], []
    for cls, values in sorted(colors.items()):
        hit = np.zeros(rgb.shape[:2], dtype=bool)
        for value in values:
            hit |= np.all(rgb == np.asarray(value, dtype=np.uint8), axis=-1)
        b = boxes_from_mask(hit.astype(np.uint8), min_area=min_area, where=str(mask_path))
        boxes.append(b)
        labels.append(np.full(len(b), cls, dtype=np.int64))
    return np.concatenate(boxes).astype(np.float32), np.concatenate(labels)


def _colour_table(colors: Mapping[str, Any]) -> Dict[int, List[Tuple[int, int, int]]]:
    table: Dict[int, List[Tuple[int, int, int]]] = {}
    for name, value in colors.items():
        key = str(name).strip().lower()
        if key not in ("benign", "malignant"):
            raise ValueError(f"colors: keys must be 'benign' or 'malignant', got {name!r}")
        values = [value] if len(value) == 3 and all(np.isscalar(v) for v in value) else list(value)
        parsed = []
        for v in values:
            v = tuple(int(x) for x in v)
            if len(v) != 3 or not all(0 <= x <= 255 for x in v):
                raise ValueError(f"colors[{name!r}]: expected (R, G, B) values in 0..255, got {v}")
            parsed.append(v)
        table[CLASS_TO_INDEX[key]] = parsed
    return table


def load_masks(images_dir: PathLike, masks_dir: PathLike, labels_csv: Optional[PathLike] = None, *,
               mask_pattern: Union[str, "re.Pattern[str]"] = "{stem}.png", id_column: str = "id",
               label_column: str = "label", patient_column: Optional[str] = None,
               label_map: Optional[Mapping[str, str]] = None, colors: Optional[Mapping[str, Any]] = None,
               min_area: int = 10, missing_mask: str = "error") -> List[Sample]:
    """Load an image folder, a mask folder and a label table as a list of :class:`Sample`.

    Parameters
    ----------
    images_dir : the scans (files ending in PNG, JPEG, TIFF, BMP or DICOM endings), read as 2-D ``uint8`` gray
        (:func:`wsbus.data.images.read_image`).
    masks_dir : the masks. It may be ``images_dir`` (masks beside their images, as in BUSI): files that are another
        file's mask by ``mask_pattern`` are then masks, not images.
    labels_csv : the label table (``,``, ``;`` or tab separated); optional with colour-coded masks.
    mask_pattern : the mask file name of an image: a format string with ``{stem}`` (``"{stem}_mask.png"``,
        ``"mask_{stem}.png"``), ``{name}`` or ``{suffix}``; or a regular expression (a compiled one, or a string
        starting with ``re:``) matched against every mask file name, whose group ``(?P<stem>...)`` names the
        image, so an image may have several masks (``"re:(?P<stem>.+)_mask(_\\d+)?\\.png"``), their boxes joined.
    id_column, label_column, patient_column : the table's columns (matched case-insensitively); the id is the
        image's stem or file name; ``patient_column`` None gives every image its own patient (None).
    label_map : table values to class names, e.g. ``{"B": "benign", "M": "malignant", "N": "normal"}``, on top of
        :data:`DEFAULT_LABEL_VALUES` (case-insensitive).
    colors : colour-coded masks, ``{"benign": (R, G, B) or [(R, G, B), ...], "malignant": ...}``: pixels of exactly
        these colours are lesions of that class; ``None``: binary masks.
    min_area : mask components smaller than this many pixels are ignored.
    missing_mask : a benign/malignant image without a mask is an error (``"error"``) or a weak sample
        (``"weak"``).

    Returns
    -------
    list of :class:`Sample` sorted by image file name, ids the image stems.

    Raises
    ------
    DataError
        naming the file (and table line): a missing folder or table, no images, an image without a table row, a
        table row without its image, duplicate ids, an unknown label value, a missing or empty mask of a mass, a
        non-empty mask of a normal image, a mask whose size differs from its image, an unreadable image or mask,
        binary masks without a label table.
    """
    if missing_mask not in ("error", "weak"):
        raise ValueError(f"missing_mask must be 'error' or 'weak', got {missing_mask!r}")
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    for folder, what in ((images_dir, "image"), (masks_dir, "mask")):
        if not folder.is_dir():
            raise DataError(f"{folder}: {what} folder not found")
    pattern = _pattern(mask_pattern)
    colour_table = _colour_table(colors) if colors is not None else None
    values = dict(DEFAULT_LABEL_VALUES)
    for k, v in (label_map or {}).items():
        name = str(v).strip().lower()
        if name not in CLASS_TO_INDEX:
            raise ValueError(f"label_map[{k!r}] = {v!r}: expected one of {list(CLASSES)}")
        values[str(k).strip().lower()] = CLASS_TO_INDEX[name]

    suffixes = IMAGE_SUFFIXES + DICOM_SUFFIXES
    images = [p for p in _files(images_dir) if p.suffix.lower() in suffixes]
    if masks_dir.resolve() == images_dir.resolve():
        images = _drop_masks(images, pattern)
    if not images:
        raise DataError(f"{images_dir}: no images found (looked for {', '.join(suffixes)})")
    masks = _find_masks(images, masks_dir, pattern)

    if labels_csv is None and colour_table is None:
        raise DataError(f"{masks_dir}: binary masks need a label table (labels_csv) to tell benign from malignant; "
                        f"or pass colors= for colour-coded masks")
    table = {} if labels_csv is None else _label_table(Path(labels_csv), images, images_dir, id_column, label_column,
                                                      patient_column, values)
    samples: List[Sample] = []
    for image_path in images:
        label, patient = table.get(image_path.name, (None, None))
        sample = _mask_sample(image_path, masks[image_path], label, patient, colour_table, min_area, missing_mask,
                              masks_dir, pattern)
        samples.append(sample)
    return samples


def _label_table(labels_csv: Path, images: List[Path], images_dir: Path, id_column: str, label_column: str,
                 patient_column: Optional[str], values: Dict[str, int]) -> Dict[str, Tuple[int, Optional[str]]]:
    """``{image file name: (label, patient)}`` from the label table, every image labelled exactly once."""
    if not labels_csv.is_file():
        raise DataError(f"{labels_csv}: label table not found")
    by_key: Dict[str, Path] = {}
    for p in images:
        by_key.setdefault(p.stem, p)
        by_key.setdefault(p.name, p)
    first_line: Dict[Path, int] = {}
    table: Dict[str, Tuple[int, Optional[str]]] = {}
    for image_id, text, patient, line in _read_table(labels_csv, id_column, label_column, patient_column):
        where = f"{labels_csv}, line {line}"
        image = by_key.get(image_id)
        if image is None:
            raise DataError(f"{where}: no image {image_id!r} in {images_dir} (looked for a file whose name or "
                            f"stem is {image_id!r})")
        if image in first_line:
            raise DataError(f"{where}: image {image_id!r} already labelled on line {first_line[image]}")
        first_line[image] = line
        label = values.get(text.strip().lower())
        if label is None:
            raise DataError(f"{where}: unknown label {text!r} in column {label_column!r}; known values "
                            f"{sorted(values)} (pass label_map={{{text!r}: 'benign'|'malignant'|'normal'}})")
        table[image.name] = (label, patient)
    unlabelled = [p for p in images if p.name not in table]
    if unlabelled:
        raise DataError(f"{unlabelled[0]}: the image has no row in {labels_csv} ({len(unlabelled)} image(s) "
                        f"without a label, e.g. {[p.name for p in unlabelled[:3]]})")
    return table


def _mask_sample(image_path: Path, files: List[Path], label: Optional[int], patient: Optional[str],
                 colour_table, min_area: int, missing_mask: str, masks_dir: Path, pattern) -> Sample:
    """One image with its mask files as a :class:`Sample` (label from the table, or from the mask's colours)."""
    pixels = read_image(image_path)
    if colour_table is not None:
        parts = [_colour_boxes(m, pixels.shape, colour_table, min_area) for m in files]
    else:
        parts = [(b, np.full(len(b), label or 0, dtype=np.int64))
                 for b in (read_mask_boxes(m, pixels.shape, min_area=min_area) for m in files)]
    boxes = np.concatenate([b for b, _ in parts]).astype(np.float32) if parts else np.zeros((0, 4), np.float32)
    labels = np.concatenate([lab for _, lab in parts]) if parts else np.zeros(0, np.int64)
    where = files[0] if files else image_path
    if label is None:  # colour masks without a table: the worst class present, normal without a lesion
        label = int(labels.max()) if len(labels) else 0
    if label == 0:
        if len(boxes):
            raise DataError(f"{where}: a normal image with a non-empty mask ({len(boxes)} lesion(s))")
        return Sample(pixels, boxes, labels, 0, image_path.stem, patient)
    if not files:
        if missing_mask == "weak":
            return Sample(pixels, None, None, label, image_path.stem, patient)
        expected = (str(masks_dir / _format(pattern[1], image_path)) if pattern[0] == "format"
                    else f"a file in {masks_dir} matching {pattern[1].pattern!r}")
        raise DataError(f"{image_path}: no mask for a {CLASSES[label]} image (expected {expected}; pass "
                        f"missing_mask='weak' to keep such images as weak samples)")
    if len(boxes) == 0:
        raise DataError(f"{where}: the mask of a {CLASSES[label]} image is empty (no lesion component of at "
                        f"least {min_area} pixels)")
    try:
        return Sample(pixels, boxes, labels, label, image_path.stem, patient)
    except DataError as exc:
        raise DataError(f"{where}: {exc} (the mask's classes disagree with the table's label)") from exc


def load_masks_source(root: PathLike) -> List[Sample]:
    """The samples of a ``masks:ROOT`` data spec: ``ROOT/images/``, ``ROOT/masks/``, ``ROOT/labels.csv`` (when
    present) and the keyword arguments of :func:`load_masks` in an optional ``ROOT/masks.json`` (which may rename
    the folders and the table with ``"images"``, ``"masks"``, ``"labels"``)."""
    root = Path(root)
    settings: Dict[str, Any] = {}
    settings_file = root / MASKS_SETTINGS_FILE
    if settings_file.is_file():
        try:
            settings = json.loads(settings_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{settings_file}: cannot read the settings ({type(exc).__name__}: {exc})") from exc
        if not isinstance(settings, dict):
            raise DataError(f"{settings_file}: expected a JSON object of load_masks options")
    explicit_labels = "labels" in settings
    layout = {k: settings.pop(k, default) for k, default in _LAYOUT_KEYS.items()}
    labels = root / layout["labels"] if layout["labels"] else None
    if labels is not None and not explicit_labels and not labels.is_file():
        labels = None  # the conventional table is optional (colour-coded masks)
    try:
        return load_masks(root / layout["images"], root / layout["masks"], labels, **settings)
    except TypeError as exc:
        raise DataError(f"{settings_file}: {exc}") from exc
