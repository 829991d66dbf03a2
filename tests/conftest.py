"""Shared pytest fixtures for the data-layer tests (images and folders built in tmp_path, never downloaded)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _write(path: Path, array: np.ndarray, **save_kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array)).save(path, **save_kwargs)
    return path


@pytest.fixture
def write_image():
    """``write_image(path, uint8 array, **PIL save kwargs)`` writes an image file and returns its path."""
    return _write


@pytest.fixture
def gray_image():
    """``gray_image(h, w, seed)``: a deterministic textured uint8 image (distinct for distinct seeds)."""

    def make(h: int = 60, w: int = 80, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:h, 0:w]
        base = 100 + 60 * np.sin(xx / (3 + seed % 5)) * np.cos(yy / (4 + seed % 3))
        return np.clip(base + rng.normal(0, 20, (h, w)), 0, 255).astype(np.uint8)

    return make
