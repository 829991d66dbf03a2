r"""Transfer learning and domain shift.

*Feature extraction*: a network trained elsewhere (ImageNet in FULL mode, another scanner or an autoencoder in
CI mode) is frozen; its penultimate features feed a linear head fitted on the few target labels, either a
multinomial **logistic regression** or an **L2-loss linear SVM** (squared multi-class hinge, Weston-Watkins,
:class:`torch.nn.MultiMarginLoss` with ``p=2``, the loss LIBLINEAR uses by default). Both are convex and fitted
full-batch with L-BFGS on standardised features. *Fine-tuning* trains the whole network on the target labels.

*Domain shift*: a model trained on one scanner (or data set) is tested on every other one
(:func:`cross_domain_matrix`); the feature-space gap is measured by the kernel maximum mean discrepancy
(:func:`mmd2`).

Taught in ``book/13_transfer_domain_shift.md``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..distributed import model_device
from ..seeding import seeded
from .classifier import (DiagnosisClassifier, build_classifier, extract_features, predict_scores,
                         train_classifier)
from .crops import region_crops, stratified_split
from .metrics import classification_metrics

__all__ = ["LinearHead", "fit_linear_head", "Domain", "domain_from_samples", "DomainMatrix", "cross_domain_matrix", "transfer_study",
           "TransferStudy", "mmd2", "METRICS"]

METRICS = ("accuracy", "auc_malignant", "auc_mass", "sensitivity_malignant", "specificity_malignant")


class LinearHead(nn.Module):
    """A linear classifier on standardised features: ``scores = W ((f - mean) / std) + b``.

    ``kind`` is ``"logistic"`` (scores are logits) or ``"svm"`` (scores are margins). :meth:`predict_proba`
    is the softmax of the scores: calibrated probabilities for logistic regression, an uncalibrated monotone
    score for the SVM (enough for ROC curves; Platt scaling would calibrate it).
    """

    def __init__(self, in_features: int, num_classes: int, kind: str = "logistic") -> None:
        super().__init__()
        if kind not in ("logistic", "svm"):
            raise ValueError(f"kind must be 'logistic' or 'svm', got {kind!r}")
        self.kind = kind
        self.linear = nn.Linear(in_features, num_classes)
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("std", torch.ones(in_features))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear((features - self.mean) / self.std)

    @torch.no_grad()
    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        """Softmax of the scores ``[N, num_classes]``."""
        return self(features).softmax(dim=1)


def fit_linear_head(features: torch.Tensor, labels, kind: str = "logistic", num_classes: int = 3,
                    l2: float = 1e-2, max_iter: int = 200, device=None) -> LinearHead:
    r"""Fit a linear head on frozen features by full-batch L-BFGS (deterministic, convex).

    Objective, with standardised features :math:`\tilde f_i` and :math:`s_i = W\tilde f_i + b`:

    * ``"logistic"``: :math:`\frac1N\sum_i -\log\operatorname{softmax}(s_i)_{y_i} + \frac{\lambda}{2}\lVert W\rVert^2`
    * ``"svm"``: :math:`\frac1N\sum_i \frac1C\sum_{c \ne y_i}\max(0, 1 - s_{i,y_i} + s_{i,c})^2 +
      \frac{\lambda}{2}\lVert W\rVert^2` (``nn.MultiMarginLoss(p=2)``)

    Parameters
    ----------
    features : ``[N, D]`` (e.g. :func:`wsbus.companion.extract_features`).
    labels : ``[N]`` int in ``[0, num_classes)``.
    l2 : :math:`\lambda`, the weight decay on ``W`` (not on the bias).
    max_iter : L-BFGS iterations.

    Taught in ``book/13_transfer_domain_shift.md``.
    """
    x = torch.as_tensor(features).float()
    y = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    if x.ndim != 2 or x.shape[0] != y.numel() or x.shape[0] == 0:
        raise ValueError(f"features must be [N, D] with N = {y.numel()} labels (N > 0), got {tuple(x.shape)}")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes}), got {sorted(set(y.tolist()))}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("features contain NaN or infinite values")
    device = torch.device(device) if device is not None else x.device
    x, y = x.to(device), y.to(device)
    head = LinearHead(x.shape[1], num_classes, kind).to(device)
    head.mean.copy_(x.mean(0))
    head.std.copy_(x.std(0, unbiased=False).clamp_min(1e-6))
    nn.init.zeros_(head.linear.weight)
    nn.init.zeros_(head.linear.bias)
    criterion = nn.CrossEntropyLoss() if kind == "logistic" else nn.MultiMarginLoss(p=2, margin=1.0)
    opt = torch.optim.LBFGS(head.linear.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12, history_size=20)

    def closure():
        opt.zero_grad()
        loss = criterion(head(x), y) + 0.5 * l2 * head.linear.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    head.eval()
    return head


class Domain(NamedTuple):
    """One domain's data: train and test images ``[N, C, H, W]`` in [0, 1] with labels ``[N]``.

    Taught in ``book/13_transfer_domain_shift.md``.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def domain_from_samples(samples: Sequence, size: int = 64, test_fraction: float = 0.3, seed: int = 0,
                        normals_per_image: int = 2) -> Domain:
    """One domain's train / test region crops: a patient-grouped split, then :func:`wsbus.companion.region_crops`.

    The split is :func:`wsbus.companion.stratified_split` (``test_fraction``, ``seed``); the normal-tissue windows
    of the test images are drawn with ``seed + 1`` so that they differ from the training ones.

    Taught in ``book/13_transfer_domain_shift.md``.
    """

    train_idx, test_idx = stratified_split(samples, test_fraction=test_fraction, seed=seed)
    train = region_crops([samples[i] for i in train_idx.tolist()], size=size, normals_per_image=normals_per_image,
                         seed=seed)
    test = region_crops([samples[i] for i in test_idx.tolist()], size=size, normals_per_image=normals_per_image,
                        seed=seed + 1)
    return Domain(train.images, train.labels, test.images, test.labels)


def _scores(model, images: torch.Tensor, device) -> torch.Tensor:
    return predict_scores(model, images, device=device)


def _metric_values(y, probs) -> Dict[str, float]:
    m = classification_metrics(y, probs)
    return {"accuracy": m.accuracy, "auc_malignant": m.malignant.auc, "auc_mass": m.mass.auc,
            "sensitivity_malignant": m.malignant.sensitivity, "specificity_malignant": m.malignant.specificity}


@dataclass
class DomainMatrix:
    """Train-on-row, test-on-column scores of :func:`cross_domain_matrix`.

    Attributes
    ----------
    names : domain names (row and column order).
    values : ``{metric: float array [D, D]}``, ``values[m][i, j]`` = metric of the model trained on ``names[i]``
        evaluated on the test split of ``names[j]``.
    models : the trained model of each row.
    """

    names: List[str]
    values: Dict[str, np.ndarray]
    models: Dict[str, nn.Module] = field(default_factory=dict)

    def to_markdown(self, metric: str = "accuracy", digits: int = 3) -> str:
        """Rows = train domain, columns = test domain."""
        v = self.values[metric]
        lines = ["| train \\ test | " + " | ".join(self.names) + " |", "|---" * (len(self.names) + 1) + "|"]
        for i, n in enumerate(self.names):
            lines.append(f"| {n} | " + " | ".join(f"{v[i, j]:.{digits}f}" for j in range(len(self.names))) + " |")
        return "\n".join(lines)

    def in_domain(self, metric: str = "accuracy") -> np.ndarray:
        """The diagonal: each model on its own domain's test split."""
        return np.diag(self.values[metric]).copy()

    def off_domain(self, metric: str = "accuracy") -> np.ndarray:
        """Every off-diagonal entry (each model on the other domains)."""
        v = self.values[metric]
        return v[~np.eye(len(v), dtype=bool)]


def cross_domain_matrix(domains: Mapping[str, Domain], *, backbone: str = "tiny", pretrained: bool = False,
                        num_classes: int = 3, steps: int = 200, batch_size: int = 32, lr: float = 1e-3,
                        augment: bool = True, balanced: bool = True, device=None, seed: int = 0,
                        progress: bool = True) -> DomainMatrix:
    """Train one classifier per domain and test each on every domain: the domain-shift matrix.

    Every row's model is built with the same seed (identical initial weights) and trained with
    :func:`wsbus.companion.train_classifier` on that domain's train split; column ``j`` evaluates it on domain
    ``j``'s test split with :func:`wsbus.companion.classification_metrics`. Metrics whose class is missing in a
    test split (e.g. ``auc_mass`` without normal images, as in BUS-BRA) are ``nan``.

    Taught in ``book/13_transfer_domain_shift.md``.
    """
    names = list(domains)
    if len(names) < 2:
        raise ValueError(f"cross_domain_matrix needs at least two domains, got {names}")
    for n, d in domains.items():
        for part in ("train", "test"):
            x, y = getattr(d, f"{part}_images"), getattr(d, f"{part}_labels")
            if x.ndim != 4 or x.shape[0] != len(y) or len(y) == 0:
                raise ValueError(f"domain {n!r}: {part}_images must be non-empty [N, C, H, W] matching "
                                 f"{part}_labels, got {tuple(x.shape)} and {len(y)} labels")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    values = {m: np.full((len(names), len(names)), np.nan) for m in METRICS}
    models: Dict[str, nn.Module] = {}
    for i, src in enumerate(names):
        with seeded(seed, dev):
            model = build_classifier(backbone, pretrained=pretrained, num_classes=num_classes,
                                     in_channels=domains[src].train_images.shape[1])
        train_classifier(model, domains[src].train_images, domains[src].train_labels, steps=steps,
                         batch_size=batch_size, lr=lr, augment=augment, balanced=balanced, device=dev, seed=seed,
                         progress=progress)
        models[src] = model
        for j, tgt in enumerate(names):
            for m, v in _metric_values(domains[tgt].test_labels, _scores(model, domains[tgt].test_images, dev)).items():
                values[m][i, j] = v
    return DomainMatrix(names, values, models)


@dataclass
class TransferStudy:
    """Rows ``{"method", **metrics}`` of :func:`transfer_study`.
    """

    rows: List[dict]

    def to_markdown(self, metrics: Sequence[str] = ("accuracy", "auc_malignant"), digits: int = 3) -> str:
        """One row per method, one column per metric."""
        lines = ["| method | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
        for r in self.rows:
            lines.append(f"| {r['method']} | " + " | ".join(f"{r[m]:.{digits}f}" for m in metrics) + " |")
        return "\n".join(lines)

    def get(self, method: str, metric: str = "accuracy") -> float:
        """The ``metric`` of ``method``; ``KeyError`` naming the available methods when it is absent."""
        for r in self.rows:
            if r["method"] == method:
                return r[metric]
        raise KeyError(f"no method {method!r} in this study; have {[r['method'] for r in self.rows]}")


TRANSFER_METHODS = ("source_only", "scratch", "logistic_probe", "svm_probe", "fine_tune")


def transfer_study(source_model: DiagnosisClassifier, target: Domain, *,
                   methods: Sequence[str] = TRANSFER_METHODS, steps: int = 150, batch_size: int = 16,
                   lr: float = 1e-3, backbone_lr: Optional[float] = None, l2: float = 1e-2,
                   augment: bool = True, device=None, seed: int = 0, progress: bool = True) -> TransferStudy:
    """Compare ways of using a source-domain model on a target domain with few labels.

    Methods (all trained on ``target.train_*``, all scored on ``target.test_*``):

    * ``source_only``: the source model as it is (no target labels used): the domain-shift baseline;
    * ``scratch``: a fresh classifier of the same architecture trained on the target labels only;
    * ``logistic_probe`` / ``svm_probe``: frozen source features + :func:`fit_linear_head` (logistic / SVM);
    * ``fine_tune``: a copy of the source model, every layer trained on the target labels (backbone at
      ``backbone_lr``, default ``lr / 10``).

    Taught in ``book/13_transfer_domain_shift.md``.
    """
    unknown = set(methods) - set(TRANSFER_METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose among {TRANSFER_METHODS}")
    device = model_device(source_model, device)
    y_tr = torch.as_tensor(target.train_labels, dtype=torch.int64)
    rows: List[dict] = []
    for method in methods:
        if method == "source_only":
            probs = _scores(source_model, target.test_images, device)
        elif method == "scratch":
            with seeded(seed, device):
                model = DiagnosisClassifier(copy.deepcopy(source_model.backbone), source_model.num_classes)
                for mod in model.modules():  # same architecture, fresh weights
                    if hasattr(mod, "reset_parameters") and mod is not model:
                        mod.reset_parameters()
            train_classifier(model, target.train_images, y_tr, steps=steps, batch_size=batch_size, lr=lr,
                             augment=augment, device=device, seed=seed, progress=progress)
            probs = _scores(model, target.test_images, device)
        elif method in ("logistic_probe", "svm_probe"):
            f_tr = extract_features(source_model, target.train_images, device=device)
            f_te = extract_features(source_model, target.test_images, device=device)
            head = fit_linear_head(f_tr, y_tr, kind=method.split("_")[0], num_classes=source_model.num_classes,
                                   l2=l2)
            probs = head.predict_proba(f_te)
        else:  # fine_tune
            model = copy.deepcopy(source_model)
            train_classifier(model, target.train_images, y_tr, steps=steps, batch_size=batch_size, lr=lr,
                             backbone_lr=lr / 10 if backbone_lr is None else backbone_lr, augment=augment,
                             device=device, seed=seed, progress=progress)
            probs = _scores(model, target.test_images, device)
        rows.append({"method": method, **_metric_values(target.test_labels, probs)})
    return TransferStudy(rows)


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidth: Optional[float] = None) -> float:
    r"""Unbiased squared maximum mean discrepancy with a Gaussian kernel (Gretton et al. 2012).

    .. math:: \widehat{\mathrm{MMD}}^2 = \frac{1}{m(m-1)}\sum_{i\ne j}k(x_i,x_j) + \frac{1}{n(n-1)}\sum_{i\ne j}k(y_i,y_j)
              - \frac{2}{mn}\sum_{i,j}k(x_i,y_j),\qquad k(a,b)=\exp\!\Big(-\frac{\lVert a-b\rVert^2}{2h^2}\Big)

    ``bandwidth`` :math:`h` defaults to the median pairwise distance of the pooled sample (the median
    heuristic). Near 0 when both feature sets come from the same distribution (it can be slightly negative);
    larger = a bigger domain gap.

    Taught in ``book/13_transfer_domain_shift.md``.
    """
    x, y = torch.as_tensor(x).double(), torch.as_tensor(y).double().to(torch.as_tensor(x).device)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or len(x) < 2 or len(y) < 2:
        raise ValueError(f"x [m, D] and y [n, D] with m, n >= 2 and the same D are needed, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    z = torch.cat([x, y])
    d2 = torch.cdist(z, z).pow(2)
    if bandwidth is None:
        off = d2[~torch.eye(len(z), dtype=torch.bool, device=z.device)]
        bandwidth = float(off.sqrt().median())
        bandwidth = bandwidth if bandwidth > 0 else 1.0
    k = torch.exp(-d2 / (2 * bandwidth ** 2))
    m, n = len(x), len(y)
    kxx, kyy, kxy = k[:m, :m], k[m:, m:], k[:m, m:]
    return float((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
                 + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1)) - 2 * kxy.mean())
