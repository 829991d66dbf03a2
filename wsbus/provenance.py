"""Which code made a result: :func:`provenance` (the wsbus version and git commit, torch and torchvision, the
device), recorded in every checkpoint, ``config.json``, ``result.pt`` and ``results.json``.

A stored result is only comparable with a new one when the same code made it; :func:`same_code` is the test a
resumed experiment applies before it reuses a method's stored result.
"""
from __future__ import annotations

import platform
from typing import Any, Dict, Mapping, Optional, Union

import torch
import torchvision

from . import CODE_STATE, __version__

__all__ = ["provenance", "git_commit", "same_code", "describe_code"]


def git_commit() -> Optional[Dict[str, Any]]:
    """``{"commit": sha, "dirty": bool, "changes": sha256 or None}`` of the git checkout wsbus was imported from,
    read once at import (:data:`wsbus.CODE_STATE`), or None when it is not one (an installed wheel) or git is not
    available. ``dirty`` is True when the package's files differed from the commit; ``changes`` is then a SHA-256 of
    those differences (``git diff HEAD`` of ``wsbus/`` and the package's untracked files), so two results made by
    the same modified code can still be recognised."""
    return CODE_STATE


def provenance(device: Union[str, torch.device, None] = None) -> Dict[str, Any]:
    """What made a result, as plain data: ``wsbus`` (version), ``git`` (:func:`git_commit`, or None), ``torch``,
    ``torchvision``, ``python`` and ``device`` (the device given, as text; None when not given).

    Taught in ``book/09_real_data.md``.
    """
    return {"wsbus": __version__, "git": git_commit(), "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__), "python": platform.python_version(),
            "device": None if device is None else str(device)}


def describe_code(record: Optional[Mapping[str, Any]]) -> str:
    """``"wsbus 0.2.0 (commit 1a2b3c4, modified)"``-style text for a provenance record (``"unknown code"`` for
    None)."""
    if not record:
        return "unknown code (no provenance recorded)"
    git = record.get("git") or {}
    where = f" (commit {git['commit'][:7]}{', modified' if git.get('dirty') else ''})" if git.get("commit") else ""
    return f"wsbus {record.get('wsbus', '?')}{where}"


def same_code(a: Optional[Mapping[str, Any]], b: Optional[Mapping[str, Any]]) -> bool:
    """True when two provenance records name the same code: the same wsbus version and, when both were made from a
    git checkout, the same commit with the same uncommitted changes (none, or the same ``changes`` hash). A record
    without provenance (older wsbus) is never the same code."""
    if not a or not b or a.get("wsbus") != b.get("wsbus"):
        return False
    ga, gb = a.get("git"), b.get("git")
    if ga is None and gb is None:
        return True
    if ga is None or gb is None:
        return False
    return (ga.get("commit") == gb.get("commit") and bool(ga.get("dirty")) == bool(gb.get("dirty"))
            and ga.get("changes") == gb.get("changes"))
