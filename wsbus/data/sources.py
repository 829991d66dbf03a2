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

A folder spec may end in filters on the images' attributes (``Sample.meta``): ``busbra:DIR?device=Logiq 7`` keeps
the images whose ``device`` contains "Logiq 7" (case-insensitive), ``?device!=Logiq 7`` drops them, and ``&`` joins
filters (``?device=Logiq&birads!=5``); the keys are :data:`FILTER_KEYS`. Cross-site experiments and scanner
subsets use them.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence, Tuple

from .busbra import load_busbra
from .busi import load_busi
from .coco import load_coco_source
from .formats import Sample
from .masks import load_masks_source
from .phantom import make_phantom
from .voc import load_voc

__all__ = ["DataSpec", "parse_source", "load_source", "filter_samples", "SOURCES", "FOLDER_LOADERS",
           "DEFAULT_PHANTOM_IMAGES", "FILTER_KEYS"]

#: Kinds of ``--data`` specs.
SOURCES = ("phantom", "voc", "busi", "busbra", "coco", "masks")
#: The loader of each folder source: ``loader(path) -> list[Sample]``.
FOLDER_LOADERS = {"voc": load_voc, "busi": load_busi, "busbra": load_busbra, "coco": load_coco_source,
                  "masks": load_masks_source}
#: Folder sources whose spec may also name a file.
FILE_SOURCES = ("coco",)
#: Images in ``--data phantom``.
DEFAULT_PHANTOM_IMAGES = 300

#: The attributes a source filter may name (``?KEY=VALUE`` keeps the images whose ``Sample.meta[KEY]`` contains
#: VALUE, case-insensitively; ``?KEY!=VALUE`` drops them; ``&`` joins filters).
FILTER_KEYS = ("device", "birads", "histology", "side")

_FORMS = ("phantom, phantom:N, voc:DIR, busi:DIR, busbra:DIR, coco:DIR, coco:FILE.json or masks:ROOT, each folder "
          "optionally filtered by image attributes, e.g. 'busbra:DIR?device=Logiq 7' or 'busbra:DIR?device!=Logiq 7'")


class DataSpec(NamedTuple):
    """A parsed ``--data`` spec: ``kind`` in :data:`SOURCES`, ``n`` (phantom) or ``path`` (folders), and
    ``filters``: ``(key, op, value)`` triples with ``op`` ``"="`` (keep) or ``"!="`` (drop)."""

    kind: str
    n: Optional[int] = None
    path: Optional[Path] = None
    filters: Tuple[Tuple[str, str, str], ...] = ()


def _parse_filters(spec: str, text: str) -> Tuple[Tuple[str, str, str], ...]:
    out = []
    for part in text.split("&"):
        key, op, value = (part.partition("!=") if "!=" in part else part.partition("="))
        key, value = key.strip().lower(), value.strip()
        if not op or not key or not value:
            raise ValueError(f"data spec {spec!r}: the filter {part!r} is not KEY=VALUE or KEY!=VALUE")
        if key not in FILTER_KEYS:
            raise ValueError(f"data spec {spec!r}: unknown filter {key!r}; filters: {', '.join(FILTER_KEYS)}")
        out.append((key, op, value))
    return tuple(out)


def filter_samples(samples: Sequence[Sample], filters: Sequence[Tuple[str, str, str]],
                   spec: str = "the data") -> List[Sample]:
    """The samples that pass every filter (see :class:`DataSpec`). Raises ``ValueError`` when a filter names an
    attribute the images lack, or when nothing passes (naming the values that exist)."""
    kept = list(samples)
    for key, op, value in filters:
        have = sorted({s.meta[key] for s in samples if key in s.meta})
        if not have:
            raise ValueError(f"{spec}: its images have no {key!r} attribute to filter on")
        want = value.lower()
        kept = [s for s in kept if (want in s.meta.get(key, "").lower()) == (op == "=")]
        if not kept:
            raise ValueError(f"{spec}: no image passes {key}{op}{value!r}; its {key} values are {have}")
    return kept


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
    rest, _, query = rest.partition("?")
    filters = _parse_filters(spec, query) if query else ()
    if filters and kind == "phantom":
        raise ValueError(f"data spec {spec!r}: the phantom takes no filters")
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
    return DataSpec(kind, path=Path(rest).expanduser(), filters=filters)


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
    return filter_samples(samples, parsed.filters, f"data spec {spec!r}") if parsed.filters else list(samples)
