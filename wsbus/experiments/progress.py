"""One progress bar over the training steps of several runs (the runs' own bars are off)."""
from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm

__all__ = ["StepProgress"]


class StepProgress:
    """A tqdm bar of ``total`` steps whose description names the run in progress; pass :meth:`step` to a
    :class:`wsbus.engine.Trainer` as a callback."""

    def __init__(self, total: int, enabled: bool = True, desc: str = "experiment") -> None:
        self.desc = desc
        self.bar = tqdm(total=total, disable=not enabled, desc=desc, dynamic_ncols=True, file=sys.stderr, unit="step")

    def run(self, name: str) -> None:
        """Name the run now training."""
        self.bar.set_description(f"{self.desc}: {name}")

    def step(self, *_: Any) -> None:
        """Count one step."""
        self.bar.update(1)

    def close(self) -> None:
        """Close the bar."""
        self.bar.close()
