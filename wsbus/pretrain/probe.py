"""Quick checks that a pretrained backbone learnt something: frozen pooled features, then k-NN and linear-probe
accuracy of a label the pretraining never saw (e.g. benign vs malignant).

These are sanity checks on frozen features, not the detector's score: the real test of a pretraining is the
detector fine-tuned from it (``--init``), measured on validation images.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from ..data.formats import Sample
from ..models.config import GRAY_STATS
from .views import resize_like_detector

__all__ = ["pooled_features", "knn_accuracy", "linear_probe_accuracy"]


@torch.no_grad()
def pooled_features(backbone: nn.Module, samples: Sequence[Sample], *, size: int, max_size: Optional[int] = None,
                    region: str = "image", image_mean: float = GRAY_STATS[False][0][0],
                    image_std: float = GRAY_STATS[False][1][0]) -> Tensor:
    """``[N, 2C]``: per image, the mean and the max over positions of the backbone's feature map, one image at a time
    at the detector's scale (``size``, ``max_size``, default ``2 * size``), in eval mode.

    ``region="image"`` pools the whole map; ``region="box"`` pools a 7x7 RoIAlign of the first box (what the
    detector's box head would see of the mass; every sample must have one).

    Taught in ``book/10_autoencoder_pretraining.md``.
    """
    if region not in ("image", "box"):
        raise ValueError(f"region must be 'image' or 'box', got {region!r}")
    max_size = max_size or 2 * size
    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    stride = int(getattr(backbone, "stride"))
    rows = []
    try:
        for s in samples:
            x = resize_like_detector(s.to_tensor(), size, max_size)
            fmap = backbone(((x - image_mean) / image_std)[None].to(device))
            if region == "box":
                if s.boxes is None or not len(s.boxes):
                    raise ValueError(f"sample {s.id!r} has no box to pool (region='box')")
                sx, sy = x.shape[-1] / s.width, x.shape[-2] / s.height
                box = torch.as_tensor(s.boxes[:1], dtype=torch.float32) * torch.tensor([sx, sy, sx, sy])
                fmap = roi_align(fmap, [box.to(device)], output_size=7, spatial_scale=1.0 / stride, sampling_ratio=2)
            rows.append(torch.cat([fmap.mean(dim=(-2, -1)), fmap.amax(dim=(-2, -1))], dim=1).float().cpu())
    finally:
        backbone.train(was_training)
    return torch.cat(rows)


def _standardise(train_x: Tensor, test_x: Tensor) -> Tuple[Tensor, Tensor]:
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    return (train_x - mean) / std, (test_x - mean) / std


def knn_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, k: int = 5) -> float:
    """Accuracy of a ``k``-nearest-neighbour vote (Euclidean distance between features standardised with the
    training statistics; a tie goes to the class whose neighbours are closer in sum).

    Taught in ``book/10_autoencoder_pretraining.md``.
    """
    if not 1 <= k <= len(train_x):
        raise ValueError(f"k must lie in 1..{len(train_x)}, got {k}")
    a, b = _standardise(train_x.float(), test_x.float())
    dist, idx = torch.cdist(b, a).topk(k, dim=1, largest=False)
    classes = torch.unique(train_y)
    votes = torch.stack([(train_y[idx] == c).float().sum(1) - 1e-6 * ((train_y[idx] == c).float() * dist).sum(1)
                         for c in classes], dim=1)
    pred = classes[votes.argmax(dim=1)]
    return float((pred == test_y).float().mean())


def linear_probe_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor,
                          l2: float = 1e-2, iterations: int = 200) -> float:
    """Accuracy of an L2-regularised multinomial logistic regression on standardised features (L-BFGS).

    Taught in ``book/10_autoencoder_pretraining.md``.
    """
    a, b = _standardise(train_x.float(), test_x.float())
    classes, y = torch.unique(train_y, return_inverse=True)
    linear = nn.Linear(a.shape[1], len(classes))
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    opt = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(linear(a), y) + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = classes[linear(b).argmax(dim=1)]
    return float((pred == test_y).float().mean())
