"""The pretrained-backbone file: what it holds, how to read it back, how a detector gets it, and which images it saw.

File format (``torch.save`` of plain data, loadable with ``torch.load(weights_only=True)``)::

    {"kind": "wsbus.pretrained_backbone", "version": 1,
     "backbone": state_dict of the backbone alone (the keys of ``model.backbone.state_dict()``),
     "config": PretrainConfig.as_dict() + {"out_channels", "stride", "view_augmentation"},
     "images": {"n": N, "ids_sha256": sha256 of the sorted ids joined by newlines,
                "content_sha256": sha256 of the images' shapes and pixels in id order, "ids": sorted ids},
     "history": [{"step", "loss", "lr"}, ...] (one per step), "step": N,
     "provenance": {"wsbus", "torch", "torchvision", "device"}}

While a run is in progress its resumable state sits beside the file (:func:`resume_path`) with ``"kind":
"wsbus.pretrain_state"``; it is removed once the file is written.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple, Union

import torch
from torch import nn

from ..checkpoint import CheckpointError, load_checkpoint
from ..data.formats import DataError, Sample

__all__ = ["BACKBONE_FILE_KIND", "STATE_FILE_KIND", "FILE_VERSION", "resume_path", "image_record",
           "image_differences", "load_pretrained", "load_backbone", "load_resume_state", "init_backbone", "read_ids",
           "exclude_images"]

#: ``"kind"`` of a finished pretrained-backbone file (what ``--init`` takes).
BACKBONE_FILE_KIND = "wsbus.pretrained_backbone"
#: ``"kind"`` of the resumable state of a run in progress.
STATE_FILE_KIND = "wsbus.pretrain_state"
FILE_VERSION = 1

PathLike = Union[str, Path]


def resume_path(out: PathLike) -> Path:
    """Where the run writing ``out`` keeps its resumable state: ``NAME.resume.pt`` beside ``NAME.pt``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.resume{out.suffix or '.pt'}")


def image_record(samples: Sequence[Sample]) -> Dict[str, Any]:
    """``{"n", "ids_sha256", "content_sha256", "ids"}`` of the images a run uses, so a caller can prove which images
    were seen (e.g. none of a test fold) and a resumed run can check it has the same ones. Ids must be unique."""
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise ValueError(f"pretraining images need unique ids; repeated: {dup}")
    content = hashlib.sha256()
    for s in sorted(samples, key=lambda s: s.id):
        content.update(f"{s.id}\x1f{s.image.shape}\x1f".encode())
        content.update(memoryview(s.image.tobytes()))
    order = sorted(ids)
    return {"n": len(ids), "ids_sha256": hashlib.sha256("\n".join(order).encode()).hexdigest(),
            "content_sha256": content.hexdigest(), "ids": order}


def image_differences(stored: Mapping[str, Any], record: Mapping[str, Any]) -> List[str]:
    """How the images of a stored run differ from ``record`` (empty: the same)."""
    if stored.get("ids_sha256") != record["ids_sha256"]:
        theirs = set(stored.get("ids") or [])
        mine = set(record["ids"])
        return [f"images: {stored.get('n')} there, {record['n']} here ({len(theirs - mine)} only there, "
                f"{len(mine - theirs)} only here)"]
    if stored.get("content_sha256") != record["content_sha256"]:
        return [f"images: the same {record['n']} ids with other pixels"]
    return []


def _load(path: PathLike) -> Dict[str, Any]:
    """:func:`wsbus.checkpoint.load_checkpoint` with its error cut to one line (torch's own can run to ten)."""
    try:
        return load_checkpoint(path, require=())
    except CheckpointError as exc:
        lines = str(exc).splitlines()
        raise CheckpointError(lines[0] + (" ..." if len(lines) > 1 else "")) from None


def load_pretrained(path: PathLike) -> Dict[str, Any]:
    """The whole pretrained-backbone file (the format in the module's docstring), checked.

    Raises
    ------
    CheckpointError
        naming the file, in one line, when it is missing, unreadable, a run's unfinished state, or not a pretrained
        backbone (e.g. a ``wsbus train`` checkpoint).
    """
    ckpt = _load(path)
    kind = ckpt.get("kind")
    if kind == STATE_FILE_KIND:
        raise CheckpointError(f"{str(path)!r} is the resumable state of an unfinished pretraining; rerun the same "
                              f"`wsbus pretrain` command to finish it and use the file it writes")
    if kind != BACKBONE_FILE_KIND:
        raise CheckpointError(f"{str(path)!r} is not a pretrained backbone written by `wsbus pretrain` (its kind is "
                              f"{kind!r}, keys {sorted(map(str, ckpt))[:6]})")
    for key, typ in (("backbone", dict), ("config", dict), ("images", dict), ("step", int)):
        if not isinstance(ckpt.get(key), typ):
            raise CheckpointError(f"{str(path)!r} lacks its {key!r} (a damaged pretrained-backbone file)")
    return ckpt


def load_backbone(path: PathLike) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """``(state_dict, config)`` of a pretrained-backbone file written by :func:`wsbus.pretrain.pretrain_backbone`:
    the backbone's weights (the keys of ``model.backbone.state_dict()``) and the pretraining's settings.

    Raises
    ------
    CheckpointError
        as :func:`load_pretrained`.
    """
    ckpt = load_pretrained(path)
    return ckpt["backbone"], ckpt["config"]


def load_resume_state(path: PathLike) -> Dict[str, Any]:
    """The resumable state of an unfinished run (:func:`resume_path`); ``CheckpointError`` (one line) when the file
    is unreadable or not such a state."""
    state = _load(path)
    if state.get("kind") != STATE_FILE_KIND:
        raise CheckpointError(f"{str(path)!r} is not the resumable state of a pretraining (kind "
                              f"{state.get('kind')!r}); remove it or restart")
    missing = [k for k in ("config", "images", "step", "objective", "optimizer", "history") if k not in state]
    if missing:
        raise CheckpointError(f"{str(path)!r} lacks {missing} (a damaged pretraining state); remove it or restart")
    return state


def _state_problems(module: nn.Module, state: Mapping[str, torch.Tensor]) -> List[str]:
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    out = []
    for what, items in (("missing", missing), ("unexpected", extra), ("other shapes", shapes)):
        if items:
            out.append(f"{len(items)} {what} ({', '.join(items[:2])}{', ...' if len(items) > 2 else ''})")
    return out


def init_backbone(model: nn.Module, path: PathLike) -> Dict[str, Any]:
    """Load a pretrained backbone into ``model.backbone`` (a :class:`wsbus.models.WeakSemiFasterRCNN`, or any
    module with a ``backbone``); nothing else of the model changes. Returns the pretraining's config.

    Refuses, with one line naming the file, a file that is not a pretrained backbone, a backbone pretrained for
    another architecture (``model.config["backbone"]``, or parameter names and shapes) and a detector whose input
    normalisation differs from the one the backbone was pretrained under.

    Raises
    ------
    CheckpointError

    Taught in ``book/10_autoencoder_pretraining.md``.
    """
    state, config = load_backbone(path)
    mine = dict(getattr(model, "config", None) or {})
    where = str(path)
    if mine.get("backbone") not in (None, config.get("backbone")):
        raise CheckpointError(f"{where!r} holds a {config.get('backbone')!r} backbone; this detector's is "
                              f"{mine['backbone']!r}")
    transform = getattr(model, "transform", None)
    for name in ("image_mean", "image_std"):
        have = getattr(transform, name, None)
        want = config.get(name)
        if have is not None and want is not None and [float(x) for x in have] != [float(x) for x in want]:
            raise CheckpointError(f"{where!r} was pretrained with {name} {list(want)}; this detector normalises "
                                  f"with {list(have)}")
    problems = _state_problems(model.backbone, state)
    if problems:
        raise CheckpointError(f"{where!r} does not fit this detector's backbone: {'; '.join(problems)}")
    model.backbone.load_state_dict(state)
    return config


def read_ids(path: PathLike) -> List[str]:
    """Image ids from a file: JSON (a list of ids, or an object whose ``"test"`` and/or ``"val"`` lists are taken, as
    in ``wsbus train``'s ``split.json``) or text (one id per line; blank lines and ``#`` comments skipped).

    Raises
    ------
    FileNotFoundError, DataError
        naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"id file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".json" or text.lstrip()[:1] in ("[", "{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"id file {str(path)!r} is not valid JSON: {exc}") from None
        if isinstance(data, dict):
            lists = [data[k] for k in ("test", "val") if k in data]
            if not lists:
                raise DataError(f"id file {str(path)!r}: a JSON object needs a 'test' or 'val' list of ids")
            data = [x for lst in lists for x in (lst if isinstance(lst, list) else [lst])]
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise DataError(f"id file {str(path)!r}: expected a JSON list of id strings")
        return list(data)
    return [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]


def exclude_images(samples: Sequence[Sample], ids: Iterable[str], where: str = "the excluded ids") -> List[Sample]:
    """``samples`` without those whose id is in ``ids``. Every id must name a sample: an unknown id is an error
    (``where`` names its source), so that ids in another form (a file name instead of an id) cannot silently
    exclude nothing."""
    wanted = set(ids)
    known = {s.id for s in samples}
    unknown = sorted(wanted - known)
    if unknown:
        raise ValueError(f"{where}: {len(unknown)} of {len(wanted)} id(s) are not in the data (e.g. {unknown[0]!r})")
    return [s for s in samples if s.id not in wanted]
