"""A run's state as plain data, and the checks that a checkpoint belongs to the run that resumes from it.

A checkpoint (``out_dir/last.pt``, written atomically by :func:`wsbus.checkpoint.atomic_save`) holds the model,
optimiser and grad-scaler states, the step, the run's configuration (model, trainer, metadata), every RNG state,
both stream positions and the history tail: tensors and plain containers only, so it loads with
``torch.load(weights_only=True)``. A resume with other settings, another model or other data is refused, naming
every mismatch, rather than silently continuing a different experiment.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping

import torch

__all__ = ["RESUME_KEYS", "check_plain", "resume_problems"]

#: Trainer settings that must agree between a checkpoint and the run resuming from it.
RESUME_KEYS = ("mode", "mixing", "batch_strong", "batch_weak", "seed", "optimizer", "lr", "weight_decay", "lr_schedule",
               "lr_floor", "amp", "amp_dtype", "world_size", "alpha", "n_strong_images", "n_weak_images")


def check_plain(obj: Any, where: str) -> None:
    """Raise ``TypeError`` naming ``where`` when ``obj`` would not load with ``torch.load(weights_only=True)``."""
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor, torch.dtype, torch.device)):
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}; use str or int keys")
            check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(f"{where} is a {type(obj).__name__} ({obj!r}); checkpoints hold only tensors, numbers, "
                    f"strings and lists/dicts of them")


def resume_problems(state: Mapping[str, Any], trainer_config: Mapping[str, Any], model_config: Mapping[str, Any],
                    expected_streams: Mapping[str, Mapping[str, Any]]) -> List[str]:
    """Every way a checkpoint ``state`` differs from the run that wants to resume from it (empty: compatible).

    Parameters
    ----------
    state : the checkpoint.
    trainer_config : the resuming run's ``Trainer.config()``; the keys of :data:`RESUME_KEYS` are compared.
    model_config : the resuming model's ``config`` (every key but ``pretrained`` is compared).
    expected_streams : the stream state the run would have at the checkpoint's step (``position``, ``n`` and
        ``global_batch_size`` per stream are compared).
    """
    saved_config = state.get("config") or {}
    saved = dict(saved_config.get("trainer") or {})
    for legacy, key in (("n_strong", "batch_strong"), ("n_weak", "batch_weak")):  # checkpoints before wsbus 0.2
        if legacy in saved and key not in saved:
            saved[key] = saved.pop(legacy)
    problems = [f"{k}: checkpoint {saved[k]!r}, this run {trainer_config[k]!r}"
                for k in RESUME_KEYS if k in saved and saved[k] != trainer_config[k]]
    saved_model: Dict[str, Any] = saved_config.get("model") or {}
    if saved_model and model_config:
        problems += [f"model {k}: checkpoint {saved_model.get(k)!r}, this model {model_config.get(k)!r}"
                     for k in sorted(set(saved_model) | set(model_config), key=str)
                     if k != "pretrained" and saved_model.get(k) != model_config.get(k)]
    saved_streams = state.get("streams") or {}
    step = int(state["step"])
    for name in ("strong", "weak"):
        got = saved_streams.get(name)
        if got is None:
            problems.append(f"streams: the checkpoint lacks the {name} stream position")
            continue
        for key in ("position", "n", "global_batch_size"):
            if key in got and got[key] != expected_streams[name][key]:
                problems.append(f"{name} stream {key}: checkpoint {got[key]}, expected {expected_streams[name][key]} "
                                f"at step {step}")
    return problems
