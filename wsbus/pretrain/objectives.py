r"""The four label-free objectives, each a module holding the backbone and the small heads that are dropped after
pretraining.

* **SimCLR** (Chen et al. 2020): two views of every image, global-average-pooled backbone features, an MLP
  projection :math:`z`, and the NT-Xent loss (:func:`nt_xent`) that makes each view pick its partner out of the
  other :math:`2B - 2` views of the batch.
* **BYOL** (Grill et al. 2020): an online backbone + projection + prediction regresses the projection of the other
  view by a *target* network, an exponential moving average of the online one (:func:`byol_loss`); no negatives.
* **MAE** for a convolutional backbone: a ViT-style MAE drops the masked patches from the encoder's input, which a
  CNN cannot do, so we use the SimMIM form (Xie et al. 2022): random square patches of the view are replaced by
  the mean pixel (0 after normalisation), the backbone encodes the whole masked view, a light decoder (a 1x1
  convolution to ``stride**2`` values per feature-map cell, then a pixel shuffle) predicts the pixels, and the L1
  error is taken over the masked pixels only.
* **Autoencoder** (chapter 10's idea, on the detector's backbone): the feature map goes through a 1x1 convolution
  to a ``bottleneck``-channel code (so the identity cannot be copied through), transposed convolutions bring it
  back to the view's size, and :math:`L_{AE}` is the per-pixel mean squared error of
  :math:`\operatorname{sigmoid}(g(f(x)))` against the view :math:`x` in [0, 1].

Every objective takes a batch of views ``[n_views, B, 1, S, S]`` in [0, 1], normalises them as the detector does,
and returns a dict of scalars with ``"loss"``.
"""
from __future__ import annotations

import copy
import math
from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..seeding import derive_seed
from .config import PretrainConfig

__all__ = ["nt_xent", "byol_loss", "patch_mask", "MLPHead", "Objective", "SimCLR", "BYOL", "MaskedReconstruction",
           "Autoencoder", "OBJECTIVES", "build_objective"]


def nt_xent(z_a: Tensor, z_b: Tensor, temperature: float = 0.2) -> Tensor:
    r"""SimCLR's normalised-temperature cross-entropy of ``B`` positive pairs ``(z_a[i], z_b[i])``.

    With :math:`u_1 \dots u_{2B}` the L2-normalised rows of ``z_a`` then ``z_b``, :math:`s_{ij} = u_i^\top u_j`
    and :math:`j(i)` the partner of :math:`i`,

    .. math:: \ell = \frac{1}{2B} \sum_{i=1}^{2B} -\log
              \frac{\exp(s_{i\,j(i)} / \tau)}{\sum_{k \ne i} \exp(s_{ik} / \tau)} .

    Computed in float32 whatever the inputs' dtype.

    Taught in ``book/10_autoencoder_pretraining.md``.
    """
    if z_a.shape != z_b.shape or z_a.ndim != 2:
        raise ValueError(f"nt_xent expects two [B, D] tensors of one shape, got {tuple(z_a.shape)} and "
                         f"{tuple(z_b.shape)}")
    b = z_a.shape[0]
    u = F.normalize(torch.cat([z_a, z_b]).float(), dim=1)
    sim = u @ u.T / temperature
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=sim.device), float("-inf"))
    partner = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(sim.device)
    return F.cross_entropy(sim, partner)


def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    r"""BYOL's regression loss :math:`2 - 2\cos(p, z)`, averaged over the batch; ``z`` (the target) is detached."""
    return (2.0 - 2.0 * F.cosine_similarity(p.float(), z.detach().float(), dim=-1)).mean()


def patch_mask(batch: int, side: int, patch: int, ratio: float, generator: torch.Generator) -> Tensor:
    """``[batch, 1, side, side]`` float mask, 1 on exactly ``round(ratio * n)`` of each image's ``n`` square
    ``patch``-pixel patches (chosen uniformly, independently per image) and 0 elsewhere."""
    grid = side // patch
    n = grid * grid
    k = min(n - 1, max(1, int(round(ratio * n))))
    rank = torch.rand(batch, n, generator=generator).argsort(dim=1).argsort(dim=1)
    cells = (rank < k).float().view(batch, 1, grid, grid)
    return cells.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)


class MLPHead(nn.Sequential):
    """``Linear -> BatchNorm1d -> ReLU -> Linear``: SimCLR's projection and BYOL's projection and prediction."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, out_dim))


class Objective(nn.Module):
    """Base class: ``self.backbone`` plus heads; ``forward(views, step) -> {"loss": ..., ...}``.

    ``n_views`` views of each image are expected; :meth:`after_step` runs after each optimiser step (BYOL's target
    update). Subclasses define the heads and the loss."""

    n_views = 1

    def __init__(self, backbone: nn.Module, config: PretrainConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.out_channels = int(backbone.out_channels)
        self.stride = int(backbone.stride)

    def normalize(self, x: Tensor) -> Tensor:
        """Views in [0, 1] normalised with the detector's grayscale statistics."""
        return (x - self.config.image_mean[0]) / self.config.image_std[0]

    def features(self, x: Tensor) -> Tensor:
        """The backbone's feature map of normalised images."""
        out = self.backbone(x)
        return out if isinstance(out, Tensor) else next(iter(out.values()))

    def forward(self, views: Tensor, step: int) -> Dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Called after the optimiser step ``step`` (0-based); nothing by default."""


class SimCLR(Objective):
    """Two views, pooled features, an MLP projection, :func:`nt_xent`.

    Taught in ``book/10_autoencoder_pretraining.md``."""

    n_views = 2

    def __init__(self, backbone: nn.Module, config: PretrainConfig) -> None:
        super().__init__(backbone, config)
        self.projector = MLPHead(self.out_channels, config.hidden_dim, config.proj_dim)

    def forward(self, views: Tensor, step: int) -> Dict[str, Tensor]:
        b = views.shape[1]
        z = self.projector(self.features(self.normalize(views.flatten(0, 1))).mean(dim=(-2, -1)))
        return {"loss": nt_xent(z[:b], z[b:], self.config.temperature)}


class BYOL(Objective):
    """Online backbone + projection + prediction against an EMA target backbone + projection, both directions.

    Taught in ``book/10_autoencoder_pretraining.md``."""

    n_views = 2

    def __init__(self, backbone: nn.Module, config: PretrainConfig) -> None:
        super().__init__(backbone, config)
        self.projector = MLPHead(self.out_channels, config.hidden_dim, config.proj_dim)
        self.predictor = MLPHead(config.proj_dim, config.hidden_dim, config.proj_dim)
        self.target_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def forward(self, views: Tensor, step: int) -> Dict[str, Tensor]:
        b = views.shape[1]
        x = self.normalize(views.flatten(0, 1))
        p = self.predictor(self.projector(self.features(x).mean(dim=(-2, -1))))
        with torch.no_grad():
            out = self.target_backbone(x)
            out = out if isinstance(out, Tensor) else next(iter(out.values()))
            z = self.target_projector(out.mean(dim=(-2, -1)))
        loss = 0.5 * (byol_loss(p[:b], z[b:]) + byol_loss(p[b:], z[:b]))
        return {"loss": loss}

    def momentum(self, step: int) -> float:
        """The target's momentum after step ``step``: ``1 - (1 - ema) * (cos(pi * (step + 1) / steps) + 1) / 2``."""
        k = min(step + 1, self.config.steps) / self.config.steps
        return 1.0 - (1.0 - self.config.ema) * (math.cos(math.pi * k) + 1.0) / 2.0

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """target <- m * target + (1 - m) * online (parameters); buffers are copied."""
        m = self.momentum(step)
        for online, target in ((self.backbone, self.target_backbone), (self.projector, self.target_projector)):
            for po, pt in zip(online.parameters(), target.parameters()):
                pt.mul_(m).add_(po.detach(), alpha=1.0 - m)
            for bo, bt in zip(online.buffers(), target.buffers()):
                bt.copy_(bo)


class MaskedReconstruction(Objective):
    """SimMIM-style masked-image modelling: mask patches, encode, a 1x1 conv + pixel shuffle decodes, L1 on the
    masked pixels."""

    def __init__(self, backbone: nn.Module, config: PretrainConfig) -> None:
        super().__init__(backbone, config)
        self.decoder = nn.Sequential(nn.Conv2d(self.out_channels, self.stride ** 2, 1), nn.PixelShuffle(self.stride))

    def mask(self, batch: int, step: int) -> Tensor:
        """The masks of ``step``, from the seed ``derive_seed(seed, "mask", step)``."""
        g = torch.Generator().manual_seed(derive_seed(self.config.seed, "mask", int(step)))
        return patch_mask(batch, self.config.crop, self.config.mask_patch, self.config.mask_ratio, g)

    def forward(self, views: Tensor, step: int) -> Dict[str, Tensor]:
        x = self.normalize(views[0])
        m = self.mask(x.shape[0], step).to(x.device)
        pred = self.decoder(self.features(x * (1.0 - m))).float()
        err = (pred - x.float()).abs() * m
        return {"loss": err.sum() / m.sum().clamp(min=1.0)}


class Autoencoder(Objective):
    """Chapter 10's autoencoder on the detector's backbone: a ``bottleneck``-channel code at the backbone's stride,
    transposed convolutions back to the view, sigmoid, mean squared error."""

    def __init__(self, backbone: nn.Module, config: PretrainConfig) -> None:
        super().__init__(backbone, config)
        n_up = int(round(math.log2(self.stride)))
        if 2 ** n_up != self.stride:
            raise ValueError(f"the autoencoder needs a power-of-two backbone stride, got {self.stride}")
        # Narrow layers: at the view's resolution a transposed convolution costs width_in * width_out * 16 per pixel,
        # and 64 -> 32 channels would cost twice the tiny backbone itself.
        widths = [max(8, 32 // 2 ** i) for i in range(n_up - 1)]
        layers = [nn.Conv2d(self.out_channels, config.bottleneck, 1)]
        c_in = config.bottleneck
        for w in widths:
            layers += [nn.ConvTranspose2d(c_in, w, 4, stride=2, padding=1, bias=False), nn.GroupNorm(min(8, w), w),
                       nn.ReLU(inplace=True)]
            c_in = w
        layers.append(nn.ConvTranspose2d(c_in, 1, 4, stride=2, padding=1))
        self.decoder = nn.Sequential(*layers)

    def forward(self, views: Tensor, step: int) -> Dict[str, Tensor]:
        x = views[0]
        recon = torch.sigmoid(self.decoder(self.features(self.normalize(x))).float())
        return {"loss": F.mse_loss(recon, x.float())}


#: The objective of each method name.
OBJECTIVES = {"simclr": SimCLR, "byol": BYOL, "mae": MaskedReconstruction, "autoencoder": Autoencoder}


def build_objective(backbone: nn.Module, config: PretrainConfig) -> Objective:
    """The objective of ``config.method`` around ``backbone``."""
    return OBJECTIVES[config.method](backbone, config)
