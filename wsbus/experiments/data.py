"""The data of one experiment: a source, split by patient into strong / weak / validation / test."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from ..data import Sample, hold_out, make_phantom, split
from ..data.folds import Folds, fold_test_set, read_folds
from ..data.sources import load_source, parse_source
from ..seeding import derive_seed
from .adapt import epoch_steps
from .recipe import Recipe

__all__ = ["ExperimentData", "prepare_data", "prepare_cross_site", "experiment_seeds", "load_samples",
           "samples_description", "load_described_samples", "fold_file_of", "display_source"]


@dataclass
class ExperimentData:
    """One patient-level split shared by every run of an experiment seed.

    ``strong`` are the few boxed training images, ``weak`` the image-labelled ones (their hidden boxes kept for
    measuring only), ``val`` the validation images held out from the training patients (settings are chosen on
    them), ``test`` the test images (scored once). ``samples`` is the whole source. ``recipe`` is the recipe
    resolved for this split (:meth:`Recipe.resolve`), ``fold`` the folds file's test fold (None: a random split).
    ``design`` is ``"split"`` (one source split by patient) or ``"cross_site"`` (:func:`prepare_cross_site`: the
    boxes of one source, the image labels, validation and test images of another, ``target``; ``target_strong``
    are target images with their boxes for the ``target_few`` reference).
    """

    source: str
    samples: List[Sample]
    strong: List[Sample]
    weak: List[Sample]
    val: List[Sample]
    test: List[Sample]
    recipe: Optional[Recipe] = None
    fold: Optional[int] = None
    design: str = "split"
    target: Optional[str] = None
    target_strong: List[Sample] = field(default_factory=list)

    def counts(self) -> Dict[str, Any]:
        """Image counts per subset and the test set's classes (for ``results.json``)."""
        return {"source": display_source(self.source), "design": self.design,
                "target": None if self.target is None else display_source(self.target), "fold": self.fold,
                "n_images": len(self.samples), "n_strong": len(self.strong), "n_target_strong": len(self.target_strong),
                "n_weak": len(self.weak), "n_val": len(self.val), "n_test": len(self.test),
                "test_classes": {c: sum(s.image_label == i for s in self.test)
                                 for i, c in enumerate(("normal", "benign", "malignant"))}}


def display_source(spec: str) -> str:
    """A data spec as results show it: a folder source by its folder's name (``busbra:../shared/data/BUSBRA`` ->
    ``busbra:BUSBRA``), with its filters; no machine's local path goes into a table or a results file."""
    kind, sep, rest = spec.partition(":")
    if not sep or kind.lower() == "phantom":
        return spec
    path, q, query = rest.partition("?")
    name = Path(path.rstrip("/")).name or path
    return f"{kind}:{name}{q}{query}"


def experiment_seeds(seed: int) -> tuple:
    """``(init_seed, train_seed)`` of an experiment seed: every run of that seed starts from the same weights and
    draws the same mini-batches."""
    return derive_seed(seed, "demo", "init", bits=32), derive_seed(seed, "demo", "train", bits=32)


def samples_description(source: str, recipe: Recipe, seed: int = 0) -> Dict[str, Any]:
    """How :func:`load_samples` loads ``source`` for ``recipe`` and ``seed``, as plain data a checkpoint can keep
    (:func:`load_described_samples` loads the same samples again): the data spec, and for the phantom its count,
    seed, side and knobs."""
    spec = parse_source(source)
    if spec.kind != "phantom":
        return {"data": source, "phantom": None}
    n = spec.n if ":" in source else recipe.phantom_images  # "phantom:N" overrides the recipe's count
    return {"data": source, "phantom": {"n": int(n), "seed": int(seed), "size": int(recipe.size),
                                        "knobs": dict(recipe.phantom)}}


def load_described_samples(description: Dict[str, Any], data: Optional[str] = None) -> List[Sample]:
    """The samples :func:`samples_description` describes (``data`` replaces a folder source's spec, e.g. the same
    data set at another path)."""
    phantom = description.get("phantom")
    if phantom is not None:
        return make_phantom(phantom["n"], seed=phantom["seed"], size=phantom["size"], **dict(phantom["knobs"]))
    return load_source(data or description["data"])


def load_samples(source: str, recipe: Recipe, seed: int = 0) -> List[Sample]:
    """The samples of ``source`` as an experiment with ``recipe`` and ``seed`` uses them: a folder source as it is,
    the phantom drawn with the recipe's count (unless ``phantom:N``), side and knobs, from the seed."""
    return load_described_samples(samples_description(source, recipe, seed))


def fold_file_of(source: str) -> Path:
    """The folds file a source ships (``--fold K`` without ``--folds``): BUS-BRA's ``5-fold-cv.csv``."""
    spec = parse_source(source)
    if spec.kind != "busbra":
        raise ValueError(f"{source!r} ships no folds file; pass --folds FILE.csv (columns: image id or patient, "
                         f"and fold)")
    for root in (spec.path, spec.path / "BUSBRA"):
        if (root / "5-fold-cv.csv").is_file():
            return root / "5-fold-cv.csv"
    raise FileNotFoundError(f"no 5-fold-cv.csv in {str(spec.path)!r}; pass --folds FILE.csv")


def prepare_data(source: str, recipe: Recipe, seed: int = 0, samples: Optional[Sequence[Sample]] = None, *,
                 folds: Union[str, "os.PathLike[str]", Folds, None] = None,
                 fold: Optional[int] = None) -> ExperimentData:
    """Load ``source`` (a ``--data`` spec; the phantom is drawn with the recipe's size and knobs and the seed) and
    split it by patient (a smaller ``phantom:N`` than the recipe's scales its counts,
    :meth:`Recipe.for_phantom_images`): the test images first (``n_test`` / ``test_fraction`` of the recipe, or fold ``fold`` of a
    folds file), then the boxed images from the training pool, then the validation images held out from the rest
    (``n_val`` / ``val_fraction``), which stays weak. The recipe is then resolved for the split
    (:meth:`Recipe.resolve`: canvas, anchors, steps) and kept as ``data.recipe``. Already loaded ``samples`` skip
    the loading. ``fold`` alone uses the folds file the source ships (BUS-BRA's ``5-fold-cv.csv``).

    Raises ``ValueError`` with a clear message when the source lacks a class, when more boxed, test or validation
    images are asked for than it has, or when the split leaves no weak image.
    """
    samples = list(samples if samples is not None else load_samples(source, recipe, seed))
    if parse_source(source).kind == "phantom":
        recipe = recipe.for_phantom_images(len(samples))
    have = {c: sum(s.image_label == c for s in samples) for c in (1, 2)}
    missing = [name for c, name in ((1, "benign"), (2, "malignant")) if have[c] == 0]
    if missing:
        raise ValueError(f"data source {source!r} has no {' and no '.join(missing)} image: an experiment needs "
                         f"both classes (it has {have[1]} benign and {have[2]} malignant)")
    if fold is not None:
        table = folds if isinstance(folds, Folds) else read_folds(folds if folds is not None else fold_file_of(source))
        pool, test = fold_test_set(samples, table, int(fold))
        n_test = len(test)
    else:
        if folds is not None:
            raise ValueError("--folds needs --fold K (the fold that is the test set)")
        pool, test = samples, None
        n_test, _ = recipe.held_out_sizes(len(samples))
    try:
        parts = split(pool, n_strong=recipe.n_strong, strong_fraction=recipe.strong_fraction,
                      n_test=0 if test is not None else n_test, seed=seed)
    except ValueError as exc:
        raise ValueError(f"cannot split {source!r} ({len(samples)} images) as the recipe asks (n_strong="
                         f"{recipe.n_strong}, strong_fraction={recipe.strong_fraction}, n_test={n_test}): "
                         f"{exc}") from None
    test = list(parts.test) if test is None else test
    weak, val = list(parts.weak), []
    _, n_val = recipe.held_out_sizes(len(samples), len(parts.strong) + len(parts.weak))
    if n_val:
        try:
            weak, val = hold_out(weak, n_val, seed=seed, boxed_only=True)
        except ValueError as exc:
            raise ValueError(f"cannot hold out n_val={n_val} validation images from the {len(weak)} weak "
                             f"training images of {source!r}: {exc}") from None
    if not parts.strong or not weak:
        raise ValueError(f"the split of {source!r} left {len(parts.strong)} strong and {len(weak)} weak images; "
                         f"change the recipe's n_strong / strong_fraction / n_val")
    return ExperimentData(source, samples, list(parts.strong), weak, val, test,
                          recipe=recipe.resolve(parts.strong, weak), fold=fold)


def prepare_cross_site(source: str, target: str, recipe: Recipe, seed: int = 0, *,
                       n_source_strong: Optional[int] = None, n_target_strong: int = 0,
                       samples: Optional[Sequence[Sample]] = None,
                       target_samples: Optional[Sequence[Sample]] = None) -> ExperimentData:
    """A cross-site experiment's data: the boxed images of ``source`` (all, or ``n_source_strong`` drawn by patient
    and stratified by label) as the strong set, and ``target`` split by patient into test images (the recipe's
    ``n_test`` / ``test_fraction``), validation images (``n_val`` / ``val_fraction``) and the weak images (their
    image labels only: the site's own labels). ``n_target_strong`` target training images keep their boxes for the
    ``target_few`` reference (they also stay in the weak set). No patient and no image id may be on both sides.

    The recipe is resolved for this data (canvas and anchors from the source's boxes and both sites' images); the
    source-only run trains for the recipe's all-boxes epochs over the source's boxes when every source box is used,
    and ``target_full`` for the same epochs over the target's training images.

    Taught in ``book/14_your_own_scans.md``.
    """
    src = list(samples if samples is not None else load_samples(source, recipe, seed))
    tgt = list(target_samples if target_samples is not None else load_samples(target, recipe, seed))
    boxed = [s for s in src if s.is_strong and s.image_label > 0]
    if not boxed:
        raise ValueError(f"source {source!r} has no boxed image with a mass: a cross-site experiment takes its boxes")
    shared_ids = sorted({s.id for s in src} & {s.id for s in tgt})
    shared_patients = sorted({s.patient for s in src if s.patient} & {s.patient for s in tgt if s.patient})
    if shared_ids or shared_patients:
        raise ValueError(f"source {source!r} and target {target!r} share {len(shared_ids)} image id(s) and "
                         f"{len(shared_patients)} patient(s) (e.g. {(shared_ids or shared_patients)[:3]}); a "
                         f"cross-site experiment needs disjoint sites")
    have = {c: sum(s.image_label == c for s in tgt) for c in (1, 2)}
    if not all(have.values()):
        raise ValueError(f"target {target!r} needs benign and malignant images, it has {have[1]} and {have[2]}")
    n_test, _ = recipe.held_out_sizes(len(tgt))
    try:
        parts = split(tgt, n_strong=int(n_target_strong), n_test=n_test, seed=seed)
    except ValueError as exc:
        raise ValueError(f"cannot split target {target!r} ({len(tgt)} images; n_test={n_test}, "
                         f"n_target_strong={n_target_strong}): {exc}") from None
    pool = list(parts.strong) + list(parts.weak)
    _, n_val = recipe.held_out_sizes(len(tgt), len(pool))
    weak, val = (hold_out(pool, n_val, seed=seed, boxed_only=True) if n_val else (pool, []))
    in_weak = {s.id for s in weak}
    target_strong = [s for s in parts.strong if s.id in in_weak]
    strong = boxed if n_source_strong is None else hold_out(boxed, int(n_source_strong), seed=seed)[1]
    steps: Dict[str, int] = {}
    full_epochs = recipe.epochs.get("strong_full")
    if full_epochs:
        if n_source_strong is None:
            steps["source_only"] = epoch_steps(full_epochs, len(strong), recipe.batch_strong, recipe.min_steps)
        steps["target_full"] = epoch_steps(full_epochs, len(weak), recipe.batch_strong, recipe.min_steps)
    elif recipe.strong_full_steps:
        steps = {"source_only": int(recipe.strong_full_steps), "target_full": int(recipe.strong_full_steps)}
        if n_source_strong is not None:
            steps.pop("source_only")
    resolved = recipe.replace(method_steps={**steps, **dict(recipe.method_steps)}).resolve(strong, weak)
    return ExperimentData(source, src + tgt, list(strong), list(weak), list(val), list(parts.test),
                          recipe=resolved, design="cross_site", target=target, target_strong=target_strong)
