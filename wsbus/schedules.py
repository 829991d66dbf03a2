r"""Schedules of the MIL scale factor :math:`\alpha` in :math:`L = L_s + \alpha L_{ws}`.

* :class:`Constant` — Table II's "static value (0.5)".
* :class:`Gradual` — the paper's "gradual increase"; the reference code computes
  :math:`\alpha(\text{step}) = 1 - 0.99 \cdot 0.9^{\lfloor \text{step} / 2000 \rfloor}` over 60k iterations
  (``train_bus.py``: ``1 - tf.train.exponential_decay(0.99, global_step, 2000, 0.9, staircase=True)``).

Schedules are small frozen dataclasses with ``__call__(step) -> float`` and a readable ``__repr__``;
:func:`describe_schedule` turns one into plain data (what a checkpoint stores) and
:func:`schedule_from_description` turns that back into the same schedule. Any callable ``step -> float`` is
accepted wherever a schedule is (see :func:`as_schedule`).

Taught in ``book/06_joint_training.md``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence, Union

__all__ = ["Constant", "Gradual", "constant", "gradual", "as_schedule", "describe_schedule", "schedule_from_description",
           "plot_schedules", "SCHEDULES"]

#: Iterations of the reference run, and its staircase length.
REFERENCE_STEPS = 60000
REFERENCE_STEP_SIZE = 2000


def _check_step(step) -> int:
    if isinstance(step, bool) or not hasattr(step, "__index__"):
        raise TypeError(f"step must be an integer, got {type(step).__name__}")
    step = step.__index__()
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return step


@dataclass(frozen=True)
class Constant:
    r""":math:`\alpha(\text{step}) = \text{value}`. """

    value: float = 0.5

    def __post_init__(self) -> None:
        if not math.isfinite(self.value) or self.value < 0:
            raise ValueError(f"constant alpha must be finite and >= 0, got {self.value}")

    def __call__(self, step: int) -> float:
        _check_step(step)
        return float(self.value)


@dataclass(frozen=True)
class Gradual:
    r"""Staircase increase from ``start`` towards ``end``:

    .. math::

        \alpha(\text{step}) = \text{end} - (\text{end} - \text{start})\,
            \text{decay}^{\lfloor \text{step} / \text{step\_size} \rfloor}.

    With the defaults (``start=0.01``, ``end=1``, ``decay=0.9``, ``step_size=2000``) this is exactly the
    reference's :math:`1 - 0.99 \cdot 0.9^{\lfloor \text{step}/2000 \rfloor}`.
    """

    step_size: float = REFERENCE_STEP_SIZE
    start: float = 0.01
    end: float = 1.0
    decay: float = 0.9

    def __post_init__(self) -> None:
        if not (self.step_size > 0 and math.isfinite(self.step_size)):
            raise ValueError(f"step_size must be a positive number, got {self.step_size}")
        if not 0 < self.decay < 1:
            raise ValueError(f"decay must lie in (0, 1), got {self.decay}")
        for name in ("start", "end"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be finite and >= 0, got {v}")

    def __call__(self, step: int) -> float:
        step = _check_step(step)
        # The relative epsilon keeps non-integral stair lengths (e.g. 2000 * 1000 / 60000) from losing a stair
        # to rounding at exact multiples; it cannot move an integral step across an integral boundary.
        k = math.floor(step / self.step_size * (1 + 1e-12))
        return float(self.end - (self.end - self.start) * self.decay ** k)


def constant(value: float = 0.5) -> Constant:
    r"""Static :math:`\alpha` (Table II: 0.5). Taught in ``book/06_joint_training.md``."""
    return Constant(float(value))


def gradual(total_steps: int = REFERENCE_STEPS, step_size: Optional[float] = None, start: float = 0.01,
            end: float = 1.0, decay: float = 0.9) -> Gradual:
    r"""The paper's gradually increasing :math:`\alpha`, scaled to a run of ``total_steps`` iterations.

    ``step_size`` defaults to ``2000 * total_steps / 60000``, so a shorter run climbs through the same 30
    stairs as the reference's 60k iterations; ``gradual()`` is exactly the reference schedule.

    Taught in ``book/06_joint_training.md``.
    """
    if int(total_steps) <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if step_size is None:
        step_size = REFERENCE_STEP_SIZE * int(total_steps) / REFERENCE_STEPS
        if float(step_size).is_integer():
            step_size = int(step_size)
    return Gradual(step_size=step_size, start=float(start), end=float(end), decay=float(decay))


#: Schedules by name, for :func:`as_schedule` and the command line.
SCHEDULES = {"constant": constant, "gradual": gradual}


def as_schedule(spec: Union[float, int, str, Callable[[int], float]], **kwargs) -> Callable[[int], float]:
    """A schedule from a number (constant), a name of :data:`SCHEDULES` (``"gradual"``, ``"constant"``; extra
    keyword arguments such as ``total_steps`` go to its factory) or any callable ``step -> float`` (returned
    as is; make it picklable to checkpoint it).
    """
    if isinstance(spec, bool):
        raise TypeError("alpha schedule cannot be a bool")
    if isinstance(spec, (int, float)):
        if kwargs:
            raise TypeError(f"a constant alpha takes no options, got {sorted(kwargs)}")
        return constant(float(spec))
    if isinstance(spec, str):
        name = spec.strip().lower()
        if name not in SCHEDULES:
            try:
                value = float(name)
            except ValueError:
                raise ValueError(f"unknown alpha schedule {spec!r}; use a number, a callable or one of "
                                 f"{sorted(SCHEDULES)}") from None
            return as_schedule(value, **kwargs)
        return SCHEDULES[name](**kwargs)
    if callable(spec):
        if kwargs:
            raise TypeError(f"options {sorted(kwargs)} cannot be applied to a callable schedule")
        return spec
    raise TypeError(f"cannot make an alpha schedule from {type(spec).__name__}: {spec!r}")


def describe_schedule(schedule: Callable[[int], float]) -> dict:
    """Plain data naming a schedule: ``{"schedule": "constant", "value": ...}``, ``{"schedule": "gradual",
    "step_size": ..., "start": ..., "end": ..., "decay": ...}``, or ``{"schedule": "callable", "name": ...}`` for
    any other callable (which :func:`schedule_from_description` cannot rebuild). Checkpoints store it; a resumed
    run compares it."""
    if isinstance(schedule, (Constant, Gradual)):
        return {"schedule": type(schedule).__name__.lower(), **dataclasses.asdict(schedule)}
    return {"schedule": "callable", "name": getattr(schedule, "__qualname__", type(schedule).__qualname__)}


def schedule_from_description(description: Mapping) -> Callable[[int], float]:
    """The schedule :func:`describe_schedule` described. Raises ``ValueError`` for a custom callable, which
    cannot be rebuilt from its name."""
    kinds = {"constant": Constant, "gradual": Gradual}
    d = dict(description)
    kind = d.pop("schedule", None)
    if kind not in kinds:
        raise ValueError(f"cannot rebuild the alpha schedule {description!r}: only constant and gradual schedules "
                         f"can be restored; pass the schedule explicitly")
    return kinds[kind](**d)


def plot_schedules(schedules: Optional[Sequence[Callable[[int], float]]] = None, total_steps: int = REFERENCE_STEPS,
                   ax=None, labels: Optional[Sequence[str]] = None):
    r"""Plot :math:`\alpha(\text{step})` of each schedule over ``total_steps`` and return the figure.

    The default compares Table II's static 0.5 with the gradual increase scaled to ``total_steps``.

    Taught in ``book/06_joint_training.md``.
    """
    import matplotlib.pyplot as plt

    if schedules is None:
        schedules = [constant(0.5), gradual(total_steps)]
    schedules = [as_schedule(s) for s in schedules]
    if labels is not None and len(labels) != len(schedules):
        raise ValueError(f"{len(labels)} labels for {len(schedules)} schedules")
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.5))
    else:
        fig = ax.figure
    n = max(2, min(int(total_steps), 4000))
    steps = sorted({round(i * (total_steps - 1) / (n - 1)) for i in range(n)})
    for i, s in enumerate(schedules):
        ax.plot(steps, [s(t) for t in steps], drawstyle="steps-post",
                label=labels[i] if labels is not None else repr(s))
    ax.set_xlabel("training step")
    ax.set_ylabel(r"$\alpha$ (weight of $L_{ws}$)")
    ax.set_xlim(0, total_steps)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig
