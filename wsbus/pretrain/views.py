"""Images at the detector's scale, and the augmented square views the backbone is pretrained on.

An image is first brought to the detector's input scale exactly as :class:`wsbus.models.GrayscaleRCNNTransform`
does (a colour image averaged to gray; the short side to ``size`` unless the long side would exceed ``max_size``;
bilinear, ``align_corners=False``), once, and kept as ``uint8``. Each step then cuts fresh views out of it
(:class:`ViewAugmentation`), every view from its own seed, so a step's views depend only on the run's seed and the
step (a resumed run draws the same ones).

The augmentations are those that make sense for a B-mode scan: a random square crop with a moderate zoom (the
RandomResizedCrop of SimCLR, with a narrower scale range so masses keep roughly the size the detector sees), a
horizontal flip (left and right breasts), a small rotation (probe angle), an overall and depth-dependent gain (the
gain and time-gain-compensation knobs of a scanner), a contrast change (dynamic range), a slight blur (transducer
frequency) and fresh multiplicative speckle. No colour jitter (a gray scan has no hue) and no vertical flip (the
skin is always at the top and acoustic shadows point down).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Iterator, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..data.formats import Sample
from ..data.transforms import GRAY_MEAN, RandomDepthGain, RandomSpeckle, apply
from ..seeding import derive_seed

__all__ = ["ViewAugmentation", "VIEWS", "resize_like_detector", "prepare_images", "make_views", "batch_indices",
           "StepViews", "view_batches"]


@dataclass(frozen=True)
class ViewAugmentation:
    """How one view is cut from an image at the detector's scale (all of it B-mode-specific; see the module).

    Attributes
    ----------
    scale, ratio : ``v2.RandomResizedCrop``'s area fraction and aspect range of the region resized to the view.
    flip : probability of a horizontal flip. ``vflip``: of a vertical one (0: never, the default).
    degrees : rotation drawn from [-degrees, degrees] (uncovered corners: the mean pixel).
    gain, tgc : :class:`wsbus.data.transforms.RandomDepthGain` (overall gain, depth ramp).
    contrast : contrast factor drawn from [1 - contrast, 1 + contrast] around the view's mean.
    blur : probability of a Gaussian blur with sigma in [0.1, 1.2] px.
    speckle : strength of fresh Rayleigh speckle (:class:`wsbus.data.transforms.RandomSpeckle`).
    """

    scale: Tuple[float, float] = (0.35, 1.0)
    ratio: Tuple[float, float] = (0.8, 1.25)
    flip: float = 0.5
    vflip: float = 0.0
    degrees: float = 10.0
    gain: float = 0.25
    tgc: float = 0.25
    contrast: float = 0.3
    blur: float = 0.3
    speckle: float = 0.3

    def pipeline(self, crop: int) -> v2.Compose:
        """The ``v2`` pipeline: a ``uint8`` (or float) ``[1, h, w]`` image to a float ``[1, crop, crop]`` view in
        [0, 1]."""
        steps = [v2.ToDtype(torch.float32, scale=True),
                 v2.RandomResizedCrop(crop, scale=tuple(self.scale), ratio=tuple(self.ratio), antialias=True)]
        if self.flip:
            steps.append(v2.RandomHorizontalFlip(self.flip))
        if self.vflip:
            steps.append(v2.RandomVerticalFlip(self.vflip))
        if self.degrees:
            steps.append(v2.RandomRotation(self.degrees, interpolation=v2.InterpolationMode.BILINEAR,
                                           fill={tv_tensors.Image: GRAY_MEAN, "others": 0}))
        if self.gain or self.tgc:
            steps.append(RandomDepthGain(self.gain, self.tgc))
        if self.contrast:
            steps.append(v2.ColorJitter(contrast=self.contrast))
        if self.blur:
            steps.append(v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.2))], p=self.blur))
        if self.speckle:
            steps.append(RandomSpeckle(self.speckle))
        steps.append(v2.Lambda(lambda x: x.clamp(0.0, 1.0), tv_tensors.Image))
        return v2.Compose(steps)

    def as_dict(self) -> dict:
        """Plain data, for the run's record."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


#: Named view augmentations: ``"strong"`` for the two-view methods (SimCLR, BYOL), ``"light"`` (crop, flip, a little
#: rotation and gain) for the reconstruction methods, whose target is the view itself.
VIEWS: Dict[str, ViewAugmentation] = {
    "strong": ViewAugmentation(),
    "light": ViewAugmentation(scale=(0.5, 1.0), degrees=5.0, gain=0.1, tgc=0.1, contrast=0.1, blur=0.0, speckle=0.0),
}


def resize_like_detector(image: torch.Tensor, size: int, max_size: int) -> torch.Tensor:
    """A ``[C, H, W]`` image (``uint8`` or float in [0, 1]) at the detector's scale: float ``[1, h, w]`` in [0, 1].

    The same arithmetic as torchvision's ``GeneralizedRCNNTransform.resize`` (scale ``min(size / short side,
    max_size / long side)``, bilinear, ``recompute_scale_factor=True``); a 3-channel image is averaged to gray first,
    as :class:`wsbus.models.GrayscaleRCNNTransform` does.
    """
    x = image.float() / 255.0 if not image.is_floating_point() else image.float()
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"expected a [1 or 3, H, W] image, got shape {tuple(image.shape)}")
    if x.shape[0] == 3:
        x = x.mean(dim=0, keepdim=True)
    h, w = x.shape[-2:]
    scale = min(size / min(h, w), max_size / max(h, w))
    return F.interpolate(x[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True,
                         align_corners=False)[0]


def prepare_images(samples: Sequence[Sample], size: int, max_size: int) -> List[torch.Tensor]:
    """Every sample's image at the detector's scale, as ``uint8 [1, h, w]`` (rounded; a quarter of the memory of
    floats). Only ``Sample.image`` is read."""
    return [resize_like_detector(s.to_tensor(), size, max_size).mul_(255.0).round_().to(torch.uint8)
            for s in samples]


def make_views(images: Sequence[torch.Tensor], indices: Sequence[int], pipeline: v2.Compose, n_views: int,
               seed: int, step: int) -> torch.Tensor:
    """``[n_views, B, 1, crop, crop]`` float views of ``images[indices]``; view ``v`` of slot ``b`` at ``step`` is
    drawn from its own seed, ``derive_seed(seed, "view", step, b, v)``, so it does not depend on anything else."""
    views = [[apply(pipeline, tv_tensors.Image(images[i]), {}, seed=derive_seed(seed, "view", step, b, v))[0]
              for b, i in enumerate(indices)] for v in range(n_views)]
    return torch.stack([torch.stack([x.as_subclass(torch.Tensor) for x in row]) for row in views])


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> List[int]:
    """The images of ``step``: epochs are fresh permutations of the ``n`` images (seeded by ``(seed, epoch)``) cut
    into ``n // batch_size`` full batches (the remainder of each epoch is left out), so no batch holds an image
    twice and a step's batch is a function of the step alone."""
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must lie in 1..{n} (the number of images), got {batch_size}")
    per_epoch = n // batch_size
    epoch, slot = divmod(int(step), per_epoch)
    g = torch.Generator().manual_seed(derive_seed(seed, "order", epoch))
    order = torch.randperm(n, generator=g)
    return order[slot * batch_size:(slot + 1) * batch_size].tolist()


class StepViews(Dataset):
    """Item ``k`` is the views of step ``k`` (:func:`batch_indices` then :func:`make_views`): a function of ``k``
    alone, so DataLoader workers can make them ahead of the model with the same result as the main process."""

    def __init__(self, images: Sequence[torch.Tensor], pipeline: v2.Compose, n_views: int, batch_size: int,
                 seed: int, steps: int) -> None:
        self.images, self.pipeline, self.n_views = images, pipeline, int(n_views)
        self.batch_size, self.seed, self.steps = int(batch_size), int(seed), int(steps)

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> torch.Tensor:
        idx = batch_indices(step, self.batch_size, len(self.images), self.seed)
        return make_views(self.images, idx, self.pipeline, self.n_views, self.seed, step)


def view_batches(views: StepViews, start: int, workers: int = 0) -> Iterator[Tuple[int, torch.Tensor]]:
    """``(k, views of step k)`` for ``k = start .. steps - 1``, made in the main process (``workers=0``) or by
    ``workers`` DataLoader processes a few steps ahead (the same tensors either way)."""
    steps = range(int(start), len(views))
    if workers <= 0:
        for k in steps:
            yield k, views[k]
        return
    loader = DataLoader(views, batch_size=None, sampler=list(steps), num_workers=int(workers), prefetch_factor=2,
                        persistent_workers=False)
    yield from zip(steps, loader)
