r"""Unlabeled pretraining: a convolutional autoencoder and a variational autoencoder, then fine-tuning on few labels.

Both models share one encoder architecture, :math:`f(x) = z`: the convolutional
:class:`~wsbus.companion.classifier.TinyTrunk` of ``build_classifier("tiny")``, flattened, then a linear
bottleneck (the VAE's mean head :math:`\mu(x)`). After pretraining on unlabeled images the encoder becomes a
classifier's backbone (:func:`classifier_from_encoder`), which is then fine-tuned on a small labelled set.

Autoencoder (seed 000): :math:`L_{AE} = \frac{1}{N}\sum_i \lVert x_i - g(f(x_i)) \rVert^2` (mean squared error
per pixel).

VAE: encoder :math:`q_\phi(z|x) = \mathcal N(\mu_\phi(x), \operatorname{diag}\sigma^2_\phi(x))`, prior
:math:`p(z) = \mathcal N(0, I)`, decoder :math:`p_\theta(x|z)`; the evidence lower bound

.. math:: \mathcal L(\theta,\phi;x) = \mathbb E_{q_\phi(z|x)}[\log p_\theta(x|z)] - D_{KL}(q_\phi(z|x)\,\|\,p(z))

is maximised; :func:`elbo` returns both terms (see there for the closed-form KL).

Taught in ``book/10_autoencoder_pretraining.md``.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import model_device
from ..seeding import seeded
from .classifier import (DiagnosisClassifier, TinyTrunk, augment_batch, batch_indices,
                         default_augmentation, predict_scores, train_classifier)
from .crops import stratified_subset
from .metrics import classification_metrics

__all__ = ["ConvAutoencoder", "ConvVAE", "ELBOTerms", "elbo", "gaussian_kl", "reparameterize",
           "pretrain_autoencoder", "EncoderBackbone", "classifier_from_encoder", "label_budget_study", "BudgetStudy"]


def _up_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False),
                         nn.GroupNorm(min(8, cout), cout), nn.ReLU(inplace=True))


class _Decoder(nn.Module):
    """Latent vector -> ``[B, C, S, S]`` logits: a linear layer to the trunk's 1/8 grid, three x2 up-convolutions."""

    def __init__(self, latent_dim: int, image_size: int, in_channels: int, widths: Sequence[int]) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.grid = image_size // 8
        self.w3 = w3
        self.fc = nn.Linear(latent_dim, w3 * self.grid * self.grid)
        # The last up-convolution writes the logits directly: a full-resolution conv block would cost more than
        # the whole encoder on a CPU.
        self.up = nn.Sequential(_up_block(w3, w2), _up_block(w2, w1),
                                nn.ConvTranspose2d(w1, in_channels, 4, stride=2, padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc(z)).view(z.shape[0], self.w3, self.grid, self.grid)
        return self.up(h)


class _Base(nn.Module):
    def __init__(self, image_size: int, latent_dim: int, in_channels: int, widths: Sequence[int]) -> None:
        super().__init__()
        if image_size % 8 or image_size < 8:
            raise ValueError(f"image_size must be a positive multiple of 8, got {image_size}")
        self.image_size, self.latent_dim, self.in_channels = int(image_size), int(latent_dim), int(in_channels)
        self.widths = tuple(int(w) for w in widths)
        self.encoder = TinyTrunk(in_channels, self.widths)
        self.flat_dim = self.widths[-1] * (image_size // 8) ** 2
        self.decoder = _Decoder(latent_dim, image_size, in_channels, self.widths)

    def _check(self, x: torch.Tensor) -> None:
        want = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"{type(self).__name__} expects images [B, {want[0]}, {want[1]}, {want[2]}], "
                             f"got shape {tuple(x.shape)}")


class AEOutput(NamedTuple):
    recon: torch.Tensor   # sigmoid(logits), [B, C, S, S] in [0, 1]
    logits: torch.Tensor
    z: torch.Tensor


class ConvAutoencoder(_Base):
    """Deterministic convolutional autoencoder: ``x -> z = f(x) -> x_hat = sigmoid(g(z))``.

    Parameters
    ----------
    image_size : side of the square input (multiple of 8).
    latent_dim : size of the bottleneck vector ``z``.
    in_channels, widths : as :class:`~wsbus.companion.classifier.TinyTrunk` (the shared encoder).

    Taught in ``book/10_autoencoder_pretraining.md``.
    """

    def __init__(self, image_size: int = 64, latent_dim: int = 32, in_channels: int = 1,
                 widths: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__(image_size, latent_dim, in_channels, widths)
        self.to_latent = nn.Linear(self.flat_dim, latent_dim)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The code ``z = f(x)``, ``[B, latent_dim]``."""
        self._check(x)
        return self.to_latent(self.encoder(x).flatten(1))

    def forward(self, x: torch.Tensor) -> AEOutput:
        z = self.encode(x)
        logits = self.decoder(z)
        return AEOutput(torch.sigmoid(logits), logits, z)

    def loss(self, x: torch.Tensor, **_) -> Dict[str, torch.Tensor]:
        """``{"loss", "reconstruction"}``: the per-pixel mean squared error :math:`L_{AE}`."""
        mse = F.mse_loss(self(x).recon, x)
        return {"loss": mse, "reconstruction": mse}


class VAEOutput(NamedTuple):
    recon: torch.Tensor   # sigmoid(logits): the decoder's mean image
    logits: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    r"""Draw :math:`z = \mu + \sigma \odot \varepsilon`, :math:`\varepsilon \sim \mathcal N(0, I)`, :math:`\sigma = e^{\frac12\log\sigma^2}`.

    The noise is an input, not a function of the parameters, so gradients flow to ``mu`` and ``logvar``
    (the reparameterisation trick).

    Taught in ``book/10_autoencoder_pretraining.md``.
    """
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    r"""Closed-form :math:`D_{KL}(\mathcal N(\mu, \operatorname{diag}\sigma^2) \,\|\, \mathcal N(0, I))` per sample ``[B]``.

    .. math:: D_{KL} = \frac12 \sum_{j=1}^{d} \left(\mu_j^2 + \sigma_j^2 - 1 - \log\sigma_j^2\right)

    Taught in ``book/10_autoencoder_pretraining.md``.
    """
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(dim=1)


class ELBOTerms(NamedTuple):
    """Both terms of the negative ELBO, averaged over the batch (nats per image).

    ``reconstruction`` = :math:`-\\log p_\\theta(x|z)` at one sample :math:`z \\sim q_\\phi(z|x)` (an unbiased
    estimate of :math:`-\\mathbb E_q[\\log p_\\theta(x|z)]`); ``kl`` = :math:`D_{KL}(q_\\phi(z|x) \\| p(z))`.
    """

    reconstruction: torch.Tensor
    kl: torch.Tensor

    @property
    def elbo(self) -> torch.Tensor:
        """The evidence lower bound (to maximise): ``-(reconstruction + kl)``."""
        return -(self.reconstruction + self.kl)

    def loss(self, beta: float = 1.0) -> torch.Tensor:
        """The training loss ``reconstruction + beta * kl`` (``beta = 1``: the negative ELBO)."""
        return self.reconstruction + beta * self.kl


def elbo(x: torch.Tensor, logits: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
         likelihood: str = "gaussian", sigma: float = 0.1) -> ELBOTerms:
    r"""The two terms of the VAE objective, written out.

    .. math::

        -\mathcal L(\theta,\phi;x) = \underbrace{-\log p_\theta(x \mid z)}_{\text{reconstruction}}
        + \underbrace{\tfrac12 \textstyle\sum_j (\mu_j^2 + \sigma_j^2 - 1 - \log \sigma_j^2)}_{D_{KL}(q_\phi(z|x)\,\|\,\mathcal N(0,I))},
        \qquad z = \mu + \sigma \odot \varepsilon .

    Parameters
    ----------
    x : images ``[B, C, H, W]`` in [0, 1].
    logits : the decoder's output at ``z`` (same shape as ``x``); the decoded mean image is ``sigmoid(logits)``.
    mu, logvar : the encoder's :math:`\mu` and :math:`\log\sigma^2`, ``[B, d]``.
    likelihood : ``"gaussian"``: :math:`p_\theta(x|z) = \mathcal N(x; \operatorname{sigmoid}(\text{logits}),
        \sigma^2 I)`, so :math:`-\log p = \sum_k \frac{(x_k - \hat x_k)^2}{2\sigma^2} + \log\sigma +
        \frac12\log 2\pi` (the autoencoder's squared error, rescaled, plus a constant); ``"bernoulli"``:
        :math:`-\log p = \sum_k \operatorname{BCE}(\text{logits}_k, x_k)` (the usual choice for [0, 1] images; for
        non-binary pixels it is a cross-entropy rather than a normalised density).
    sigma : the Gaussian decoder's fixed standard deviation (intensity units).

    Returns
    -------
    ELBOTerms
        ``(reconstruction, kl)``, each the batch mean of per-image sums; ``.elbo`` and ``.loss(beta)`` combine them.

    Taught in ``book/10_autoencoder_pretraining.md``.
    """
    if x.shape != logits.shape:
        raise ValueError(f"x has shape {tuple(x.shape)} but logits {tuple(logits.shape)}")
    if likelihood == "gaussian":
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        sq = (x - torch.sigmoid(logits)).pow(2).flatten(1).sum(1)
        nll = sq / (2 * sigma ** 2) + x[0].numel() * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
    elif likelihood == "bernoulli":
        nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
    else:
        raise ValueError(f"likelihood must be 'gaussian' or 'bernoulli', got {likelihood!r}")
    return ELBOTerms(nll.mean(), gaussian_kl(mu, logvar).mean())


class ConvVAE(_Base):
    """Convolutional variational autoencoder with a diagonal-Gaussian encoder and a ``N(0, I)`` prior.

    Parameters
    ----------
    image_size, latent_dim, in_channels, widths : as :class:`ConvAutoencoder`.
    likelihood, sigma : the decoder's likelihood (see :func:`elbo`).

    Taught in ``book/10_autoencoder_pretraining.md``.
    """

    def __init__(self, image_size: int = 64, latent_dim: int = 32, in_channels: int = 1,
                 widths: Sequence[int] = (16, 32, 64), likelihood: str = "gaussian", sigma: float = 0.1) -> None:
        super().__init__(image_size, latent_dim, in_channels, widths)
        if likelihood not in ("gaussian", "bernoulli"):
            raise ValueError(f"likelihood must be 'gaussian' or 'bernoulli', got {likelihood!r}")
        self.likelihood, self.sigma = likelihood, float(sigma)
        self.to_mu = nn.Linear(self.flat_dim, latent_dim)
        self.to_logvar = nn.Linear(self.flat_dim, latent_dim)

    def encode(self, x: torch.Tensor):
        """``(mu, logvar)`` of :math:`q_\\phi(z|x)`."""
        self._check(x)
        h = self.encoder(x).flatten(1)
        return self.to_mu(h), self.to_logvar(h)

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> VAEOutput:
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar, generator) if self.training else mu
        logits = self.decoder(z)
        return VAEOutput(torch.sigmoid(logits), logits, mu, logvar, z)

    def loss(self, x: torch.Tensor, beta: float = 1.0) -> Dict[str, torch.Tensor]:
        """``{"loss", "reconstruction", "kl"}`` with ``loss = reconstruction + beta * kl`` (nats per image)."""
        out = self(x)
        terms = elbo(x, out.logits, out.mu, out.logvar, self.likelihood, self.sigma)
        return {"loss": terms.loss(beta), "reconstruction": terms.reconstruction, "kl": terms.kl}

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Decode ``n`` draws from the prior: mean images ``[n, C, S, S]``."""
        p = next(self.parameters())
        z = torch.randn((n, self.latent_dim), generator=generator, device=p.device, dtype=p.dtype)
        return torch.sigmoid(self.decoder(z))


def pretrain_autoencoder(model: Union[ConvAutoencoder, ConvVAE], images: torch.Tensor, *, steps: int = 300,
                         batch_size: int = 32, lr: float = 2e-3, weight_decay: float = 0.0, beta: float = 1.0,
                         augment: Union[bool, Callable, None] = False, device=None, seed: Optional[int] = 0,
                         progress: bool = True, log_dir: Optional[str] = None) -> Dict[str, List[float]]:
    """Train an autoencoder or VAE on unlabeled images (Adam); returns the per-step loss terms.

    Parameters
    ----------
    model : :class:`ConvAutoencoder` or :class:`ConvVAE` (trained in place, moved to ``device``).
    images : float ``[N, C, S, S]`` in [0, 1]; labels are never looked at.
    steps, batch_size, lr, weight_decay : the optimisation.
    beta : KL weight for the VAE (1 = the ELBO; ignored by the autoencoder).
    augment : as :func:`wsbus.companion.train_classifier`.
    device, seed, progress, log_dir : as :func:`wsbus.companion.train_classifier`.

    Returns
    -------
    dict
        ``{"loss": [...], "reconstruction": [...]}`` (+ ``"kl"`` for the VAE), one float per step.

    Taught in ``book/10_autoencoder_pretraining.md``.
    """
    from tqdm.auto import tqdm

    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty [N, C, H, W] tensor, got shape {tuple(images.shape)}")
    device = model_device(model, device)
    model.to(device)
    augment = default_augmentation() if augment is True else (augment or None)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    writer = None
    if log_dir is not None:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(log_dir)
    history: Dict[str, List[float]] = {}
    with seeded(seed, device):
        g = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        dummy = torch.zeros(images.shape[0], dtype=torch.int64)
        model.train()
        for step, idx in enumerate(tqdm(batch_indices(dummy, steps, batch_size, False, g),
                                        desc=f"pretrain {type(model).__name__}", disable=not progress)):
            x = augment_batch(images[idx].to(device, non_blocking=True), augment)
            parts = model.loss(x, beta=beta)
            if not torch.isfinite(parts["loss"]):
                raise FloatingPointError(f"pretrain_autoencoder: loss became {parts['loss'].item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            parts["loss"].backward()
            opt.step()
            for k, v in parts.items():
                history.setdefault(k, []).append(float(v.detach()))
                if writer is not None:
                    writer.add_scalar(f"pretrain/{k}", history[k][-1], step)
    if writer is not None:
        writer.close()
    model.eval()
    return history


class EncoderBackbone(nn.Module):
    """An autoencoder's encoder as a classifier backbone: ``x -> z`` (trunk, flatten, bottleneck linear).

    For a :class:`ConvVAE` the bottleneck is the mean head ``mu(x)`` (the log-variance head is dropped: a
    classifier wants the representation, not the noise). ``out_features`` is the latent size.
    """

    def __init__(self, autoencoder: Union[ConvAutoencoder, ConvVAE]) -> None:
        super().__init__()
        self.trunk = copy.deepcopy(autoencoder.encoder)
        self.latent = copy.deepcopy(autoencoder.to_latent if isinstance(autoencoder, ConvAutoencoder)
                                    else autoencoder.to_mu)
        self.image_size = autoencoder.image_size
        self.out_features = autoencoder.latent_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(f"the encoder was built for {self.image_size}x{self.image_size} images, got shape "
                             f"{tuple(x.shape)}")
        return self.latent(self.trunk(x).flatten(1))


def _config(ae) -> tuple:
    return type(ae).__name__, ae.image_size, ae.latent_dim, ae.in_channels, ae.widths


def classifier_from_encoder(autoencoder: Union[ConvAutoencoder, ConvVAE], num_classes: int = 3,
                            dropout: float = 0.2) -> DiagnosisClassifier:
    """A :class:`~wsbus.companion.classifier.DiagnosisClassifier` whose backbone is a copy of the encoder.

    The semi-supervised recipe of seed 000: keep the feature extractor learned without labels, put a fresh
    linear head on the code ``z = f(x)``, and fine-tune (or freeze it and train the head only). The copy lives
    on the autoencoder's device; the autoencoder itself is not modified.

    Taught in ``book/10_autoencoder_pretraining.md``.
    """
    clf = DiagnosisClassifier(EncoderBackbone(autoencoder), num_classes=num_classes, dropout=dropout)
    return clf.to(next(autoencoder.parameters()).device)


@dataclass
class BudgetStudy:
    """Result of :func:`label_budget_study`: one row per (budget, seed, method).
    """

    rows: List[dict] = field(default_factory=list)

    def mean(self, metric: str = "accuracy") -> Dict[str, Dict[int, float]]:
        """``{method: {budget: mean over seeds}}`` of one metric."""
        out: Dict[str, Dict[int, list]] = {}
        for r in self.rows:
            out.setdefault(r["method"], {}).setdefault(r["budget"], []).append(r[metric])
        return {m: {b: float(np.nanmean(v)) for b, v in sorted(d.items())} for m, d in out.items()}

    def to_markdown(self, metric: str = "accuracy", digits: int = 3) -> str:
        """Budgets as rows, methods as columns (mean over seeds)."""
        means = self.mean(metric)
        methods = list(means)
        budgets = sorted({b for d in means.values() for b in d})
        lines = ["| labels | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
        for b in budgets:
            lines.append(f"| {b} | " + " | ".join(f"{means[m].get(b, float('nan')):.{digits}f}" for m in methods)
                         + " |")
        return "\n".join(lines)


def label_budget_study(pretrained: Union[ConvAutoencoder, ConvVAE, Mapping[str, Union[ConvAutoencoder, ConvVAE]]],
                       train_images: torch.Tensor, train_labels: torch.Tensor, test_images: torch.Tensor,
                       test_labels: torch.Tensor, budgets: Sequence[int] = (3, 9, 27, 81), *,
                       seeds: Sequence[int] = (0, 1, 2), frozen: bool = False, steps: int = 80,
                       batch_size: int = 16, lr: float = 2e-3, augment: bool = True, balanced: bool = True,
                       device=None, progress: bool = True) -> BudgetStudy:
    """Fine-tune from pretrained encoders vs train the same architecture from scratch, at several label budgets.

    For each budget ``n`` and seed, ``n`` labelled items are drawn class-stratified from the training pool
    (:func:`wsbus.companion.stratified_subset`). Every method trains on exactly those items with the same
    steps, optimiser, augmentation (``augment``), class-balanced sampling (``balanced``) and the same initial
    head, and is scored on the same test set:

    * ``"scratch"``: :func:`classifier_from_encoder` of a freshly initialised autoencoder of the same
      architecture (so the only difference is where the encoder's weights come from);
    * ``name`` for each pretrained model (``{"AE": ae, "VAE": vae}``; a single model is called
      ``"pretrained"``): its encoder, fine-tuned with the head;
    * ``name + " (frozen)"`` when ``frozen``: its encoder frozen, only the linear head trained (a linear probe).

    Returns
    -------
    BudgetStudy
        Rows ``{"budget", "seed", "method", "accuracy", "auc_malignant", "auc_mass"}``.

    Taught in ``book/10_autoencoder_pretraining.md``.
    """
    models = {"pretrained": pretrained} if isinstance(pretrained, nn.Module) else dict(pretrained)
    if not models:
        raise ValueError("label_budget_study needs at least one pretrained autoencoder")
    configs = {_config(m)[1:] for m in models.values()}
    if len(configs) != 1:
        raise ValueError(f"the pretrained encoders must share image size, latent size, channels and widths to be "
                         f"compared with one scratch model; got {sorted(configs)}")
    first = next(iter(models.values()))
    device = model_device(first, device)
    train_labels = torch.as_tensor(train_labels, dtype=torch.int64)
    methods = [("scratch", None, False)] + [(n, m, False) for n, m in models.items()]
    if frozen:
        methods += [(f"{n} (frozen)", m, True) for n, m in models.items()]
    study = BudgetStudy()
    for budget in budgets:
        for seed in seeds:
            idx = stratified_subset(train_labels, int(budget), seed=seed)
            for name, source, freeze in methods:
                with seeded(seed, device):
                    # A fresh autoencoder first in every case, so the head below gets the same random weights.
                    fresh = ConvAutoencoder(first.image_size, first.latent_dim, first.in_channels, first.widths)
                    model = classifier_from_encoder(fresh if source is None else source)
                train_classifier(model, train_images[idx], train_labels[idx], steps=steps, batch_size=batch_size,
                                 lr=lr, augment=augment, balanced=balanced, freeze_backbone=freeze, device=device,
                                 seed=seed, progress=progress)
                m = classification_metrics(test_labels, predict_scores(model, test_images, device=device))
                study.rows.append({"budget": int(budget), "seed": int(seed), "method": name,
                                   "accuracy": m.accuracy, "auc_malignant": m.malignant.auc, "auc_mass": m.mass.auc})
    return study
