"""Loader for BUS-BRA (Gómez-Flores et al., Medical Physics 2024; Zenodo 10.5281/zenodo.7730709, CC BY 4.0).

Taught in ``book/09_real_data.md``.

Layout (the Zenodo archive unpacks to ``BUSBRA/``)::

    BUSBRA/bus_data.csv                 one row per image: ID, Case, Histology, Pathology, BIRADS, Device, ...
    BUSBRA/Images/bus_0001-l.png        grayscale B-mode images (-l, -r, -s views)
    BUSBRA/Masks/mask_0001-l.png        lesion masks

1,875 images of 1,064 patients (``Case``), every image benign or malignant (no normal class). Boxes come
from the masks, one per connected component (:func:`wsbus.data.busi.boxes_from_mask`).
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Dict, List, Set, Tuple

import numpy as np

from .busi import read_mask_boxes
from .formats import CLASS_TO_INDEX, DataError, Sample
from .voc import PathLike, read_gray

REQUIRED_COLUMNS = ("ID", "Case", "Pathology")


def _busbra_root(root: Path) -> Path:
    for candidate in (root, root / "BUSBRA"):
        if (candidate / "bus_data.csv").is_file():
            return candidate
    raise DataError(f"{root}: bus_data.csv not found here or in {root / 'BUSBRA'}")


def _png_names(folder: Path) -> Set[str]:
    """Names of the regular ``*.png`` files in ``folder`` (empty when it does not exist)."""
    try:
        with os.scandir(folder) as entries:
            return {e.name for e in entries if e.name.endswith(".png") and e.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        return set()


#: The separators a ``bus_data.csv`` may use (the published file: commas; spreadsheets in many locales: ``;``).
SEPARATORS = (",", ";", "\t", "|")


def _header(line: str, separator: str) -> List[str]:
    return [h.strip() for h in next(csv.reader([line], delimiter=separator), [])]


def _separator(csv_path: Path, first_line: str) -> str:
    """The separator under which the header holds every required column; DataError naming the file when none or
    several do."""
    fits = [d for d in SEPARATORS if all(c in _header(first_line, d) for c in REQUIRED_COLUMNS)]
    if len(fits) == 1:
        return fits[0]
    if fits:
        raise DataError(f"{csv_path}: the header {first_line.strip()!r} reads as the columns {REQUIRED_COLUMNS} "
                        f"with several separators ({', '.join(map(repr, fits))}); make it one")
    best = max(SEPARATORS, key=lambda d: sum(c in _header(first_line, d) for c in REQUIRED_COLUMNS))
    found = _header(first_line, best)
    missing = [c for c in REQUIRED_COLUMNS if c not in found]
    raise DataError(f"{csv_path}: missing column(s) {missing}; found {found} (looked for them separated by "
                    f"{', '.join(map(repr, SEPARATORS))})")


def _read_rows(csv_path: Path) -> List[Tuple[Dict[str, str], int]]:
    """``(row, line number)`` of ``bus_data.csv``, stripped, whatever its separator (:data:`SEPARATORS`); a row
    with more fields than the header is a DataError naming the line."""
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{csv_path}: cannot read csv ({exc})") from exc
    separator = _separator(csv_path, text.splitlines()[0] if text.strip() else "")
    rows = []
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=separator)
        for row in reader:
            if None in row:
                raise DataError(f"{csv_path}, line {reader.line_num}: {len(reader.fieldnames) + len(row[None])} "
                                f"fields, but the header has {len(reader.fieldnames)} (separator {separator!r}); a "
                                f"value holding the separator must be quoted")
            rows.append(({(k or "").strip(): (v or "").strip() for k, v in row.items()}, reader.line_num))
    except csv.Error as exc:
        raise DataError(f"{csv_path}: cannot read csv ({exc})") from exc
    return rows


def load_busbra(root: PathLike, *, min_area: int = 10) -> List[Sample]:
    """Load BUS-BRA as a list of strong :class:`Sample`, with ``patient`` = the csv's ``Case``.

    Parameters
    ----------
    root : the ``BUSBRA`` folder (holding ``bus_data.csv``, ``Images/``, ``Masks/``) or its parent.
    min_area : mask components smaller than this many pixels are ignored.

    Returns
    -------
    list of :class:`Sample` in csv order; ids are the csv ``ID`` (e.g. ``"bus_0001-l"``), patients
    ``"busbra:<Case>"``, image labels 1 (benign) or 2 (malignant) from ``Pathology``, and ``meta`` holding the
    csv's ``device``, ``birads``, ``histology`` and ``side`` (when present).

    The csv may separate its values by commas (the published file), semicolons, tabs or ``|``: the separator is
    the one under which the header holds the required columns ``ID``, ``Case``, ``Pathology``.

    Raises
    ------
    DataError
        Naming the file (and csv line): missing columns, a row with more values than the header, empty csv,
        duplicate ids, a row without its image or mask, an unknown pathology, a corrupt image, a mask whose size
        differs from its image, an empty mask, or
        images in ``Images/`` that no csv row describes.

    Notes
    -----
    Taught in ``book/09_real_data.md``.
    """
    base = _busbra_root(Path(root))
    csv_path = base / "bus_data.csv"
    rows = _read_rows(csv_path)
    if not rows:
        raise DataError(f"{csv_path}: no rows")
    # One listing per folder instead of a stat call per file (the same checks and messages).
    image_files, mask_files = _png_names(base / "Images"), _png_names(base / "Masks")
    samples, seen = [], set()
    for row, line in rows:
        where = f"{csv_path}, line {line}"
        image_id = row["ID"]
        if not image_id:
            raise DataError(f"{where}: empty ID")
        if image_id in seen:
            raise DataError(f"{where}: ID {image_id!r} appears twice")
        seen.add(image_id)
        pathology = row["Pathology"].lower()
        if pathology not in ("benign", "malignant"):
            raise DataError(f"{where}: unknown Pathology {row['Pathology']!r} (expected benign or malignant)")
        if not row["Case"]:
            raise DataError(f"{where}: empty Case (patient) for {image_id}")
        image_path = base / "Images" / f"{image_id}.png"
        if image_path.name not in image_files:
            raise DataError(f"{where}: no image {image_path} for ID {image_id!r}")
        mask_name = ("mask_" + image_id[len("bus_"):]) if image_id.startswith("bus_") else f"mask_{image_id}"
        mask_path = base / "Masks" / f"{mask_name}.png"
        if mask_path.name not in mask_files:
            raise DataError(f"{where}: no mask {mask_path} for ID {image_id!r}")
        image = read_gray(image_path)
        boxes = read_mask_boxes(mask_path, image.shape, min_area=min_area)
        if len(boxes) == 0:
            raise DataError(f"{mask_path}: empty mask (no component of at least {min_area} pixels)")
        label = CLASS_TO_INDEX[pathology]
        meta = {k.lower(): row[k] for k in ("Device", "BIRADS", "Histology", "Side") if row.get(k)}
        samples.append(Sample(image, boxes, np.full(len(boxes), label, np.int64), label, image_id,
                              f"busbra:{row['Case']}", meta))
    described = {f"{i}.png" for i in seen}
    extra = sorted(name for name in image_files if name not in described)
    if extra:
        raise DataError(f"{base / 'Images'}: {len(extra)} image(s) not described in {csv_path.name}, "
                        f"e.g. {extra[:3]}")
    return samples
