"""The detector's input transform: torchvision's ``GeneralizedRCNNTransform`` for grayscale images."""
from __future__ import annotations

from torch import Tensor
from torchvision.models.detection.transform import GeneralizedRCNNTransform

__all__ = ["GrayscaleRCNNTransform"]


class GrayscaleRCNNTransform(GeneralizedRCNNTransform):
    """torchvision's ``GeneralizedRCNNTransform`` for grayscale models.

    Two changes: a 3-channel image is averaged to one gray channel before normalisation (the backbones take
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
