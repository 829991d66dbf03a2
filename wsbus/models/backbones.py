"""Feature extractors for the detector: VGG16 conv5_3 (the paper), ResNet-18/50 C4, and a tiny CNN for CPU.

Every backbone takes **grayscale** images ``[N, 1, H, W]`` (ultrasound is single-channel), returns one feature
map and has an ``out_channels`` attribute, which is what torchvision's ``FasterRCNN`` / ``GeneralizedRCNN``
expect. With ``pretrained=True`` the ImageNet weights of torchvision are loaded (online users only) and the RGB
filters of the first convolution are summed into one grayscale filter, so that a gray image gives exactly the
response the RGB network gives to the same image replicated on three channels.

Taught in ``book/03_faster_rcnn.md``.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn
from torchvision import models
from torchvision.models import vgg
from torchvision.ops import FrozenBatchNorm2d

__all__ = ["BACKBONES", "NORMS", "build_backbone", "vgg16_conv5", "resnet_c4", "TinyBackbone", "gray_conv"]

BACKBONES = ("vgg16", "resnet18", "resnet50", "tiny")
NORMS = ("frozen_bn", "bn", "gn")


def gray_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """A copy of ``conv`` taking one input channel, its filters summed over the input channels.

    For an image replicated on all input channels the output is unchanged, which is how ImageNet filters
    are reused on grayscale ultrasound.
    """
    new = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None, conv.padding_mode)
    with torch.no_grad():
        new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def _freeze(modules) -> None:
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(False)


class _Features(nn.Sequential):
    """An ``nn.Sequential`` feature extractor that records ``out_channels`` and its stride."""

    def __init__(self, layers, out_channels: int, stride: int):
        super().__init__(*layers)
        self.out_channels = out_channels
        self.stride = stride


def vgg16_conv5(pretrained: bool = False, frozen_stages: int = 0) -> nn.Module:
    """VGG16 up to conv5_3 + ReLU (stride 16, 512 channels), as in the paper and the reference code.

    Parameters
    ----------
    pretrained : bool
        Load torchvision's ImageNet weights (downloads; never used by the tests).
    frozen_stages : int
        Number of leading conv blocks (conv1_x, conv2_x, ...) whose weights are frozen. The reference code
        freezes conv1 and conv2 (``trainable=False`` in ``VGGnet_train_bus.py``): ``frozen_stages=2``.
    """
    # Only the convolutional part: building torchvision's whole vgg16() would also initialise its 120M-parameter
    # classifier, which detection discards.
    body = vgg.make_layers(vgg.cfgs["D"], batch_norm=False)
    if pretrained:
        state = models.VGG16_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
        body.load_state_dict({k[len("features."):]: v for k, v in state.items() if k.startswith("features.")})
    else:
        # torchvision's VGG initialisation of the convolutions
        for m in body.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(m.bias, 0)
    features = list(body.children())[:30]  # conv1_1 ... conv5_3 + ReLU, without pool5
    features[0] = gray_conv(features[0])
    # Block boundaries in torchvision's vgg16().features: the max-pools at 4, 9, 16, 23.
    block_ends = [5, 10, 17, 24, 30]
    if not 0 <= frozen_stages <= 5:
        raise ValueError(f"vgg16: frozen_stages must be in 0..5, got {frozen_stages}")
    if frozen_stages:
        _freeze(features[: block_ends[frozen_stages - 1]])
    return _Features(features, out_channels=512, stride=16)


def _norm_layer(norm: str) -> Callable[[int], nn.Module]:
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "gn":
        return lambda c: nn.GroupNorm(32, c)
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def resnet_c4(depth: int = 50, pretrained: bool = False, frozen_stages: int = 0, norm: str = "bn") -> nn.Module:
    """ResNet-18/50 up to layer3 ("C4", stride 16): 256 (ResNet-18) or 1024 (ResNet-50) channels.

    We use the C4 design of the original Faster R-CNN ResNet models rather than an FPN so that every backbone
    gives one stride-16 feature map and the same anchors, RoI pooling and box head as VGG16 apply unchanged.

    Parameters
    ----------
    depth : {18, 50}
    pretrained : bool
        Load torchvision's ImageNet weights (downloads; never used by the tests).
    frozen_stages : int
        0..4: freeze the stem (1), then layer1 (2), layer2 (3), layer3 (4). torchvision's detection default
        for pretrained weights is 2 (stem and layer1 frozen).
    norm : {"frozen_bn", "bn", "gn"}
        Normalisation layers. torchvision's convention: ``"frozen_bn"`` with pretrained weights (batch statistics
        of tiny detection batches are unreliable), ``"bn"`` from scratch. ``"gn"`` (GroupNorm, 32 groups) is
        batch-independent and cannot load ImageNet weights.
    """
    if depth not in (18, 50):
        raise ValueError(f"resnet depth must be 18 or 50, got {depth}")
    if pretrained and norm == "gn":
        raise ValueError("resnet: ImageNet weights come with batch norm; use norm='frozen_bn' or 'bn' with "
                         "pretrained=True")
    if depth == 18:
        net = models.resnet18(weights=models.ResNet18_Weights.IMAGENET1K_V1 if pretrained else None,
                              norm_layer=_norm_layer(norm))
        out = 256
    else:
        net = models.resnet50(weights=models.ResNet50_Weights.IMAGENET1K_V2 if pretrained else None,
                              norm_layer=_norm_layer(norm))
        out = 1024
    stages = [nn.Sequential(gray_conv(net.conv1), net.bn1, net.relu, net.maxpool), net.layer1, net.layer2,
              net.layer3]
    if not 0 <= frozen_stages <= 4:
        raise ValueError(f"resnet: frozen_stages must be in 0..4, got {frozen_stages}")
    _freeze(stages[:frozen_stages])
    layers = list(stages[0].children()) + stages[1:]
    return _Features(layers, out_channels=out, stride=16)


class TinyBackbone(_Features):
    """A small CNN for CPU runs, tests and the book's CI mode: conv3x3-GroupNorm-ReLU blocks, stride 8.

    ``channels=(16, 32, 64, 64)`` gives three stride-2 blocks and one stride-1 block (about 70k parameters).
    GroupNorm instead of BatchNorm keeps every image's features independent of the other images of its
    mini-batch: a weakly labelled image added to a combined mini-batch changes nothing for the strong images,
    and batches of one image train normally.
    """

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 64), groups: int = 8):
        if len(channels) < 3:
            raise ValueError(f"tiny backbone needs at least 3 blocks (stride 8), got channels={channels}")
        layers = []
        c_in = 1
        for i, c in enumerate(channels):
            stride = 2 if i < 3 else 1
            layers += [nn.Conv2d(c_in, c, 3, stride=stride, padding=1, bias=False),
                       nn.GroupNorm(min(groups, c), c), nn.ReLU(inplace=True)]
            c_in = c
        super().__init__(layers, out_channels=channels[-1], stride=8)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def build_backbone(name: str, pretrained: bool = False, frozen_stages: Optional[int] = None,
                   norm: Optional[str] = None, width: float = 1.0) -> nn.Module:
    """The backbone called ``name`` (one of :data:`BACKBONES`).

    ``frozen_stages=None`` freezes conv1–2 of VGG16 / stem+layer1 of ResNets when ``pretrained`` (the reference
    code and torchvision) and nothing when training from scratch (random early filters should learn).
    ``norm=None`` is ``"frozen_bn"`` for pretrained ResNets and ``"bn"`` otherwise; it only applies to ResNets.
    ``width`` multiplies the tiny backbone's channels (16, 32, 64, 64); the other backbones keep theirs (1 only).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")
    if not width > 0 or (name != "tiny" and width != 1.0):
        raise ValueError(f"width must be > 0, and 1 for {name!r} (only the tiny backbone is widened), got {width!r}")
    if frozen_stages is None:
        frozen_stages = 2 if pretrained else 0
    if name == "vgg16":
        return vgg16_conv5(pretrained, frozen_stages)
    if name in ("resnet18", "resnet50"):
        norm = norm or ("frozen_bn" if pretrained else "bn")
        return resnet_c4(int(name[6:]), pretrained, frozen_stages, norm)
    if pretrained:
        raise ValueError("the tiny backbone has no pretrained weights; use pretrained=False")
    if frozen_stages:
        raise ValueError("the tiny backbone is always trained from scratch; use frozen_stages=0")
    return TinyBackbone(tuple(max(8, int(round(c * width))) for c in (16, 32, 64, 64)))
