"""Joint weakly- and semi-supervised training: the :class:`Trainer`.

Taught in ``book/06_joint_training.md``.

The paper's objective (Shin et al., TMI 2019, Sec. III-C) is

    L = L_s + alpha * L_ws,    L_s = L_cls^RPN + L_reg^RPN + L_cls^FRC + L_reg^FRC,

where ``L_s`` is Faster R-CNN's loss on *strong* images (boxes known) and ``L_ws`` the multiple-instance loss
of the mass of interest on *weak* images (only the image label known). The :class:`Trainer` optimises it in
three modes and two ways of mixing the data streams:

* ``mode="strong"`` — ``L_s`` only, on strong images (the fully supervised baseline);
* ``mode="weak"`` — ``L_ws`` only, on weak images (the weak-only MIL baseline);
* ``mode="joint"`` — ``L_s + alpha(step) * L_ws``, with
  ``stream="combined"``: every step holds ``n_strong`` strong and ``n_weak`` weak images, one forward and
  one backward pass of the whole sum (the paper's proposed variant), or
  ``stream="alternating"``: even steps are strong-only mini-batches (loss ``L_s``), odd steps weak-only
  mini-batches (loss ``alpha(step) * L_ws``).

**Data streams are stateless.** Each stream (``"strong"``, ``"weak"``) is an endless sequence of epochs; the
order of epoch ``e`` is ``torch.randperm(n)`` drawn from a generator seeded by ``(seed, stream, "epoch", e)``,
and global batch ``b`` is the slice ``[b*G, (b+1)*G)`` of the concatenated epochs, ``G`` being the global
batch size. Item ``j`` of batch ``b`` gets the augmentation seed ``derive_seed(seed, stream, "aug", b, j)``.
So the batch at any step is a pure function of ``(seed, stream, step)``: a resumed run needs only the step
counter, and ``num_workers`` only changes *who* loads a batch, never *what* it holds.

**Data parallel.** Under ``torchrun --nproc_per_node=K`` the per-rank batch is ``n_strong`` strong +
``n_weak`` weak images and the global batch is ``K x`` that: rank ``r`` takes items ``[r*B, (r+1)*B)`` of
every global batch of size ``G = K*B``. Gradients are averaged over ranks by ``DistributedDataParallel``.

**Randomness inside the model** (e.g. torchvision's positive/negative anchor sampler draws from the global
torch generator) is made stateless too: step ``k`` on rank ``r`` runs under
``torch.random.fork_rng`` seeded with ``derive_seed(seed, "step", k, r)``. Together with the optimiser state
in the checkpoint this makes a resumed run identical, bit for bit on CPU, to an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from .checkpoint import (CHECKPOINT_VERSION, CheckpointError, atomic_save, load_checkpoint,
                         remove_stale_temporaries)
from .distributed import DistInfo, barrier, all_reduce_mean, init_distributed
from .data.dataset import collate
from .schedules import constant
from .seeding import derive_seed, get_rng_state, set_rng_state

__all__ = ["Trainer", "History", "NonFiniteLossError", "StreamBatchSampler", "stream_batch", "step_batches",
           "stream_positions", "LOSS_KEYS", "STRONG_LOSS_KEYS", "MODES", "STREAMS", "main"]

logger = logging.getLogger("wsbus.train")

#: The loss terms the detector's training forward returns (zeros connected to the graph when absent).
LOSS_KEYS = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mil")
#: The terms of the strongly supervised loss L_s.
STRONG_LOSS_KEYS = LOSS_KEYS[:4]
MODES = ("strong", "weak", "joint")
STREAMS = ("combined", "alternating")
#: Columns of ``log.csv`` and keys of every :class:`History` record.
LOG_COLUMNS = ("step", "kind", "loss") + LOSS_KEYS + ("alpha", "lr", "grad_norm", "time")

_DEFAULT = "default"


# ---------------------------------------------------------------------------------------------------------
# Data streams
# ---------------------------------------------------------------------------------------------------------

def step_batches(step: int, mode: str, stream: str = "combined") -> Tuple[Tuple[str, int], ...]:
    """Which stream batches step ``step`` consumes, as ``((stream_name, batch_index), ...)``.

    ``strong`` and ``weak`` modes use one stream; ``joint``/``combined`` takes batch ``step`` of both;
    ``joint``/``alternating`` takes strong batch ``step // 2`` on even steps and weak batch ``step // 2`` on
    odd steps.

    Taught in ``book/06_joint_training.md``.
    """
    _check_choice("mode", mode, MODES)
    _check_choice("stream", stream, STREAMS)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if mode == "strong":
        return (("strong", step),)
    if mode == "weak":
        return (("weak", step),)
    if stream == "combined":
        return (("strong", step), ("weak", step))
    return (("strong", step // 2),) if step % 2 == 0 else (("weak", step // 2),)


def stream_positions(steps_done: int, mode: str, stream: str = "combined") -> Dict[str, int]:
    """How many batches of each stream the first ``steps_done`` steps consumed.

    This is what a checkpoint stores under ``"streams"`` and what a resumed run checks.

    Taught in ``book/06_joint_training.md``.
    """
    _check_choice("mode", mode, MODES)
    _check_choice("stream", stream, STREAMS)
    n = int(steps_done)
    if mode == "strong":
        return {"strong": n, "weak": 0}
    if mode == "weak":
        return {"strong": 0, "weak": n}
    if stream == "combined":
        return {"strong": n, "weak": n}
    return {"strong": (n + 1) // 2, "weak": n // 2}


def _epoch_order(n: int, seed: int, stream: str, epoch: int) -> torch.Tensor:
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, stream, "epoch", epoch))
    return torch.randperm(n, generator=g)


def stream_batch(n: int, batch_size: int, *, seed: int, stream: str, index: int, rank: int = 0,
                 world_size: int = 1) -> List[Tuple[int, int]]:
    """Batch ``index`` of a stream over ``n`` items, as this rank's ``(item, aug_seed)`` pairs.

    The global batch has ``batch_size * world_size`` items: positions ``[index*G, (index+1)*G)`` of the
    concatenation of epoch orders (``torch.randperm(n)`` seeded by ``(seed, stream, "epoch", e)``); this rank
    takes the slots ``[rank*batch_size, (rank+1)*batch_size)``. ``aug_seed`` is
    ``derive_seed(seed, stream, "aug", index, slot, bits=32)`` for the global slot.

    Parameters
    ----------
    n : number of items in the stream's dataset.
    batch_size : per-rank batch size.
    seed, stream : name the stream (``stream`` is ``"strong"`` or ``"weak"`` in the Trainer).
    index : the batch number (the stream position).
    rank, world_size : this process's place in a data-parallel job.

    Taught in ``book/06_joint_training.md``.
    """
    return list(StreamBatchSampler(n, batch_size, seed=seed, stream=stream, start=index, stop=index + 1,
                                   rank=rank, world_size=world_size))[0]


class StreamBatchSampler(Sampler):
    """Batch sampler yielding batches ``start .. stop-1`` of a stateless stream (see :func:`stream_batch`).

    Each batch is a list of ``(item_index, aug_seed)`` pairs; a dataset's ``__getitem__`` receives the pair,
    so a ``DataLoader`` with any ``num_workers`` returns the same batches.

    Taught in ``book/06_joint_training.md``.
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


def _as_dataset(data: Any, role: str, transforms: Any, seed: int) -> Optional[Dataset]:
    if data is None:
        return None
    if isinstance(data, (list, tuple)):
        from .data.dataset import DetectionDataset, _check_samples

        if len(data) == 0:
            raise ValueError(f"the {role} set is empty")
        _check_samples(data, role, item=f"{role} set item",
                       no_boxes="is in the strong set but has no boxes (a weak sample); strong training needs "
                                "boxes (a normal image has an empty [0, 4] box array)")

        if transforms == _DEFAULT:
            from .data.transforms import train_transforms

            transforms = train_transforms()
        return DetectionDataset(list(data), role=role, transforms=transforms, seed=seed)
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        if len(data) == 0:
            raise ValueError(f"the {role} dataset is empty")
        own = getattr(data, "role", role)
        if own != role and not (role == "strong" and own == "eval"):
            raise ValueError(f"a dataset with role {own!r} was passed as the {role} set")
        return data
    raise TypeError(f"the {role} set must be a list of Sample or a map-style dataset "
                    f"(DetectionDataset), got {type(data).__name__}")


# ---------------------------------------------------------------------------------------------------------
# History
# ---------------------------------------------------------------------------------------------------------

class History(Sequence):
    """Per-step training records (one dict per step with the keys of :data:`LOG_COLUMNS`).

    ``step`` is the 0-based step index, ``kind`` is ``"combined"``, ``"strong"`` or ``"weak"`` (what the
    mini-batch held), ``loss`` the optimised total, the five loss terms as the model returned them (averaged
    over ranks under DDP), ``alpha`` the weight of ``L_ws`` in ``loss`` (``alpha(step)`` in joint mode, 0 in
    strong mode, 1 in weak mode), ``lr``, ``grad_norm`` (before clipping; NaN when not clipping) and ``time``
    (seconds the step took).

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
        """Every record's value of ``key`` (e.g. ``"loss"``, ``"loss_mil"``, ``"kind"``)."""
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


class NonFiniteLossError(FloatingPointError):
    """A step produced a NaN/inf loss: training stopped, the last good checkpoint was left untouched.

    Attributes
    ----------
    step : the 0-based step index. losses : dict of the loss values at that step.
    checkpoint : path of the last good checkpoint (None when none was written).
    """

    def __init__(self, step: int, losses: Mapping[str, float], checkpoint: Optional[Path],
                 checkpoint_step: Optional[int]) -> None:
        self.step, self.losses, self.checkpoint = step, dict(losses), checkpoint
        values = ", ".join(f"{k}={v:.6g}" for k, v in self.losses.items())
        where = (f"the last good checkpoint {str(checkpoint)!r} (step {checkpoint_step}) is untouched"
                 if checkpoint is not None else "no checkpoint had been written")
        super().__init__(f"non-finite loss at step {step}: {values}; training stopped, {where}")


# ---------------------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------------------

def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _resolve_alpha(alpha: Any, steps: int) -> Callable[[int], float]:
    from .schedules import as_schedule

    if isinstance(alpha, str) and alpha.strip().lower() == "gradual":
        return as_schedule(alpha, total_steps=max(1, steps))   # the reference staircase scaled to this run
    return as_schedule(alpha)


def _describe(obj: Any) -> Union[str, float, int, None]:
    """A plain, comparable description of an alpha spec (checkpoints store it; resume compares it)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "__code__") or isinstance(obj, type):
        return getattr(obj, "__qualname__", None) or getattr(obj, "__name__", "?")
    if type(obj).__repr__ is not object.__repr__:
        return repr(obj)
    return type(obj).__qualname__


def _check_plain(obj: Any, where: str) -> None:
    """Raise when ``obj`` would not load with ``torch.load(weights_only=True)``."""
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor, torch.dtype, torch.device)):
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}; use str or int keys")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(f"{where} is a {type(obj).__name__} ({obj!r}); checkpoints hold only tensors, numbers, "
                    f"strings and lists/dicts of them")


def _parse_amp_dtype(amp_dtype: Any, device: torch.device) -> torch.dtype:
    if amp_dtype is None:
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    if isinstance(amp_dtype, torch.dtype):
        dt = amp_dtype
    else:
        names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
                 "float16": torch.float16, "half": torch.float16}
        if str(amp_dtype) not in names:
            raise ValueError(f"amp_dtype must be bfloat16 or float16, got {amp_dtype!r}")
        dt = names[str(amp_dtype)]
    if dt not in (torch.bfloat16, torch.float16):
        raise ValueError(f"amp_dtype must be bfloat16 or float16, got {dt}")
    return dt


def _to_device(images: list, targets: list, device: torch.device, stream: str) -> Tuple[list, list]:
    out_images, out_targets = [], []
    for img, tgt in zip(images, targets):
        if not torch.is_tensor(img) or img.ndim != 3:
            raise TypeError(f"{stream} stream item {tgt.get('index', '?')}: expected an image tensor [C,H,W], "
                            f"got {type(img).__name__} {tuple(getattr(img, 'shape', ()))}")
        has_boxes = "boxes" in tgt
        if stream == "strong" and not has_boxes:
            raise ValueError(f"strong stream item {tgt.get('index', '?')}: the target has no 'boxes' "
                             f"(keys {sorted(tgt)}); was a weak dataset passed as strong?")
        if stream == "weak" and (has_boxes or "image_label" not in tgt):
            raise ValueError(f"weak stream item {tgt.get('index', '?')}: a weak target must hold 'image_label' "
                             f"and no 'boxes', got keys {sorted(tgt)}")
        out_images.append(img.to(device, non_blocking=True))
        out_targets.append({k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v)
                            for k, v in tgt.items()})
    return out_images, out_targets


@dataclass
class _Loaders:
    iters: Dict[str, Iterator]
    loaders: Dict[str, DataLoader]


class Trainer:
    """Train a detector in strong, weak or joint mode, with checkpoints, exact resume, AMP and DDP.

    Parameters
    ----------
    model : a detector honouring the contract of :func:`wsbus.models.build_detector`: in training mode
        ``model(images, targets)`` returns a dict with the keys of :data:`LOSS_KEYS`; ``model.config`` (the
        keyword arguments that rebuild it) is stored in checkpoints when present.
    strong, weak : the strong (boxes) and weak (image label only) training images, each a list of
        :class:`wsbus.data.Sample` (wrapped in ``DetectionDataset(role="strong"|"weak")`` with ``transforms``)
        or a map-style dataset whose ``__getitem__`` takes ``(index, aug_seed)``. Weak samples may keep
        their (hidden) boxes; the ``weak`` role drops them.
    mode : ``"strong"`` (needs ``strong``), ``"weak"`` (needs ``weak``) or ``"joint"`` (needs both).
    stream : ``"combined"`` or ``"alternating"`` (joint mode only; see the module docstring).
    n_strong, n_weak : per-rank images per mini-batch from each stream (reference 1 + 2).
    alpha : weight of ``L_ws`` in joint mode: a float, a callable ``step -> float`` or a name understood by
        :func:`wsbus.schedules.as_schedule` (``"gradual"`` spans ``steps``); default ``constant(0.5)``.
    lr, weight_decay, optimizer : ``"adam"`` (reference: Adam, lr 5e-4, weight decay 5e-4), ``"adamw"`` or
        ``"sgd"`` (momentum 0.9).
    steps : total number of steps (reference 60 000); ``fit(steps=...)`` overrides it.
    device : ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default: the model's device. Under ``torchrun`` a bare
        ``"cuda"`` means ``cuda:<LOCAL_RANK>``.
    amp, amp_dtype : mixed precision with ``torch.autocast``; default dtype bfloat16 on CPU, float16 on CUDA
        (float16 uses a ``GradScaler``).
    clip_grad_norm : clip the global gradient norm to this value (None: no clipping).
    out_dir : where ``last.pt``, ``log.csv``, ``train.log`` and TensorBoard events (``tb/``) go; None keeps
        everything in memory (no checkpoints).
    checkpoint_every : write ``out_dir/last.pt`` every this many steps (and at the end).
    keep_every : also keep a copy ``out_dir/step_XXXXXX.pt`` every this many steps (``last.pt`` is refreshed
        then too); None keeps only ``last.pt``.
    log_every : refresh the progress bar and TensorBoard every this many steps (``log.csv`` gets every step).
    seed : names every random draw of the run (data order, augmentation, in-model sampling); reference 3.
    transforms : augmentation applied when ``strong``/``weak`` are lists of samples; default
        ``wsbus.data.transforms.train_transforms()``, None for none.
    num_workers : DataLoader worker processes (the batches do not depend on it).
    progress, tensorboard : show a tqdm bar / write TensorBoard events (rank 0 only).
    callbacks : callables ``f(trainer, record)`` run after every step (after any checkpoint of that step).
    history_tail : how many History records a checkpoint keeps.
    metadata : extra plain data stored under ``checkpoint["config"]["metadata"]`` (the CLI stores the data
        spec and the split there).

    Taught in ``book/06_joint_training.md``.
    """

    def __init__(self, model: nn.Module, strong: Any = None, weak: Any = None, *, mode: str = "joint",
                 stream: str = "combined", n_strong: int = 1, n_weak: int = 2, alpha: Any = constant(0.5),
                 lr: float = 5e-4, weight_decay: float = 5e-4, optimizer: str = "adam", steps: int = 60000,
                 device: Union[str, torch.device, None] = None, amp: bool = False, amp_dtype: Any = None,
                 clip_grad_norm: Optional[float] = None, out_dir: Union[str, os.PathLike, None] = None,
                 checkpoint_every: int = 1000, keep_every: Optional[int] = None, log_every: int = 20,
                 seed: int = 3, transforms: Any = _DEFAULT, num_workers: int = 0, progress: bool = True,
                 tensorboard: bool = True, callbacks: Sequence[Callable[["Trainer", Dict[str, Any]], None]] = (),
                 history_tail: int = 1000, metadata: Optional[Mapping[str, Any]] = None) -> None:
        _check_choice("mode", mode, MODES)
        _check_choice("stream", stream, STREAMS)
        if mode != "joint" and stream != "combined":
            raise ValueError(f"stream={stream!r} applies to joint mode only; mode {mode!r} uses one stream")
        for name, value in (("n_strong", n_strong), ("n_weak", n_weak), ("steps", steps),
                            ("checkpoint_every", checkpoint_every), ("log_every", log_every)):
            least = 0 if name == "steps" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        if keep_every is not None and (not isinstance(keep_every, int) or keep_every < 1):
            raise ValueError(f"keep_every must be a positive integer or None, got {keep_every!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        if clip_grad_norm is not None and not clip_grad_norm > 0:
            raise ValueError(f"clip_grad_norm must be > 0 or None, got {clip_grad_norm!r}")
        if not lr > 0 or weight_decay < 0:
            raise ValueError(f"need lr > 0 and weight_decay >= 0, got lr={lr!r}, weight_decay={weight_decay!r}")
        _check_choice("optimizer", optimizer, ("adam", "adamw", "sgd"))
        if mode in ("strong", "joint") and strong is None:
            raise ValueError(f"mode {mode!r} needs strong (boxed) training images")
        if mode in ("weak", "joint") and weak is None:
            raise ValueError(f"mode {mode!r} needs weak (image-label) training images")

        for name, data, used in (("strong", strong, mode != "weak"), ("weak", weak, mode != "strong")):
            if data is not None and not used:
                warnings.warn(f"mode {mode!r} does not use the {len(data)} {name} images passed to the Trainer"
                              + (" (the weak-only baseline takes every training image as weak: pass them in "
                                 "`weak`)" if mode == "weak" else ""), stacklevel=2)
        self.mode, self.stream = mode, stream
        self.n_strong, self.n_weak = n_strong, n_weak
        self.lr, self.weight_decay, self.optimizer_name = float(lr), float(weight_decay), optimizer
        self.steps = steps
        self.alpha_spec = alpha
        self.alpha = _resolve_alpha(alpha, steps) if mode == "joint" else None
        self.clip_grad_norm = clip_grad_norm
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.checkpoint_every, self.keep_every, self.log_every = checkpoint_every, keep_every, log_every
        self.seed = int(seed)
        self.num_workers = num_workers
        self.progress, self.tensorboard = progress, tensorboard
        self.callbacks = list(callbacks)
        self.history_tail = int(history_tail)
        self.metadata = dict(metadata or {})
        _check_plain(self.metadata, "metadata")

        # Device and process group (under torchrun).
        if device is None:
            p = next(iter(model.parameters()), None)
            device = p.device if p is not None else "cpu"
        self.dist, self.device = init_distributed(device)
        self.model = model.to(self.device)
        self.model_config = dict(getattr(model, "config", None) or {})
        _check_plain(self.model_config, "model.config")
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            # Weak-only (and strong-only) steps leave parameters without gradients (the RPN gets none from
            # L_ws): find_unused_parameters lets DDP's reducer skip them instead of waiting forever.
            self.net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        else:
            self.net = self.model

        # Data.
        keep = {"strong": mode in ("strong", "joint"), "weak": mode in ("weak", "joint")}
        self.datasets: Dict[str, Dataset] = {}
        for name, data in (("strong", strong), ("weak", weak)):
            if keep[name]:
                self.datasets[name] = _as_dataset(data, name, transforms, derive_seed(self.seed, name, "data"))
        self.batch_sizes = {"strong": n_strong, "weak": n_weak}

        # Optimisation.
        self.amp = bool(amp)
        self.amp_dtype = _parse_amp_dtype(amp_dtype, self.device) if self.amp else None
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        if optimizer == "adam":
            self.optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        elif optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        else:
            self.optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.amp and self.amp_dtype == torch.float16)
        self.step = 0
        self.history = History()
        self.last_checkpoint: Optional[Path] = None
        self.last_checkpoint_step: Optional[int] = None

    # -- configuration ------------------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        """True on the process that writes checkpoints and logs (rank 0)."""
        return self.dist.is_main

    @property
    def checkpoint_path(self) -> Optional[Path]:
        """``out_dir/last.pt`` (None without ``out_dir``)."""
        return self.out_dir / "last.pt" if self.out_dir is not None else None

    def config(self) -> Dict[str, Any]:
        """The trainer's settings as plain data (stored in checkpoints, compared on resume).

        Taught in ``book/06_joint_training.md``.
        """
        return {
            "mode": self.mode, "stream": self.stream, "n_strong": self.n_strong, "n_weak": self.n_weak,
            "alpha": _describe(self.alpha) if self.mode == "joint" else None,
            "lr": self.lr, "weight_decay": self.weight_decay, "optimizer": self.optimizer_name,
            "steps": self.steps, "seed": self.seed, "amp": self.amp,
            "amp_dtype": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else None,
            "clip_grad_norm": self.clip_grad_norm, "checkpoint_every": self.checkpoint_every,
            "world_size": self.dist.world_size, "device": str(self.device),
            "n_strong_images": len(self.datasets["strong"]) if "strong" in self.datasets else 0,
            "n_weak_images": len(self.datasets["weak"]) if "weak" in self.datasets else 0,
        }

    def stream_state(self, steps_done: Optional[int] = None) -> Dict[str, Any]:
        """Both stream positions after ``steps_done`` steps (default: now), with what identifies them.

        Taught in ``book/06_joint_training.md``.
        """
        steps_done = self.step if steps_done is None else steps_done
        pos = stream_positions(steps_done, self.mode, self.stream)
        out: Dict[str, Any] = {"mode": self.mode, "stream": self.stream, "seed": self.seed,
                               "world_size": self.dist.world_size}
        for name in ("strong", "weak"):
            ds = self.datasets.get(name)
            out[name] = {"position": pos[name], "n": len(ds) if ds is not None else 0,
                         "batch_size": self.batch_sizes[name],
                         "global_batch_size": self.batch_sizes[name] * self.dist.world_size}
        return out

    # -- state ------------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue training exactly: model, optimiser, scaler, step, config, RNG states,
        stream positions and the history tail (tensors and plain containers only).

        Taught in ``book/06_joint_training.md``.
        """
        from . import __version__

        return {
            "version": CHECKPOINT_VERSION, "wsbus_version": __version__,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "step": self.step,
            "config": {"model": self.model_config, "trainer": self.config(), "metadata": self.metadata},
            "rng": get_rng_state(), "streams": self.stream_state(),
            "history": self.history.tail(self.history_tail),
        }

    def load_state_dict(self, state: Mapping[str, Any], source: str = "state dict") -> None:
        """Restore :meth:`state_dict` output; checks that the run's settings and data streams match.

        Raises :class:`wsbus.checkpoint.CheckpointError` naming ``source`` and every mismatch (trainer settings,
        model configuration, data stream sizes and positions).

        Taught in ``book/06_joint_training.md``.
        """
        step = int(state["step"])
        saved_cfg = (state.get("config") or {}).get("trainer") or {}
        now = self.config()
        problems = [f"{k}: checkpoint {saved_cfg[k]!r}, this run {now[k]!r}"
                    for k in ("mode", "stream", "n_strong", "n_weak", "seed", "optimizer", "lr", "weight_decay",
                              "amp", "amp_dtype", "world_size", "alpha", "n_strong_images", "n_weak_images")
                    if k in saved_cfg and saved_cfg[k] != now[k]]
        saved_model = (state.get("config") or {}).get("model") or {}
        if saved_model and self.model_config:
            problems += [f"model {k}: checkpoint {saved_model.get(k)!r}, this model {self.model_config.get(k)!r}"
                         for k in sorted(set(saved_model) | set(self.model_config), key=str)
                         if k != "pretrained" and saved_model.get(k) != self.model_config.get(k)]
        saved_streams = state.get("streams") or {}
        expect = self.stream_state(step)
        for name in ("strong", "weak"):
            got = saved_streams.get(name)
            if got is None:
                problems.append(f"streams: the checkpoint lacks the {name} stream position")
                continue
            for key in ("position", "n", "global_batch_size"):
                if key in got and got[key] != expect[name][key]:
                    problems.append(f"{name} stream {key}: checkpoint {got[key]}, expected {expect[name][key]} "
                                    f"at step {step}")
        if problems:
            raise CheckpointError(f"cannot resume from {source}: it was written by a different run:\n  "
                                  + "\n  ".join(problems))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if state.get("rng"):
            set_rng_state(state["rng"])
        self.step = step
        self.history = History(state.get("history") or [])

    def save_checkpoint(self) -> Optional[Path]:
        """Write ``out_dir/last.pt`` atomically (rank 0 only; also ``step_XXXXXX.pt`` every ``keep_every``).

        Taught in ``book/06_joint_training.md``.
        """
        if self.out_dir is None:
            raise ValueError("save_checkpoint needs out_dir")
        path = self.checkpoint_path
        if self.is_main:
            state = self.state_dict()
            atomic_save(state, path)
            if self.keep_every and self.step % self.keep_every == 0:
                atomic_save(state, self.out_dir / f"step_{self.step:06d}.pt")
            self._log_line(f"checkpoint step {self.step} -> {path}")
        self.last_checkpoint, self.last_checkpoint_step = path, self.step
        return path

    def _resume(self) -> None:
        path = self.checkpoint_path
        if path is None:
            raise ValueError("resume=True needs out_dir (the checkpoint is out_dir/last.pt)")
        if self.is_main:
            removed = remove_stale_temporaries(self.out_dir, ["last.pt", "step_*.pt"])
            for p in removed:
                self._log_line(f"removed the stale temporary file {p.name} (a write interrupted earlier)")
        barrier()
        if not path.is_file():
            self._log_line(f"resume: no checkpoint at {path}, starting from step 0")
            return
        state = load_checkpoint(path, map_location=self.device)
        self.load_state_dict(state, source=f"checkpoint {str(path)!r}")
        self.last_checkpoint, self.last_checkpoint_step = path, self.step
        self._log_line(f"resumed from {path} at step {self.step}")

    # -- logs ---------------------------------------------------------------------------------------------------
    def _log_line(self, message: str) -> None:
        logger.info(message)
        if self.is_main and self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / "train.log", "a") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def _open_csv(self, start: int):
        """Open ``log.csv`` for appending, first dropping rows of steps >= ``start`` (left by a killed run)."""
        path = self.out_dir / "log.csv"
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
        f = open(path, "a", newline="")
        return f, csv.DictWriter(f, fieldnames=LOG_COLUMNS, extrasaction="ignore")

    def _open_tensorboard(self, start: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # tensorboard not installed
            logger.warning("TensorBoard logging disabled: %s", exc)
            return None
        return SummaryWriter(log_dir=str(self.out_dir / "tb"), purge_step=start if start > 0 else None)

    # -- the loop -------------------------------------------------------------------------------------------------
    def _make_loaders(self, start: int, stop: int) -> _Loaders:
        first, last = stream_positions(start, self.mode, self.stream), stream_positions(stop, self.mode, self.stream)
        loaders, iters = {}, {}
        for name, ds in self.datasets.items():
            if last[name] == first[name]:
                continue
            sampler = StreamBatchSampler(len(ds), self.batch_sizes[name], seed=self.seed, stream=name,
                                         start=first[name], stop=last[name], rank=self.dist.rank,
                                         world_size=self.dist.world_size)
            g = torch.Generator()  # the DataLoader draws its base seed from here, not from the global RNG
            g.manual_seed(derive_seed(self.seed, name, "loader", first[name]))
            loaders[name] = DataLoader(ds, batch_sampler=sampler, num_workers=self.num_workers,
                                       collate_fn=collate, generator=g,
                                       pin_memory=self.device.type == "cuda")
            iters[name] = iter(loaders[name])
        return _Loaders(iters=iters, loaders=loaders)

    def _alpha_at(self, step: int) -> float:
        if self.mode == "strong":
            return 0.0
        if self.mode == "weak":
            return 1.0
        a = float(self.alpha(step))
        if not math.isfinite(a) or a < 0:
            raise ValueError(f"alpha({step}) = {a!r}: the MIL weight must be finite and >= 0")
        return a

    def _train_step(self, step: int, batches: Dict[str, Tuple[list, list]]) -> Dict[str, Any]:
        t0 = time.perf_counter()
        names = tuple(batches)
        kind = "combined" if len(names) == 2 else names[0]
        images: list = []
        targets: list = []
        for name in names:
            im, tg = _to_device(*batches[name], self.device, name)
            images += im
            targets += tg
        alpha = self._alpha_at(step)
        cuda_devices = [self.device.index or 0] if self.device.type == "cuda" else []
        self.net.train()
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(derive_seed(self.seed, "step", step, self.dist.rank))
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp):
                loss_dict = self.net(images, targets)
            if not isinstance(loss_dict, Mapping):
                raise TypeError(f"step {step}: the model's training forward returned {type(loss_dict).__name__}, "
                                f"expected a dict with keys {list(LOSS_KEYS)}")
            missing = [k for k in LOSS_KEYS if k not in loss_dict]
            if missing:
                raise KeyError(f"step {step}: the model's loss dict lacks {missing} (got {sorted(loss_dict)}); "
                               f"absent terms must be returned as zeros")
            terms = {k: loss_dict[k].float() for k in LOSS_KEYS}
            l_s = sum(terms[k] for k in STRONG_LOSS_KEYS)
            l_ws = terms["loss_mil"]
            if kind == "combined":
                total = l_s + alpha * l_ws
            elif kind == "strong":
                total = l_s
            else:
                total = alpha * l_ws
            values = torch.stack([terms[k].detach() for k in LOSS_KEYS] + [total.detach()])
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
            # The backward is queued before the host reads the losses, so a GPU never idles waiting for that copy.
            # One collective per step: rank-averaged values for the log and a NaN/inf check every rank agrees on;
            # a non-finite loss stops the run before the optimiser step, so the weights stay the last good ones.
            values = all_reduce_mean(values.clone()).cpu()
            report = {k: float(v) for k, v in zip(LOSS_KEYS + ("loss",), values.tolist())}
            if not torch.isfinite(values).all():
                report["alpha"] = alpha
                raise NonFiniteLossError(step, report, self.last_checkpoint, self.last_checkpoint_step)
            grad_norm = float("nan")
            if self.clip_grad_norm is not None:
                self.scaler.unscale_(self.optimizer)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(
                    [p for g in self.optimizer.param_groups for p in g["params"]], self.clip_grad_norm))
            self.scaler.step(self.optimizer)
            self.scaler.update()
        record: Dict[str, Any] = {"step": step, "kind": kind, "loss": report["loss"]}
        record.update({k: report[k] for k in LOSS_KEYS})
        record.update({"alpha": alpha, "lr": float(self.optimizer.param_groups[0]["lr"]), "grad_norm": grad_norm,
                       "time": time.perf_counter() - t0})
        return record

    def fit(self, steps: Optional[int] = None, resume: bool = False) -> History:
        """Train until ``steps`` steps (default: the constructor's ``steps``) have been done.

        Parameters
        ----------
        steps : the total step count to reach (not additional steps); a resumed or repeated ``fit`` continues
            from the current step.
        resume : first load ``out_dir/last.pt`` when it exists (and check it belongs to this run); with no
            checkpoint yet the run starts from step 0, so ``resume=True`` is always safe to pass.

        Returns
        -------
        History of every step (after a resume: the checkpoint's history tail plus the new steps).

        Raises
        ------
        NonFiniteLossError
            when a loss is NaN/inf; the step, the loss values and the last good checkpoint are in the message,
            and that checkpoint is left untouched.

        Taught in ``book/06_joint_training.md``.
        """
        total = self.steps if steps is None else int(steps)
        if total < 0:
            raise ValueError(f"steps must be >= 0, got {total}")
        if resume:
            self._resume()
        start = self.step
        if start >= total:
            return self.history
        main = self.is_main
        csv_file = csv_writer = tb = None
        if main and self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            csv_file, csv_writer = self._open_csv(start)
            if self.tensorboard:
                tb = self._open_tensorboard(start)
        ws = self.dist.world_size
        sizes = " + ".join(f"{self.batch_sizes[n]} {n}" for n in self.datasets)
        self._log_line(
            f"training mode={self.mode} stream={self.stream} steps {start}..{total} on {self.device}, "
            f"world size {ws} (global batch = {ws} x ({sizes})), seed {self.seed}, "
            f"images: " + ", ".join(f"{len(ds)} {n}" for n, ds in self.datasets.items()))
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=start, disable=not (self.progress and main), desc=f"train {self.mode}",
                   dynamic_ncols=True, file=sys.stderr)
        loaders = self._make_loaders(start, total)
        try:
            for k in range(start, total):
                batches = {name: next(loaders.iters[name]) for name, _ in step_batches(k, self.mode, self.stream)}
                try:
                    record = self._train_step(k, batches)
                except NonFiniteLossError as exc:
                    self._log_line(str(exc))
                    raise
                self.step = k + 1
                self.history.append(record)
                if csv_writer is not None:
                    csv_writer.writerow(record)
                done = self.step == total
                if (self.step % self.log_every == 0 or done) and main:
                    bar.set_postfix(loss=f"{record['loss']:.4f}", alpha=f"{record['alpha']:.3g}", refresh=False)
                    if tb is not None:
                        for key in ("loss",) + LOSS_KEYS:
                            tb.add_scalar(f"loss/{key}", record[key], k)
                        tb.add_scalar("train/alpha", record["alpha"], k)
                        tb.add_scalar("train/lr", record["lr"], k)
                bar.update(1)
                keep = self.keep_every is not None and self.step % self.keep_every == 0
                if self.out_dir is not None and (self.step % self.checkpoint_every == 0 or done or keep):
                    if csv_file is not None:  # rows up to this step reach the disk before the checkpoint
                        csv_file.flush()
                        os.fsync(csv_file.fileno())
                    self.save_checkpoint()
                for cb in self.callbacks:
                    cb(self, record)
        finally:
            bar.close()
            if csv_file is not None:
                csv_file.close()
            if tb is not None:
                tb.close()
            del loaders
        self._log_line(f"finished at step {self.step}, last loss {self.history[-1]['loss']:.6g}")
        barrier()
        return self.history


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m wsbus.train ARGS`` is ``wsbus train ARGS`` (also under ``torchrun``).

    Taught in ``book/06_joint_training.md``.
    """
    from .cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
