"""What a training run does besides optimising, as hooks the loop calls (detectron2's ``HookBase`` pattern).

The :class:`wsbus.engine.Trainer` calls, for every hook in ``trainer.hooks`` and in that order, ``attach(trainer)``
once when the trainer is built (as detectron2's ``register_hooks``), ``before_train(trainer)`` at the start of every
``fit``, ``before_forward(trainer, images, targets)`` inside every step right before the
model's forward (a hook may return changed images and targets: a teacher annotating the weak images, say),
``after_step(trainer, record)`` after every step, ``before_checkpoint(trainer)`` right before a checkpoint is
written, and ``after_train(trainer)`` once at the end (also when a step raised). A hook with state of its own (a
teacher's weights) returns it from ``state_dict()``; checkpoints store it and a resumed run gives it back through
``load_state_dict(state)``.
The hooks are, in this order: :class:`CSVLogger` (``log.csv``), :class:`TensorBoardLogger` (``tb/``),
:class:`ProgressBar`, the trainer's ``hooks=`` (a teacher, say), :class:`PeriodicCheckpointer` (``last.pt``, so a
checkpoint holds the other hooks' state after the step), then one :class:`CallbackHook` per user callback.
A hook of your own is any object with these methods (derive from :class:`Hook` and override what you need); each
receives the :class:`~wsbus.engine.Trainer` itself.
"""
from __future__ import annotations

import csv
import logging
import os
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional

from ..models import LOSS_KEYS
from .history import LOG_COLUMNS

__all__ = ["Hook", "CSVLogger", "TensorBoardLogger", "ProgressBar", "PeriodicCheckpointer", "CallbackHook"]

logger = logging.getLogger("wsbus.engine")


class Hook:
    """A hook that does nothing; override the methods you need.
    """

    def attach(self, trainer: Any) -> None:
        """Called once by the :class:`~wsbus.engine.Trainer` that the hook belongs to, when it is built (its model
        is on its device)."""

    def before_train(self, trainer: Any) -> None:
        """Called once, before the first step of :meth:`wsbus.engine.Trainer.fit` (after any resume)."""

    def before_forward(self, trainer: Any, images: List[Any], targets: List[Dict[str, Any]]):
        """Called in every step, on the step's device and under its seed, right before the forward; returns the
        ``(images, targets)`` the model gets (by default the ones given)."""
        return images, targets

    def after_step(self, trainer: Any, record: Mapping[str, Any]) -> None:
        """Called after every step with its record (``trainer.step`` is already the number of steps done)."""

    def before_checkpoint(self, trainer: Any) -> None:
        """Called right before ``trainer.save_checkpoint()`` writes ``last.pt``."""

    def after_train(self, trainer: Any) -> None:
        """Called once when :meth:`~wsbus.engine.Trainer.fit` ends, normally or by an exception."""

    def state_dict(self) -> Optional[Dict[str, Any]]:
        """The hook's own state for checkpoints (tensors and plain data), or None when it has none."""
        return None

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def _is_last(trainer: Any) -> bool:
    return trainer.step == trainer.max_step


class CSVLogger(Hook):
    """Every step's record as a row of ``out_dir/log.csv`` (rank 0).

    On a resumed run, rows of steps at or after the resume point (left by a killed run) are dropped first; the rows
    of every step up to a checkpoint reach the disk (flush + fsync) before that checkpoint is written.
    """

    def __init__(self) -> None:
        self._file = None
        self._writer: Optional[csv.DictWriter] = None

    def before_train(self, trainer: Any) -> None:
        if not trainer.is_main or trainer.out_dir is None:
            return
        path = trainer.out_dir / "log.csv"
        start = trainer.step
        rows: List[Dict[str, str]] = []
        if start > 0 and path.is_file():
            with open(path, newline="") as f:
                for row in csv.DictReader(f):
                    try:
                        if int(row["step"]) < start and row.get("time") not in (None, ""):
                            rows.append(row)
                    except (KeyError, TypeError, ValueError):
                        break  # a truncated last line
        tmp = path.with_name(".log.csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=LOG_COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)
        self._file = open(path, "a", newline="", buffering=1)  # line-buffered: `tail -f log.csv` follows
        self._writer = csv.DictWriter(self._file, fieldnames=LOG_COLUMNS, extrasaction="ignore")

    def after_step(self, trainer: Any, record: Mapping[str, Any]) -> None:
        if self._writer is not None:
            self._writer.writerow(record)

    def before_checkpoint(self, trainer: Any) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def after_train(self, trainer: Any) -> None:
        if self._file is not None:
            self._file.close()
        self._file = self._writer = None


class TensorBoardLogger(Hook):
    """The loss terms, alpha and the learning rate as TensorBoard scalars in ``out_dir/tb`` every ``every`` steps
    (rank 0; a resumed run purges the events after its resume point). Off, with a warning, when TensorBoard is not
    installed."""

    def __init__(self, every: int = 20) -> None:
        self.every = int(every)
        self._writer = None

    def before_train(self, trainer: Any) -> None:
        if not trainer.is_main or trainer.out_dir is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # tensorboard is an optional runtime dependency of torch
            logger.warning("TensorBoard logging disabled: %s", exc)
            return
        start = trainer.step
        self._writer = SummaryWriter(log_dir=str(trainer.out_dir / "tb"), purge_step=start if start > 0 else None)

    def after_step(self, trainer: Any, record: Mapping[str, Any]) -> None:
        if self._writer is None or not (trainer.step % self.every == 0 or _is_last(trainer)):
            return
        k = record["step"]
        for key in ("loss",) + LOSS_KEYS:
            self._writer.add_scalar(f"loss/{key}", record[key], k)
        self._writer.add_scalar("train/alpha", record["alpha"], k)
        self._writer.add_scalar("train/lr", record["lr"], k)

    def after_train(self, trainer: Any) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer = None


class ProgressBar(Hook):
    """A tqdm bar over the run's steps (rank 0), with the loss and alpha refreshed every ``every`` steps."""

    def __init__(self, every: int = 20) -> None:
        self.every = int(every)
        self._bar = None

    def before_train(self, trainer: Any) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=trainer.max_step, initial=trainer.step, disable=not trainer.is_main,
                         desc=f"train {trainer.config.mode}", dynamic_ncols=True, file=sys.stderr)

    def after_step(self, trainer: Any, record: Mapping[str, Any]) -> None:
        if trainer.step % self.every == 0 or _is_last(trainer):
            self._bar.set_postfix(loss=f"{record['loss']:.4f}", alpha=f"{record['alpha']:.3g}", refresh=False)
        self._bar.update(1)

    def after_train(self, trainer: Any) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar = None


class PeriodicCheckpointer(Hook):
    """``trainer.save_checkpoint()`` every ``every`` steps, at the last step, and every ``keep_every`` steps (which
    also keeps a copy ``step_XXXXXX.pt``). Does nothing without ``out_dir``."""

    def __init__(self, every: int, keep_every: Optional[int] = None) -> None:
        self.every, self.keep_every = int(every), keep_every

    def after_step(self, trainer: Any, record: Mapping[str, Any]) -> None:
        if trainer.out_dir is None:
            return
        keep = self.keep_every is not None and trainer.step % self.keep_every == 0
        if trainer.step % self.every == 0 or _is_last(trainer) or keep:
            for hook in trainer.hooks:
                hook.before_checkpoint(trainer)
            trainer.save_checkpoint()


class CallbackHook(Hook):
    """Calls ``fn(trainer, record)`` after every step (the Trainer's ``callbacks=`` argument)."""

    def __init__(self, fn: Callable[[Any, Mapping[str, Any]], None]) -> None:
        self.fn = fn

    def after_step(self, trainer: Any, record: Mapping[str, Any]) -> None:
        self.fn(trainer, record)
