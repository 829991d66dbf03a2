"""The detector's input transform: torchvision's ``GeneralizedRCNNTransform`` on a fixed canvas, for grayscale
images.

How an image becomes the tensor the backbone sees, the same in training, evaluation, prediction and export:

1. normalise (a 3-channel image is first averaged to one gray channel);
2. resize as torchvision does: the short side to ``min_size`` unless the long side would then exceed
   ``max_size``, in which case the long side to ``max_size`` (so the image always fits in ``max_size`` pixels);
3. place it at the top-left of a **fixed square canvas** of :func:`canvas_side` pixels (``max_size`` rounded up
   to the backbone's ``size_divisible``), zero elsewhere.

torchvision pads every image of a batch to the batch's largest image instead, so an image's padding, and with it
the statistics of a GroupNorm layer and the activations that convolutions carry in from the padded border, depend
on the other images of its batch: the same scan got other detections at another batch size. On the fixed canvas
an image's tensor depends on that image alone (docs/decisions.md, "Detections independent of batch-mates").

Taught in ``book/03_faster_rcnn.md``.
"""
from __future__ import annotations

import math
from typing import List

import torch
from torch import Tensor
from torchvision.models.detection.transform import GeneralizedRCNNTransform

__all__ = ["CanvasRCNNTransform", "GrayscaleRCNNTransform", "canvas_side"]


def canvas_side(max_size: int, size_divisible: int = 32) -> int:
    """The side of the square canvas every image is padded to: ``max_size`` rounded up to ``size_divisible``."""
    return int(math.ceil(float(max_size) / size_divisible) * size_divisible)


class CanvasRCNNTransform(GeneralizedRCNNTransform):
    """torchvision's ``GeneralizedRCNNTransform`` with every image padded to one fixed square canvas
    (:func:`canvas_side`) instead of to the largest image of its batch. TorchScript- and ONNX-exportable; the
    exported models of :mod:`wsbus.export` use it as it is."""

    def batch_images(self, images: List[Tensor], size_divisible: int = 32) -> Tensor:
        """Zero-pad every (normalised, resized) image at its bottom and right to the canvas and stack them."""
        side = int(math.ceil(float(self.max_size) / float(size_divisible)) * size_divisible)
        padded: List[Tensor] = []
        for img in images:
            h, w = img.shape[-2], img.shape[-1]
            torch._assert(h <= side and w <= side,
                          "an image larger than the canvas reached batch_images (resize keeps it within max_size)")
            padded.append(torch.nn.functional.pad(img, [0, side - w, 0, side - h]))
        return torch.stack(padded)


class GrayscaleRCNNTransform(CanvasRCNNTransform):
    """:class:`CanvasRCNNTransform` for grayscale models.

    Two more changes: a 3-channel image is averaged to one gray channel before normalisation (the backbones take
    one channel), and a single ``min_size`` does not draw a random number per image (torchvision draws one to
    pick among several training sizes even when there is only one, which would make the random state, and so
    the anchor/RoI sampling of the strong images, depend on how many weak images share their mini-batch).

    Taught in ``book/03_faster_rcnn.md``.
    """

    def normalize(self, image: Tensor) -> Tensor:
        """Average RGB to gray when the model is grayscale, then torchvision's normalisation.
        """
        if image.shape[0] == 3 and len(self.image_mean) == 1:
            image = image.mean(dim=0, keepdim=True)
        if image.shape[0] != len(self.image_mean):
            raise ValueError(f"expected {len(self.image_mean)}-channel (or RGB) images, got shape "
                             f"{tuple(image.shape)}")
        if len(self.image_mean) == 1:
            if not image.is_floating_point():
                return super().normalize(image)  # torchvision's error message for integer images
            # Python scalars: torchvision builds the mean and std tensors on the device for every image, two
            # blocking host-to-device copies (syncs on a GPU) per image.
            return (image - float(self.image_mean[0])) / float(self.image_std[0])
        return super().normalize(image)

    def torch_choice(self, k: list[int]) -> int:
        """The training size; draws a random number only when there are several. """
        if len(k) == 1:
            return k[0]
        return super().torch_choice(k)
