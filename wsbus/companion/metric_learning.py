r"""Metric learning for similar-case retrieval: Siamese (contrastive) and triplet embeddings of mass crops.

An :class:`EmbeddingNet` maps a mass crop to a unit vector; training pulls crops of the same class together
and pushes the other class at least a margin away:

* contrastive (Siamese pairs, :math:`y = 1` same class):
  :math:`L = \frac{1}{2N}\sum_i \big(y_i d_i^2 + (1 - y_i)\max(0, m - d_i)^2\big)`;
* triplet (anchor, positive, negative): :math:`L = \frac1N \sum_i \max(0, d(a_i, p_i) - d(a_i, n_i) + m)`
  (:func:`torch.nn.functional.triplet_margin_loss`).

Retrieval ranks a gallery by Euclidean (or cosine) distance to the query (:func:`retrieve`) and is scored by
precision@k (:func:`precision_at_k`).

Taught in ``book/12_metric_learning.md``.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import model_device
from ..seeding import seeded
from .classifier import (TinyBackbone, augment_batch, optimizer_step, batch_indices,
                         default_augmentation)

__all__ = ["EmbeddingNet", "contrastive_loss", "triplet_loss", "mine_pairs", "all_pairs", "mine_triplets",
           "batch_all_triplets", "batch_hard_triplets", "train_embedding", "retrieve", "precision_at_k"]


class EmbeddingNet(nn.Module):
    """Tiny CNN + two-layer projection to an L2-normalised embedding ``[B, embedding_dim]``.

    ``features(x)`` is the same as ``forward(x)`` so that :func:`wsbus.companion.extract_features` works on it.

    Taught in ``book/12_metric_learning.md``.
    """

    def __init__(self, embedding_dim: int = 32, in_channels: int = 1, widths: Sequence[int] = (16, 32, 64),
                 normalize: bool = True) -> None:
        super().__init__()
        self.backbone = TinyBackbone(in_channels, widths)
        d = self.backbone.out_features
        self.projection = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, embedding_dim))
        self.embedding_dim, self.normalize = int(embedding_dim), bool(normalize)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected images [B, C, H, W], got shape {tuple(x.shape)}")
        e = self.projection(self.backbone(x))
        return F.normalize(e, dim=1) if self.normalize else e

    features = forward


def contrastive_loss(emb_a: torch.Tensor, emb_b: torch.Tensor, same, margin: float = 1.0) -> torch.Tensor:
    r"""Siamese contrastive loss (Hadsell, Chopra & LeCun 2006), written out.

    .. math:: L = \frac{1}{2N}\sum_{i=1}^{N}\Big(y_i\, d_i^2 + (1 - y_i)\,\max(0,\, m - d_i)^2\Big),
              \qquad d_i = \lVert a_i - b_i \rVert_2

    Parameters
    ----------
    emb_a, emb_b : ``[N, D]`` embeddings of the two members of each pair.
    same : ``[N]`` bool or 0/1, 1 when the pair is of the same class.
    margin : :math:`m`; dissimilar pairs farther apart than ``m`` cost nothing.

    Taught in ``book/12_metric_learning.md``.
    """
    if emb_a.shape != emb_b.shape or emb_a.ndim != 2:
        raise ValueError(f"emb_a and emb_b must both be [N, D], got {tuple(emb_a.shape)} and {tuple(emb_b.shape)}")
    y = torch.as_tensor(same, device=emb_a.device).to(emb_a.dtype).reshape(-1)
    if y.numel() != emb_a.shape[0]:
        raise ValueError(f"same has {y.numel()} entries for {emb_a.shape[0]} pairs")
    if emb_a.shape[0] == 0:
        raise ValueError("contrastive_loss: no pairs")
    d2 = (emb_a - emb_b).pow(2).sum(dim=1)
    d = d2.clamp_min(1e-20).sqrt()  # the clamp keeps the gradient finite for identical embeddings
    return (y * d2 + (1 - y) * F.relu(margin - d).pow(2)).sum() / (2 * emb_a.shape[0])


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                 margin: float = 0.2) -> torch.Tensor:
    r"""Triplet loss :math:`\frac1N \sum_i \max(0, \lVert a_i - p_i\rVert_2 - \lVert a_i - n_i\rVert_2 + m)`.

    This is :func:`torch.nn.functional.triplet_margin_loss` with ``p=2`` (its distance adds ``eps = 1e-6`` to
    each coordinate difference, as :func:`torch.nn.functional.pairwise_distance` does).

    Taught in ``book/12_metric_learning.md``.
    """
    if anchor.shape[0] == 0:
        raise ValueError("triplet_loss: no triplets")
    return F.triplet_margin_loss(anchor, positive, negative, margin=margin, p=2.0, reduction="mean")


def _labels(labels) -> torch.Tensor:
    y = torch.as_tensor(labels).reshape(-1)
    if y.dtype.is_floating_point:
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    return y


def all_pairs(labels) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every unordered pair ``i < j``: ``(i, j, same)`` index tensors (on the labels' device).

    Taught in ``book/12_metric_learning.md``.
    """
    y = _labels(labels)
    i, j = torch.triu_indices(y.numel(), y.numel(), offset=1, device=y.device)
    return i, j, y[i] == y[j]


def mine_pairs(labels, n_pairs: int, generator: Optional[torch.Generator] = None):
    """Random pairs, half of them positive (same class) and half negative: ``(i, j, same)``, ``i != j``.

    Positives need a class with two items, negatives two classes; the missing kind is an error.
    """
    y = _labels(labels).cpu()
    i_all, j_all, same_all = all_pairs(y)
    pos, neg = same_all.nonzero().flatten(), (~same_all).nonzero().flatten()
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"mine_pairs needs both positive and negative pairs; labels {sorted(set(y.tolist()))} "
                         f"give {len(pos)} positive and {len(neg)} negative pairs")
    n_pos = n_pairs // 2
    pick = torch.cat([pos[torch.randint(len(pos), (n_pos,), generator=generator)],
                      neg[torch.randint(len(neg), (n_pairs - n_pos,), generator=generator)]])
    return i_all[pick], j_all[pick], same_all[pick]


def mine_triplets(labels, n_triplets: int, generator: Optional[torch.Generator] = None):
    """Random triplets ``(anchor, positive, negative)``: positive of the anchor's class (not itself), negative not.
    """
    y = _labels(labels).cpu()
    same = y[:, None] == y[None, :]
    has_pos = (same.sum(1) >= 2) & (~same).any(1)
    anchors_ok = has_pos.nonzero().flatten()
    if len(anchors_ok) == 0:
        raise ValueError(f"mine_triplets needs a class with two items and another class; got labels "
                         f"{sorted(set(y.tolist()))} with counts {torch.unique(y, return_counts=True)[1].tolist()}")
    a = anchors_ok[torch.randint(len(anchors_ok), (n_triplets,), generator=generator)]
    pos_mask = same[a] & (torch.arange(len(y))[None, :] != a[:, None])
    neg_mask = ~same[a]
    # Uniform choice among allowed columns: the argmax of masked uniform noise.
    p = torch.where(pos_mask, torch.rand(pos_mask.shape, generator=generator), torch.tensor(-1.0)).argmax(1)
    n = torch.where(neg_mask, torch.rand(neg_mask.shape, generator=generator), torch.tensor(-1.0)).argmax(1)
    return a, p, n


def batch_all_triplets(labels):
    """Every valid triplet of a batch (Hermans, Beyer & Leibe 2017, "batch all"): ``(anchor, positive, negative)``.

    ``positive != anchor`` has the anchor's label, ``negative`` another label. A balanced batch of ``B`` items in
    two classes holds ``B (B/2 - 1) B/2`` triplets: cheap for the batch sizes used here.

    Taught in ``book/12_metric_learning.md``.
    """
    y = _labels(labels)
    same = y[:, None] == y[None, :]
    eye = torch.eye(len(y), dtype=torch.bool, device=y.device)
    valid = (same & ~eye)[:, :, None] & ~same[:, None, :]  # [a, p, n]
    a, p, n = valid.nonzero(as_tuple=True)
    return a, p, n


def batch_hard_triplets(embeddings: torch.Tensor, labels):
    """Batch-hard mining (Hermans, Beyer & Leibe 2017): per anchor, the farthest positive and the closest negative.

    Anchors without a positive or a negative in the batch are dropped. Returns ``(anchor, positive, negative)``
    index tensors on the embeddings' device; distances are computed without gradient (mining only).

    From a random start it can collapse every embedding onto one point (the loss then sits at the margin, as
    Hermans et al. warn); ``book/12_metric_learning.md`` shows it and uses "batch all" by default.

    Taught in ``book/12_metric_learning.md``.
    """
    y = _labels(labels).to(embeddings.device)
    with torch.no_grad():
        d = torch.cdist(embeddings.detach(), embeddings.detach())
        same = y[:, None] == y[None, :]
        eye = torch.eye(len(y), dtype=torch.bool, device=y.device)
        pos_mask, neg_mask = same & ~eye, ~same
        ok = pos_mask.any(1) & neg_mask.any(1)
        p = torch.where(pos_mask, d, torch.full_like(d, -1.0)).argmax(1)
        n = torch.where(neg_mask, d, torch.full_like(d, float("inf"))).argmin(1)
    a = ok.nonzero().flatten()
    return a, p[a], n[a]


def train_embedding(net: nn.Module, images: torch.Tensor, labels, *, loss: str = "triplet",
                    mining: Optional[str] = None, margin: Optional[float] = None, steps: int = 200,
                    batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 1e-4,
                    augment: Union[bool, Callable, None] = True, device=None, seed: Optional[int] = 0,
                    progress: bool = True) -> List[float]:
    """Train an embedding with the contrastive or the triplet loss; returns the loss of every step.

    Each mini-batch is class-balanced (so it always holds positives and negatives), augmented, embedded once,
    and the pairs / triplets are mined inside it:

    * ``loss="triplet"``: ``mining="batch_all"`` (default, :func:`batch_all_triplets`), ``"batch_hard"``
      (:func:`batch_hard_triplets`) or ``"random"`` (:func:`mine_triplets`); default margin 0.2;
    * ``loss="contrastive"``: ``mining="all"`` (default, every pair of the batch, :func:`all_pairs`) or
      ``"random"`` (:func:`mine_pairs`, half positive); default margin 1.0.

    ``device``, ``seed``, ``progress`` as in :func:`wsbus.companion.train_classifier`.

    Taught in ``book/12_metric_learning.md``.
    """
    from tqdm.auto import tqdm

    if loss not in ("triplet", "contrastive"):
        raise ValueError(f"loss must be 'triplet' or 'contrastive', got {loss!r}")
    allowed = {"triplet": ("batch_all", "batch_hard", "random"), "contrastive": ("all", "random")}[loss]
    mining = allowed[0] if mining is None else mining
    if mining not in allowed:
        raise ValueError(f"mining {mining!r} is not available for the {loss} loss; choose one of {allowed}")
    margin = (0.2 if loss == "triplet" else 1.0) if margin is None else float(margin)
    y_all = _labels(labels).to(torch.int64).cpu()
    if images.ndim != 4 or images.shape[0] != y_all.numel():
        raise ValueError(f"images must be [N, C, H, W] with N = {y_all.numel()} labels, got {tuple(images.shape)}")
    if y_all.unique().numel() < 2:
        raise ValueError(f"metric learning needs at least two classes, got {sorted(set(y_all.tolist()))}")
    device = model_device(net, device)
    net.to(device)
    augment = default_augmentation() if augment is True else (augment or None)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    history: List[float] = []
    with seeded(seed, device):
        g = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        net.train()
        for step, idx in enumerate(tqdm(batch_indices(y_all, steps, batch_size, True, g),
                                        desc=f"train {loss} embedding", disable=not progress)):
            x = augment_batch(images[idx].to(device, non_blocking=True), augment)
            y = y_all[idx]
            e = net(x)
            if loss == "triplet":
                if mining == "batch_all":
                    a, p, n = (t.to(device) for t in batch_all_triplets(y))
                elif mining == "batch_hard":
                    a, p, n = batch_hard_triplets(e, y)
                else:
                    a, p, n = (t.to(device) for t in mine_triplets(y, len(idx), g))
                if len(a) == 0:
                    continue  # a one-class batch (only possible when a class has a single item): nothing to learn
                value = triplet_loss(e[a], e[p], e[n], margin)
            else:
                i, j, same = all_pairs(y) if mining == "all" else mine_pairs(y, len(idx), g)
                value = contrastive_loss(e[i.to(device)], e[j.to(device)], same.to(device), margin)
            history.append(optimizer_step(opt, value, "train_embedding", step))
    net.eval()
    return history


def retrieve(query_emb: torch.Tensor, gallery_emb: torch.Tensor, k: int, metric: str = "euclidean",
             exclude_self: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest gallery items of each query: ``(indices [Q, k], distances [Q, k])``, nearest first.

    Parameters
    ----------
    query_emb, gallery_emb : ``[Q, D]`` and ``[G, D]`` (on the same device).
    k : neighbours per query (``<= G``, or ``<= G - 1`` with ``exclude_self``).
    metric : ``"euclidean"`` (:func:`torch.cdist`) or ``"cosine"`` (``1 - cosine similarity``).
    exclude_self : the query set *is* the gallery (leave-one-out): item ``i`` never retrieves itself.

    Ties are broken by the lower gallery index (a stable sort).

    Taught in ``book/12_metric_learning.md``.
    """
    if query_emb.ndim != 2 or gallery_emb.ndim != 2 or query_emb.shape[1] != gallery_emb.shape[1]:
        raise ValueError(f"query_emb [Q, D] and gallery_emb [G, D] must share D, got {tuple(query_emb.shape)} and "
                         f"{tuple(gallery_emb.shape)}")
    G = gallery_emb.shape[0]
    if exclude_self and query_emb.shape[0] != G:
        raise ValueError(f"exclude_self needs the query set to be the gallery, got Q = {query_emb.shape[0]}, G = {G}")
    if not 1 <= k <= G - int(exclude_self):
        raise ValueError(f"k must be in [1, {G - int(exclude_self)}], got {k}")
    if metric == "euclidean":
        d = torch.cdist(query_emb.float(), gallery_emb.float())
    elif metric == "cosine":
        d = 1.0 - F.normalize(query_emb.float(), dim=1) @ F.normalize(gallery_emb.float(), dim=1).T
    else:
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    if exclude_self:
        d = d.clone()
        d.fill_diagonal_(float("inf"))
    dist, idx = torch.sort(d, dim=1, stable=True)
    return idx[:, :k], dist[:, :k]


def precision_at_k(query_labels, gallery_labels, indices: torch.Tensor, k: Optional[int] = None,
                   per_query: bool = False):
    """Precision@k: the fraction of the first ``k`` retrieved items whose label equals the query's, averaged.

    Parameters
    ----------
    query_labels : ``[Q]``; gallery_labels : ``[G]``.
    indices : ``[Q, K]`` from :func:`retrieve`.
    k : use the first ``k <= K`` columns (default all).
    per_query : return the ``[Q]`` tensor instead of its mean.

    Taught in ``book/12_metric_learning.md``.
    """
    q = _labels(query_labels).cpu()
    gl = _labels(gallery_labels).cpu()
    idx = torch.as_tensor(indices).cpu()
    if idx.ndim != 2 or idx.shape[0] != q.numel():
        raise ValueError(f"indices must be [Q, K] with Q = {q.numel()}, got shape {tuple(idx.shape)}")
    k = idx.shape[1] if k is None else int(k)
    if not 1 <= k <= idx.shape[1]:
        raise ValueError(f"k must be in [1, {idx.shape[1]}], got {k}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= gl.numel()):
        raise ValueError(f"indices point outside the gallery of {gl.numel()} items")
    hits = (gl[idx[:, :k]] == q[:, None]).double().mean(dim=1)
    return hits if per_query else float(hits.mean())
