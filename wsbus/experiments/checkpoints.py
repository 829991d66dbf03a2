"""Working from a ``wsbus train`` checkpoint: its data split (:func:`checkpoint_split`) and self-training from it
(:func:`self_train_from_checkpoint`, the ``wsbus self-train`` command)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..checkpoint import atomic_write_json, atomic_write_text, load_checkpoint
from ..data import Sample
from ..data.sources import load_source
from ..distributed import resolve_device
from ..evaluate import results_table
from ..inference import load_detector
from ..models import DetectorConfig, WeakSemiFasterRCNN
from ..schedules import schedule_from_description
from ..self_training import SelfTrainingResult, self_train
from .data import load_described_samples

__all__ = ["checkpoint_split", "self_train_from_checkpoint"]

PathLike = Union[str, "os.PathLike[str]"]


def checkpoint_split(checkpoint: Mapping[str, Any], source: str, data: Optional[str] = None,
                     roles: Sequence[str] = ("strong", "weak", "test")) -> Tuple[str, Dict[str, List[Sample]]]:
    """The images of each split role a ``wsbus train`` checkpoint recorded (``config["metadata"]["split_ids"]``),
    reloaded from ``data`` (default: the checkpoint's data spec). Returns ``(spec, {role: samples})``.

    Raises ``ValueError`` naming ``source`` when the checkpoint records no split or no data spec, or when the data
    lack images of the split.
    """
    meta = dict((checkpoint.get("config") or {}).get("metadata") or {})
    split_ids = meta.get("split_ids") or {}
    if not all(k in split_ids for k in roles):
        raise ValueError(f"{source} records no {'/'.join(roles)} split (metadata 'split_ids'): it was not written by "
                         f"`wsbus train` or `wsbus experiment` (a shipped detector has no held-out split); evaluate it "
                         f"on other images with --data SOURCE --split all")
    spec = data or meta.get("data")
    if not spec:
        raise ValueError(f"{source} does not say which data it was trained on; pass the data")
    if meta.get("samples"):  # written by wsbus >= 0.2: how the run loaded its data (the phantom's knobs too)
        samples = load_described_samples(meta["samples"], data)
    else:
        samples = load_source(spec, size=int(meta.get("phantom_size", 128)), seed=0)
    by_id = {s.id: s for s in samples}
    sets = {}
    for role in roles:
        missing = [i for i in split_ids[role] if i not in by_id]
        if missing:
            raise ValueError(f"{len(missing)} {role} image(s) of {source} are not in {spec} (e.g. {missing[:3]}); is "
                             f"it the same data?")
        sets[role] = [by_id[i] for i in split_ids[role]]
    return spec, sets


def self_train_from_checkpoint(checkpoint: PathLike, out_dir: PathLike, *, data: Optional[str] = None,
                               fractions: Sequence[float] = (0.5, 0.75), steps: Optional[int] = None,
                               retrain: str = "scratch", alpha: Union[str, float, None] = None,
                               device: Union[str, torch.device, None] = None, seed: Optional[int] = None,
                               batch_size: int = 16, score_thresh: float = 0.0, n_boot: int = 1000,
                               progress: bool = True) -> SelfTrainingResult:
    """Self-train from a checkpoint of ``wsbus train``: its model, data spec and split, written to ``out_dir``.

    The checkpoint's model is the initial model; its strong / weak / test images are those of the checkpoint's
    split (:func:`checkpoint_split`). Each retraining uses the checkpoint's trainer settings (batch sizes, mixing,
    lr, weight decay, optimizer, seed and its exact alpha schedule) unless overridden.

    Parameters
    ----------
    checkpoint : ``DIR/last.pt`` of a ``wsbus train`` run (best a joint one, as in the paper).
    out_dir : receives ``results.json`` (``{"methods": [...], "pseudo_box_precision": ...}``), ``table_iv.md``,
        ``pseudo_labels.json`` and ``precision_vs_rank.png`` (when the weak images have hidden boxes).
    data : a ``--data`` spec; default the checkpoint's.
    fractions, retrain, batch_size, score_thresh, n_boot, progress : see :func:`wsbus.self_training.self_train`.
    steps : steps of each retraining; default the checkpoint's training length.
    alpha : MIL weight of the retrainings (a number or ``"gradual"`` over ``steps``); default the checkpoint's.
    device : default CUDA when available, else CPU.
    seed : Trainer seed; default the checkpoint's.

    Raises
    ------
    wsbus.checkpoint.CheckpointError
        when the file is not a wsbus checkpoint.
    ValueError
        when the checkpoint holds no split, the data lack images of the split, or its alpha cannot be rebuilt.
    """
    source = f"checkpoint {str(checkpoint)!r}"
    ckpt = load_checkpoint(checkpoint, map_location="cpu", require=("model", "config"))
    dev = resolve_device(device)
    initial = load_detector(ckpt, device=dev).train()
    trainer_cfg = dict((ckpt["config"] or {}).get("trainer") or {})
    spec, sets = checkpoint_split(ckpt, source, data)
    blind = [s.id for s in sets["test"] if not s.is_strong]
    if blind:
        raise ValueError(f"{len(blind)} test image(s) of {spec} have no boxes (e.g. {blind[:3]}); CorLoc needs boxes")
    kwargs: Dict[str, Any] = {k: trainer_cfg[k] for k in ("batch_strong", "batch_weak", "lr", "weight_decay", "optimizer",
                                                         "mixing") if trainer_cfg.get(k) is not None}
    if alpha is not None:
        kwargs["alpha"] = alpha
    elif trainer_cfg.get("alpha") is not None:
        kwargs["alpha"] = schedule_from_description(trainer_cfg["alpha"])
    n_steps = int(steps if steps is not None else trainer_cfg.get("steps") or ckpt.get("step") or 0)
    if n_steps < 1:
        raise ValueError(f"cannot tell how long to retrain from {source}; pass steps")
    config = DetectorConfig.from_dict(initial.config)
    result = self_train(sets["strong"], sets["weak"], sets["test"],
                        model_factory=lambda: WeakSemiFasterRCNN.from_config(config), initial=initial,
                        fractions=fractions, steps=n_steps, retrain=retrain, device=dev, batch_size=batch_size,
                        score_thresh=score_thresh, seed=int(seed if seed is not None else trainer_cfg.get("seed", 3)),
                        n_boot=n_boot, trainer_kwargs=kwargs, progress=progress)
    _write(result, Path(out_dir), fractions, {"checkpoint": str(checkpoint), "data": spec, "retrain": retrain,
                                              "steps": n_steps, "initial_mode": trainer_cfg.get("mode")},
           [s.id for s in sets["weak"]])
    return result


def _write(result: SelfTrainingResult, out: Path, fractions: Sequence[float], about: Mapping[str, Any],
           weak_ids: List[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary = {**result.to_json(fractions), **about}
    pseudo = [None if p is None else {"id": p.id, "box": [float(v) for v in p.box], "label": p.label,
                                      "score": p.score} for p in result.pseudo]
    atomic_write_json(summary, out / "results.json")
    atomic_write_json({"weak": weak_ids, "pseudo": pseudo}, out / "pseudo_labels.json")
    atomic_write_text(results_table(result.methods, kind="IV"), out / "table_iv.md")
    if result.precision is not None and result.precision.n_labelled:
        result.precision.figure(fractions).savefig(out / "precision_vs_rank.png", dpi=110)
    for name, h in result.histories.items():
        h.to_csv(out / f"log_{name.replace('%', 'pct')}.csv")
