"""The pretraining loop: :func:`pretrain_backbone`, resumable, cached, and refusing to mix runs.

A run is a function of its :class:`~wsbus.pretrain.PretrainConfig` and its images: the initial weights come from
``seed``, step ``k``'s images from ``(seed, epoch)`` (:func:`~wsbus.pretrain.views.batch_indices`), its views and
masks from ``(seed, k, ...)``, and everything else random in the step runs under a seed derived from ``(seed, k)``.
So the state to resume is the weights, the optimiser and the step; a resumed run ends, on the CPU, with the same
weights bit for bit as an uninterrupted one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from ..checkpoint import CheckpointError, atomic_save, remove_stale_temporaries
from ..data.formats import Sample
from ..distributed import resolve_device
from ..engine import NonFiniteLossError
from ..models.backbones import build_backbone
from ..seeding import derive_seed, seeded
from .config import PretrainConfig
from .files import (BACKBONE_FILE_KIND, FILE_VERSION, STATE_FILE_KIND, image_differences, image_record,
                    load_pretrained, load_resume_state, resume_path)
from .objectives import build_objective
from .views import VIEWS, StepViews, batch_indices, prepare_images, view_batches

__all__ = ["PretrainResult", "pretrain_backbone", "build_pretrain_backbone"]

PathLike = Union[str, Path]


@dataclass
class PretrainResult:
    """What :func:`pretrain_backbone` returns.

    Attributes
    ----------
    path : the pretrained-backbone file written (or found).
    backbone : the pretrained backbone module (eval mode), on the run's device.
    config : the stored config (:class:`PretrainConfig` fields + ``out_channels``, ``stride``,
        ``view_augmentation``).
    images : the image record (``n``, ``ids_sha256``, ``content_sha256``, ``ids``).
    history : one ``{"step", "loss", "lr"}`` per step.
    step : steps trained.
    cached : True when the file was already there, made by the same settings and images, and nothing was trained.
    resumed_from : the step an interrupted run continued from (0: from scratch).

    Taught in ``book/10_autoencoder_pretraining.md``.
    """

    path: Path
    backbone: nn.Module
    config: Dict[str, Any]
    images: Dict[str, Any]
    history: List[Dict[str, float]] = field(default_factory=list)
    step: int = 0
    cached: bool = False
    resumed_from: int = 0


def build_pretrain_backbone(config: PretrainConfig) -> nn.Module:
    """The backbone a config pretrains, freshly initialised (no weights frozen).

    Taught in ``book/10_autoencoder_pretraining.md``.
    """
    return build_backbone(config.backbone, pretrained=False, frozen_stages=0, norm=config.norm)


def _provenance(device: torch.device) -> Dict[str, str]:
    import torchvision

    from .. import __version__
    return {"wsbus": str(__version__), "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "device": str(device)}


class _Run:
    """One pretraining run's moving parts: the objective (backbone + heads), the optimiser, the step, the history."""

    def __init__(self, samples: Sequence[Sample], config: PretrainConfig, record: Dict[str, Any],
                 device: torch.device) -> None:
        self.config, self.record, self.device = config, record, device
        self.images = prepare_images(samples, config.size, config.max_size)
        with seeded(config.seed):
            self.objective = build_objective(build_pretrain_backbone(config), config).to(device)
        params = [p for p in self.objective.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.views = StepViews(self.images, VIEWS[config.views].pipeline(config.crop), self.objective.n_views,
                               config.batch_size, config.seed, config.steps)
        self.step = 0
        self.history: List[Dict[str, float]] = []
        self.updating = False

    def lr_at(self, k: int) -> float:
        """Linear warm-up over ``warmup * steps`` steps, then a cosine from ``lr`` to 0."""
        c = self.config
        warm = int(round(c.warmup * c.steps))
        if k < warm:
            return c.lr * (k + 1) / warm
        return c.lr * 0.5 * (1.0 + math.cos(math.pi * (k - warm) / max(1, c.steps - warm)))

    def train_step(self, k: int, views: torch.Tensor) -> float:
        """One optimiser step on the views of step ``k``; returns its loss."""
        c = self.config
        views = views.to(self.device, non_blocking=True)
        lr = self.lr_at(k)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.objective.train()
        self.optimizer.zero_grad(set_to_none=True)
        with seeded(derive_seed(c.seed, "step", k), self.device), \
                torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=c.amp):
            out = self.objective(views, k)
        loss = float(out["loss"].detach())
        if not math.isfinite(loss):
            raise NonFiniteLossError(k, {k2: float(v.detach()) for k2, v in out.items()}, None, None)
        out["loss"].backward()
        self.updating = True           # from here to the end of the step the state is half-updated
        self.optimizer.step()
        self.objective.after_step(k)
        self.history.append({"step": k, "loss": loss, "lr": lr})
        self.step = k + 1
        self.updating = False
        return loss

    def state_dict(self) -> Dict[str, Any]:
        return {"kind": STATE_FILE_KIND, "version": FILE_VERSION, "config": self.config.as_dict(),
                "images": self.record, "step": self.step, "objective": self.objective.state_dict(),
                "optimizer": self.optimizer.state_dict(), "history": list(self.history)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.history = int(state["step"]), list(state["history"])

    def stored_config(self) -> Dict[str, Any]:
        return {**self.config.as_dict(), "out_channels": self.objective.out_channels,
                "stride": self.objective.stride, "view_augmentation": VIEWS[self.config.views].as_dict()}

    def payload(self) -> Dict[str, Any]:
        """The finished file's content (the backbone alone, on the CPU)."""
        backbone = {k: v.detach().cpu().clone() for k, v in self.objective.backbone.state_dict().items()}
        return {"kind": BACKBONE_FILE_KIND, "version": FILE_VERSION, "backbone": backbone,
                "config": self.stored_config(), "images": self.record, "history": list(self.history),
                "step": self.step, "provenance": _provenance(self.device)}


def _mismatch(stored: Dict[str, Any], config: PretrainConfig, record: Dict[str, Any]) -> List[str]:
    return config.differences({k: v for k, v in (stored.get("config") or {}).items()
                               if k in config.as_dict()}) + image_differences(stored.get("images") or {}, record)


def _refuse(path: Path, problems: List[str]) -> ValueError:
    return ValueError(f"{str(path)!r} belongs to a pretraining with other settings or images ({'; '.join(problems)}); "
                      f"rerun with the same arguments to continue it, use another output file, or start afresh "
                      f"(resume=False, --restart)")


def _finished(out: Path, config: PretrainConfig, record: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The finished file at ``out`` when it was made by this config and these images; refuses any other file."""
    if not out.exists():
        return None
    try:
        stored = load_pretrained(out)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; it would be overwritten: remove it, use another output file, or start afresh "
                              f"(resume=False, --restart)") from None
    problems = _mismatch(stored, config, record)
    if problems:
        raise _refuse(out, problems)
    return stored


def _resume_state(state_file: Path, config: PretrainConfig, record: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    if not state_file.exists():
        return None
    state = load_resume_state(state_file)
    problems = _mismatch(state, config, record)
    if problems:
        raise _refuse(state_file, problems)
    return state


def _cached_result(out: Path, stored: Dict[str, Any], config: PretrainConfig, device: torch.device) -> PretrainResult:
    backbone = build_pretrain_backbone(config)
    backbone.load_state_dict(stored["backbone"])
    return PretrainResult(out, backbone.to(device).eval(), stored["config"], stored["images"],
                          list(stored.get("history") or []), int(stored["step"]), cached=True)


def _loop(run: _Run, state_file: Path, checkpoint_every: int, progress: bool, workers: int) -> None:
    from tqdm.auto import tqdm

    saved = run.step
    bar = tqdm(total=run.config.steps, initial=run.step, disable=not progress, desc=f"pretrain {run.config.method}",
               dynamic_ncols=True)
    try:
        for k, views in view_batches(run.views, run.step, workers):
            loss = run.train_step(k, views)
            bar.update(1)
            if k % 10 == 0 or k + 1 == run.config.steps:
                bar.set_postfix(loss=f"{loss:.4f}")
            if run.step % checkpoint_every == 0 and run.step < run.config.steps:
                atomic_save(run.state_dict(), state_file)
                saved = run.step
    except KeyboardInterrupt:
        # An interrupt inside the optimiser/EMA update would save half a step: keep the last checkpoint then.
        if not run.updating and run.step > saved:
            atomic_save(run.state_dict(), state_file)
        raise
    except NonFiniteLossError as exc:   # nothing of the bad step was applied; name the state a rerun would resume
        kept = state_file.exists()
        raise NonFiniteLossError(exc.step, exc.losses, state_file if kept else None, saved if kept else None) \
            from None
    finally:
        bar.close()


def pretrain_backbone(samples: Sequence[Sample], out: PathLike, *, config: Optional[PretrainConfig] = None,
                      device: Union[str, torch.device, None] = None, resume: bool = True, progress: bool = True,
                      checkpoint_every: int = 100, workers: int = 0, **settings: Any) -> PretrainResult:
    """Pretrain a detector backbone without labels on ``samples`` (only ``Sample.image`` is read) and write it to
    ``out`` (atomically; the file format is in :mod:`wsbus.pretrain.files`).

    Parameters
    ----------
    samples : the images, e.g. one fold's training images (never its test images: ``out`` records which were used).
    out : the pretrained-backbone file; the run's resumable state sits beside it (:func:`resume_path`) while it runs.
    config : a :class:`PretrainConfig`; or give its fields as keyword ``settings`` (``method="simclr"``,
        ``backbone="tiny"``, ``size=160``, ``steps=1500``, ``batch_size=64``, ``lr=1e-3``, ``seed=0``, ...); an
        unknown one is a ``TypeError``.
    device : ``"cpu"``, ``"cuda"``, ... (default: CUDA when available).
    resume : True (default): a finished ``out`` of the same settings and images is returned as it is (``cached``),
        an interrupted run continues from its state, and a file or state of other settings or images is refused
        with a ``ValueError`` naming what differs. False: start afresh, overwriting both.
    progress : a tqdm bar. checkpoint_every : steps between saves of the resumable state (and one on an interrupt).
    workers : DataLoader processes making the views a few steps ahead of the model (0: in this process); the views,
        and so the weights, are the same either way.

    Returns
    -------
    PretrainResult

    Taught in ``book/10_autoencoder_pretraining.md``.
    """
    if config is not None and settings:
        raise TypeError(f"pass either config or settings, not both (got {sorted(settings)})")
    config = config if config is not None else PretrainConfig(**settings)
    if int(checkpoint_every) < 1:
        raise ValueError(f"checkpoint_every must be a positive integer, got {checkpoint_every!r}")
    samples = list(samples)
    if not samples:
        raise ValueError("no images to pretrain on")
    record = image_record(samples)
    batch_indices(0, config.batch_size, len(samples), config.seed)      # refuses a batch larger than the data
    device = resolve_device(device)
    out, state_file = Path(out), resume_path(out)
    remove_stale_temporaries(out.parent, (out.name, state_file.name))
    if resume:
        stored = _finished(out, config, record)
        if stored is not None:
            return _cached_result(out, stored, config, device)
    state = _resume_state(state_file, config, record) if resume else None
    if not resume:
        state_file.unlink(missing_ok=True)
    run = _Run(samples, config, record, device)
    resumed_from = 0
    if state is not None:
        run.load_state_dict(state)
        resumed_from = run.step
    _loop(run, state_file, int(checkpoint_every), progress, int(workers))
    atomic_save(run.payload(), out)
    state_file.unlink(missing_ok=True)
    return PretrainResult(out, run.objective.backbone.eval(), run.stored_config(), record, run.history, run.step,
                          cached=False, resumed_from=resumed_from)
