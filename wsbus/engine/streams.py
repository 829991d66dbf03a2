"""The two data streams of a training run, as stateless functions of ``(seed, stream, batch index)``.

A run draws its images from up to two **streams**, named by the kind of data they carry: the ``"strong"`` stream
(images with boxes) and the ``"weak"`` stream (images with an image label only). The run's **mode** says which
streams it uses (``strong``, ``weak`` or ``joint``), and a joint run's **mixing** says how it takes them: both in
every step (``"combined"``, the paper's proposed single mini-batch) or one per step in turn (``"alternating"``).

Each stream is an endless sequence of epochs; the order of epoch ``e`` is ``torch.randperm(n)`` drawn from a
generator seeded by ``(seed, stream, "epoch", e)``, and global batch ``b`` is the slice ``[b*G, (b+1)*G)`` of the
concatenated epochs, ``G`` being the global batch size. Item ``j`` of batch ``b`` gets the augmentation seed
``derive_seed(seed, stream, "aug", b, j)``. So the batch at any step is a pure function of ``(seed, stream,
step)``: a resumed run needs only the step counter, and ``num_workers`` only changes *who* loads a batch, never
*what* it holds. Under ``torchrun`` rank ``r`` takes items ``[r*B, (r+1)*B)`` of every global batch ``G = K*B``.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Mapping, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data.dataset import collate
from ..seeding import derive_seed

__all__ = ["MODES", "MIXINGS", "STREAMS", "check_choice", "step_batches", "stream_positions", "stream_batch",
           "StreamBatchSampler",
           "StreamLoaders"]

#: What supervision a run uses.
MODES = ("strong", "weak", "joint")
#: How a joint run mixes its two streams.
MIXINGS = ("combined", "alternating")
#: The data streams, named by the kind of images they carry.
STREAMS = ("strong", "weak")


def check_choice(name: str, value, choices) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def step_batches(step: int, mode: str, mixing: str = "combined") -> Tuple[Tuple[str, int], ...]:
    """Which stream batches step ``step`` consumes, as ``((stream, batch_index), ...)``.

    ``strong`` and ``weak`` modes use one stream; ``joint`` with ``combined`` mixing takes batch ``step`` of both;
    ``joint`` with ``alternating`` mixing takes strong batch ``step // 2`` on even steps and weak batch ``step // 2``
    on odd steps.

    Taught in ``book/06_joint_training.md``.
    """
    check_choice("mode", mode, MODES)
    check_choice("mixing", mixing, MIXINGS)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if mode != "joint":
        return ((mode, step),)
    if mixing == "combined":
        return (("strong", step), ("weak", step))
    return (("strong", step // 2),) if step % 2 == 0 else (("weak", step // 2),)


def stream_positions(steps_done: int, mode: str, mixing: str = "combined") -> Dict[str, int]:
    """How many batches of each stream the first ``steps_done`` steps consumed (what a checkpoint stores under
    ``"streams"`` and a resumed run checks)."""
    check_choice("mode", mode, MODES)
    check_choice("mixing", mixing, MIXINGS)
    n = int(steps_done)
    if mode == "strong":
        return {"strong": n, "weak": 0}
    if mode == "weak":
        return {"strong": 0, "weak": n}
    if mixing == "combined":
        return {"strong": n, "weak": n}
    return {"strong": (n + 1) // 2, "weak": n // 2}


def _epoch_order(n: int, seed: int, stream: str, epoch: int) -> torch.Tensor:
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, stream, "epoch", epoch))
    return torch.randperm(n, generator=g)


class StreamBatchSampler(Sampler):
    """Batch sampler yielding batches ``start .. stop-1`` of a stateless stream (see the module notes).

    Each batch is a list of ``(item_index, aug_seed)`` pairs; a dataset's ``__getitem__`` receives the pair,
    so a ``DataLoader`` with any ``num_workers`` returns the same batches.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, stream: str, start: int, stop: int,
                 rank: int = 0, world_size: int = 1) -> None:
        if n < 1:
            raise ValueError(f"stream {stream!r}: the dataset is empty")
        if batch_size < 1:
            raise ValueError(f"stream {stream!r}: batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"stream {stream!r}: rank {rank} outside world size {world_size}")
        if not 0 <= start <= stop:
            raise ValueError(f"stream {stream!r}: need 0 <= start <= stop, got {start}, {stop}")
        self.n, self.batch_size, self.seed, self.stream = int(n), int(batch_size), int(seed), str(stream)
        self.start, self.stop, self.rank, self.world_size = int(start), int(stop), int(rank), int(world_size)

    @property
    def global_batch_size(self) -> int:
        """``batch_size * world_size``: the items one batch holds over all ranks."""
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        g_size = self.global_batch_size
        epoch, order = -1, None
        for b in range(self.start, self.stop):
            batch = []
            for j in range(self.rank * self.batch_size, (self.rank + 1) * self.batch_size):
                pos = b * g_size + j
                e, i = divmod(pos, self.n)
                if e != epoch:
                    epoch, order = e, _epoch_order(self.n, self.seed, self.stream, e)
                batch.append((int(order[i]), derive_seed(self.seed, self.stream, "aug", b, j, bits=32)))
            yield batch


def stream_batch(n: int, batch_size: int, *, seed: int, stream: str, index: int, rank: int = 0,
                 world_size: int = 1) -> List[Tuple[int, int]]:
    """Batch ``index`` of a stream over ``n`` items, as this rank's ``(item, aug_seed)`` pairs (see
    :class:`StreamBatchSampler`)."""
    return list(StreamBatchSampler(n, batch_size, seed=seed, stream=stream, start=index, stop=index + 1,
                                   rank=rank, world_size=world_size))[0]


class StreamLoaders:
    """The ``DataLoader`` of each stream a run uses, positioned for steps ``start .. stop-1``.

    ``next_batches(step)`` returns ``{stream: (images, targets)}`` for the streams step ``step`` consumes
    (:func:`step_batches`). The DataLoaders draw their base seeds from generators seeded by the stream positions,
    never from the global RNG.
    """

    def __init__(self, datasets: Mapping[str, Dataset], batch_sizes: Mapping[str, int], *, mode: str, mixing: str,
                 seed: int, start: int, stop: int, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                 pin_memory: bool = False) -> None:
        self.mode, self.mixing = mode, mixing
        first, last = stream_positions(start, mode, mixing), stream_positions(stop, mode, mixing)
        self._iters: Dict[str, Iterator] = {}
        for name, ds in datasets.items():
            if last[name] == first[name]:
                continue
            sampler = StreamBatchSampler(len(ds), batch_sizes[name], seed=seed, stream=name, start=first[name],
                                         stop=last[name], rank=rank, world_size=world_size)
            g = torch.Generator()
            g.manual_seed(derive_seed(seed, name, "loader", first[name]))
            self._iters[name] = iter(DataLoader(ds, batch_sampler=sampler, num_workers=num_workers,
                                                collate_fn=collate, generator=g, pin_memory=pin_memory))

    def next_batches(self, step: int) -> Dict[str, Tuple[list, list]]:
        """The ``(images, targets)`` of every stream batch step ``step`` consumes, in stream order."""
        return {name: next(self._iters[name]) for name, _ in step_batches(step, self.mode, self.mixing)}
