"""The settings of a training run: :class:`TrainerConfig`, validated where they enter."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import torch

from .streams import MIXINGS, MODES, check_choice

__all__ = ["TrainerConfig", "OPTIMIZERS", "AMP_DTYPES", "amp_dtype_of"]

OPTIMIZERS = ("adam", "adamw", "sgd")
#: Names accepted for ``amp_dtype``.
AMP_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
              "half": torch.float16}


def _positive_int(name: str, value: Any, least: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")


@dataclass(frozen=True)
class TrainerConfig:
    """Every setting of a :class:`wsbus.engine.Trainer` run that is plain data (checkpoints store it; a resumed
    run compares it). See :class:`~wsbus.engine.Trainer` for what each means; the defaults are the reference's
    (Adam, lr 5e-4, weight decay 5e-4, 60k iterations, seed 3, 1 strong + 2 weak images per step).
    """

    mode: str = "joint"
    mixing: str = "combined"
    n_strong: int = 1
    n_weak: int = 2
    lr: float = 5e-4
    weight_decay: float = 5e-4
    optimizer: str = "adam"
    steps: int = 60000
    seed: int = 3
    amp: bool = False
    amp_dtype: Optional[str] = None
    clip_grad_norm: Optional[float] = None
    checkpoint_every: int = 1000
    keep_every: Optional[int] = None
    log_every: int = 20
    num_workers: int = 0
    history_tail: int = 1000

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, MODES)
        check_choice("mixing", self.mixing, MIXINGS)
        if self.mode != "joint" and self.mixing != "combined":
            raise ValueError(f"mixing={self.mixing!r} applies to joint mode only; mode {self.mode!r} uses one stream")
        for name in ("n_strong", "n_weak", "checkpoint_every", "log_every"):
            _positive_int(name, getattr(self, name))
        _positive_int("steps", self.steps, least=0)
        _positive_int("num_workers", self.num_workers, least=0)
        if self.keep_every is not None:
            _positive_int("keep_every", self.keep_every)
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ValueError(f"clip_grad_norm must be > 0 or None, got {self.clip_grad_norm!r}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(f"need lr > 0 and weight_decay >= 0, got lr={self.lr!r}, "
                             f"weight_decay={self.weight_decay!r}")
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        if self.amp_dtype is not None:
            name = str(self.amp_dtype).replace("torch.", "")
            if name not in AMP_DTYPES:
                raise ValueError(f"amp_dtype must be bfloat16 or float16, got {self.amp_dtype!r}")
            object.__setattr__(self, "amp_dtype", str(AMP_DTYPES[name]).replace("torch.", ""))
        object.__setattr__(self, "lr", float(self.lr))
        object.__setattr__(self, "weight_decay", float(self.weight_decay))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "amp", bool(self.amp))

    def as_dict(self) -> dict:
        """Plain data."""
        return dataclasses.asdict(self)


def amp_dtype_of(config: TrainerConfig, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of a run: None without AMP; the configured one; else float16 on CUDA, bfloat16 on CPU."""
    if not config.amp:
        return None
    if config.amp_dtype is not None:
        return AMP_DTYPES[config.amp_dtype]
    return torch.float16 if device.type == "cuda" else torch.bfloat16
