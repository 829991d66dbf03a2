"""Data sources by name: the ``--data`` specs of the command line.

Taught in ``book/09_real_data.md``.

=====================  ==============================================================
spec                   samples
=====================  ==============================================================
``phantom``            ``make_phantom(DEFAULT_PHANTOM_IMAGES images, seed, size)``
``phantom:N``          ``N`` phantom images
``voc:DIR``            :func:`wsbus.data.load_voc` (VOC-BUS folder, e.g. SNUBH's format)
``busi:DIR``           :func:`wsbus.data.load_busi` (``Dataset_BUSI_with_GT``)
``busbra:DIR``         :func:`wsbus.data.load_busbra` (BUS-BRA)
``coco:DIR``           :func:`wsbus.data.load_coco` of ``DIR/annotations.json``, images in
                       ``DIR/images/`` (or ``DIR``): what ``wsbus convert --to coco`` writes
``coco:FILE.json``     :func:`wsbus.data.load_coco` of that file, images in its folder's
                       ``images/`` (or its folder)
``masks:ROOT``         :func:`wsbus.data.load_masks` of ``ROOT/images/``, ``ROOT/masks/``
                       (``<stem>.png``), ``ROOT/labels.csv`` (``id,label[,patient]``), options
                       in an optional ``ROOT/masks.json`` (:mod:`wsbus.data.masks`)
=====================  ==============================================================
"""
from __future__ import annotations

from pathlib import Path
from typing import List, NamedTuple, Optional

from .busbra import load_busbra
from .busi import load_busi
from .coco import load_coco_source
from .formats import Sample
from .masks import load_masks_source
from .phantom import make_phantom
from .voc import load_voc

__all__ = ["DataSpec", "parse_source", "load_source", "SOURCES", "FOLDER_LOADERS", "DEFAULT_PHANTOM_IMAGES"]

#: Kinds of ``--data`` specs.
SOURCES = ("phantom", "voc", "busi", "busbra", "coco", "masks")
#: The loader of each folder source: ``loader(path) -> list[Sample]``.
FOLDER_LOADERS = {"voc": load_voc, "busi": load_busi, "busbra": load_busbra, "coco": load_coco_source,
                  "masks": load_masks_source}
#: Folder sources whose spec may also name a file.
FILE_SOURCES = ("coco",)
#: Images in ``--data phantom``.
DEFAULT_PHANTOM_IMAGES = 300

_FORMS = "phantom, phantom:N, voc:DIR, busi:DIR, busbra:DIR, coco:DIR, coco:FILE.json or masks:ROOT"


class DataSpec(NamedTuple):
    """A parsed ``--data`` spec: ``kind`` in :data:`SOURCES`, and ``n`` (phantom) or ``path`` (folders)."""

    kind: str
    n: Optional[int] = None
    path: Optional[Path] = None


def parse_source(spec: str) -> DataSpec:
    """Parse a ``--data`` spec without loading anything.

    Raises
    ------
    ValueError
        for an unknown kind, a phantom count that is not a positive integer, or a folder spec without a folder.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty data spec {spec!r}; use {_FORMS}")
    kind, sep, rest = spec.strip().partition(":")
    kind = kind.lower()
    if kind not in SOURCES:
        raise ValueError(f"unknown data source {spec!r}; use {_FORMS}")
    if kind == "phantom":
        if not sep:
            return DataSpec("phantom", DEFAULT_PHANTOM_IMAGES)
        try:
            n = int(rest)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"data spec {spec!r}: the phantom's image count must be a positive integer "
                             f"(phantom:N)")
        return DataSpec("phantom", n)
    if not rest:
        raise ValueError(f"data spec {spec!r} names no folder; use {kind}:DIR")
    return DataSpec(kind, path=Path(rest).expanduser())


def load_source(spec: str, *, size: int = 128, seed: int = 0) -> List[Sample]:
    """Load the samples a ``--data`` spec names.

    Parameters
    ----------
    spec : ``phantom``, ``phantom:N``, ``voc:DIR``, ``busi:DIR``, ``busbra:DIR``, ``coco:DIR``, ``coco:FILE.json``
        or ``masks:ROOT`` (the module's table).
    size : the phantom's image side in pixels (ignored for folders, whose images keep their size).
    seed : the phantom's seed (ignored for folders).

    Returns
    -------
    list of :class:`Sample`.

    Raises
    ------
    ValueError
        for a bad spec; FileNotFoundError naming the folder when it does not exist; the loaders' own
        :class:`wsbus.data.DataError` naming the file for bad content.

    Taught in ``book/09_real_data.md``.
    """
    parsed = parse_source(spec)
    if parsed.kind == "phantom":
        return make_phantom(parsed.n, seed=seed, size=size)
    path = parsed.path
    if not path.exists():
        raise FileNotFoundError(f"data spec {spec!r}: the folder {str(path)!r} does not exist")
    if not path.is_dir() and not (parsed.kind in FILE_SOURCES and path.is_file()):
        raise NotADirectoryError(f"data spec {spec!r}: {str(path)!r} is not a folder")
    samples = FOLDER_LOADERS[parsed.kind](path)
    if not samples:
        raise ValueError(f"data spec {spec!r}: no images found in {str(path)!r}")
    return list(samples)
