"""Published cross-validation folds: which images (or patients) are the test set of fold K.

A folds file is a CSV with an image-id column (``ID``, ``id``, ``image``, ``image_id``) or a patient column
(``patient``, ``Case``), and a fold column (``kFold``, ``fold``, ``Fold``). BUS-BRA ships two such files, the
authors' patient-level partitions (``5-fold-cv.csv``, ``10-fold-cv.csv``; their ``valid_K`` columns are not used:
they put images of the same patient on both sides of the training/validation border). :func:`read_folds` reads one,
:func:`fold_test_set` gives fold K's test images and the rest, refusing a file that splits a patient across folds or
misses an image.

Taught in ``book/09_real_data.md``.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

from .formats import DataError, Sample

__all__ = ["Folds", "read_folds", "fold_test_set", "ID_COLUMNS", "PATIENT_COLUMNS", "FOLD_COLUMNS"]

ID_COLUMNS = ("ID", "id", "image", "image_id")
PATIENT_COLUMNS = ("patient", "Patient", "Case", "case")
FOLD_COLUMNS = ("kFold", "fold", "Fold", "kfold")


@dataclass(frozen=True)
class Folds:
    """A folds file: ``fold_of`` maps an image id (``by == "image"``) or a patient (``by == "patient"``) to its fold
    number; ``path`` is the file."""

    path: str
    by: str
    fold_of: Dict[str, int]

    @property
    def folds(self) -> List[int]:
        """The fold numbers, sorted."""
        return sorted(set(self.fold_of.values()))


def read_folds(path: Union[str, "os.PathLike[str]"]) -> Folds:
    """Read a folds CSV (see the module). Raises :class:`wsbus.data.DataError` naming the file and line when it has
    no usable columns, a fold that is not an integer, or an id listed twice with different folds."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in reader.fieldnames or []]
            rows = [({(k or "").strip(): (v or "").strip() for k, v in r.items()}, reader.line_num) for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the folds file ({exc})") from exc
    key = next((c for c in ID_COLUMNS if c in header), None)
    by = "image"
    if key is None:
        key, by = next((c for c in PATIENT_COLUMNS if c in header), None), "patient"
    fold_col = next((c for c in FOLD_COLUMNS if c in header), None)
    if key is None or fold_col is None:
        raise DataError(f"{path}: a folds file needs an image-id column ({'/'.join(ID_COLUMNS)}) or a patient column "
                        f"({'/'.join(PATIENT_COLUMNS)}), and a fold column ({'/'.join(FOLD_COLUMNS)}); found {header}")
    fold_of: Dict[str, int] = {}
    for row, line in rows:
        name, value = row.get(key, ""), row.get(fold_col, "")
        try:
            k = int(float(value))
        except ValueError:
            raise DataError(f"{path}, line {line}: fold {value!r} of {name!r} is not an integer") from None
        if not name:
            raise DataError(f"{path}, line {line}: empty {key}")
        if fold_of.setdefault(name, k) != k:
            raise DataError(f"{path}, line {line}: {name!r} is listed in folds {fold_of[name]} and {k}")
    if not fold_of:
        raise DataError(f"{path}: no rows")
    return Folds(str(path), by, fold_of)


def fold_test_set(samples: Sequence[Sample], folds: Folds, fold: int) -> Tuple[List[Sample], List[Sample]]:
    """``(training_pool, test)``: the samples of fold ``fold`` are the test set, the others the training pool (both in
    input order). Refuses, naming the file: an unknown fold, a sample the file does not list, and a patient whose
    images lie in different folds (a leak between training and test)."""
    if fold not in folds.folds:
        raise ValueError(f"{folds.path}: there is no fold {fold}; its folds are {folds.folds}")
    fold_of_sample = []
    for s in samples:
        name = s.id if folds.by == "image" else (s.patient or s.id)
        if name not in folds.fold_of:
            raise ValueError(f"{folds.path} does not list {folds.by} {name!r} (image {s.id!r}); is it the folds file "
                             f"of this data set?")
        fold_of_sample.append(folds.fold_of[name])
    by_patient: Dict[str, set] = {}
    for s, k in zip(samples, fold_of_sample):
        by_patient.setdefault(s.patient or s.id, set()).add(k)
    split_patients = sorted(p for p, ks in by_patient.items() if len(ks) > 1)
    if split_patients:
        raise ValueError(f"{folds.path} puts images of {len(split_patients)} patient(s) in different folds (e.g. "
                         f"{split_patients[:3]}): their images would be on both sides of the test border")
    test = [s for s, k in zip(samples, fold_of_sample) if k == fold]
    pool = [s for s, k in zip(samples, fold_of_sample) if k != fold]
    return pool, test
