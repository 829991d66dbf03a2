"""Detectors shipped inside the package: :func:`pretrained` works offline right after ``pip install``.

Each shipped detector is two files in ``wsbus/models/weights/``: ``NAME.pt`` (the weights and the model config, a
checkpoint that ``torch.load(weights_only=True)`` reads) and ``NAME.json`` (its card: what it was trained on, by
which command and code, the SHA-256 of the weights file, and its accuracy as measured on held-out patients, never on
its own training images). ``docs/models.md`` is the human-readable card; ``--model NAME`` on the command line is the
same file as ``--checkpoint <path of NAME.pt>``.

Taught in ``book/14_your_own_scans.md``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Union

import torch

from ..checkpoint import CheckpointError, load_checkpoint
from .config import DetectorConfig
from .detector import WeakSemiFasterRCNN

__all__ = ["WEIGHTS_DIR", "available_models", "model_card", "pretrained_path", "pretrained", "file_sha256",
           "weights_sha256"]

#: Where the shipped detectors live.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def file_sha256(path: Union[str, Path]) -> str:
    """The SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """A SHA-256 of the weights themselves (names, shapes, dtypes and bytes in key order), independent of the file's
    container format: what a card records to show that retrained weights are the shipped ones, bit for bit."""
    digest = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def available_models() -> List[str]:
    """The names of the shipped detectors (those with a card in :data:`WEIGHTS_DIR`)."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.json")) if WEIGHTS_DIR.is_dir() else []


def model_card(name: str) -> Dict[str, Any]:
    """The card (``NAME.json``) of a shipped detector; ``ValueError`` naming the choices for an unknown name.

    Taught in ``book/14_your_own_scans.md``."""
    card = WEIGHTS_DIR / f"{name}.json"
    if not card.is_file():
        known = available_models()
        raise ValueError(f"no shipped detector {name!r}; shipped: {', '.join(known) if known else 'none'}")
    return json.loads(card.read_text())


def pretrained_path(name: str) -> Path:
    """The weights file of a shipped detector, after checking its SHA-256 against its card (a damaged or replaced
    file is refused in one line).

    Taught in ``book/14_your_own_scans.md``."""
    card = model_card(name)
    path = WEIGHTS_DIR / card["file"]
    if not path.is_file():
        raise CheckpointError(f"the shipped detector {name!r} lacks its weights file {str(path)!r} (a broken install?)")
    got = file_sha256(path)
    if got != card["sha256"]:
        raise CheckpointError(f"the weights file {str(path)!r} of {name!r} has SHA-256 {got[:12]}..., its card "
                              f"{card['sha256'][:12]}...: the file was changed")
    return path


def pretrained(name: str = "busbra", device: Union[str, torch.device] = "cpu") -> WeakSemiFasterRCNN:
    """A shipped detector, ready to use (eval mode, on ``device``): ``model = pretrained("busbra")``. Its card
    (:func:`model_card`) says what it was trained on and how well it localises on held-out patients.

    Taught in ``book/14_your_own_scans.md``."""
    path = pretrained_path(name)
    state = load_checkpoint(path, map_location="cpu", require=("model", "config"))
    config = DetectorConfig.from_dict({**state["config"]["model"], "pretrained": False})
    model = WeakSemiFasterRCNN.from_config(config)
    model.load_state_dict(state["model"])
    return model.to(device).eval()
