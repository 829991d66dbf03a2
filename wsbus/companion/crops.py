"""From :class:`~wsbus.data.Sample` records to the small tensors the companion models eat.

Whole images are resized to ``size x size`` grayscale; mass crops are cut around the annotated boxes with
:func:`torchvision.ops.roi_align` (bilinear, ``aligned=True``) so a crop of any box lands on the same ``size x
size`` grid. Label budgets and train/test splits are stratified by class and, when samples carry a ``patient``,
grouped by patient so that no patient is on both sides.

Taught in ``book/10_autoencoder_pretraining.md`` and ``book/12_metric_learning.md`` and ``book/13_transfer_domain_shift.md``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.ops import roi_align

from ..data.formats import CLASSES, DataError, Sample
from ..data.phantom import make_phantom
from ..data.sources import load_source, parse_source

__all__ = ["CropSet", "image_tensor", "images_to_tensor", "labels_tensor", "mass_crops", "region_crops",
           "random_crops", "stratified_subset",
           "stratified_split", "load_samples"]


def _gray_uint8(sample: Sample) -> torch.Tensor:
    img = torch.from_numpy(np.ascontiguousarray(sample.image))
    if img.ndim == 2:
        return img.unsqueeze(0)
    return TF.rgb_to_grayscale(img.permute(2, 0, 1))  # H x W x 3 -> 1 x H x W


def image_tensor(sample: Sample, size: int = 64) -> torch.Tensor:
    """One sample's whole image as a float tensor ``[1, size, size]`` in [0, 1] (grayscale, antialiased resize).

    RGB images (some BUSI files) are converted with the ITU-R 601 luma weights
    (:func:`torchvision.transforms.v2.functional.rgb_to_grayscale`). The aspect ratio is not kept: ultrasound
    sectors are roughly square and the companion models want a fixed grid.
    """
    if size < 8:
        raise ValueError(f"size must be >= 8 pixels, got {size}")
    img = TF.resize(_gray_uint8(sample), [size, size], antialias=True)
    return img.float().div_(255.0)


def images_to_tensor(samples: Sequence[Sample], size: int = 64) -> torch.Tensor:
    """Stack :func:`image_tensor` over samples: ``[N, 1, size, size]`` float in [0, 1].

    Taught in ``book/11_cnn_diagnosis.md``.
    """
    if len(samples) == 0:
        raise ValueError("images_to_tensor: got an empty list of samples")
    return torch.stack([image_tensor(s, size) for s in samples])


def labels_tensor(samples: Sequence[Sample]) -> torch.Tensor:
    """The image labels (0 normal, 1 benign, 2 malignant) as an int64 tensor ``[N]``.

    Taught in ``book/11_cnn_diagnosis.md``.
    """
    return torch.tensor([int(s.image_label) for s in samples], dtype=torch.int64)


@dataclass
class CropSet:
    """Mass crops cut from strong samples.

    Attributes
    ----------
    images : float [N, 1, size, size] in [0, 1].
    labels : int64 [N], the box labels (1 benign, 2 malignant; 0 for the normal-tissue crops of
        :func:`region_crops`).
    sample_index : int64 [N], index of the source sample in the list given to :func:`mass_crops`.
    windows : float32 [N, 4], the square crop window (x1, y1, x2, y2) in the source image's pixels.
    ids : list of str, the source sample's ``id`` per crop.
    """

    images: torch.Tensor
    labels: torch.Tensor
    sample_index: torch.Tensor
    windows: torch.Tensor
    ids: list

    def __len__(self) -> int:
        return int(self.labels.numel())

    def subset(self, index) -> "CropSet":
        """The crops at ``index`` (a tensor/list of positions or a boolean mask)."""
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        pos = index.tolist()
        return CropSet(self.images[index], self.labels[index], self.sample_index[index], self.windows[index],
                       [self.ids[i] for i in pos])


def _crop_window(box: np.ndarray, width: int, height: int, context: float) -> list:
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1) * (1.0 + 2.0 * context)
    cx, cy = 0.5 * (x1 + x2), 0.5 * (y1 + y2)
    out = []
    for c, extent in ((cx, width), (cy, height)):
        lo = c - side / 2
        if side <= extent:  # slide the window inside the image rather than pad with zeros
            lo = min(max(lo, 0.0), extent - side)
        out.append(lo)
    return [out[0], out[1], out[0] + side, out[1] + side]


def _cut(sample: Sample, boxes: np.ndarray, size: int, context: float) -> tuple:
    wins = torch.tensor([_crop_window(b, sample.width, sample.height, context) for b in boxes], dtype=torch.float32)
    img = _gray_uint8(sample).float().div_(255.0).unsqueeze(0)
    crops = roi_align(img, [wins], output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return crops.clamp_(0.0, 1.0), wins


def _check_crop_args(size: int, context: float) -> None:
    if size < 8:
        raise ValueError(f"size must be >= 8 pixels, got {size}")
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")


def _cropset(parts: list, size: int) -> CropSet:
    if not parts:
        return CropSet(torch.zeros(0, 1, size, size), torch.zeros(0, dtype=torch.int64),
                       torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4), [])
    crops, labels, index, windows, ids = zip(*parts)
    return CropSet(torch.cat(crops), torch.cat(labels), torch.cat(index), torch.cat(windows),
                   [i for chunk in ids for i in chunk])


def mass_crops(samples: Sequence[Sample], size: int = 64, context: float = 0.25) -> CropSet:
    """Cut one square crop per annotated mass and resize it to ``size x size``.

    The window is centred on the box, its side is the box's longer side times ``1 + 2 * context`` (so the crop
    shows the margin and the posterior echo, which carry the BI-RADS cues) and it is slid inside the image when
    it fits. Resampling is :func:`torchvision.ops.roi_align` with ``aligned=True`` (half-pixel-correct bilinear,
    adaptive sampling ratio, so large boxes are averaged rather than aliased).

    Normal images (strong, zero boxes) contribute no crop (see :func:`region_crops` for normal-tissue crops).
    Weak samples (boxes unknown) are an error: use the detector's mass of interest (``book/05_mil_moi.md``) to
    get boxes for them first.

    Taught in ``book/12_metric_learning.md``.

    Raises
    ------
    DataError
        Naming the first weak sample.
    """
    _check_crop_args(size, context)
    parts = []
    for i, s in enumerate(samples):
        if s.boxes is None:
            raise DataError(f"sample {s.id!r}: mass_crops needs boxes but this sample is weak (boxes unknown)")
        if len(s.boxes) == 0:
            continue
        crops, wins = _cut(s, s.boxes, size, context)
        parts.append((crops, torch.as_tensor(s.labels, dtype=torch.int64), torch.full((len(wins),), i),
                      wins, [s.id] * len(wins)))
    return _cropset(parts, size)


def region_crops(samples: Sequence[Sample], size: int = 64, context: float = 0.25, normals_per_image: int = 1,
                 seed: int = 0) -> CropSet:
    """Three-class region crops: every mass (label 1 / 2) and, from each normal image, normal tissue (label 0).

    This is the question the detector's RoI head answers for each proposal (background, benign or malignant,
    ``book/03_faster_rcnn.md``), asked of hand-picked regions. A normal image has no box, so its windows are
    *borrowed*: ``normals_per_image`` mass boxes of the same data set are drawn at random (``seed``) and placed
    at the same relative position and size in the normal image. Normal crops then match the masses' depth and
    scale, and a classifier cannot tell them apart by where or how big the window is, only by what is in it.
    Crops come in sample order; for each sample first its masses.

    Taught in ``book/11_cnn_diagnosis.md``.

    Raises
    ------
    DataError
        Naming the first weak sample.
    ValueError
        When there are normal images but no mass box to borrow a window from.
    """
    _check_crop_args(size, context)
    if normals_per_image < 0:
        raise ValueError(f"normals_per_image must be >= 0, got {normals_per_image}")
    rel = []
    for s in samples:
        if s.boxes is None:
            raise DataError(f"sample {s.id!r}: region_crops needs boxes but this sample is weak (boxes unknown)")
        if len(s.boxes):
            rel.append(s.boxes / np.array([s.width, s.height, s.width, s.height], dtype=np.float32))
    rel = np.concatenate(rel) if rel else np.zeros((0, 4), np.float32)
    parts = []
    for i, s in enumerate(samples):
        if len(s.boxes):
            boxes, labels = s.boxes, torch.as_tensor(s.labels, dtype=torch.int64)
        elif normals_per_image:
            if len(rel) == 0:
                raise ValueError("region_crops: normal images need mass boxes to borrow windows from, and these "
                                 "samples have none")
            pick = np.random.default_rng([int(seed), i]).integers(0, len(rel), normals_per_image)
            boxes = rel[pick] * np.array([s.width, s.height, s.width, s.height], dtype=np.float32)
            labels = torch.zeros(normals_per_image, dtype=torch.int64)
        else:
            continue
        crops, wins = _cut(s, boxes, size, context)
        parts.append((crops, labels, torch.full((len(wins),), i), wins, [s.id] * len(wins)))
    return _cropset(parts, size)


def random_crops(samples: Sequence[Sample], per_image: int = 2, size: int = 64, side: tuple = (0.2, 0.45),
                 seed: int = 0) -> torch.Tensor:
    """Unlabeled square crops at random places: ``[N * per_image, 1, size, size]``; no annotation is used.

    Each window's side is a fraction ``U(side)`` of the image's shorter side, its position uniform inside the
    image; the draws depend only on ``(seed, sample index)``. Weak samples are fine: this is the unlabeled pool
    of ``book/10_autoencoder_pretraining.md``, on the same scale as the labelled mass crops.

    Taught in ``book/10_autoencoder_pretraining.md``.
    """
    lo, hi = side
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"side must satisfy 0 < low <= high <= 1, got {side}")
    if per_image < 1:
        raise ValueError(f"per_image must be >= 1, got {per_image}")
    out = []
    for i, s in enumerate(samples):
        rng = np.random.default_rng([int(seed), i])
        sides = rng.uniform(lo, hi, per_image) * min(s.width, s.height)
        x1 = rng.uniform(0, 1, per_image) * (s.width - sides)
        y1 = rng.uniform(0, 1, per_image) * (s.height - sides)
        boxes = np.stack([x1, y1, x1 + sides, y1 + sides], axis=1).astype(np.float32)
        out.append(_cut(s, boxes, size, 0.0)[0])
    if not out:
        raise ValueError("random_crops: got an empty list of samples")
    return torch.cat(out)


def stratified_subset(labels, n: int, seed: int = 0, classes: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Indices of ``n`` items drawn without replacement, as evenly as possible over the classes present.

    A label budget of ``n`` gives ``n // C`` items per class (the remainder to the first classes), never more
    than a class has; the shortfall is taken from the other classes. Deterministic for a given ``seed``; the
    result is sorted.

    Taught in ``book/13_transfer_domain_shift.md``.
    """
    labels = torch.as_tensor(labels).cpu()
    if n < 0 or n > labels.numel():
        raise ValueError(f"cannot draw {n} items from {labels.numel()}")
    g = torch.Generator().manual_seed(int(seed))
    classes = sorted(set(labels.tolist())) if classes is None else list(classes)
    pools = {c: (labels == c).nonzero().flatten() for c in classes}
    pools = {c: p[torch.randperm(len(p), generator=g)] for c, p in pools.items()}
    take = {c: 0 for c in classes}
    left = n
    while left > 0:
        open_ = [c for c in classes if take[c] < len(pools[c])]
        if not open_:
            raise ValueError(f"only {sum(take.values())} items of classes {classes} are available, asked for {n}")
        for c in open_:
            if left == 0:
                break
            take[c] += 1
            left -= 1
    chosen = torch.cat([pools[c][: take[c]] for c in classes]) if classes else torch.zeros(0, dtype=torch.int64)
    return chosen.sort().values


def stratified_split(samples: Sequence[Sample], test_fraction: float = 0.3, seed: int = 0):
    """Split samples into train / test index tensors, stratified by image label and grouped by patient.

    Samples with the same ``patient`` (BUS-BRA cases, VOC studies) always land on the same side; samples without
    one are their own group. Each class's groups are shuffled with ``seed`` and the first ``test_fraction`` of
    that class's images (rounded, at least one when the class has two or more groups) go to the test side.

    Taught in ``book/13_transfer_domain_shift.md``.

    Returns
    -------
    (train_index, test_index) : int64 tensors, sorted.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    groups: dict = {}
    for i, s in enumerate(samples):
        key = s.patient if s.patient is not None else f"\0{s.id}"
        groups.setdefault(key, []).append(i)
    # A group's class is its worst finding, so a patient's malignant image decides where the patient goes.
    by_class: dict = {c: [] for c in range(len(CLASSES))}
    for key, idx in groups.items():
        by_class[max(samples[i].image_label for i in idx)].append(key)
    rng = np.random.default_rng(int(seed))
    test: list = []
    for c, keys in by_class.items():
        if not keys:
            continue
        keys = sorted(keys)
        rng.shuffle(keys)
        n_img = sum(len(groups[k]) for k in keys)
        target = round(test_fraction * n_img)
        if len(keys) >= 2:
            target = max(target, 1)
        got = 0
        for k in keys[:-1] if len(keys) >= 2 else []:  # keep at least one group of each class for training
            if got >= target:
                break
            test.extend(groups[k])
            got += len(groups[k])
    test_set = set(test)
    train = [i for i in range(len(samples)) if i not in test_set]
    return torch.tensor(sorted(train), dtype=torch.int64), torch.tensor(sorted(test), dtype=torch.int64)


def load_samples(spec: str = "phantom", n: int = 300, seed: int = 0, size: int = 128, **knobs) -> list:
    """The companion chapters' data by ``--data`` spec.

    ``"phantom"`` (or ``"phantom:N"``, which overrides ``n``) -> :func:`wsbus.data.make_phantom`
    ``(n, seed=seed, size=size, **knobs)``, e.g. ``scanner="B"``; a folder spec (``"busi:DIR"``,
    ``"busbra:DIR"``, ``"voc:DIR"``) -> :func:`wsbus.data.sources.load_source` (whole data set; ``n``, ``size``
    and ``seed`` do not apply, and phantom knobs are an error).

    Taught in ``book/13_transfer_domain_shift.md``.
    """
    parsed = parse_source(spec)
    if parsed.kind == "phantom":
        count = n if spec.strip().lower() == "phantom" else int(parsed.n)
        return make_phantom(count, seed=seed, size=size, **knobs)
    if knobs:
        raise ValueError(f"phantom knobs {sorted(knobs)} do not apply to data {spec!r}")
    return list(load_source(spec))
