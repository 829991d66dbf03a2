"""Box-aware data augmentation of the reference code, built from ``torchvision.transforms.v2``.

Taught in ``book/02_data.md``.

The reference (``wssdl_bus``, ``lib/utils/blob.py`` and ``fast_rcnn/config.py``) uses: horizontal flip,
rotation by up to +-5 degrees (filled with the mean pixel), a random crop of up to 5 % of each side, an additive
brightness change of up to +-0.2 and a contrast factor in [0.2, 1.8] around the image mean, clipping to [0, 1]
after each. Because its boxes did not follow rotation and cropping, the reference applied those two only to
weakly labelled images; here boxes follow every geometric step (``tv_tensors.BoundingBoxes``), so the same
pipeline serves strong and weak images. The crop never cuts a box by more than half: each side's crop is
limited to a quarter of the box it would enter.

Transforms take and return ``(image, target)`` where ``image`` is a ``tv_tensors.Image`` (or, through
:func:`apply`, a ``[C, H, W]`` tensor, an ``H x W`` / ``H x W x C`` uint8 array or a PIL image) and ``target`` a
dict that may hold ``"boxes"`` as ``tv_tensors.BoundingBoxes`` in XYXY format; other entries (``"labels"``,
``"image_label"``...) pass through. :func:`apply` wraps a plain image as a ``tv_tensors.Image`` first: otherwise
``v2.ToImage``'s heuristic, finding no image-typed input, would take the first plain tensor of the target (the
labels) for the image.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

#: Mean and standard deviation of B-mode pixels in [0, 1]: the reference's BUS statistics (68.274, 52.802 on
#: 0..255, ``fast_rcnn/config.py``), used by the model's normaliser.
GRAY_MEAN = 68.274 / 255.0
GRAY_STD = 52.802 / 255.0


class RandomMarginCrop(v2.Transform):
    """Crop a random margin of up to ``max_fraction`` of the height/width from each side; boxes follow.

    The crop of each side is limited so that it removes at most a quarter of the width (height) of any box it
    enters: a box keeps at least half of its extent in each direction, so no mass box is ever dropped.
    Boxes are clipped to the new image.

    Parameters
    ----------
    max_fraction : largest crop per side as a fraction of the image size (reference: 0.05).
    max_cut : largest fraction of a box's width or height that one side's crop may remove (0.25).
    """

    def __init__(self, max_fraction: float = 0.05, max_cut: float = 0.25) -> None:
        super().__init__()
        if not 0.0 <= max_fraction < 0.5:
            raise ValueError(f"max_fraction must lie in [0, 0.5), got {max_fraction}")
        if not 0.0 <= max_cut <= 0.5:
            raise ValueError(f"max_cut must lie in [0, 0.5] so that boxes keep half their size, got {max_cut}")
        self.max_fraction = max_fraction
        self.max_cut = max_cut

    def make_params(self, flat_inputs: List[Any]) -> Dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        draws = torch.rand(4)
        top, bottom = (int(draws[0] * self.max_fraction * h), int(draws[1] * self.max_fraction * h))
        left, right = (int(draws[2] * self.max_fraction * w), int(draws[3] * self.max_fraction * w))
        boxes = [x for x in flat_inputs if isinstance(x, tv_tensors.BoundingBoxes)]
        if boxes and boxes[0].numel():
            b = F.convert_bounding_box_format(boxes[0], new_format=tv_tensors.BoundingBoxFormat.XYXY)
            b = b.as_subclass(torch.Tensor).float()
            bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
            left = min(left, int(torch.floor((b[:, 0] + self.max_cut * bw).min()).clamp(min=0)))
            top = min(top, int(torch.floor((b[:, 1] + self.max_cut * bh).min()).clamp(min=0)))
            right = min(right, int(torch.floor((w - b[:, 2] + self.max_cut * bw).min()).clamp(min=0)))
            bottom = min(bottom, int(torch.floor((h - b[:, 3] + self.max_cut * bh).min()).clamp(min=0)))
        return dict(top=top, left=left, height=h - top - bottom, width=w - left - right)

    def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
        out = self._call_kernel(F.crop, inpt, **params)
        if isinstance(out, tv_tensors.BoundingBoxes):
            out = F.clamp_bounding_boxes(out)
        return out


class RandomBrightnessShift(v2.Transform):
    """Add a random ``delta`` in [-max_delta, max_delta] to a float image in [0, 1], then clip (reference: 0.2).
    """

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, max_delta: float = 0.2) -> None:
        super().__init__()
        if max_delta < 0:
            raise ValueError(f"max_delta must be >= 0, got {max_delta}")
        self.max_delta = max_delta

    def make_params(self, flat_inputs: List[Any]) -> Dict[str, Any]:
        return dict(delta=float(torch.empty(1).uniform_(-self.max_delta, self.max_delta)))

    def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
        if not inpt.is_floating_point():
            raise TypeError("RandomBrightnessShift expects a float image in [0, 1]; put ToDtype(float32, scale=True) first")
        return tv_tensors.wrap((inpt + params["delta"]).clamp_(0.0, 1.0), like=inpt)


def _clip01(image: torch.Tensor) -> torch.Tensor:
    return image.clamp(0.0, 1.0)


def train_transforms(*, flip: float = 0.5, degrees: float = 5.0, crop: float = 0.05, brightness: float = 0.2,
                     contrast: Tuple[float, float] = (0.2, 1.8), fill: float = GRAY_MEAN) -> v2.Compose:
    """The reference augmentation, box-aware: flip, rotation, margin crop, brightness and contrast.

    Parameters
    ----------
    flip : probability of a horizontal flip.
    degrees : rotation angle drawn from [-degrees, degrees]; boxes become the enclosing box of the rotated box.
    crop : largest crop per side as a fraction of the image size (:class:`RandomMarginCrop`).
    brightness : largest additive brightness change (:class:`RandomBrightnessShift`).
    contrast : range of the contrast factor around the image mean (``v2.ColorJitter(contrast=...)``).
    fill : value of the pixels uncovered by the rotation (the mean pixel, as in the reference).

    Returns
    -------
    ``v2.Compose`` mapping ``(image, target)`` to ``(float image in [0, 1], target)``. Use :func:`apply` with a
    seed for reproducible augmentation.

    Notes
    -----
    Taught in ``book/02_data.md``.
    """
    return v2.Compose([
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomHorizontalFlip(p=flip),
        v2.RandomRotation(degrees=degrees, interpolation=v2.InterpolationMode.BILINEAR,
                          fill={tv_tensors.Image: fill, "others": 0}),
        v2.ClampBoundingBoxes(),
        RandomMarginCrop(crop),
        RandomBrightnessShift(brightness),
        v2.ColorJitter(contrast=contrast),
        v2.Lambda(_clip01, tv_tensors.Image),
    ])


class RandomSpeckle(v2.Transform):
    """Multiply a float image in [0, 1] by fresh speckle, ``1 + s * (R - mean(R)) / std(R)`` with ``R`` Rayleigh
    noise (the statistics of fully developed B-mode speckle) and ``s`` drawn from [0, max_strength]; then clip."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, max_strength: float = 0.25) -> None:
        super().__init__()
        if max_strength < 0:
            raise ValueError(f"max_strength must be >= 0, got {max_strength}")
        self.max_strength = max_strength

    def make_params(self, flat_inputs: List[Any]) -> Dict[str, Any]:
        return dict(strength=float(torch.empty(1).uniform_(0.0, self.max_strength)))

    def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
        u = torch.rand(inpt.shape, dtype=torch.float32).clamp_(min=1e-7).to(inpt.device)
        rayleigh = torch.sqrt(-2.0 * torch.log(u))                 # Rayleigh(1): mean sqrt(pi / 2)
        noise = (rayleigh - 1.2533141) / 0.6551364                 # zero mean, unit variance
        return tv_tensors.wrap((inpt * (1.0 + params["strength"] * noise)).clamp_(0.0, 1.0), like=inpt)


class RandomDepthGain(v2.Transform):
    """An ultrasound gain change: an overall gain in ``[1 - max_gain, 1 + max_gain]`` times a depth (row) ramp from
    ``1 - t`` at the top to ``1 + t`` at the bottom, ``t`` in ``[-max_tgc, max_tgc]``, as a different time-gain
    compensation setting of the scanner would give; then clip."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, max_gain: float = 0.2, max_tgc: float = 0.3) -> None:
        super().__init__()
        if max_gain < 0 or max_tgc < 0:
            raise ValueError(f"max_gain and max_tgc must be >= 0, got {max_gain}, {max_tgc}")
        self.max_gain, self.max_tgc = max_gain, max_tgc

    def make_params(self, flat_inputs: List[Any]) -> Dict[str, Any]:
        draws = torch.empty(2).uniform_(-1.0, 1.0)
        return dict(gain=1.0 + self.max_gain * float(draws[0]), tgc=self.max_tgc * float(draws[1]))

    def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
        h = inpt.shape[-2]
        ramp = torch.linspace(1.0 - params["tgc"], 1.0 + params["tgc"], h, device=inpt.device).reshape(h, 1)
        return tv_tensors.wrap((inpt * (params["gain"] * ramp)).clamp_(0.0, 1.0), like=inpt)


def ultrasound_augmentation(*, speckle: float = 0.25, gain: float = 0.2, tgc: float = 0.3, shift: float = 0.03,
                            scale: Tuple[float, float] = (0.95, 1.05)) -> v2.Compose:
    """A strong augmentation suited to B-mode ultrasound (ours, for the student of a mean teacher): fresh speckle
    (:class:`RandomSpeckle`), gain and depth-dependent gain (:class:`RandomDepthGain`), and a small shift and zoom
    whose boxes follow (``v2.RandomAffine``); no colour jitter, which has no meaning for a gray B-mode scan.

    Takes and returns ``(float image [C, H, W] in [0, 1], target)`` like :func:`train_transforms`.

    Taught in ``book/07_self_training.md``.
    """
    return v2.Compose([
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomAffine(degrees=0.0, translate=(shift, shift), scale=scale, fill={tv_tensors.Image: GRAY_MEAN,
                                                                                  "others": 0}),
        v2.ClampBoundingBoxes(),
        RandomDepthGain(gain, tgc),
        RandomSpeckle(speckle),
    ])


def eval_transforms() -> v2.Compose:
    """No augmentation: convert to a float image in [0, 1].
    """
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


def _as_image(image: Any) -> Any:
    """``image`` as a ``tv_tensors.Image``: an ``H x W`` (``H x W x C``) array or a PIL image becomes ``[1, H, W]``
    (``[C, H, W]``), a plain ``[C, H, W]`` (or ``H x W``) tensor is wrapped; image-typed inputs are returned as is."""
    if isinstance(image, (tv_tensors.Image, tv_tensors.Video)):
        return image
    if isinstance(image, (np.ndarray, PIL.Image.Image, torch.Tensor)):
        return F.to_image(image)
    return image


def apply(transform: Optional[Callable], image: Any, target: Dict[str, Any], seed: Optional[int] = None):
    """Apply ``transform`` to ``(image, target)``, drawing its randomness from ``seed`` when one is given.

    A plain image (``H x W`` or ``H x W x C`` array, PIL image, ``[C, H, W]`` tensor) is wrapped as a
    ``tv_tensors.Image`` first, so that the pipeline's ``v2.ToImage`` and the geometric steps recognise it as the
    image and pass the target's tensors (``"labels"``, ``"image_label"``) through untouched.

    With a seed, the global torch RNG is forked (``torch.random.fork_rng(devices=[])``), seeded, and restored
    afterwards: the result depends only on the inputs and the seed, and the caller's RNG state is untouched,
    which is what bit-exact resumption of training needs.

    Notes
    -----
    Taught in ``book/02_data.md``.
    """
    if transform is None:
        return image, target
    image = _as_image(image)
    if seed is None:
        return transform(image, target)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return transform(image, target)
