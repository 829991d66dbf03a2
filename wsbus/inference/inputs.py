"""Reading the images of a prediction run in ``torch.utils.data.DataLoader`` workers.

:func:`group_inputs` turns what :func:`wsbus.inference.predict` accepts (files, folders, arrays, tensors, samples)
into one item per image; :func:`image_loader` reads them in worker processes and packs each batch for the trip to
the main process; :func:`close_loader` shuts the workers down at once (also when the run stops on an error or an
interrupt). A worker never outlives the command: it ignores SIGINT and SIGTERM (the main process turns them into
an exception and shuts the workers down itself), and on Linux the kernel kills it when its parent dies
(``PR_SET_PDEATHSIG``), even when the parent is killed with SIGKILL.
"""
from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..data.formats import DataError, Sample
from ..data.images import ImageFile, list_grouped, read_image

__all__ = ["ImageInput", "Item", "group_inputs", "image_loader", "close_loader"]

#: What :func:`wsbus.inference.predict` takes as one image.
ImageInput = Union[str, "os.PathLike[str]", np.ndarray, torch.Tensor, Sample, ImageFile]
#: One image to read: ``(name, source, path, frame)``.
Item = Tuple[str, Any, Optional[Path], Optional[int]]
_PR_SET_PDEATHSIG = 1


def group_inputs(images: Union[ImageInput, Iterable[ImageInput]]) -> List[Item]:
    """``(name, source, path, frame)`` per image, in input order; paths and folders expanded by
    :func:`wsbus.data.images.list_images` (all together, so that names are unique across them)."""
    if isinstance(images, (str, os.PathLike, np.ndarray, torch.Tensor, Sample, ImageFile)):
        images = [images]
    images = list(images)
    paths = [x for x in images if isinstance(x, (str, os.PathLike))]
    by_input = list_grouped(paths) if paths else []
    out, k_path = [], 0
    for k, x in enumerate(images):
        if isinstance(x, (str, os.PathLike)):
            out.extend((f.name, f, f.path, f.frame) for f in by_input[k_path])
            k_path += 1
        elif isinstance(x, ImageFile):
            out.append((x.name, x, x.path, x.frame))
        elif isinstance(x, Sample):
            out.append((x.id, x, None, None))
        elif isinstance(x, (np.ndarray, torch.Tensor)):
            out.append((f"image {k}", x, None, None))
        else:
            raise TypeError(f"image {k}: expected a path, a numpy array, a tensor or a wsbus.data.Sample, got "
                            f"{type(x).__name__}")
    return out


def _to_chw(x: Any, where: str) -> torch.Tensor:
    """An image as a ``[C, H, W]`` tensor (C = 1 or 3): uint8 kept, floats in [0, 1] as float32."""
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8:
            raise DataError(f"{where}: a numpy image must be uint8 (H x W or H x W x 3), got {x.dtype}")
        if x.ndim == 3 and x.shape[2] == 1:
            x = x[..., 0]
        if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[2] != 3) or min(x.shape[:2]) < 1:
            raise DataError(f"{where}: a numpy image must be H x W or H x W x 3, got shape {x.shape}")
        t = torch.from_numpy(np.ascontiguousarray(x) if x.flags.writeable else np.array(x))
        return t[None] if t.ndim == 2 else t.permute(2, 0, 1).contiguous()
    t = x
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[0] not in (1, 3) or min(t.shape[1:]) < 1:
        raise DataError(f"{where}: a tensor image must be [C, H, W] with C = 1 or 3 (or [H, W]), got shape "
                        f"{tuple(x.shape)}")
    if t.dtype == torch.uint8:
        return t.contiguous()
    if not t.is_floating_point():
        raise DataError(f"{where}: a tensor image must be uint8 or float in [0, 1], got {t.dtype}")
    return t.detach().to(torch.float32).cpu().contiguous()


class _ImageDataset(torch.utils.data.Dataset):
    """Reads one image per item, in a DataLoader worker: ``(index, [C, H, W] tensor or None, error or None)``."""

    def __init__(self, items: Sequence[Item]):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        name, src, path, frame = self.items[i]
        where = f"{path}#{frame}" if frame is not None else (str(path) if path is not None else name)
        try:
            if isinstance(src, ImageFile):
                image = _to_chw(read_image(src.path, src.frame), where)
            elif isinstance(src, Sample):
                image = src.to_tensor()
            else:
                image = _to_chw(src, where)
            return i, image, None
        except DataError as exc:
            return i, None, str(exc)
        except Exception as exc:  # anything a decoder may raise: report the file, go on with the others
            return i, None, f"{where}: cannot read image ({type(exc).__name__}: {exc})"


class PackedBatch:
    """One DataLoader batch, packed in the worker: the uint8 images of the batch in ONE flat numpy array, which
    crosses from the worker pickled through the pipe (cheaper for the main process than one shared-memory tensor
    per image, each received through its own socket); float images (tensor inputs) as they are.

    Attributes
    ----------
    indices : the items' indices. errors : why an item could not be read (None where it was).
    """

    def __init__(self, items):
        self.indices = [i for i, _, _ in items]
        self.errors = [err for _, _, err in items]
        self.shapes = [tuple(t.shape) if t is not None else None for _, t, _ in items]
        packed = [t.reshape(-1) for _, t, _ in items if t is not None and t.dtype == torch.uint8]
        self.flat = torch.cat(packed).numpy() if packed else None
        self.other = {k: t for k, (_, t, _) in enumerate(items) if t is not None and t.dtype != torch.uint8}

    def images(self) -> List[Optional[torch.Tensor]]:
        """The images in batch order (None where reading failed), views into the packed array."""
        flat = torch.from_numpy(self.flat) if self.flat is not None else None
        out, offset = [], 0
        for k, shape in enumerate(self.shapes):
            if shape is None:
                out.append(None)
            elif k in self.other:
                out.append(self.other[k])
            else:
                n = int(np.prod(shape))
                out.append(flat[offset:offset + n].view(shape))
                offset += n
        return out


def _collate_items(items) -> PackedBatch:
    return PackedBatch(items)


def _die_with_parent() -> bool:
    """Ask the Linux kernel to SIGKILL this process when its parent dies; False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _init_worker(parent_pid: int, worker_id: int) -> None:  # noqa: ARG001 - DataLoader's worker_init_fn signature
    """In each worker: die with the parent; leave SIGINT (and, where the kernel kills orphans, SIGTERM) to the main
    process, which turns them into an exception and shuts the workers down; exit if the parent is already gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if _die_with_parent():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.getppid() != parent_pid:
        os._exit(0)


def image_loader(items: Sequence[Item], batch_size: int, num_workers: int) -> torch.utils.data.DataLoader:
    """A DataLoader reading ``items`` in order (``num_workers`` processes; 0: in this process), batches as
    :class:`PackedBatch`."""
    return torch.utils.data.DataLoader(
        _ImageDataset(items), batch_size=batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=_collate_items, prefetch_factor=4 if num_workers else None,
        worker_init_fn=functools.partial(_init_worker, os.getpid()) if num_workers else None)


def close_loader(iterator: Any) -> None:
    """Shut down the worker processes of a DataLoader iterator now (they stop, the pipes are closed).

    Dropping the iterator would do the same, but only once nothing refers to it, and an exception's traceback
    (an interrupt raised while the iterator waited for a batch) keeps it alive for as long as the exception is
    handled. ``_shutdown_workers`` is what the iterator's own finaliser calls; single-process iterators have none.
    """
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
