"""CNN diagnosis: an image (or mass crop) classifier normal / benign / malignant, its training and its scores.

``build_classifier(backbone)`` returns a :class:`DiagnosisClassifier` = ``backbone`` (image -> feature vector,
the "penultimate layer") + ``head`` (dropout + linear). Backbones: ``"tiny"`` (four conv blocks, 64 features,
for CPU, tests and the book's CI mode), ``"resnet18"`` and ``"vgg16"`` from :mod:`torchvision.models` (ImageNet
weights only when ``pretrained=True``, which downloads them; grayscale input is repeated to three channels and
normalised with the ImageNet statistics).

Taught in ``book/11_cnn_diagnosis.md``.; the tiny trunk is shared with the autoencoders of
``book/10_autoencoder_pretraining.md``, so their encoder weights load into the classifier unchanged.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.v2 as T
from torch import nn

from ..distributed import model_device
from ..seeding import seeded

__all__ = ["TinyTrunk", "TinyBackbone", "DiagnosisClassifier", "build_classifier", "default_augmentation",
           "train_classifier", "predict_scores", "extract_features", "batch_indices", "augment_batch", "optimizer_step",
           "BACKBONES"]

BACKBONES = ("tiny", "resnet18", "vgg16")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _conv_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.GroupNorm(min(8, cout), cout), nn.ReLU(inplace=True))


class TinyTrunk(nn.Sequential):
    """Four 3x3 conv blocks (conv, GroupNorm, ReLU), output stride 8: ``[B, C, H, W] -> [B, 64, H/8, W/8]``.

    GroupNorm rather than BatchNorm: its output does not depend on the batch, so a handful of labelled images,
    an autoencoder's batches and a frozen feature extractor on another scanner all see the same network.
    """

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = (16, 32, 64)) -> None:
        w1, w2, w3 = widths
        super().__init__(_conv_block(in_channels, w1, 2), _conv_block(w1, w2, 2), _conv_block(w2, w3, 2),
                         _conv_block(w3, w3, 1))
        self.in_channels = in_channels
        self.out_channels = w3


class TinyBackbone(nn.Module):
    """:class:`TinyTrunk` followed by global pooling: ``[B, C, H, W] -> [B, 64]``.

    ``pool="max"`` (default) keeps, per channel, the strongest response anywhere in the image: a mass covers a
    few percent of a scan, and the question "is there a mass-like pattern somewhere?" is a max over positions
    (the multiple-instance view of ``book/05_mil_moi.md``, with pixels as instances). ``pool="avg"`` averages it
    away; on the phantom the max-pooled classifier learns several times faster.

    Taught in ``book/11_cnn_diagnosis.md``.
    """

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = (16, 32, 64), pool: str = "max") -> None:
        super().__init__()
        if pool not in ("max", "avg"):
            raise ValueError(f"pool must be 'max' or 'avg', got {pool!r}")
        self.trunk = TinyTrunk(in_channels, widths)
        self.pool = pool
        self.out_features = self.trunk.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        return h.amax(dim=(2, 3)) if self.pool == "max" else h.mean(dim=(2, 3))


class _ImageNetInput(nn.Module):
    """Grayscale -> 3 channels, then ImageNet normalisation (what torchvision's pretrained weights expect)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        self.in_channels = in_channels
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std


class _TorchvisionBackbone(nn.Module):
    def __init__(self, name: str, pretrained: bool, in_channels: int) -> None:
        super().__init__()
        self.input = _ImageNetInput(in_channels)
        if name == "resnet18":
            weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1 if pretrained else None
            net = torchvision.models.resnet18(weights=weights)
            self.out_features = net.fc.in_features
            net.fc = nn.Identity()
        else:
            weights = torchvision.models.VGG16_Weights.IMAGENET1K_V1 if pretrained else None
            net = torchvision.models.vgg16(weights=weights)
            self.out_features = net.classifier[-1].in_features
            net.classifier = net.classifier[:-1]  # keep fc6, fc7 (+ReLU, dropout): the 4096-d penultimate layer
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.input(x))


class DiagnosisClassifier(nn.Module):
    """``backbone`` (image -> feature vector) + ``head`` (dropout, linear): logits ``[B, num_classes]``.

    :meth:`features` is the penultimate layer used for retrieval (``book/12_metric_learning.md``) and frozen
    feature extraction (``book/13_transfer_domain_shift.md``).

    Taught in ``book/11_cnn_diagnosis.md``.
    """

    def __init__(self, backbone: nn.Module, num_classes: int = 3, dropout: float = 0.2) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = int(backbone.out_features)
        self.num_classes = int(num_classes)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.feature_dim, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features ``[B, feature_dim]``."""
        if x.ndim != 4:
            raise ValueError(f"expected images [B, C, H, W], got shape {tuple(x.shape)}")
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_classifier(backbone: str = "tiny", pretrained: bool = False, num_classes: int = 3,
                     in_channels: int = 1, dropout: float = 0.2) -> DiagnosisClassifier:
    """Build an image classifier: 0 normal, 1 benign, 2 malignant by default.

    Parameters
    ----------
    backbone : ``"tiny"`` | ``"resnet18"`` | ``"vgg16"``.
    pretrained : ImageNet weights for ``resnet18`` / ``vgg16`` (downloaded by torchvision: an online option,
        never used by the tests). ``"tiny"`` has no pretrained weights; pretrain it yourself
        (:func:`wsbus.companion.pretrain_autoencoder`).
    num_classes : output classes.
    in_channels : 1 (grayscale ultrasound) or 3.
    dropout : dropout before the linear head.

    Taught in ``book/11_cnn_diagnosis.md``.
    """
    if backbone == "tiny":
        if pretrained:
            raise ValueError("backbone 'tiny' has no pretrained weights; use pretrain_autoencoder() or "
                             "backbone='resnet18'/'vgg16' with pretrained=True")
        net = TinyBackbone(in_channels)
    elif backbone in ("resnet18", "vgg16"):
        net = _TorchvisionBackbone(backbone, pretrained, in_channels)
    else:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")
    return DiagnosisClassifier(net, num_classes=num_classes, dropout=dropout)


def default_augmentation() -> T.Compose:
    """The reference augmentation, image-only: flip, rotation +-5 deg, shift 5 %, brightness +-0.2, contrast x[0.2, 1.8].

    The same recipe as the detector's (``wsbus.data.transforms``) minus the boxes, built from
    :mod:`torchvision.transforms.v2`; it is applied to each image of a batch independently.

    Taught in ``book/11_cnn_diagnosis.md``.
    """
    return T.Compose([T.RandomHorizontalFlip(), T.RandomAffine(degrees=5.0, translate=(0.05, 0.05)),
                      T.ColorJitter(brightness=0.2, contrast=(0.2, 1.8))])


def _check_xy(images: torch.Tensor, labels: torch.Tensor, num_classes: Optional[int]) -> None:
    if images.ndim != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
    if labels.ndim != 1 or labels.numel() != images.shape[0]:
        raise ValueError(f"labels must be [N] with N = {images.shape[0]}, got shape {tuple(labels.shape)}")
    if images.shape[0] == 0:
        raise ValueError("no training images")
    if num_classes is not None and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got {sorted(set(labels.tolist()))}")


def batch_indices(labels: torch.Tensor, steps: int, batch_size: int, balanced: bool,
                  generator: Optional[torch.Generator] = None) -> List[torch.Tensor]:
    """Mini-batch index tensors for ``steps`` iterations.

    Plain: reshuffled epochs (every item once per epoch). ``balanced``: each draw picks a class uniformly
    among the classes present, then an item of that class (with replacement), so rare classes are not drowned.
    """
    n = labels.numel()
    bs = min(batch_size, n)
    out: List[torch.Tensor] = []
    if balanced:
        classes, counts = labels.unique(return_counts=True)
        w = (1.0 / counts.double())[torch.searchsorted(classes, labels)]
        for _ in range(steps):
            out.append(torch.multinomial(w, bs, replacement=True, generator=generator))
        return out
    perm = torch.randperm(n, generator=generator)
    pos = 0
    for _ in range(steps):
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=generator), 0
        out.append(perm[pos:pos + bs])
        pos += bs
    return out


def augment_batch(x: torch.Tensor, augment: Optional[Callable]) -> torch.Tensor:
    """``augment`` applied to each image of the batch ``x`` (clamped to [0, 1]); ``x`` itself when it is None."""
    if augment is None:
        return x
    return torch.stack([augment(xi) for xi in x]).clamp_(0.0, 1.0)


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, where: str, step: int) -> float:
    """One update from a scalar ``loss``: refuse a non-finite loss (:class:`FloatingPointError` naming ``where``
    and ``step``), then zero the gradients, back-propagate and step ``opt``; returns the loss as a float.
    """
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{where}: loss became {loss.item()} at step {step}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def train_classifier(model: DiagnosisClassifier, images: torch.Tensor, labels: torch.Tensor, *, steps: int = 200,
                     batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 1e-4,
                     backbone_lr: Optional[float] = None, augment: Union[bool, Callable, None] = True,
                     balanced: bool = False, freeze_backbone: bool = False, device=None, seed: Optional[int] = 0,
                     progress: bool = True, log_dir: Optional[str] = None) -> List[float]:
    """Train (or fine-tune) a classifier with cross-entropy and Adam; returns the loss of every step.

    Parameters
    ----------
    model : a :class:`DiagnosisClassifier` (trained in place, moved to ``device``).
    images : float [N, C, H, W] in [0, 1] (kept where they are; each mini-batch is moved to ``device``).
    labels : int64 [N] in ``[0, model.num_classes)``.
    steps, batch_size, lr, weight_decay : Adam optimisation (decoupled weight decay: ``AdamW``).
    backbone_lr : a separate learning rate for the backbone (fine-tuning a pretrained network gently);
        default ``lr``.
    augment : ``True`` for :func:`default_augmentation`, a callable applied per image, or ``False``/``None``.
    balanced : class-balanced sampling (see :func:`batch_indices`).
    freeze_backbone : train the head only; the backbone is kept in eval mode with ``requires_grad=False``
        (the "frozen feature extractor" of ``book/13_transfer_domain_shift.md``).
    device : default the model's device.
    seed : seeds the batch order, the augmentation and dropout inside a forked RNG (the caller's global RNG
        state is left untouched); ``None`` uses the global RNG.
    progress : a tqdm bar.
    log_dir : write the loss to TensorBoard there (``torch.utils.tensorboard``).

    Taught in ``book/11_cnn_diagnosis.md``.
    """
    from tqdm.auto import tqdm

    labels = torch.as_tensor(labels, dtype=torch.int64).cpu()
    _check_xy(images, labels, model.num_classes)
    device = model_device(model, device)
    model.to(device)
    if augment is True:
        augment = default_augmentation()
    elif augment is False:
        augment = None
    for p in model.backbone.parameters():
        p.requires_grad_(not freeze_backbone)
    groups = [{"params": list(model.head.parameters()), "lr": lr}]
    if not freeze_backbone:
        groups.append({"params": list(model.backbone.parameters()), "lr": lr if backbone_lr is None else backbone_lr})
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    writer = None
    if log_dir is not None:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(log_dir)
    history: List[float] = []
    with seeded(seed, device):
        g = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        batches = batch_indices(labels, steps, batch_size, balanced, g)
        model.train()
        if freeze_backbone:
            model.backbone.eval()
        for step, idx in enumerate(tqdm(batches, desc="train classifier", disable=not progress)):
            x = augment_batch(images[idx].to(device, non_blocking=True), augment)
            y = labels[idx].to(device)
            history.append(optimizer_step(opt, F.cross_entropy(model(x), y), "train_classifier", step))
            if writer is not None:
                writer.add_scalar("classifier/loss", history[-1], step)
    if writer is not None:
        writer.close()
    model.eval()
    return history


@torch.no_grad()
def _batched(fn: Callable, images: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    if images.ndim != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
    outs = [fn(images[i:i + batch_size].to(device)).float().cpu() for i in range(0, images.shape[0], batch_size)]
    return torch.cat(outs) if outs else torch.zeros(0)


def predict_scores(model: DiagnosisClassifier, images: torch.Tensor, batch_size: int = 256,
                   device=None) -> torch.Tensor:
    """Class probabilities (softmax) ``[N, num_classes]`` on the CPU, computed in eval mode.

    Taught in ``book/11_cnn_diagnosis.md``.
    """
    device = model_device(model, device)
    model.to(device).eval()
    return _batched(lambda x: model(x).softmax(dim=1), images, batch_size, device)


def extract_features(model: nn.Module, images: torch.Tensor, batch_size: int = 256, device=None) -> torch.Tensor:
    """Penultimate-layer features ``[N, D]`` on the CPU (``model.features`` if it has one, else ``model(x)``).

    Taught in ``book/12_metric_learning.md``.
    """
    device = model_device(model, device)
    model.to(device).eval()
    fn = model.features if hasattr(model, "features") else model
    return _batched(fn, images, batch_size, device)
