"""A map-style ``torch.utils.data.Dataset`` over samples, yielding torchvision-style ``(image, target)`` pairs.

Taught in ``book/02_data.md`` and ``book/06_joint_training.md``.

Strong and eval targets hold ``boxes`` and ``labels`` (torchvision's detection convention) plus ``image_label``
and ``index``; weak targets hold only ``image_label`` and ``index``: the detector recognises a weak image by the
missing ``"boxes"``. Items are addressed by ``i`` or by ``(i, aug_seed)``; with a seed, the augmentation is drawn
from ``(dataset seed, aug_seed)`` alone, so a resumed training run sees exactly the same images.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from .formats import DataError, Sample
from .transforms import apply, eval_transforms

#: What a dataset serves: boxes always (``strong``), never (``weak``), or when the sample has them (``eval``).
KINDS = ("strong", "weak", "eval")


def min_extent(boxes: torch.Tensor, size: Tuple[int, int], extent: float = 1.0) -> torch.Tensor:
    """``boxes`` widened where needed to at least ``extent`` pixels in each direction, inside an image of ``size``
    (H, W). A rotation or crop can squash a thin box at the border of the image to zero height (a pseudo-box, say);
    the detector refuses such a box, and dropping it would lose a mass."""
    h, w = float(size[0]), float(size[1])
    out = boxes.clone()
    for lo, hi, limit in ((0, 2, w), (1, 3, h)):
        short = out[:, hi] - out[:, lo] < extent
        if bool(short.any()):
            centre = (out[short, lo] + out[short, hi]) / 2
            start = (centre - extent / 2).clamp(min=0.0, max=max(limit - extent, 0.0))
            out[short, lo], out[short, hi] = start, torch.clamp(start + extent, max=limit)
    return out


def check_samples(samples: Sequence[Any], kind: str, item: str = "item",
                  no_boxes: str = "has no boxes but the dataset's kind is 'strong' "
                                  "(use kind='weak', or give normal images an empty [0, 4] box array)") -> None:
    """Raise unless every item is a :class:`Sample` (TypeError ``<item> <k>: expected ...``) and, for the
    ``"strong"`` kind, has boxes (DataError ``sample '<id>' <no_boxes>``)."""
    for k, s in enumerate(samples):
        if not isinstance(s, Sample):
            raise TypeError(f"{item} {k}: expected a wsbus.data.Sample, got {type(s).__name__}")
        if kind == "strong" and not s.is_strong:
            raise DataError(f"sample {s.id!r} {no_boxes}")


class DetectionDataset(Dataset):
    """Samples as ``(image [C, H, W] float32 in [0, 1], target dict)`` pairs for the detector.

    Parameters
    ----------
    samples : the samples (kept by reference, not copied).
    kind : ``"strong"`` (every sample must have boxes; a normal image has K = 0), ``"weak"`` (targets without boxes,
        even for samples that have them) or ``"eval"`` (boxes when the sample has them).
    transforms : a callable ``(image, target) -> (image, target)`` such as
        :func:`~wsbus.data.transforms.train_transforms`; ``None`` means
        :func:`~wsbus.data.transforms.eval_transforms` (no augmentation).
    seed : the dataset's augmentation seed, combined with each item's ``aug_seed``.

    Notes
    -----
    ``dataset[i]`` draws augmentation from torch's global RNG (as usual with a DataLoader);
    ``dataset[(i, aug_seed)]`` draws it from ``(seed, aug_seed)`` only and leaves the global RNG untouched.
    Taught in ``book/02_data.md``.
    """

    def __init__(self, samples: Sequence[Sample], kind: str = "strong", transforms: Optional[Callable] = None,
                 seed: int = 0) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        samples = list(samples)
        check_samples(samples, kind)
        self.samples = samples
        self.kind = kind
        self.transforms = transforms if transforms is not None else eval_transforms()
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.samples)

    def _aug_seed(self, aug_seed: int) -> int:
        return int(np.random.SeedSequence([self.seed & 0xFFFFFFFF, int(aug_seed) & 0xFFFFFFFFFFFFFFFF])
                   .generate_state(1, dtype=np.uint64)[0] & 0x7FFFFFFFFFFFFFFF)

    def __getitem__(self, item: Union[int, Tuple[int, int]]) -> Tuple[torch.Tensor, Dict[str, Any]]:
        if isinstance(item, tuple):
            if len(item) != 2:
                raise TypeError(f"index must be i or (i, aug_seed), got {item!r}")
            index, aug_seed = int(item[0]), self._aug_seed(item[1])
        else:
            index, aug_seed = int(item), None
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        index %= len(self)
        s = self.samples[index]
        image = tv_tensors.Image(s.to_tensor())
        target: Dict[str, Any] = {"image_label": torch.tensor(s.image_label, dtype=torch.int64)}
        with_boxes = self.kind != "weak" and s.is_strong
        if with_boxes:
            target["boxes"] = tv_tensors.BoundingBoxes(torch.from_numpy(s.boxes).float(), format="XYXY",
                                                       canvas_size=(s.height, s.width), clamping_mode="hard")
            target["labels"] = torch.from_numpy(s.labels).long()
        image, target = apply(self.transforms, image, target, aug_seed)
        image = image.as_subclass(torch.Tensor)
        if image.dtype != torch.float32 or image.ndim != 3:
            raise TypeError(f"sample {s.id!r}: transforms must return a float32 [C, H, W] image, "
                            f"got {image.dtype} of shape {tuple(image.shape)}")
        out: Dict[str, Any] = {"image_label": target["image_label"], "index": index}
        if with_boxes:
            boxes = target["boxes"].as_subclass(torch.Tensor).float().reshape(-1, 4)
            if len(boxes) != len(s.boxes):
                raise DataError(f"sample {s.id!r}: the transforms changed the number of boxes from "
                                f"{len(s.boxes)} to {len(boxes)} (a mass box must never be dropped)")
            out = {"boxes": min_extent(boxes, image.shape[-2:]), "labels": target["labels"], **out}
        return image, out


def collate(batch: Sequence[Tuple[torch.Tensor, Dict[str, Any]]]) -> Tuple[List[torch.Tensor], List[Dict[str, Any]]]:
    """Turn a list of ``(image, target)`` pairs into ``(list of images, list of targets)`` (torchvision style).

    Images may differ in size (the detector's transform batches them), so nothing is stacked.

    Taught in ``book/05_mil_moi.md``.
    """
    images, targets = [], []
    for image, target in batch:
        images.append(image)
        targets.append(target)
    return images, targets
