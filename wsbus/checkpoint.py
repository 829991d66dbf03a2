"""Atomic, ``weights_only``-loadable training checkpoints.

Taught in ``book/06_joint_training.md``.

A checkpoint is a plain dict of tensors and primitive containers, so :func:`load_checkpoint` can use
``torch.load(weights_only=True)`` (no pickled code runs when a file is opened). :func:`atomic_save` never
leaves a half-written checkpoint under the final name: it writes a temporary file in the same directory,
flushes and ``fsync``-s it, renames it over the old file with ``os.replace`` (atomic on POSIX and Windows)
and ``fsync``-s the directory so the rename itself survives a power cut. A process killed at any moment
leaves either the previous checkpoint or the new one, plus at most a stray temporary file that
:func:`remove_stale_temporaries` deletes on the next start.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Union

import torch

__all__ = ["CHECKPOINT_VERSION", "CheckpointError", "REQUIRED_KEYS", "current_umask", "atomic_replace", "atomic_write", "atomic_save",
           "atomic_write_text", "atomic_write_json", "load_checkpoint", "remove_stale_temporaries"]

#: Format version written under ``"version"``; bump when the layout changes incompatibly.
CHECKPOINT_VERSION = 1
#: Keys every wsbus training checkpoint holds.
REQUIRED_KEYS = ("version", "model", "optimizer", "step", "scaler", "config", "rng", "streams", "history")

PathLike = Union[str, "os.PathLike[str]"]


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, of another version, or not what the run expects.

    Taught in ``book/10_autoencoder_pretraining.md``."""


def _fsync_dir(directory: Path) -> None:
    # Makes the rename durable. Directories cannot be opened on Windows; there the rename is durable already.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process's file-mode creation mask (read without changing it for longer than the call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_replace(path: PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` with the path of a temporary file beside ``path`` (for writers that take a file name:
    ``torch.jit.save``, ``torch.onnx.export``), fsync it, rename it onto ``path``, fsync the directory; on any error
    remove the temporary file and leave ``path`` as it was."""
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    tmp = Path(name)
    try:
        # mkstemp creates the file readable by its owner alone; the result gets what open() would give it (the
        # user's umask), so that collaborators can read checkpoints and outputs as they can read other files.
        os.chmod(tmp, 0o666 & ~current_umask())
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)
    return path


def atomic_write(path: PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call ``write(file)`` on a temporary file beside ``path`` opened with ``mode``, then replace ``path`` with it
    as :func:`atomic_replace` does."""
    def to_file(tmp: Path) -> None:
        with open(tmp, mode) as f:
            write(f)
            f.flush()

    return atomic_replace(path, to_file)


def atomic_save(obj: Any, path: PathLike) -> Path:
    """Save ``obj`` with ``torch.save`` so that ``path`` is replaced atomically.

    Write to a temporary file in ``path``'s directory, flush and ``os.fsync`` it, ``os.replace`` it onto
    ``path``, then ``fsync`` the directory. On any error the temporary file is removed and ``path`` is left
    as it was.

    Parameters
    ----------
    obj : what to save (keep it to tensors and primitive containers so it loads with ``weights_only=True``).
    path : the final file, e.g. ``runs/joint/last.pt``; its directory is created when missing.

    Returns
    -------
    pathlib.Path of the written file.
    """
    return atomic_write(path, lambda f: torch.save(obj, f), "wb")


def atomic_write_text(text: str, path: PathLike) -> Path:
    """Write ``text`` to ``path`` atomically (as :func:`atomic_save`): a reader never sees half a file."""
    return atomic_write(path, lambda f: f.write(text), "w")


def atomic_write_json(obj: Any, path: PathLike) -> Path:
    """Write ``obj`` as indented JSON (plus a final newline) to ``path`` atomically (as :func:`atomic_save`).
    Non-JSON values are written with ``str``."""
    return atomic_write_text(json.dumps(obj, indent=2, default=str) + "\n", path)


def remove_stale_temporaries(directory: PathLike, names: Iterable[str] = ("last.pt",)) -> List[Path]:
    """Delete temporary files left by an :func:`atomic_save` that was killed before its rename.

    Only files named ``.<name>.*.tmp`` for the given ``names`` (glob patterns such as ``"step_*.pt"`` allowed)
    are touched. Returns the removed paths.
    """
    directory = Path(directory)
    removed: List[Path] = []
    if not directory.is_dir():
        return removed
    for name in names:
        for p in directory.glob(f".{name}.*.tmp"):
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
    return removed


_MAGIC = ((b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"II*\x00", "a TIFF image"),
          (b"MM\x00*", "a TIFF image"), (b"GIF8", "a GIF image"), (b"\x1f\x8b", "a gzip archive"),
          (b"%PDF", "a PDF document"), (b"\x93NUMPY", "a numpy array file"))


def _zip_kind(path: Path) -> str:
    """What a zip file holds: '' for a torch checkpoint, else a description."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return (f"truncated or corrupt (a torch zip file of {path.stat().st_size} bytes whose end, the zip directory, "
                f"is missing or damaged)")
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return "a TorchScript model (e.g. from `wsbus export`), not a training checkpoint"
    if not any(n.endswith("data.pkl") for n in names):
        return "a zip archive, not a torch file"
    return ""


def _file_kind(path: Path) -> str:
    """Why ``path`` cannot be a torch checkpoint, from its first bytes ('' when it may be one)."""
    with open(path, "rb") as f:
        head = f.read(132)
    if not head:
        return "it is empty (0 bytes)"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return f"it is {kind}"
    if head[128:132] == b"DICM":
        return "it is a DICOM file"
    if head.startswith(b"PK\x03\x04"):
        kind = _zip_kind(path)
        return f"it is {kind}" if kind and not kind.startswith("truncated") else kind
    if path.suffix.lower() == ".onnx":
        return "it is an ONNX model (e.g. from `wsbus export`), not a training checkpoint"
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            return ""
        return "it is a text file"
    return ""


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device, None] = "cpu",
                    require: Iterable[str] = REQUIRED_KEYS) -> Dict[str, Any]:
    """Load a checkpoint written by :class:`wsbus.engine.Trainer` with ``torch.load(weights_only=True)``.

    Parameters
    ----------
    path : the checkpoint file.
    map_location : where tensors go (default CPU; the Trainer moves them to its device).
    require : keys that must be present; pass ``("model",)`` to accept a bare weights file.

    Raises
    ------
    CheckpointError
        in one line naming the file when it is missing; not a checkpoint (an image, a TorchScript or ONNX model,
        a text file, ... said so); truncated or corrupt; holding pickled objects that a safe load refuses; not a
        dict; lacking a required key; or written by an unsupported format version.
    """
    import pickle

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist" +
                              (" (it is a folder)" if path.is_dir() else ""))
    name = f"checkpoint {str(path)!r}"
    kind = _file_kind(path)
    if kind.startswith("truncated"):
        raise CheckpointError(f"{name} cannot be read: it is {kind}")
    if kind:
        raise CheckpointError(f"{name} is not a wsbus checkpoint: {kind}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # weights_only refuses the objects; PyTorch's advice to load them unsafely is
        raise CheckpointError(f"{name} is not a wsbus checkpoint: it holds pickled Python objects that a safe "
                              f"(weights_only) load refuses") from None  # not given: they could run code
    except (RuntimeError, EOFError, OSError, ValueError) as exc:  # bad CRC, truncated record, short legacy file
        text = str(exc).strip()
        reason = text.splitlines()[0].split(". ")[0].rstrip(".") if text else type(exc).__name__
        raise CheckpointError(f"{name} cannot be read: it is truncated or corrupt ({reason})") from exc
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{name} is not a wsbus checkpoint: it holds a {type(ckpt).__name__}, not a dict")
    missing = [k for k in require if k not in ckpt]
    if missing:
        raise CheckpointError(f"{name} lacks the keys {missing}")
    version = ckpt.get("version", CHECKPOINT_VERSION)
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{name} has format version {version!r}; this wsbus reads "
                              f"versions <= {CHECKPOINT_VERSION}")
    return ckpt
