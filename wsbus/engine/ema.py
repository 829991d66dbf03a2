"""A teacher for the student being trained: an exponential moving average of its weights (the mean teacher of
Tarvainen & Valpola 2017, used for detection by Unbiased Teacher, Soft Teacher and Omni-DETR), or a frozen model.

:class:`EMATeacher` is a :class:`~wsbus.engine.hooks.Hook`: attached to a :class:`~wsbus.engine.Trainer` it copies
the student, updates the copy after every optimiser step (``teacher = decay * teacher + (1 - decay) * student``,
``decay = 1`` keeps it frozen) and is saved in and restored from checkpoints, so a resumed run continues exactly.
What the teacher is *for* (choosing masses of interest, pseudo-boxes) is up to its subclasses
(:mod:`wsbus.teachers`), through the hook's ``before_forward``.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Mapping, Optional

import torch
from torch import nn

from .hooks import Hook

__all__ = ["EMATeacher"]


class EMATeacher(Hook):
    """The student's exponential moving average, kept in eval mode without gradients.

    Parameters
    ----------
    decay : the EMA decay per step in [0, 1]; 1 keeps the teacher frozen at its starting weights.
    model : the teacher's starting weights (e.g. a strong-only model); default a copy of the student when attached.

    Taught in ``book/07_self_training.md``.
    """

    def __init__(self, decay: float = 0.999, model: Optional[nn.Module] = None) -> None:
        if not 0.0 <= float(decay) <= 1.0:
            raise ValueError(f"the teacher's EMA decay must lie in [0, 1], got {decay!r}")
        self.decay = float(decay)
        self.model: Optional[nn.Module] = model

    def attach(self, trainer: Any) -> None:
        self.model = copy.deepcopy(trainer.model if self.model is None else self.model).to(trainer.device)
        self.model.eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """One EMA step towards ``student`` (floating-point parameters and buffers; others are copied)."""
        if self.decay == 1.0:
            return
        for t, s in zip(self.model.state_dict().values(), student.state_dict().values()):
            if t.dtype.is_floating_point:
                t.mul_(self.decay).add_(s.detach(), alpha=1.0 - self.decay)
            else:
                t.copy_(s)

    def after_step(self, trainer: Any, record: Mapping[str, Any]) -> None:
        self.update(trainer.model)

    def state_dict(self) -> Optional[Dict[str, Any]]:
        return {"decay": self.decay, "model": self.model.state_dict()} if self.model is not None else None

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
