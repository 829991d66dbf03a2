r"""Joint weakly- and semi-supervised training: the :class:`Trainer`, a loop that calls :meth:`Trainer.run_step`
and its hooks.

The paper's objective (Shin et al., TMI 2019, Sec. III-C) is

.. math::  L = L_s + \alpha L_{ws},  \qquad  L_s = L_{cls}^{RPN} + L_{reg}^{RPN} + L_{cls}^{FRC} + L_{reg}^{FRC},

where :math:`L_s` is Faster R-CNN's loss on *strong* images (boxes known) and :math:`L_{ws}` the multiple-instance
loss of the mass of interest on *weak* images (only the image label known). The trainer optimises it in three
**modes**: ``"strong"`` (:math:`L_s` on the strong stream: the fully supervised baseline), ``"weak"``
(:math:`L_{ws}` on the weak stream: the weak-only MIL baseline) and ``"joint"`` (:math:`L_s + \alpha(t) L_{ws}`),
with two **mixings** of the streams in joint mode: ``"combined"`` (each step holds ``batch_strong`` strong and
``batch_weak`` weak images, one backward of the whole sum; the paper's proposed variant) or ``"alternating"`` (even
steps strong-only with loss :math:`L_s`, odd steps weak-only with :math:`\alpha(t) L_{ws}`). The batches are
stateless functions of ``(seed, stream, step)`` (:mod:`wsbus.engine.streams`).

**Randomness inside the model** (torchvision's positive/negative samplers draw from the global torch generator)
is made stateless too: step ``k`` on rank ``r`` runs under ``torch.random.fork_rng`` seeded with
``derive_seed(seed, "step", k, r)``. With the optimiser state in the checkpoint, a resumed run is identical, bit
for bit on CPU, to an uninterrupted one. Under ``torchrun`` gradients are averaged over ranks by
``DistributedDataParallel``.
"""
from __future__ import annotations

import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.data import Dataset

from .. import __version__
from ..checkpoint import CHECKPOINT_VERSION, CheckpointError, atomic_save, load_checkpoint, remove_stale_temporaries
from ..interrupts import deferred_interrupts, signals_as_exceptions
from ..data.dataset import DetectionDataset, check_samples
from ..data.transforms import train_transforms
from ..distributed import all_reduce_mean, barrier, init_distributed
from ..models import LOSS_KEYS, STRONG_LOSS_KEYS, is_weak_target
from ..provenance import provenance
from ..schedules import as_schedule, constant, describe_schedule
from ..seeding import derive_seed, get_rng_state, set_rng_state
from .config import TrainerConfig, amp_dtype_of
from .history import History
from .hooks import CallbackHook, CSVLogger, Hook, PeriodicCheckpointer, ProgressBar, TensorBoardLogger
from .state import check_plain, resume_problems
from .streams import StreamLoaders, stream_positions

__all__ = ["Trainer", "NonFiniteLossError"]

logger = logging.getLogger("wsbus.engine")

_DEFAULT = "default"


def _hook_name(key: str) -> str:
    """A checkpoint's hook key as a name: ``"3:MoITeacher"`` (position-keyed, before wsbus 0.2) -> ``"MoITeacher"``."""
    head, sep, tail = key.partition(":")
    return tail if sep and head.isdigit() else key


class NonFiniteLossError(FloatingPointError):
    """A step produced a NaN/inf loss: training stopped before the optimiser step, the last good checkpoint was
    left untouched.

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


def _as_dataset(data: Any, stream: str, transforms: Any, seed: int) -> Dataset:
    """A stream's dataset: samples are wrapped in a :class:`~wsbus.data.DetectionDataset` of that kind."""
    if isinstance(data, (list, tuple)):
        if len(data) == 0:
            raise ValueError(f"the {stream} set is empty")
        check_samples(data, stream, item=f"{stream} set item",
                      no_boxes="is in the strong set but has no boxes (a weak sample); strong training needs "
                               "boxes (a normal image has an empty [0, 4] box array)")
        transforms = train_transforms() if transforms == _DEFAULT else transforms
        return DetectionDataset(list(data), kind=stream, transforms=transforms, seed=seed)
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        if len(data) == 0:
            raise ValueError(f"the {stream} dataset is empty")
        own = getattr(data, "kind", stream)
        if own != stream and not (stream == "strong" and own == "eval"):
            raise ValueError(f"a dataset of kind {own!r} was passed as the {stream} set")
        return data
    raise TypeError(f"the {stream} set must be a list of Sample or a map-style dataset (DetectionDataset), got "
                    f"{type(data).__name__}")


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


def build_optimizer(name: str, params: List[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """``"adam"`` (the reference), ``"adamw"`` or ``"sgd"`` (momentum 0.9) over ``params``."""
    if not params:
        raise ValueError("the model has no trainable parameters")
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


class Trainer:
    """Train a detector in strong, weak or joint mode, with checkpoints, exact resume, AMP and DDP.

    Parameters
    ----------
    model : a detector honouring the contract of :func:`wsbus.models.build_detector`: in training mode
        ``model(images, targets)`` returns a dict with the keys of :data:`wsbus.models.LOSS_KEYS`; ``model.config``
        (the keyword arguments that rebuild it) is stored in checkpoints when present.
    strong, weak : the strong (boxes) and weak (image label only) training images, each a list of
        :class:`wsbus.data.Sample` (wrapped in ``DetectionDataset(kind="strong"|"weak")`` with ``transforms``) or a
        map-style dataset whose ``__getitem__`` takes ``(index, aug_seed)``. Weak samples may keep their (hidden)
        boxes; the ``weak`` kind drops them.
    alpha : weight of ``L_ws`` in joint mode: a float, a callable ``step -> float`` or a name understood by
        :func:`wsbus.schedules.as_schedule` (``"gradual"`` spans ``steps``); default ``constant(0.5)``.
    device : ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default: the model's device. Under ``torchrun`` a bare
        ``"cuda"`` means ``cuda:<LOCAL_RANK>``.
    out_dir : where ``last.pt``, ``log.csv``, ``train.log`` and TensorBoard events (``tb/``) go; None keeps
        everything in memory (no checkpoints).
    transforms : augmentation applied when ``strong``/``weak`` are lists of samples; default
        :func:`wsbus.data.train_transforms`, None for none.
    progress, tensorboard : show a tqdm bar / write TensorBoard events (rank 0 only).
    callbacks : callables ``f(trainer, record)`` run after every step (after any checkpoint of that step).
    hooks : more :class:`wsbus.engine.hooks.Hook` objects (e.g. an :class:`wsbus.engine.EMATeacher`), run after the
        logging hooks and before the checkpointer, so that their state at a checkpoint is that step's.
    metadata : extra plain data stored under ``checkpoint["config"]["metadata"]`` (the CLI stores the data spec
        and the split there).
    **settings : the fields of :class:`wsbus.engine.TrainerConfig`: ``mode`` (``"strong"`` needs ``strong``,
        ``"weak"`` needs ``weak``, ``"joint"`` both), ``mixing`` (``"combined"`` | ``"alternating"``, joint only),
        ``batch_strong`` / ``batch_weak`` (per-rank images per step from each stream; reference 1 + 2), ``lr``,
        ``weight_decay``, ``optimizer`` (``"adam"`` reference, ``"adamw"``, ``"sgd"``), ``lr_schedule``
        (``"constant"``, the reference, or ``"cosine"`` down to ``lr_floor * lr``), ``steps`` (reference
        60 000; ``fit(steps=...)`` overrides it), ``seed`` (names every random draw; reference 3), ``amp`` and
        ``amp_dtype`` (``torch.autocast``; bfloat16 on CPU, float16 with a ``GradScaler`` on CUDA by default),
        ``clip_grad_norm``, ``checkpoint_every``, ``keep_every`` (also keep ``step_XXXXXX.pt`` copies),
        ``log_every`` (progress bar and TensorBoard; ``log.csv`` gets every step), ``num_workers`` (DataLoader
        workers; the batches do not depend on it), ``history_tail`` (records a checkpoint keeps).

    Taught in ``book/06_joint_training.md``.
    """

    def __init__(self, model: nn.Module, strong: Any = None, weak: Any = None, *, alpha: Any = constant(0.5),
                 device: Union[str, torch.device, None] = None, out_dir: Union[str, os.PathLike, None] = None,
                 transforms: Any = _DEFAULT, progress: bool = True, tensorboard: bool = True,
                 callbacks: Sequence[Callable[["Trainer", Dict[str, Any]], None]] = (), hooks: Sequence[Hook] = (),
                 metadata: Optional[Mapping[str, Any]] = None, **settings: Any) -> None:
        for old, new in (("n_strong", "batch_strong"), ("n_weak", "batch_weak")):  # the names before wsbus 0.2
            if old in settings:
                warnings.warn(f"Trainer({old}=...) is now {new}=... (images per step; n_strong counts boxed images "
                              f"everywhere else)", DeprecationWarning, stacklevel=2)
                settings.setdefault(new, settings.pop(old))
        self.config = cfg = TrainerConfig(**settings)
        uses = {"strong": cfg.mode in ("strong", "joint"), "weak": cfg.mode in ("weak", "joint")}
        for name, data in (("strong", strong), ("weak", weak)):
            if uses[name] and data is None:
                raise ValueError(f"mode {cfg.mode!r} needs {name} ({'boxed' if name == 'strong' else 'image-label'}) "
                                 f"training images")
            if data is not None and not uses[name]:
                warnings.warn(f"mode {cfg.mode!r} does not use the {len(data)} {name} images passed to the Trainer"
                              + (" (the weak-only baseline takes every training image as weak: pass them in "
                                 "`weak`)" if cfg.mode == "weak" else ""), stacklevel=2)
        self.alpha = (as_schedule(alpha, total_steps=max(1, cfg.steps))
                      if isinstance(alpha, str) and alpha.strip().lower() == "gradual" else as_schedule(alpha))
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.metadata = dict(metadata or {})
        check_plain(self.metadata, "metadata")

        # Device and process group (under torchrun).
        if device is None:
            p = next(iter(model.parameters()), None)
            device = p.device if p is not None else "cpu"
        self.dist, self.device = init_distributed(device)
        self.model = model.to(self.device)
        self.model_config = dict(getattr(model, "config", None) or {})
        check_plain(self.model_config, "model.config")
        self.net = self._wrap(self.model)

        self.datasets: Dict[str, Dataset] = {
            name: _as_dataset(data, name, transforms, derive_seed(cfg.seed, name, "data"))
            for name, data in (("strong", strong), ("weak", weak)) if uses[name]}
        self.batch_sizes = {"strong": cfg.batch_strong, "weak": cfg.batch_weak}
        self.amp_dtype = amp_dtype_of(cfg, self.device)
        self.optimizer = build_optimizer(cfg.optimizer, [p for p in self.model.parameters() if p.requires_grad],
                                         cfg.lr, cfg.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.step = 0
        self.max_step = cfg.steps
        self.history = History()
        self.last_checkpoint: Optional[Path] = None
        self.last_checkpoint_step: Optional[int] = None
        # Which weak images (dataset indices) the MIL loss reached with a non-zero weight, and how often.
        self.mil_reached: set = set()
        self.mil_image_steps = 0
        self.hooks: List[Hook] = [CSVLogger()]
        if tensorboard:
            self.hooks.append(TensorBoardLogger(cfg.log_every))
        if progress:
            self.hooks.append(ProgressBar(cfg.log_every))
        # Hooks with state (a teacher) update before the checkpoint of a step is written; callbacks run after it.
        self.hooks += [*hooks, PeriodicCheckpointer(cfg.checkpoint_every, cfg.keep_every)]
        self.hooks += [CallbackHook(fn) for fn in callbacks]
        for hook in self.hooks:
            hook.attach(self)

    def _wrap(self, model: nn.Module) -> nn.Module:
        if not self.dist.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        # Weak-only (and strong-only) steps leave parameters without gradients (the RPN gets none from L_ws):
        # find_unused_parameters lets DDP's reducer skip them instead of waiting forever.
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                       find_unused_parameters=True)

    # -- what the run is ---------------------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        """True on the process that writes checkpoints and logs (rank 0)."""
        return self.dist.is_main

    @property
    def checkpoint_path(self) -> Optional[Path]:
        """``out_dir/last.pt`` (None without ``out_dir``)."""
        return self.out_dir / "last.pt" if self.out_dir is not None else None

    def settings(self) -> Dict[str, Any]:
        """The run's settings as plain data (stored in checkpoints, compared on resume): the
        :class:`~wsbus.engine.TrainerConfig`, the alpha schedule (:func:`wsbus.schedules.describe_schedule`), the
        resolved AMP dtype, the world size, the device and the stream sizes."""
        cfg = self.config
        return {**cfg.as_dict(),
                "alpha": describe_schedule(self.alpha) if cfg.mode == "joint" else None,
                "amp_dtype": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else None,
                "world_size": self.dist.world_size, "device": str(self.device),
                "n_strong_images": len(self.datasets["strong"]) if "strong" in self.datasets else 0,
                "n_weak_images": len(self.datasets["weak"]) if "weak" in self.datasets else 0}

    def stream_state(self, steps_done: Optional[int] = None) -> Dict[str, Any]:
        """Both stream positions after ``steps_done`` steps (default: now), with what identifies them."""
        cfg = self.config
        steps_done = self.step if steps_done is None else steps_done
        pos = stream_positions(steps_done, cfg.mode, cfg.mixing)
        out: Dict[str, Any] = {"mode": cfg.mode, "mixing": cfg.mixing, "seed": cfg.seed,
                               "world_size": self.dist.world_size}
        for name in ("strong", "weak"):
            ds = self.datasets.get(name)
            out[name] = {"position": pos[name], "n": len(ds) if ds is not None else 0,
                         "batch_size": self.batch_sizes[name],
                         "global_batch_size": self.batch_sizes[name] * self.dist.world_size}
        return out

    # -- state ---------------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue training exactly: model, optimiser, scaler, step, config, RNG states,
        stream positions and the history tail (tensors and plain containers only)."""
        return {
            "version": CHECKPOINT_VERSION, "wsbus_version": __version__,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "step": self.step,
            "config": {"model": self.model_config, "trainer": self.settings(), "metadata": self.metadata},
            "rng": get_rng_state(), "streams": self.stream_state(),
            "history": self.history.tail(self.config.history_tail),
            "hooks": {key: state for key, state in ((k, h.state_dict()) for k, h in self.hook_keys())
                      if state is not None},
            "mil": {"reached": sorted(self.mil_reached), "image_steps": self.mil_image_steps},
            "provenance": provenance(self.device),
        }

    def hook_keys(self) -> List[Tuple[str, Hook]]:
        """Each hook with the key its state has in a checkpoint: its class name, with ``#2``, ``#3``... for further
        hooks of the same class. Keys do not depend on position, so a resume may add or drop stateless hooks
        (``--no-progress``, ``--no-tensorboard``)."""
        seen: Dict[str, int] = {}
        out = []
        for hook in self.hooks:
            name = type(hook).__name__
            seen[name] = seen.get(name, 0) + 1
            out.append((name if seen[name] == 1 else f"{name}#{seen[name]}", hook))
        return out

    def load_state_dict(self, state: Mapping[str, Any], source: str = "state dict") -> None:
        """Restore :meth:`state_dict` output; raises :class:`wsbus.checkpoint.CheckpointError` naming ``source``
        and every way the checkpoint differs from this run (:func:`wsbus.engine.state.resume_problems`)."""
        step = int(state["step"])
        problems = resume_problems(state, self.settings(), self.model_config, self.stream_state(step))
        if problems:
            raise CheckpointError(f"cannot resume from {source}: it was written by a different run:\n  "
                                  + "\n  ".join(problems))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if state.get("rng"):
            set_rng_state(state["rng"])
        saved_hooks = {_hook_name(k): v for k, v in (state.get("hooks") or {}).items()}
        for key, hook in self.hook_keys():
            if hook.state_dict() is not None or key in saved_hooks:
                if key not in saved_hooks:
                    raise CheckpointError(f"cannot resume from {source}: it holds no state of the hook {key} "
                                          f"(it was written by a run without that hook)")
                hook.load_state_dict(saved_hooks[key])
        self.step = step
        self.history = History(state.get("history") or [])
        mil = state.get("mil") or {}
        self.mil_reached = set(int(i) for i in mil.get("reached", []))
        self.mil_image_steps = int(mil.get("image_steps", 0))

    def _save_at_interrupt(self, exc: BaseException, consistent: bool) -> None:
        """On an interrupt: write a checkpoint of the step reached (when the state is a step boundary's and it is
        newer than the last one), and note on the exception what was saved (``exc.checkpoint``, ``exc.step``)."""
        saved = self.last_checkpoint
        if consistent and self.out_dir is not None and self.step != self.last_checkpoint_step:
            for hook in self.hooks:
                hook.before_checkpoint(self)
            saved = self.save_checkpoint()
        exc.checkpoint, exc.step, exc.max_step = saved, (self.step if consistent else self.last_checkpoint_step), \
            self.max_step
        self.log(f"interrupted at step {self.step} of {self.max_step}; "
                 + (f"checkpoint {saved} (step {exc.step})" if saved is not None else "no checkpoint written"))

    def save_checkpoint(self) -> Optional[Path]:
        """Write ``out_dir/last.pt`` atomically (rank 0 only; also ``step_XXXXXX.pt`` every ``keep_every``)."""
        if self.out_dir is None:
            raise ValueError("save_checkpoint needs out_dir")
        path = self.checkpoint_path
        if self.is_main:
            state = self.state_dict()
            atomic_save(state, path)
            if self.config.keep_every and self.step % self.config.keep_every == 0:
                atomic_save(state, self.out_dir / f"step_{self.step:06d}.pt")
            self.log(f"checkpoint step {self.step} -> {path}")
        self.last_checkpoint, self.last_checkpoint_step = path, self.step
        return path

    def resume(self) -> None:
        """Load ``out_dir/last.pt`` when it exists (removing temporaries a killed write left); else start at 0."""
        path = self.checkpoint_path
        if path is None:
            raise ValueError("resume=True needs out_dir (the checkpoint is out_dir/last.pt)")
        if self.is_main:
            for p in remove_stale_temporaries(self.out_dir, ["last.pt", "step_*.pt"]):
                self.log(f"removed the stale temporary file {p.name} (a write interrupted earlier)")
        barrier()
        if not path.is_file():
            self.log(f"resume: no checkpoint at {path}, starting from step 0")
            return
        self.load_state_dict(load_checkpoint(path, map_location=self.device), source=f"checkpoint {str(path)!r}")
        self.last_checkpoint, self.last_checkpoint_step = path, self.step
        self.log(f"resumed from {path} at step {self.step}")

    def log(self, message: str) -> None:
        """Log ``message`` (logger ``wsbus.engine``) and append it to ``out_dir/train.log`` (rank 0)."""
        logger.info(message)
        if self.is_main and self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / "train.log", "a") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    # -- one step ---------------------------------------------------------------------------------------------
    def alpha_at(self, step: int) -> float:
        """The weight of ``L_ws`` at ``step``: 0 in strong mode, 1 in weak mode, ``alpha(step)`` in joint mode."""
        if self.config.mode != "joint":
            return 0.0 if self.config.mode == "strong" else 1.0
        a = float(self.alpha(step))
        if not math.isfinite(a) or a < 0:
            raise ValueError(f"alpha({step}) = {a!r}: the MIL weight must be finite and >= 0")
        return a

    def objective(self, terms: Mapping[str, torch.Tensor], streams: Sequence[str], alpha: float) -> torch.Tensor:
        """The optimised loss of a step whose batch holds ``streams``: ``L_s + alpha L_ws`` (both streams),
        ``L_s`` (strong only) or ``alpha L_ws`` (weak only)."""
        l_s = sum(terms[k] for k in STRONG_LOSS_KEYS)
        if len(streams) == 2:
            return l_s + alpha * terms["loss_mil"]
        return l_s if streams[0] == "strong" else alpha * terms["loss_mil"]

    def run_step(self, step: int, batches: Mapping[str, Tuple[list, list]]) -> Dict[str, Any]:
        """One optimisation step on ``{stream: (images, targets)}``; returns the step's :class:`History` record.

        Raises :class:`NonFiniteLossError` (before the optimiser step) when a loss is NaN or infinite.
        """
        t0 = time.perf_counter()
        images, targets = [], []
        for name, (im, tg) in batches.items():
            im, tg = _to_device(im, tg, self.device, name)
            images, targets = images + im, targets + tg
        alpha = self.alpha_at(step)
        self.net.train()
        with torch.random.fork_rng(devices=[self.device.index or 0] if self.device.type == "cuda" else []):
            torch.manual_seed(derive_seed(self.config.seed, "step", step, self.dist.rank))
            for hook in self.hooks:
                images, targets = hook.before_forward(self, images, targets)
            mil_images = self._count_mil(targets, alpha)
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=self.config.amp):
                terms = self._loss_terms(self.net(images, targets), step)
            total = self.objective(terms, tuple(batches), alpha)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
            report = self._reduced(terms, total, step, alpha)  # after the backward is queued: no GPU idles
            grad_norm = self._clip()
            if self.config.lr_schedule != "constant":
                for group in self.optimizer.param_groups:
                    group["lr"] = self.config.lr_at(step, self.max_step)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return {"step": step, "batch": "+".join(batches), "loss": report["loss"],
                **{k: report[k] for k in LOSS_KEYS}, "alpha": alpha, "lr": float(self.optimizer.param_groups[0]["lr"]),
                "grad_norm": grad_norm, "mil_images": mil_images, "time": time.perf_counter() - t0}

    def _count_mil(self, targets: Sequence[Mapping[str, Any]], alpha: float) -> int:
        """How many weak images of the step get a MIL loss of non-zero weight (recorded in :attr:`mil_reached`)."""
        if alpha <= 0:
            return 0
        n = 0
        for t in targets:
            if is_weak_target(t) and float(t.get("mil_weight", 1.0)) > 0:
                n += 1
                if "index" in t:
                    self.mil_reached.add(int(t["index"]))
        self.mil_image_steps += n
        return n

    def mil_summary(self) -> Dict[str, Any]:
        """What the MIL loss reached in this run: ``weak_images`` (the weak set's size, 0 without one),
        ``reached`` (how many distinct weak images got a MIL loss of non-zero weight at least once) and
        ``image_steps`` (weak image x step pairs with such a loss). ``reached == 0`` in a joint run means it was
        strong-only training in effect."""
        ds = self.datasets.get("weak")
        return {"weak_images": len(ds) if ds is not None else 0, "reached": len(self.mil_reached),
                "image_steps": self.mil_image_steps}

    def _loss_terms(self, loss_dict: Any, step: int) -> Dict[str, torch.Tensor]:
        if not isinstance(loss_dict, Mapping):
            raise TypeError(f"step {step}: the model's training forward returned {type(loss_dict).__name__}, "
                            f"expected a dict with keys {list(LOSS_KEYS)}")
        missing = [k for k in LOSS_KEYS if k not in loss_dict]
        if missing:
            raise KeyError(f"step {step}: the model's loss dict lacks {missing} (got {sorted(loss_dict)}); absent "
                           f"terms must be returned as zeros")
        return {k: loss_dict[k].float() for k in LOSS_KEYS}

    def _reduced(self, terms: Mapping[str, torch.Tensor], total: torch.Tensor, step: int,
                 alpha: float) -> Dict[str, float]:
        """One collective per step: rank-averaged values for the log, and a NaN/inf check every rank agrees on."""
        values = torch.stack([terms[k].detach() for k in LOSS_KEYS] + [total.detach()])
        values = all_reduce_mean(values.clone()).cpu()
        report = {k: float(v) for k, v in zip(LOSS_KEYS + ("loss",), values.tolist())}
        if not torch.isfinite(values).all():
            raise NonFiniteLossError(step, {**report, "alpha": alpha}, self.last_checkpoint,
                                     self.last_checkpoint_step)
        return report

    def _clip(self) -> float:
        if self.config.clip_grad_norm is None:
            return float("nan")
        self.scaler.unscale_(self.optimizer)
        return float(torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                                    self.config.clip_grad_norm))

    # -- the loop ---------------------------------------------------------------------------------------------
    def fit(self, steps: Optional[int] = None, resume: bool = False) -> History:
        """Train until ``steps`` steps (default: the config's ``steps``) have been done, calling the hooks.

        Parameters
        ----------
        steps : the total step count to reach (not additional steps); a resumed or repeated ``fit`` continues from
            the current step.
        resume : first load ``out_dir/last.pt`` when it exists (and check it belongs to this run); with no
            checkpoint yet the run starts from step 0, so ``resume=True`` is always safe to pass.

        Returns the :class:`History` of every step (after a resume: the checkpoint's history tail plus the new
        steps). Raises :class:`NonFiniteLossError` when a loss is NaN/inf; the step, the loss values and the last
        good checkpoint are in the message, and that checkpoint is left untouched.
        """
        cfg = self.config
        self.max_step = cfg.steps if steps is None else int(steps)
        if self.max_step < 0:
            raise ValueError(f"steps must be >= 0, got {self.max_step}")
        if resume:
            self.resume()
        if self.step >= self.max_step:
            return self.history
        if self.is_main and self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        ws = self.dist.world_size
        sizes = " + ".join(f"{self.batch_sizes[n]} {n}" for n in self.datasets)
        self.log(f"training mode={cfg.mode} mixing={cfg.mixing} steps {self.step}..{self.max_step} on {self.device}, "
                 f"world size {ws} (global batch = {ws} x ({sizes})), seed {cfg.seed}, images: "
                 + ", ".join(f"{len(ds)} {n}" for n, ds in self.datasets.items()))
        loaders = StreamLoaders(self.datasets, self.batch_sizes, mode=cfg.mode, mixing=cfg.mixing, seed=cfg.seed,
                                start=self.step, stop=self.max_step, rank=self.dist.rank, world_size=ws,
                                num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda")
        for hook in self.hooks:
            hook.before_train(self)
        consistent = True
        try:
            with signals_as_exceptions():
                for k in range(self.step, self.max_step):
                    # A SIGINT/SIGTERM arriving during the step is raised after it (a second one at once).
                    with deferred_interrupts():
                        consistent = False
                        try:
                            record = self.run_step(k, loaders.next_batches(k))
                        except NonFiniteLossError as exc:
                            self.log(str(exc))
                            raise
                        self.step = k + 1
                        self.history.append(record)
                        for hook in self.hooks:
                            hook.after_step(self, record)
                        consistent = True
        except KeyboardInterrupt as exc:  # Ctrl-C, or Interrupted (SIGINT/SIGTERM)
            self._save_at_interrupt(exc, consistent)
            raise
        finally:
            for hook in self.hooks:
                hook.after_train(self)
            del loaders
        self.log(f"finished at step {self.step}, last loss {self.history[-1]['loss']:.6g}")
        barrier()
        return self.history
