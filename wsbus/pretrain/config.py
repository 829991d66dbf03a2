"""Every setting of a label-free pretraining run: :class:`PretrainConfig`, one frozen dataclass.

A run is identified by its config and its images: a resumed or cached run must have both the same, so the config
holds only what changes the weights (not the device, the progress bar or the checkpoint interval).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Tuple

from ..models.backbones import BACKBONES, NORMS
from ..models.config import GRAY_STATS

__all__ = ["METHODS", "DEFAULT_VIEWS", "PretrainConfig"]

#: The pretraining methods: contrastive (SimCLR's NT-Xent), non-contrastive with an EMA target (BYOL), masked-image
#: reconstruction (SimMIM-style, the conv-net form of an MAE) and chapter 10's autoencoder.
METHODS = ("simclr", "byol", "mae", "autoencoder")
#: The view augmentation each method uses unless told otherwise (:data:`wsbus.pretrain.VIEWS`).
DEFAULT_VIEWS = {"simclr": "strong", "byol": "strong", "mae": "light", "autoencoder": "light"}
#: Crops are multiples of this many pixels, so that every backbone stride (8 or 16) divides them.
CROP_MULTIPLE = 16


@dataclass(frozen=True)
class PretrainConfig:
    """The settings of :func:`wsbus.pretrain.pretrain_backbone`; ``None`` fields are resolved on construction.

    Attributes
    ----------
    method : one of :data:`METHODS`.
    backbone, norm : the backbone to pretrain (:func:`wsbus.models.build_backbone`, from scratch, nothing frozen);
        ``norm`` only for ResNets (default ``"bn"``, as ``build_detector`` from scratch).
    size, max_size : the detector's resizing: the short side to ``size`` unless the long side would exceed
        ``max_size`` (default ``2 * size``, as ``wsbus train --size``).
    crop : the side of the square views the backbone sees (default ``size`` rounded down to a multiple of 16).
    steps, batch_size : optimiser steps and images per step (each image gives one or two views).
    lr, weight_decay, warmup : AdamW; the learning rate rises linearly over the first ``warmup`` fraction of the
        steps, then follows a cosine to zero.
    seed : initial weights, image order, views and masks.
    amp : autocast in bfloat16 (CPU and CUDA; no gradient scaler needed).
    views : the view augmentation, a name of :data:`wsbus.pretrain.VIEWS` (default :data:`DEFAULT_VIEWS`).
    temperature : SimCLR's NT-Xent temperature.
    ema : BYOL's target momentum at the start; it rises to 1 along a cosine over the run.
    mask_ratio, mask_patch : the masked fraction and the side (pixels) of the square patches of ``"mae"``.
    bottleneck : channels of the autoencoder's code (at the backbone's stride).
    hidden_dim, proj_dim : width and output of the projection (and BYOL's prediction) MLPs.
    image_mean, image_std : the detector's grayscale normalisation (default: the from-scratch statistics).

    Taught in ``book/10_autoencoder_pretraining.md``.
    """

    method: str = "simclr"
    backbone: str = "tiny"
    norm: Optional[str] = None
    # scale
    size: int = 160
    max_size: Optional[int] = None
    crop: Optional[int] = None
    # optimisation
    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: float = 0.05
    seed: int = 0
    amp: bool = False
    views: Optional[str] = None
    # the methods
    temperature: float = 0.2
    ema: float = 0.99
    mask_ratio: float = 0.6
    mask_patch: int = 16
    bottleneck: int = 8
    hidden_dim: int = 256
    proj_dim: int = 128
    # the detector's normalisation
    image_mean: Tuple[float, ...] = GRAY_STATS[False][0]
    image_std: Tuple[float, ...] = GRAY_STATS[False][1]

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if self.method not in METHODS:
            raise ValueError(f"unknown pretraining method {self.method!r}; choose one of {METHODS}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {BACKBONES}")
        for name in ("size", "steps", "batch_size", "mask_patch", "bottleneck", "hidden_dim", "proj_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            put(name, int(value))
        put("seed", int(self.seed))
        put("amp", bool(self.amp))
        put("max_size", int(self.max_size) if self.max_size is not None else 2 * self.size)
        if self.max_size < self.size:
            raise ValueError(f"max_size ({self.max_size}) must be at least size ({self.size})")
        self._resolve_crop(put)
        if self.backbone.startswith("resnet"):
            put("norm", self.norm or "bn")
            if self.norm not in NORMS:
                raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        elif self.norm is not None:
            raise ValueError(f"norm applies to the ResNets only, not to {self.backbone!r}")
        put("views", self.views or DEFAULT_VIEWS[self.method])
        self._check_numbers()
        for name in ("image_mean", "image_std"):
            value = tuple(float(x) for x in getattr(self, name))
            if len(value) != 1:
                raise ValueError(f"{name} must hold one value (the backbones take grayscale images), got {value}")
            put(name, value)

    def _resolve_crop(self, put) -> None:
        crop = self.crop if self.crop is not None else max(CROP_MULTIPLE, self.size // CROP_MULTIPLE * CROP_MULTIPLE)
        if int(crop) != crop or crop < CROP_MULTIPLE or crop % CROP_MULTIPLE:
            raise ValueError(f"crop must be a positive multiple of {CROP_MULTIPLE} pixels, got {crop!r}")
        put("crop", int(crop))
        if self.method == "mae" and self.crop % self.mask_patch:
            raise ValueError(f"mask_patch ({self.mask_patch}) must divide crop ({self.crop})")

    def _check_numbers(self) -> None:
        checks = [("lr", self.lr > 0), ("weight_decay", self.weight_decay >= 0), ("warmup", 0 <= self.warmup < 1),
                  ("temperature", self.temperature > 0), ("ema", 0 <= self.ema <= 1),
                  ("mask_ratio", 0 < self.mask_ratio < 1)]
        for name, ok in checks:
            value = float(getattr(self, name))
            if not (ok and math.isfinite(value)):
                raise ValueError(f"{name} out of range: {getattr(self, name)!r}")
            object.__setattr__(self, name, value)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PretrainConfig":
        """The config stored in a pretrained-backbone file; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"not a wsbus pretraining config: unknown key(s) {unknown}")
        return cls(**dict(data))

    def as_dict(self) -> dict:
        """Plain data (JSON- and ``torch.load(weights_only=True)``-safe); ``PretrainConfig(**d)`` rebuilds it."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def differences(self, other: Mapping[str, Any]) -> List[str]:
        """``"name: OTHER there, MINE here"`` for every setting in which ``other`` (a stored config) differs."""
        mine = self.as_dict()
        theirs = dict(other)
        return [f"{k}: {theirs.get(k)!r} there, {mine.get(k)!r} here" for k in mine
                if _plain(theirs.get(k)) != _plain(mine.get(k))]


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value
