"""Patient-level, stratified strong / weak / test splits, and the paper's Table I proportions.

Taught in ``book/02_data.md``.

The paper splits SNUBH *by patient* into a strongly supervised training set (images with boxes, "DXLoc"), a
weakly supervised training set (image labels only, "DX") and a test set (Table I). :func:`split` does the same
for any list of :class:`~wsbus.data.Sample`: whole patients go to one subset, the subsets are stratified by
image label, and the result depends only on ``seed`` and the samples (not on their order).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np

from .formats import CLASSES, Sample

Counts = Union[int, Mapping[int, int]]


class Split(NamedTuple):
    """The three subsets of :func:`split`. ``weak`` samples keep their (hidden) boxes when they had any:
    training uses only their ``image_label``, evaluation of pseudo-labels may use the boxes.
    Taught in ``book/02_data.md``."""

    strong: List[Sample]
    weak: List[Sample]
    test: List[Sample]


#: SNUBH counts of Table I (Shin et al. 2019): role -> {class index: images}.
TABLE_I: Dict[str, Dict[int, int]] = {
    "strong": {0: 0, 1: 400, 2: 400},
    "weak": {0: 0, 1: 3291, 2: 933},
    "test": {0: 200, 1: 200, 2: 200},
}


class _Group(NamedTuple):
    key: str
    members: List[int]  # indices into the samples
    label: int  # the group's stratum: its worst image label (malignant > benign > normal)


def _groups(samples: Sequence[Sample], by: str) -> List[_Group]:
    if by not in ("patient", "image"):
        raise ValueError(f"by must be 'patient' or 'image', got {by!r}")
    members: Dict[str, List[int]] = defaultdict(list)
    ids = set()
    for i, s in enumerate(samples):
        if s.id in ids:
            raise ValueError(f"sample id {s.id!r} occurs more than once; ids must be unique")
        ids.add(s.id)
        key = f"patient:{s.patient}" if by == "patient" and s.patient is not None else f"image:{s.id}"
        members[key].append(i)
    # sorted keys: the split does not depend on the order of the samples
    return [_Group(k, m, max(samples[i].image_label for i in m)) for k, m in sorted(members.items())]


def _largest_remainder(total: int, weights: Mapping[int, float]) -> Dict[int, int]:
    """Integers proportional to weights that sum to total (Hamilton's method; ties to the lower class)."""
    wsum = float(sum(weights.values()))
    if total == 0 or wsum == 0:
        return {c: 0 for c in weights}
    exact = {c: total * w / wsum for c, w in weights.items()}
    out = {c: int(np.floor(v)) for c, v in exact.items()}
    for c in sorted(exact, key=lambda c: (-(exact[c] - out[c]), c))[: total - sum(out.values())]:
        out[c] += 1
    return out


def _targets(request: Optional[Counts], fraction: Optional[float], pool: Sequence[_Group],
             samples: Sequence[Sample], stratify: bool, name: str) -> Optional[Dict[Optional[int], int]]:
    """Per-class image counts wanted for one subset, or None for 'everything that is left'."""
    if request is not None and fraction is not None:
        raise ValueError(f"give n_{name} or {name}_fraction, not both")
    available = defaultdict(int)
    for g in pool:
        for i in g.members:
            available[samples[i].image_label] += 1
    if isinstance(request, Mapping):
        targets = {int(c): int(n) for c, n in request.items()}
        bad = [c for c in targets if c not in (0, 1, 2) or targets[c] < 0]
        if bad:
            raise ValueError(f"n_{name} must map class indices 0, 1, 2 to counts >= 0, got {dict(request)}")
    else:
        if request is None and fraction is None:
            return None
        if fraction is not None:
            if not 0.0 <= fraction <= 1.0:
                raise ValueError(f"{name}_fraction must lie in [0, 1], got {fraction}")
            total = int(round(fraction * sum(available.values())))
        else:
            if int(request) != request or request < 0:
                raise ValueError(f"n_{name} must be a non-negative integer, got {request!r}")
            total = int(request)
        if total > sum(available.values()):
            raise ValueError(f"asked for {total} {name} images but only {sum(available.values())} are available")
        if not stratify:
            return {None: total}  # any class
        targets = _largest_remainder(total, {c: available[c] for c in sorted(available)})
    for c, n in targets.items():
        if n > available[c]:
            raise ValueError(f"asked for {n} {CLASSES[c]} {name} images but only {available[c]} are available")
    return targets


def _take(pool: List[_Group], targets: Dict[Optional[int], int], rng: np.random.Generator) -> List[_Group]:
    """Choose whole groups, class by class (None: any class), to reach the target counts as closely as possible."""
    order = rng.permutation(len(pool))
    chosen: List[_Group] = []
    for cls, target in targets.items():
        candidates = [pool[k] for k in order if cls is None or pool[k].label == cls]
        count, skipped = 0, []
        for g in candidates:
            if count >= target:
                break
            size = len(g.members)
            if count + size <= target:
                chosen.append(g)
                count += size
            else:
                skipped.append(g)
        if count < target and skipped:  # overshoot by the smallest group if that lands closer
            g = min(skipped, key=lambda g: len(g.members))
            if abs(count + len(g.members) - target) < abs(target - count):
                chosen.append(g)
    return chosen


def split(samples: Sequence[Sample], n_strong: Optional[Counts] = None, *, strong_fraction: Optional[float] = None,
          n_test: Optional[Counts] = None, test_fraction: Optional[float] = None, n_weak: Optional[Counts] = None,
          by: str = "patient", stratify: bool = True, train_normals: bool = False, seed: int = 0) -> Split:
    """Split samples into strong, weak and test subsets, by patient and stratified by image label.

    The test set is drawn first from all samples, then the strong set from the remaining training pool, and the
    weak set is the rest of the pool (or ``n_weak`` of it). Samples without boxes (weak samples, e.g. a site's
    image-labelled scans) are never drawn into the test or strong sets: their patients go to the weak set. Counts are images; whole patients are moved, so a count
    can be missed by less than one patient's images when no combination fits exactly.

    Parameters
    ----------
    samples : the data set (unique ids).
    n_strong : number of strong images, or a mapping class index -> count (e.g. ``{1: 400, 2: 400}``).
    strong_fraction : instead of ``n_strong``: fraction of the training pool (after the test set) made strong.
    n_test : number of test images, or a mapping class -> count (e.g. ``{0: 200, 1: 200, 2: 200}``).
    test_fraction : instead of ``n_test``: fraction of all samples; with neither, 0.2.
    n_weak : number (or mapping) of weak images; ``None`` puts the whole rest of the pool in the weak set.
    by : ``"patient"`` (no patient in two subsets; a sample without patient is its own patient) or ``"image"``.
    stratify : integer counts are shared between classes in proportion to what is available.
    train_normals : allow normal images in the strong and weak sets. By default (the paper's Table I) normal
        images only go to the test set; normal images that the test set does not take are left unused.
    seed : the random seed; the same samples (in any order) and seed give the same split.

    Returns
    -------
    :class:`Split` ``(strong, weak, test)``, each a list of samples in input order.

    Raises
    ------
    ValueError
        When more images of a class are asked for than exist, or arguments contradict each other.

    Notes
    -----
    Taught in ``book/02_data.md``.
    """
    if len(samples) == 0:
        raise ValueError("cannot split an empty list of samples")
    if n_strong is None and strong_fraction is None:
        raise ValueError("give n_strong (an int or a class -> count mapping) or strong_fraction")
    rng = np.random.default_rng(seed)
    groups = _groups(samples, by)
    # Images without boxes (a site's image-labelled scans) can be neither strong nor test images: their patients
    # go to the weak set. With every image boxed this changes nothing.
    boxed = [g for g in groups if all(samples[i].is_strong for i in g.members)]
    if n_test is None and test_fraction is None:
        test_fraction = 0.2
    test_targets = _targets(n_test, test_fraction, boxed, samples, stratify, "test")
    test = _take(boxed, test_targets, rng) if test_targets is not None else []
    taken = {g.key for g in test}
    pool = [g for g in groups if g.key not in taken and (train_normals or g.label != 0)]
    if not train_normals:  # a patient with normal and abnormal images trains on its abnormal images only
        pool = [_Group(g.key, [i for i in g.members if samples[i].image_label != 0], g.label) for g in pool]
    boxed_keys = {g.key for g in boxed}
    strong_pool = [g for g in pool if g.key in boxed_keys]
    strong_targets = _targets(n_strong, strong_fraction, strong_pool, samples, stratify, "strong")
    strong = _take(strong_pool, strong_targets, rng)
    taken = {g.key for g in strong}
    rest = [g for g in pool if g.key not in taken]
    weak_targets = _targets(n_weak, None, rest, samples, stratify, "weak")
    weak = _take(rest, weak_targets, rng) if weak_targets is not None else rest

    def ordered(chosen: List[_Group]) -> List[Sample]:
        return [samples[i] for i in sorted(i for g in chosen for i in g.members)]

    return Split(ordered(strong), ordered(weak), ordered(test))


def hold_out(samples: Sequence[Sample], n: Counts, *, seed: int = 0, by: str = "patient",
             stratify: bool = True, boxed_only: bool = False) -> tuple:
    """Set ``n`` images aside, whole patients at a time and stratified by image label, e.g. a validation set
    carved from the training patients: ``weak, val = hold_out(parts.weak, 250, seed=0)``. ``boxed_only``: only
    patients whose images all have boxes are set aside (a validation set must be scorable).

    Returns ``(kept, held_out)``, each in input order; the samples (hidden boxes included) are unchanged.
    """
    samples = list(samples)
    if not samples:
        raise ValueError("cannot hold out images of an empty list of samples")
    groups = _groups(samples, by)
    if boxed_only:
        groups = [g for g in groups if all(samples[i].is_strong for i in g.members)]
    targets = _targets(n, None, groups, samples, stratify, "held-out")
    chosen = {i for g in _take(groups, targets, np.random.default_rng([seed, 0x5EED])) for i in g.members}
    return ([s for i, s in enumerate(samples) if i not in chosen], [s for i, s in enumerate(samples) if i in chosen])


def split_table1(samples: Sequence[Sample], scale: Optional[float] = None, seed: int = 0, *,
                 by: str = "patient") -> Split:
    """A split with the proportions of the paper's Table I (SNUBH), scaled to the data available.

    Parameters
    ----------
    samples : the data set; it needs normal images for the test set's 200 N (scaled).
    scale : multiply every count of :data:`TABLE_I` by this factor (rounded down); default: the largest scale
        that the available images of every class allow (``min`` over classes of available / needed).
    seed, by : as in :func:`split`.

    Returns
    -------
    :class:`Split` with strong = 400 B + 400 M, weak = 3291 B + 933 M, test = 200 N + 200 B + 200 M, all times
    ``scale``.

    Notes
    -----
    Taught in ``book/02_data.md``.
    """
    need = {c: sum(TABLE_I[role][c] for role in TABLE_I) for c in (0, 1, 2)}
    have = {c: sum(1 for s in samples if s.image_label == c) for c in (0, 1, 2)}
    if scale is None:
        scale = min(have[c] / need[c] for c in need)
    if scale <= 0:
        missing = [CLASSES[c] for c in need if have[c] == 0]
        raise ValueError(f"Table I needs normal, benign and malignant images; none of class {missing} here")
    counts = {role: {c: int(np.floor(n * scale + 1e-9)) for c, n in per.items()} for role, per in TABLE_I.items()}
    return split(samples, n_strong=counts["strong"], n_test=counts["test"], n_weak=counts["weak"], by=by,
                 seed=seed)
