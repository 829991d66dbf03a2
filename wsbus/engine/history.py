"""What a training run records: one dict per step, kept in a :class:`History` and written as ``log.csv``."""
from __future__ import annotations

import csv
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from ..models import LOSS_KEYS

__all__ = ["History", "LOG_COLUMNS"]

#: Columns of ``log.csv`` and keys of every :class:`History` record.
LOG_COLUMNS = ("step", "batch", "loss") + LOSS_KEYS + ("alpha", "lr", "grad_norm", "mil_images", "time")


class History(Sequence):
    """Per-step training records (one dict per step with the keys of :data:`LOG_COLUMNS`).

    ``step`` is the 0-based step index, ``batch`` the streams its mini-batch held (``"strong+weak"``, ``"strong"``
    or ``"weak"``), ``loss`` the optimised total, the five loss terms as the model returned them (averaged over
    ranks under DDP), ``alpha`` the weight of ``L_ws`` in ``loss`` (``alpha(step)`` in joint mode, 0 in strong mode,
    1 in weak mode), ``lr``, ``grad_norm`` (before clipping; NaN when not clipping), ``mil_images`` (how many weak
    images of the step got a MIL loss of non-zero weight: a teacher's confidence gate may exclude some) and
    ``time`` (seconds the step took). Hooks may add keys of their own.

    Taught in ``book/06_joint_training.md``.
    """

    def __init__(self, records: Optional[Sequence[Mapping[str, Any]]] = None) -> None:
        self.records: List[Dict[str, Any]] = [dict(r) for r in (records or [])]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return History(self.records[i])
        return self.records[i]

    def __repr__(self) -> str:
        if not self.records:
            return "History([])"
        return (f"History({len(self)} steps {self.records[0]['step']}..{self.records[-1]['step']}, "
                f"last loss {self.records[-1]['loss']:.4g})")

    def append(self, record: Mapping[str, Any]) -> None:
        """Add one step's record."""
        self.records.append(dict(record))

    def column(self, key: str) -> List[Any]:
        """Every record's value of ``key`` (e.g. ``"loss"``, ``"loss_mil"``, ``"batch"``)."""
        if self.records and key not in self.records[0]:
            raise KeyError(f"History has no column {key!r}; columns are {list(self.records[0])}")
        return [r[key] for r in self.records]

    @property
    def steps(self) -> List[int]:
        """The step indices."""
        return self.column("step")

    @property
    def losses(self) -> List[float]:
        """The optimised total loss per step."""
        return self.column("loss")

    def tail(self, n: int) -> List[Dict[str, Any]]:
        """The last ``n`` records as plain dicts (what a checkpoint stores)."""
        return [dict(r) for r in self.records[-n:]] if n > 0 else []

    def to_csv(self, path: Union[str, os.PathLike]) -> None:
        """Write the records as CSV with the columns of :data:`LOG_COLUMNS`."""
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=LOG_COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(self.records)
