"""Interrupts as exceptions: SIGINT and SIGTERM unwind the program like Ctrl-C, so work in progress is saved.

A scheduler's time limit sends SIGTERM, which by default kills a Python process where it stands: no ``finally``
block runs, no checkpoint or table is written, and DataLoader workers are left behind. Inside
:func:`signals_as_exceptions` both signals raise :class:`Interrupted` (a ``KeyboardInterrupt``, so ``except
Exception`` does not swallow it) in the main thread; the training loop saves a checkpoint at the step reached, a
prediction run writes its tables marked incomplete, iterators shut their workers down, and the command line exits
with ``128 + signal number`` (130 for SIGINT, 143 for SIGTERM), the shell's convention.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

__all__ = ["Interrupted", "signals_as_exceptions", "deferred_interrupts", "HANDLED_SIGNALS"]

#: The signals turned into :class:`Interrupted`.
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The process received ``signum`` (SIGINT or SIGTERM).

    Attributes
    ----------
    signum : the signal number. name : its name (``"SIGTERM"``). exit_code : ``128 + signum``.
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        self.name = signal.Signals(self.signum).name
        self.exit_code = 128 + self.signum
        super().__init__(f"interrupted by {self.name}")


_deferring = 0
_pending: Optional[int] = None


def _raise(signum: int, frame) -> None:  # noqa: ARG001 - a signal handler's signature
    global _pending
    if _deferring and _pending is None:
        _pending = signum  # raised when the deferring block ends; a second signal raises at once
        return
    raise Interrupted(signum)


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Within the block (a training step, say) a first SIGINT/SIGTERM handled by :func:`signals_as_exceptions` is
    held back and raised as :class:`Interrupted` when the block ends, so the block's work is never cut in half (a
    checkpoint written afterwards holds a consistent state); a second signal raises at once. Blocks may nest."""
    global _deferring, _pending
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if _deferring == 0 and _pending is not None:
        signum, _pending = _pending, None
        raise Interrupted(signum)


@contextmanager
def signals_as_exceptions(signals: Sequence[int] = HANDLED_SIGNALS) -> Iterator[None]:
    """Within the block, each of ``signals`` raises :class:`Interrupted` in the main thread; the previous handlers
    are restored on exit. A signal the process inherited as ignored stays ignored. Outside the main thread (where
    Python cannot install handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _pending
    # A signal the process inherited as ignored (SIGINT of a background job, `nohup`) stays ignored.
    previous = {s: signal.signal(s, _raise) for s in signals if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if not any(h is _raise for h in previous.values()):
            _pending = None
