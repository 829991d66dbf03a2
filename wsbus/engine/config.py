"""The settings of a training run: :class:`TrainerConfig`, validated where they enter."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from .streams import MIXINGS, MODES, check_choice

__all__ = ["TrainerConfig", "OPTIMIZERS", "LR_SCHEDULES", "AMP_DTYPES", "amp_dtype_of"]

OPTIMIZERS = ("adam", "adamw", "sgd")
#: Learning-rate schedules: ``constant`` (the reference) or ``cosine`` decay from ``lr`` to ``lr_floor * lr``.
LR_SCHEDULES = ("constant", "cosine")
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
    batch_strong: int = 1
    batch_weak: int = 2
    lr: float = 5e-4
    weight_decay: float = 5e-4
    optimizer: str = "adam"
    lr_schedule: str = "constant"
    lr_floor: float = 0.0
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
        for name in ("batch_strong", "batch_weak", "checkpoint_every", "log_every"):
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
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if not 0.0 <= float(self.lr_floor) <= 1.0:
            raise ValueError(f"lr_floor must lie in [0, 1] (a fraction of lr), got {self.lr_floor!r}")
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

    def lr_at(self, step: int, total: Optional[int] = None) -> float:
        """The learning rate of step ``step`` of a run of ``total`` steps (default ``steps``): constant, or the
        cosine ``lr * (floor + (1 - floor) * (1 + cos(pi * step / total)) / 2)``. A function of the step alone, so a
        resumed run sets the same rates."""
        if self.lr_schedule == "constant":
            return self.lr
        total = max(1, int(self.steps if total is None else total))
        return self.lr * (self.lr_floor + (1.0 - self.lr_floor) * 0.5 * (1.0 + math.cos(math.pi * min(step, total)
                                                                                          / total)))


def amp_dtype_of(config: TrainerConfig, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of a run: None without AMP; the configured one; else float16 on CUDA, bfloat16 on CPU."""
    if not config.amp:
        return None
    if config.amp_dtype is not None:
        return AMP_DTYPES[config.amp_dtype]
    return torch.float16 if device.type == "cuda" else torch.bfloat16
