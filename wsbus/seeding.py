"""Reproducible randomness: seeds derived from names, and every RNG state as a checkpointable value.

Taught in ``book/06_joint_training.md``.

Two ideas make a training run resumable bit for bit:

1. **Stateless randomness.** Anything random in a run is drawn from a generator seeded by a *name*:
   ``derive_seed(seed, "strong", "epoch", 4)`` is the seed of the fifth epoch's order of the strong stream.
   A resumed run needs only the step counter to recreate every draw; nothing depends on how many random
   numbers some earlier code happened to consume.
2. **Saved process state.** The process-wide generators (``torch``, CUDA, ``numpy``, ``random``) are captured
   by :func:`get_rng_state` as plain tensors and lists, so that a checkpoint holding them loads with
   ``torch.load(weights_only=True)``, and :func:`set_rng_state` puts them back.
"""
from __future__ import annotations

import contextlib
import hashlib
import random
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch

__all__ = ["derive_seed", "generator", "get_rng_state", "set_rng_state", "seed_everything", "seeded", "cpu_threads"]

_MASK63 = (1 << 63) - 1


def derive_seed(*parts: Any, bits: int = 63) -> int:
    """A stable seed in ``[0, 2**bits)`` derived from ``parts`` (ints and strings).

    Unlike ``hash()`` the value is the same in every process and every Python version (BLAKE2b of the
    parts' ``repr``), so ranks, DataLoader workers and resumed runs agree on it.

    Parameters
    ----------
    *parts : ints or strings naming the random draw, e.g. ``(3, "weak", "aug", 120, 1)``.
    bits : the seed's width; 63 for ``torch.Generator.manual_seed``, 32 for ``numpy``/``random`` seeds.

    Returns
    -------
    int
    """
    if not 1 <= bits <= 63:
        raise ValueError(f"derive_seed: bits must be in 1..63, got {bits}")
    for p in parts:
        if not isinstance(p, (int, str, np.integer)) or isinstance(p, bool):
            raise TypeError(f"derive_seed: parts must be ints or strings, got {type(p).__name__} {p!r}")
    key = "\x1f".join(f"s:{p}" if isinstance(p, str) else f"i:{int(p)}" for p in parts)
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << bits) - 1)


def generator(*parts: Any) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``derive_seed(*parts)``.
    """
    g = torch.Generator()
    g.manual_seed(derive_seed(*parts))
    return g


def seed_everything(seed: int) -> None:
    """Seed ``random``, ``numpy`` and ``torch`` (CPU and every CUDA device) with ``seed``.
    """
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def get_rng_state() -> Dict[str, Any]:
    """Every process-wide RNG state as tensors and plain containers (``weights_only``-loadable).

    Returns
    -------
    dict with ``"torch"`` (uint8 tensor), ``"cuda"`` (list of uint8 tensors, empty without CUDA),
    ``"numpy"`` (dict of the legacy ``MT19937`` state with the key as an int64 tensor) and ``"python"``
    (``random.getstate()`` as nested lists).
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    cuda: List[torch.Tensor] = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore the states captured by :func:`get_rng_state`.

    CUDA states are restored only when CUDA is available and the number of devices matches (a checkpoint
    written on a GPU machine can be resumed on a CPU one; the CPU streams are what bit-exact resume needs).
    """
    missing = {"torch", "numpy", "python"} - set(state)
    if missing:
        raise KeyError(f"set_rng_state: the RNG state lacks {sorted(missing)}")
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    npst = state["numpy"]
    keys = npst["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state((npst["kind"], keys, int(npst["pos"]), int(npst["has_gauss"]),
                         float(npst["cached_gaussian"])))
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["internal"]), py["gauss_next"]))


@contextlib.contextmanager
def seeded(seed: Optional[int], device: "torch.device | str | None" = None) -> Iterator[None]:
    """Run a block under ``torch.manual_seed(seed)`` without disturbing the caller's RNG streams (the global torch
    generator, and that of ``device`` when it is a GPU, are forked and restored). ``seed=None`` runs the block
    unseeded. Used wherever a model must be built or trained from the same initial state every time.

    Taught in ``book/11_cnn_diagnosis.md``.
    """
    if seed is None:
        yield
        return
    dev = torch.device(device) if device is not None else torch.device("cpu")
    devices = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


@contextlib.contextmanager
def cpu_threads(n: Optional[int]) -> Iterator[int]:
    """Run a block with ``torch.set_num_threads(n)`` and restore the previous count afterwards (``None``: leave it).

    The number of CPU threads changes the order of floating-point reductions, so the same seeded training run gives
    different weights with 1 and with 2 threads, and a short, noisy run (the demo) can then end with visibly
    different numbers. Pinning the count makes such a run repeat exactly on the same library versions. Yields the
    thread count in effect.
    """
    before = torch.get_num_threads()
    if n is not None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"threads must be a positive integer or None, got {n!r}")
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
