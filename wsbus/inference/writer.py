"""Writing prediction results to a folder, as ``wsbus predict`` does: :class:`PredictionWriter`.

A folder holds the results of one prediction run. The writer records the run's settings in ``images.json`` before
the first image, so that a folder is always identified: started again on a folder with the same settings (same
checkpoint bytes, inputs, size, threshold, overlays) the writer *resumes* (:meth:`PredictionWriter.resume` keeps
the images already done and says which are left); with other settings it refuses, unless asked to ``overwrite``,
which first removes the files an earlier run wrote (only those: the tables, the overlays and their temporaries).
"""
from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path, PurePath
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..checkpoint import atomic_write, atomic_write_json, atomic_write_text
from ..data.formats import CLASSES, DataError, make_output_folder
from ..data.images import ImageFile
from .drawing import draw_detections
from .prediction import Prediction

__all__ = ["PredictionWriter", "OUTPUT_TABLES", "RUN_ONLY_SETTINGS", "make_output_folder", "remove_outputs"]

#: The tables a prediction folder holds; ``images.json`` is written last, so the images it lists are in the others.
OUTPUT_TABLES = ("detections.json", "detections.csv", "summary.csv", "summary.json", "images.json")
OVERLAYS = "overlays"
#: Settings that do not change the results: a run may be resumed with other values of these.
RUN_ONLY_SETTINGS = ("checkpoint", "device", "batch_size", "workers")
Key = Tuple[str, Optional[str], Optional[int]]


def _overlay_file(name: str) -> str:
    """``overlays/``-relative PNG name of an image: its name (sub-folders kept, ``#k`` -> ``_frame<k>``) with
    ``.png`` appended unless it already ends so: ``a.png``, ``b.jpg.png``, ``cine.dcm_frame3.png``."""
    base, sep, frame = name.rpartition("#")
    if sep and frame.isdigit():
        name = f"{base}_frame{frame}"
    parts = [p for p in PurePath(name.replace("\\", "/")).parts if p not in ("", ".", "..", "/")]
    parts = [p.replace(":", "_") for p in parts if not p.endswith(":\\")] or ["image"]
    rel = "/".join(parts)
    return rel if rel.lower().endswith(".png") else rel + ".png"


def _is_temporary(name: str, finals: Sequence[str]) -> bool:
    """Whether ``name`` is a temporary file of an atomic write of one of ``finals`` (``.<final>.<random>.tmp``)."""
    return name.endswith(".tmp") and any(name.startswith(f".{f}.") for f in finals)


def _overlay_files(out_dir: Path) -> List[Path]:
    """The files under ``out_dir/overlays`` that predict writes: PNGs and temporaries of atomic writes."""
    root = out_dir / OVERLAYS
    if not root.is_dir():
        return []
    return [p for p in root.rglob("*") if p.is_file() and (p.suffix.lower() == ".png" or p.name.endswith(".tmp"))]


def _remove_empty_folders(root: Path) -> None:
    if not root.is_dir():
        return
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    if not any(root.iterdir()):
        root.rmdir()


def remove_outputs(out_dir: Union[str, "os.PathLike[str]"]) -> List[Path]:
    """Remove what a prediction run wrote in ``out_dir`` (the tables, the overlays, their temporary files) and
    nothing else; ``images.json``, the record of the run, goes first. Returns the removed files."""
    out_dir = Path(out_dir)
    found = [out_dir / "images.json"] + [out_dir / t for t in OUTPUT_TABLES if t != "images.json"]
    found += [p for p in out_dir.iterdir() if _is_temporary(p.name, OUTPUT_TABLES)] if out_dir.is_dir() else []
    found += _overlay_files(out_dir)
    removed = []
    for p in found:
        if p.is_file():
            p.unlink()
            removed.append(p)
    _remove_empty_folders(out_dir / OVERLAYS)
    return removed


def _earlier_outputs(out_dir: Path) -> List[str]:
    names = [t for t in OUTPUT_TABLES if (out_dir / t).exists()]
    return names + ([f"{OVERLAYS}/"] if (out_dir / OVERLAYS).exists() else [])


def _plain(settings: Mapping[str, Any]) -> Dict[str, Any]:
    """The settings as they read back from JSON (tuples become lists, paths strings)."""
    return json.loads(json.dumps(dict(settings), default=str))


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> List[str]:
    out = []
    for k in sorted((set(old) | set(new)) - set(RUN_ONLY_SETTINGS)):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if k == "checkpoint_sha256":
            out.append(f"another checkpoint (sha256 {str(a)[:12]}... then, {str(b)[:12]}... now)")
        else:
            out.append(f"{k} {a!r} then, {b!r} now")
    return out


def _read_rows(path: Path) -> Dict[str, List[Dict[str, str]]]:
    by_image: Dict[str, List[Dict[str, str]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            by_image.setdefault(row["image"], []).append(row)
    return by_image


def _restore(out_dir: Path, record: Mapping[str, Any]) -> Tuple[List[Prediction], Dict[Key, str]]:
    """The predictions of the images an earlier run finished (from ``images.json`` and ``detections.csv``; the
    images it could not read are not kept: they are read again) and their overlays."""
    rows = _read_rows(out_dir / "detections.csv")
    predictions, overlays = [], {}
    for im in record["images"]:
        found = rows.get(im["name"], [])
        boxes = torch.tensor([[float(r[c]) for c in ("x1", "y1", "x2", "y2")] for r in found],
                             dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([CLASSES.index(r["class"]) for r in found], dtype=torch.int64)
        scores = torch.tensor([float(r["score"]) for r in found], dtype=torch.float32)
        p = Prediction(im["name"], boxes, labels, scores, width=int(im["width"]), height=int(im["height"]),
                       path=Path(im["file"]) if im.get("file") is not None else None, frame=im.get("frame"))
        predictions.append(p)
        if im.get("overlay"):
            overlays[p.key] = im["overlay"]
    return predictions, overlays


def _earlier_run(out_dir: Path, settings: Mapping[str, Any]) -> Tuple[List[Prediction], Dict[Key, str]]:
    """The results of an earlier run in ``out_dir`` with the same settings (nothing for a folder without one);
    :class:`DataError` when the folder holds outputs of another run or ones that cannot be read back."""
    found = _earlier_outputs(out_dir)
    if not found:
        return [], {}
    hint = "rerun with --overwrite (overwrite=True) to replace them, or choose another output folder"
    try:
        record = json.loads((out_dir / "images.json").read_text())
        earlier = record["settings"]
        if not isinstance(earlier, dict) or not isinstance(record["images"], list):
            raise ValueError("not a wsbus predict record")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{out_dir}: holds files of an earlier run ({', '.join(found)}) without a readable "
                        f"images.json to resume from ({type(exc).__name__}: {exc}); {hint}") from None
    diffs = _differences(earlier, settings)
    if diffs:
        raise DataError(f"{out_dir}: holds the results of a `wsbus predict` with other settings: "
                        f"{'; '.join(diffs)}; {hint}")
    try:
        return _restore(out_dir, record)
    except (OSError, ValueError, KeyError, TypeError, csv.Error) as exc:
        raise DataError(f"{out_dir}: the earlier results cannot be read back ({type(exc).__name__}: {exc}); "
                        f"{hint}") from None


class PredictionWriter:
    """Writes the results of :func:`iter_predict` into a folder, as ``wsbus predict`` does.

    Files (COCO category ids 1 benign, 2 malignant; boxes in the pixels of the image as read)::

        overlays/<name>.png    one per image, written as soon as the image is done (see ``_overlay_file``)
        detections.json        COCO *results*: [{image_id, category_id, bbox [x, y, w, h], score}]
        detections.csv         image, x1, y1, x2, y2, class, score
        summary.csv/.json      per image: max_benign, max_malignant, n_detections, predicted (or the error)
        images.json            {"images": [{id, file_name, file, name, frame, width, height, overlay}],
                                "categories", "failed": [{file, frame, name, error}], "complete", "settings"}:
                                with detections.json, pycocotools' COCO(images.json).loadRes(detections.json) works

    Every file is written atomically (a temporary file renamed into place), ``images.json`` last. The tables are
    written when the writer opens (no image yet, ``complete: false``), every ``flush_seconds``, and at
    :meth:`close`, which a ``with`` block calls also when the run stops on an error or an interrupt: nothing done is
    lost, and ``complete`` in ``images.json`` and ``summary.json`` says whether the run finished.

    A folder that already holds results: with the same ``settings`` (except :data:`RUN_ONLY_SETTINGS`) they are
    read back, and :meth:`resume` keeps those of the run's images; with other settings
    :class:`~wsbus.data.DataError`, unless ``overwrite``, which first removes them (:func:`remove_outputs`).
    """

    def __init__(self, out_dir: Union[str, "os.PathLike[str]"], *, overlays: bool = True,
                 settings: Optional[Mapping[str, Any]] = None, flush_seconds: float = 60.0, overwrite: bool = False):
        self.out_dir = make_output_folder(out_dir)
        self.overlays = overlays
        self.settings = _plain(settings or {})
        self.flush_seconds = float(flush_seconds)
        if overwrite:
            remove_outputs(self.out_dir)
        self.predictions, self._overlays = _earlier_run(self.out_dir, self.settings)
        for p in self.out_dir.iterdir():  # temporaries of a run killed while writing a table
            if _is_temporary(p.name, OUTPUT_TABLES):
                p.unlink()
        self._order: Optional[Dict[Key, int]] = None
        self._taken = {name[len(OVERLAYS) + 1:].lower() for name in self._overlays.values()}
        self.write_tables(complete=False)

    @property
    def failed(self) -> List[Prediction]:
        return [p for p in self.predictions if not p.ok]

    def resume(self, images: Sequence[ImageFile]) -> List[ImageFile]:
        """Start the run over ``images``: keep the earlier results of these images, forget the others (and their
        overlays, and any overlay no table lists), order the tables as ``images``, and return the images still
        to predict (those not finished earlier, and those that could not be read)."""
        keys = [(f.name, str(f.path), f.frame) for f in images]
        self._order = {k: i for i, k in enumerate(keys)}
        self.predictions = [p for p in self.predictions if p.key in self._order]
        done = {p.key for p in self.predictions}
        self._overlays = {k: v for k, v in self._overlays.items() if k in done}
        keep = {self.out_dir / v for v in self._overlays.values()}
        for p in _overlay_files(self.out_dir):
            if p not in keep:
                p.unlink()
        _remove_empty_folders(self.out_dir / OVERLAYS)
        self._taken = {name[len(OVERLAYS) + 1:].lower() for name in self._overlays.values()}
        self.write_tables(complete=False)
        return [f for f, k in zip(images, keys) if k not in done]

    def add(self, p: Prediction) -> None:
        """Write the overlay of one result (when it has an image, which is then dropped from ``p``), then record the
        result: an interrupt while the overlay is written leaves the image out of the tables (a resumed run
        predicts it again), never in the tables without its overlay."""
        if self.overlays and p.ok and p.image is not None:
            name = _overlay_file(p.name)
            stem, n = name[:-4], 1
            while name.lower() in self._taken:
                n += 1
                name = f"{stem}-{n}.png"
            self._taken.add(name.lower())
            from PIL import Image

            picture = Image.fromarray(draw_detections(p.image, p.boxes, p.labels, p.scores))
            atomic_write(self.out_dir / OVERLAYS / name, lambda f: picture.save(f, format="PNG"), "wb")
            self._overlays[p.key] = f"{OVERLAYS}/{name}"
            p.image = None  # the picture is on disk; do not keep every image in memory
        self.predictions.append(p)
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.write_tables(complete=False)

    def _ordered(self) -> List[Prediction]:
        if not self._order:
            return list(self.predictions)
        last = len(self._order)
        return sorted(self.predictions, key=lambda p: self._order.get(p.key, last))

    def write_tables(self, complete: bool) -> None:
        """(Re)write the JSON and CSV files from the results so far."""
        from ..data.coco import COCO_CATEGORIES

        predictions = self._ordered()
        images, results, failed, rows = [], [], [], []
        for p in predictions:
            if not p.ok:
                failed.append({"file": p.file, "frame": p.frame, "name": p.name, "error": p.error})
                continue
            image_id = len(images) + 1
            entry = {"id": image_id, "file_name": p.file or p.name, "file": p.file, "name": p.name,
                     "frame": p.frame, "width": p.width, "height": p.height}
            if p.key in self._overlays:
                entry["overlay"] = self._overlays[p.key]
            images.append(entry)
            for box, label, score in zip(p.boxes.tolist(), p.labels.tolist(), p.scores.tolist()):
                x1, y1, x2, y2 = box
                results.append({"image_id": image_id, "category_id": int(label),
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
                rows.append([p.name, x1, y1, x2, y2, CLASSES[int(label)], score])
        atomic_write_json(results, self.out_dir / "detections.json")
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["image", "x1", "y1", "x2", "y2", "class", "score"])
        w.writerows(rows)
        atomic_write_text(buf.getvalue(), self.out_dir / "detections.csv")
        self._write_summaries(predictions, len(failed), complete)
        atomic_write_json({"images": images, "categories": [dict(c) for c in COCO_CATEGORIES], "failed": failed,
                           "complete": bool(complete), "settings": self.settings}, self.out_dir / "images.json")
        self._last_flush = time.monotonic()

    def _write_summaries(self, predictions: List[Prediction], n_failed: int, complete: bool) -> None:
        summaries = [p.summary() for p in predictions]
        columns = ["image", "file", "frame", "status", "width", "height", "n_detections", "max_benign",
                   "max_malignant", "predicted", "error"]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        w.writerows(summaries)
        atomic_write_text(buf.getvalue(), self.out_dir / "summary.csv")
        atomic_write_json({"images": summaries, "n_images": len(summaries), "n_failed": n_failed,
                           "complete": bool(complete), "settings": self.settings}, self.out_dir / "summary.json")

    def close(self, complete: bool = True) -> None:
        """Write the tables (``complete`` says whether every image was processed)."""
        self.write_tables(complete)

    def __enter__(self) -> "PredictionWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(complete=exc_type is None)
