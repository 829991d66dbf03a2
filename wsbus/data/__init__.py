"""Data layer: the :class:`Sample` record, loaders, the phantom, splits, transforms and datasets.

Taught in ``book/02_data.md`` and ``book/09_real_data.md``.
"""
from .formats import CLASSES, CLASS_TO_INDEX, DataError, Sample
from .busbra import load_busbra
from .busi import boxes_from_mask, load_busi
from .coco import load_coco, to_coco, write_coco
from .dataset import KINDS, DetectionDataset, check_samples, collate
from .images import list_images, read_image
from .masks import load_masks
from .dedup import assign_duplicate_patients, find_duplicates, label_conflicts
from .phantom import SCANNERS, PhantomConfig, make_phantom
from .splits import TABLE_I, Split, hold_out, split, split_table1
from .transforms import GRAY_MEAN, GRAY_STD, eval_transforms, train_transforms, ultrasound_augmentation
from .voc import load_voc, read_gray

__all__ = [
    "CLASSES", "CLASS_TO_INDEX", "DataError", "Sample",
    "load_voc", "load_busi", "load_busbra", "read_gray", "boxes_from_mask",
    "load_coco", "to_coco", "write_coco", "load_masks", "read_image", "list_images",
    "make_phantom", "PhantomConfig", "SCANNERS",
    "split", "split_table1", "hold_out", "Split", "TABLE_I",
    "find_duplicates", "label_conflicts", "assign_duplicate_patients",
    "train_transforms", "eval_transforms", "ultrasound_augmentation", "GRAY_MEAN", "GRAY_STD",
    "DetectionDataset", "collate", "check_samples", "KINDS",
]
