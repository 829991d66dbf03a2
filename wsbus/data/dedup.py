"""Exact and near-duplicate images, and label conflicts between duplicates.

Taught in ``book/09_real_data.md``.

Exact duplicates have identical pixels (same shape, same SHA-1 of the pixel bytes). Near duplicates
(re-encoded, rescaled, slightly re-windowed copies) are found in two stages: a 64-bit perceptual hash
(DCT of a 32x32 area-averaged thumbnail, sign of the 8x8 lowest frequencies against their median, as in
pHash) proposes candidate pairs within ``max_distance`` differing bits, and the Pearson correlation of the
two thumbnails (``>= min_correlation``) confirms them, so that merely similar-looking scans are not merged.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import replace
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image
from scipy.fft import dctn

from .formats import DataError, Sample
from .voc import to_gray

_THUMB = 32
_HASH = 8


def _thumbnail(image: np.ndarray) -> np.ndarray:
    """32x32 area-averaged float thumbnail (independent of the original resolution)."""
    thumb = Image.fromarray(to_gray(image)).resize((_THUMB, _THUMB), Image.Resampling.BOX)
    return np.asarray(thumb, dtype=np.float64)


def perceptual_hash(image: np.ndarray) -> int:
    """64-bit DCT perceptual hash of an image (bit set where a low-frequency coefficient exceeds the median).

    Parameters
    ----------
    image : ``uint8`` array, ``H x W`` or ``H x W x 3``.

    Returns
    -------
    int in ``[0, 2**64)``; the Hamming distance between two hashes measures how different the images look.
    """
    return int(_hash_bits(_thumbnail(image)))


def _hash_bits(thumb: np.ndarray) -> np.uint64:
    coeffs = dctn(thumb, norm="ortho")[:_HASH, :_HASH].ravel()
    bits = coeffs > np.median(coeffs[1:])  # the DC term (overall brightness) does not set the threshold
    return np.uint64(int("".join("1" if b else "0" for b in bits), 2))


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def _check_ids(samples: Sequence[Sample]) -> None:
    seen = set()
    for s in samples:
        if s.id in seen:
            raise DataError(f"sample id {s.id!r} occurs more than once; ids must be unique")
        seen.add(s.id)


def find_duplicates(samples: Sequence[Sample], near: bool = True, max_distance: int = 10,
                    min_correlation: float = 0.95, chunk: int = 1024) -> List[List[str]]:
    """Groups of exact and (optionally) near-duplicate images.

    Parameters
    ----------
    samples : the data set (ids must be unique).
    near : also look for near duplicates (re-encoded, rescaled copies); ``False`` finds identical pixels only.
    max_distance : largest Hamming distance (of 64 bits) between perceptual hashes for a candidate pair.
    min_correlation : smallest Pearson correlation of the 32x32 thumbnails that confirms a candidate pair.
    chunk : rows of the pairwise hash comparison done at once (memory bound, not a result parameter).

    Returns
    -------
    list of groups, each a list of at least two ids in input order; groups ordered by their first member.
    Duplicate relations are transitive: if a~b and b~c, then a, b and c form one group.

    Notes
    -----
    Taught in ``book/09_real_data.md``.
    """
    _check_ids(samples)
    n = len(samples)
    uf = _UnionFind(n)
    first_by_digest: Dict[tuple, int] = {}
    for i, s in enumerate(samples):
        key = (s.image.shape, hashlib.sha1(np.ascontiguousarray(s.image).tobytes()).hexdigest())
        if key in first_by_digest:
            uf.union(first_by_digest[key], i)
        else:
            first_by_digest[key] = i
    if near and n > 1:
        thumbs = np.stack([_thumbnail(s.image) for s in samples])
        hashes = np.array([_hash_bits(t) for t in thumbs], dtype=np.uint64)
        flat = thumbs.reshape(n, -1)
        flat = flat - flat.mean(axis=1, keepdims=True)
        norms = np.linalg.norm(flat, axis=1)
        unit = flat / np.where(norms > 0, norms, 1.0)[:, None]
        for start in range(0, n, chunk):
            rows = np.arange(start, min(start + chunk, n))
            dist = np.bitwise_count(hashes[rows, None] ^ hashes[None, :])
            ii, jj = np.nonzero((dist <= max_distance) & (np.arange(n)[None, :] > rows[:, None]))
            for i, j in zip(rows[ii], jj):
                flat_i, flat_j = norms[i] == 0, norms[j] == 0
                if flat_i or flat_j:  # constant images: correlation undefined, compare the means instead
                    same = flat_i and flat_j and abs(thumbs[i].mean() - thumbs[j].mean()) < 1.0
                else:
                    same = float(unit[i] @ unit[j]) >= min_correlation
                if same:
                    uf.union(int(i), int(j))
    groups: Dict[int, List[str]] = defaultdict(list)
    for i, s in enumerate(samples):
        groups[uf.find(i)].append(s.id)
    return [g for _, g in sorted(groups.items()) if len(g) > 1]


def label_conflicts(samples: Sequence[Sample], groups: Optional[List[List[str]]] = None,
                    **find_kwargs) -> List[List[str]]:
    """Duplicate groups whose images carry different image labels (e.g. one copy benign, one malignant).

    Parameters
    ----------
    samples : the data set.
    groups : duplicate groups from :func:`find_duplicates`; computed with ``find_kwargs`` when ``None``.

    Returns
    -------
    the subset of ``groups`` whose members do not all have the same ``image_label``.

    Notes
    -----
    Taught in ``book/09_real_data.md``.
    """
    if groups is None:
        groups = find_duplicates(samples, **find_kwargs)
    label = {s.id: s.image_label for s in samples}
    return [g for g in groups if len({label[i] for i in g}) > 1]


def assign_duplicate_patients(samples: Sequence[Sample], groups: Optional[List[List[str]]] = None,
                              prefix: str = "", **find_kwargs) -> List[Sample]:
    """Give duplicates a common ``patient`` so that a patient-level split never separates them.

    Samples are linked when they are duplicates or already share a patient; every connected set gets one
    patient id: the existing patient of its first member, else ``prefix + <first member's id>``. A sample
    linked to nothing keeps its patient (or gets ``prefix + <its id>`` when it had none).

    Parameters
    ----------
    samples : the data set.
    groups : duplicate groups from :func:`find_duplicates`; computed with ``find_kwargs`` when ``None``.
    prefix : prepended to the patient ids that this function makes from sample ids.

    Returns
    -------
    new list of samples in the same order (images shared, not copied).

    Notes
    -----
    Taught in ``book/09_real_data.md``.
    """
    if groups is None:
        groups = find_duplicates(samples, **find_kwargs)
    index = {s.id: i for i, s in enumerate(samples)}
    uf = _UnionFind(len(samples))
    for g in groups:
        for other in g[1:]:
            uf.union(index[g[0]], index[other])
    first_of_patient: Dict[str, int] = {}
    for i, s in enumerate(samples):
        if s.patient is not None:
            uf.union(first_of_patient.setdefault(s.patient, i), i)
    out = []
    for s in samples:
        root = samples[uf.find(index[s.id])]  # the union keeps the smallest index as root: the first member
        patient = root.patient if root.patient is not None else prefix + root.id
        out.append(s if s.patient == patient else replace(s, patient=patient))
    return out
