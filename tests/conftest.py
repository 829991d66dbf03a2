"""Shared pytest fixtures and helpers: images and folders built in tmp_path for the data-layer tests (never
downloaded), and a small batch for the tiny detector (``tiny_detector``, ``detector_images``, ``strong_target``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
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


# --------------------------------------------------------------------------------------------------------
# the tiny detector on small random batches (tests/test_amp.py, tests/test_perf_invariants.py); the plain
# helpers are imported with ``from conftest import ...`` (pytest puts tests/ on sys.path for its conftest)
# --------------------------------------------------------------------------------------------------------
DETECTOR_SIZE = 64  # the side of the images and of ``tiny_detector``'s resize (min_size = max_size)


def detector_images(n: int, size: int = DETECTOR_SIZE, seed: int = 0) -> list[torch.Tensor]:
    """``n`` deterministic random grayscale images ``[1, size, size]``."""
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, size, size, generator=g) for _ in range(n)]


def strong_target(label: int = 1) -> dict[str, torch.Tensor]:
    """A strong (box-annotated) target: one box of class ``label``."""
    return {"boxes": torch.tensor([[10.0, 12.0, 40.0, 44.0]]), "labels": torch.tensor([label])}


@pytest.fixture(scope="module")
def tiny_detector():
    """The tiny detector at ``DETECTOR_SIZE``, small anchors and RoI budgets; one per test module."""
    from wsbus.models import build_detector

    torch.manual_seed(0)
    return build_detector("tiny", min_size=DETECTOR_SIZE, max_size=DETECTOR_SIZE, anchor_sizes=(16, 32),
                          rpn_post_nms_top_n={"training": 60, "testing": 30}, box_batch_size_per_image=16)
