"""Data layer: the :class:`Sample` record, loaders, the phantom, splits and transforms.

Taught in ``book/02_data.md``.
"""
from .formats import CLASSES, CLASS_TO_INDEX, DataError, Sample

__all__ = ["CLASSES", "CLASS_TO_INDEX", "DataError", "Sample"]
