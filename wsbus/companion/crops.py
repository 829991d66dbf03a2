"""From :class:`~wsbus.data.Sample` records to the small tensors the companion models eat.

Whole images are resized to ``size x size`` grayscale; mass crops are cut around the annotated boxes with
:func:`torchvision.ops.roi_align` (bilinear, ``aligned=True``) so a crop of any box lands on the same ``size x
size`` grid. Label budgets and train/test splits are stratified by class and, when samples carry a ``patient``,
grouped by patient so that no patient is on both sides.

Taught in ``book/10_autoencoder_pretraining.md`` (whole images), ``book/12_metric_learning.md`` (mass crops) and
``book/13_transfer_domain_shift.md`` (splits across domains).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.ops import roi_align

from wsbus.data.formats import CLASSES, DataError, Sample

__all__ = ["CropSet", "image_tensor", "images_to_tensor", "labels_tensor", "mass_crops", "stratified_subset",
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

    Taught in ``book/10_autoencoder_pretraining.md``.
    """
    if size < 8:
        raise ValueError(f"size must be >= 8 pixels, got {size}")
    img = TF.resize(_gray_uint8(sample), [size, size], antialias=True)
    return img.float().div_(255.0)


def images_to_tensor(samples: Sequence[Sample], size: int = 64) -> torch.Tensor:
    """Stack :func:`image_tensor` over samples: ``[N, 1, size, size]`` float in [0, 1].

    Taught in ``book/10_autoencoder_pretraining.md``.
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
    labels : int64 [N], the box labels (1 benign, 2 malignant).
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


def mass_crops(samples: Sequence[Sample], size: int = 64, context: float = 0.25) -> CropSet:
    """Cut one square crop per annotated mass and resize it to ``size x size``.

    The window is centred on the box, its side is the box's longer side times ``1 + 2 * context`` (so the crop
    shows the margin and the posterior echo, which carry the BI-RADS cues) and it is slid inside the image when
    it fits. Resampling is :func:`torchvision.ops.roi_align` with ``aligned=True`` (half-pixel-correct bilinear,
    adaptive sampling ratio, so large boxes are averaged rather than aliased).

    Normal images (strong, zero boxes) contribute no crop. Weak samples (boxes unknown) are an error: use the
    detector's mass of interest (``book/05_mil_moi.md``) to get boxes for them first.

    Taught in ``book/12_metric_learning.md``.

    Raises
    ------
    DataError
        Naming the first weak sample.
    """
    if size < 8:
        raise ValueError(f"size must be >= 8 pixels, got {size}")
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    crops, labels, index, windows, ids = [], [], [], [], []
    for i, s in enumerate(samples):
        if s.boxes is None:
            raise DataError(f"sample {s.id!r}: mass_crops needs boxes but this sample is weak (boxes unknown)")
        if len(s.boxes) == 0:
            continue
        wins = torch.tensor([_crop_window(b, s.width, s.height, context) for b in s.boxes], dtype=torch.float32)
        img = _gray_uint8(s).float().div_(255.0).unsqueeze(0)
        crops.append(roi_align(img, [wins], output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1,
                               aligned=True))
        labels.append(torch.as_tensor(s.labels, dtype=torch.int64))
        index.append(torch.full((len(wins),), i, dtype=torch.int64))
        windows.append(wins)
        ids.extend([s.id] * len(wins))
    if not crops:
        return CropSet(torch.zeros(0, 1, size, size), torch.zeros(0, dtype=torch.int64),
                       torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4), [])
    return CropSet(torch.cat(crops).clamp_(0.0, 1.0), torch.cat(labels), torch.cat(index), torch.cat(windows), ids)


def stratified_subset(labels, n: int, seed: int = 0, classes: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Indices of ``n`` items drawn without replacement, as evenly as possible over the classes present.

    A label budget of ``n`` gives ``n // C`` items per class (the remainder to the first classes), never more
    than a class has; the shortfall is taken from the other classes. Deterministic for a given ``seed``; the
    result is sorted.

    Taught in ``book/10_autoencoder_pretraining.md`` (label budgets).
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
    """The companion chapters' data: ``"phantom"`` -> :func:`wsbus.data.make_phantom` ``(n, seed, size, **knobs)``;
    anything else (``"busi:DIR"``, ``"busbra:DIR"``, ``"voc:DIR"``) -> :func:`wsbus.data.sources.load_source`
    (``n``, ``size`` and ``knobs`` then do not apply: real data sets are used whole).

    Taught in ``book/13_transfer_domain_shift.md``.
    """
    if spec == "phantom":
        from wsbus.data import make_phantom
        return make_phantom(n, seed=seed, size=size, **knobs)
    if knobs:
        raise ValueError(f"phantom knobs {sorted(knobs)} do not apply to data {spec!r}")
    from wsbus.data.sources import load_source
    return list(load_source(spec))
