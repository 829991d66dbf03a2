"""The data of one experiment: a source, split by patient into strong / weak / validation / test."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from ..data import Sample, hold_out, make_phantom, split
from ..data.sources import load_source, parse_source
from ..seeding import derive_seed
from .recipe import Recipe

__all__ = ["ExperimentData", "prepare_data", "experiment_seeds"]


@dataclass
class ExperimentData:
    """One patient-level split shared by every run of an experiment seed.

    ``strong`` are the few boxed training images, ``weak`` the image-labelled ones (their hidden boxes kept for
    measuring only), ``val`` the validation images held out from the training patients (settings are chosen on
    them), ``test`` the test images (scored once). ``samples`` is the whole source.
    """

    source: str
    samples: List[Sample]
    strong: List[Sample]
    weak: List[Sample]
    val: List[Sample]
    test: List[Sample]

    def counts(self) -> Dict[str, Any]:
        """Image counts per subset and the test set's classes (for ``results.json``)."""
        return {"source": self.source, "n_images": len(self.samples), "n_strong": len(self.strong),
                "n_weak": len(self.weak), "n_val": len(self.val), "n_test": len(self.test),
                "test_classes": {c: sum(s.image_label == i for s in self.test)
                                 for i, c in enumerate(("normal", "benign", "malignant"))}}


def experiment_seeds(seed: int) -> tuple:
    """``(init_seed, train_seed)`` of an experiment seed: every run of that seed starts from the same weights and
    draws the same mini-batches."""
    return derive_seed(seed, "demo", "init", bits=32), derive_seed(seed, "demo", "train", bits=32)


def prepare_data(source: str, recipe: Recipe, seed: int = 0,
                 samples: Optional[Sequence[Sample]] = None) -> ExperimentData:
    """Load ``source`` (a ``--data`` spec; the phantom is drawn with the recipe's size and knobs and the seed) and
    split it by patient: test images first, then the boxed images from the training pool, then ``n_val`` validation
    images held out from the rest, which stays weak. Already loaded ``samples`` skip the loading.

    Raises ``ValueError`` with a clear message when the source lacks a class, when more boxed, test or validation
    images are asked for than it has, or when the split leaves no weak image.
    """
    spec = parse_source(source)
    if samples is None:
        if spec.kind == "phantom":
            n = spec.n if ":" in source else recipe.phantom_images  # "phantom:N" overrides the recipe's count
            samples = make_phantom(n, seed=seed, size=recipe.size, **dict(recipe.phantom))
        else:
            samples = load_source(source)
    samples = list(samples)
    have = {c: sum(s.image_label == c for s in samples) for c in (1, 2)}
    missing = [name for c, name in ((1, "benign"), (2, "malignant")) if have[c] == 0]
    if missing:
        raise ValueError(f"data source {source!r} has no {' and no '.join(missing)} image: an experiment needs "
                         f"both classes (it has {have[1]} benign and {have[2]} malignant)")
    try:
        parts = split(samples, n_strong=recipe.n_strong, strong_fraction=recipe.strong_fraction, n_test=recipe.n_test,
                      seed=seed)
    except ValueError as exc:
        raise ValueError(f"cannot split {source!r} ({len(samples)} images) as the recipe asks (n_strong="
                         f"{recipe.n_strong}, strong_fraction={recipe.strong_fraction}, n_test={recipe.n_test}): "
                         f"{exc}") from None
    weak, val = list(parts.weak), []
    if recipe.n_val:
        try:
            weak, val = hold_out(weak, recipe.n_val, seed=seed)
        except ValueError as exc:
            raise ValueError(f"cannot hold out n_val={recipe.n_val} validation images from the {len(weak)} weak "
                             f"training images of {source!r}: {exc}") from None
    if not parts.strong or not weak:
        raise ValueError(f"the split of {source!r} left {len(parts.strong)} strong and {len(weak)} weak images; "
                         f"change the recipe's n_strong / strong_fraction / n_val")
    return ExperimentData(source, samples, list(parts.strong), weak, val, list(parts.test))
