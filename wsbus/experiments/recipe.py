"""One object that says how an experiment trains and measures: :class:`Recipe`, and its presets.

The demo, the ablation, ``wsbus experiment`` and ``wsbus train``'s defaults all read their settings from a
recipe, so a user gets the settings that measured best without reading any runner's source. :func:`recipe_for`
picks the preset of a data source: :data:`PHANTOM` for the embedded phantom, :data:`REAL` for real scans. Why
each preset holds what it holds is recorded, with the measurements, in ``docs/decisions.md``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..losses import REFERENCE_MIL_WEIGHTS
from ..schedules import gradual
from .adapt import anchor_sizes, canvas_size, epoch_steps, held_out_count, input_scales

__all__ = ["Recipe", "PHANTOM", "PHANTOM_QUICK", "REAL", "REAL_QUICK", "PAPER", "RECIPES", "QUICK_RECIPES",
           "PAPER_JOINT", "recipe_for",
           "mil_class_weights"]

Counts = Union[int, Mapping[int, int]]


def mil_class_weights(spec: Union[str, Sequence[float], None], samples: Sequence[Any]) -> Optional[Tuple[float, ...]]:
    """MIL class weights: ``"inverse_frequency"`` of the samples' benign/malignant image labels (normal weight 0,
    as the reference's ``[0, 0.2209, 0.7791]``, which is SNUBH's 933 / 3291 malignant/benign ratio),
    ``"reference"`` (those SNUBH weights themselves), None (a plain mean), or three numbers as given.
    Taught in ``book/06_joint_training.md``."""
    if spec is None or not isinstance(spec, str):
        return None if spec is None else tuple(float(w) for w in spec)
    if spec == "reference":
        return REFERENCE_MIL_WEIGHTS
    if spec != "inverse_frequency":
        raise ValueError(f"mil_class_weights must be 'inverse_frequency', 'reference', None or 3 numbers, got "
                         f"{spec!r}")
    counts = [sum(s.image_label == c for s in samples) for c in (1, 2)]
    if min(counts) == 0:
        raise ValueError(f"inverse-frequency MIL weights need benign and malignant training images, got "
                         f"{counts[0]} benign and {counts[1]} malignant")
    inv = [1.0 / n for n in counts]
    return (0.0, inv[0] / sum(inv), inv[1] / sum(inv))


#: The fields of :class:`Recipe` that only ``joint_self_training`` reads.
SELF_TRAINING_FIELDS = ("self_training", "self_training_fraction", "retrain", "per_class", "self_training_rounds",
                        "self_training_steps", "mean_teacher")
#: The fields that only the joint runs (and through them the self-training) read.
JOINT_FIELDS = ("alpha", "alpha_stretch", "mixing", "moi_teacher", "joint_trainer", "joint_steps", "joint_warm_start")
#: For each method, the fields it never reads (:meth:`Recipe.used_by`).
UNREAD_FIELDS = {
    "strong_full": SELF_TRAINING_FIELDS + JOINT_FIELDS + ("batch_weak", "moi_rules", "mil_class_weights"),
    "strong_few": SELF_TRAINING_FIELDS + JOINT_FIELDS + ("batch_weak", "moi_rules", "mil_class_weights",
                                                         "strong_full_steps"),
    "weak_only": SELF_TRAINING_FIELDS + JOINT_FIELDS + ("batch_strong", "strong_full_steps"),
    "joint": SELF_TRAINING_FIELDS + ("strong_full_steps",),
    # joint_paper replaces the recipe's joint settings by the paper's (PAPER_JOINT); it reads joint_steps and
    # joint_warm_start only for its step count
    "joint_paper": SELF_TRAINING_FIELDS + ("alpha", "alpha_stretch", "mixing", "moi_teacher", "joint_trainer",
                                           "moi_rules", "batch_strong", "batch_weak", "lr", "weight_decay",
                                           "strong_full_steps"),
}


@dataclass(frozen=True)
class Recipe:
    """Everything an experiment trains and measures, except its data source and seed.

    Attributes
    ----------
    n_strong, strong_fraction : the few boxed training images (a count, or a share of the training pool).
    n_test : test images (a count, or class index -> count).
    test_fraction, min_test : instead of ``n_test``: this fraction of the images, at least ``min_test``
        (:func:`wsbus.experiments.adapt.held_out_count`), so the held-out sets scale with the data set.
    n_val : validation images held out from the training patients (0: none); settings are chosen on them, never
        on the test set. val_fraction, min_val : instead of ``n_val``: this fraction of the training pool, at least
        ``min_val``.
    phantom_images, phantom : the phantom's image count and :func:`wsbus.data.make_phantom` knobs (phantom
        source only; its side is ``size``).
    backbone, size, max_size : the detector (:func:`wsbus.models.build_detector`) and its input resizing
        (``min_size = size``; ``max_size``, the side of the square canvas every image is padded to, defaults to
        ``size``: right for the square phantom; ``"auto"``: from the training images' shapes,
        :func:`wsbus.experiments.adapt.canvas_size`).
    detector : more :func:`~wsbus.models.build_detector` options (anchors, ``weak_proposals``, ...);
        ``anchor_sizes="auto"``: from the boxed training images' mass sizes at the input scale
        (:func:`wsbus.experiments.adapt.anchor_sizes`).
    moi_rules : MoI rules of the weakly supervised runs (:func:`wsbus.mil.as_rule_map`).
    mil_class_weights : ``"inverse_frequency"`` of the training labels, None, or 3 numbers.
    steps : training steps of every few-box run; ``strong_full_steps`` those of the all-boxes reference (default
        ``steps``: it may need more to converge on a large training set).
    method_steps : explicit steps of named methods (first in :meth:`steps_of`; cross-site experiments set those of
        ``source_only`` and ``target_full`` from the data).
    epochs, min_steps : steps from the data's size instead: ``{"strong_full": e}`` shows every boxed training
        image about ``e`` times, ``{"joint": e}`` / ``{"joint_self_training": e}`` every weak image (at least
        ``min_steps``; :func:`wsbus.experiments.adapt.epoch_steps`).
    pretrain : label-free pretraining of the backbone on the split's training images (boxed and weak; never the
        validation or test images) before any method trains, as keyword arguments of
        :func:`wsbus.pretrain.pretrain_backbone` (``{"method": "simclr", "steps": 1500}``); every method then starts
        from the pretrained backbone. Empty: none.
    joint_warm_start, joint_steps : the joint run starts from the strong_few model (a warm-up on the boxed images
        alone, whose steps then count in its budget) and trains ``joint_steps`` more steps (default ``steps``).
    moi_teacher : the joint run's masses of interest are chosen by a teacher (ours): the keyword arguments of
        :class:`wsbus.teachers.MoITeacher` (``decay``, ``min_confidence``, ``confidence``, ``regress``); empty: the
        head being trained chooses (the paper). With ``joint_warm_start`` the teacher starts as the strong_few model.
    joint_trainer : :class:`wsbus.engine.Trainer` settings that differ for the joint run (e.g. ``lr``,
        ``lr_schedule``, ``lr_floor``).
    batch_strong, batch_weak : images per step from each stream.
    lr, weight_decay : Adam's settings.
    alpha : the MIL weight of the joint runs: ``"gradual"`` or a constant.
    alpha_stretch : the gradual alpha climbs the reference's 30 stairs over ``alpha_stretch * steps`` steps, so it
        ends a run at ``1 - 0.99 * 0.9^floor(30 / alpha_stretch)`` (1: the plain scaling of the paper's schedule).
    mixing : ``"combined"`` (the paper) or ``"alternating"`` mini-batches.
    self_training : the self-training procedure of ``joint_self_training``: ``"paper"`` (offline: rank, move the
        top ``self_training_fraction``, retrain; ``retrain``, ``per_class``, ``self_training_rounds``) or
        ``"mean_teacher"`` (ours, online; its settings in ``mean_teacher``, a
        :class:`wsbus.self_training.MeanTeacherSettings` as a mapping), see :func:`wsbus.self_training.self_train`.
    self_training_steps : steps of the retraining (default ``steps``).
    n_boot : bootstrap resamples of the CIs. panel_images : test images per class in the detection panels.

    Taught in ``book/01_introduction.md``.
    """

    # data
    n_strong: Optional[Counts] = None
    strong_fraction: Optional[float] = 0.05
    n_test: Counts = field(default_factory=lambda: {0: 30, 1: 60, 2: 60})
    test_fraction: Optional[float] = None
    min_test: int = 0
    n_val: Counts = 0
    val_fraction: Optional[float] = None
    min_val: int = 0
    phantom_images: int = 560
    phantom: Mapping[str, Any] = field(default_factory=lambda: dict(distractor_similarity=0.8, n_distractors=4.0))
    # detector
    backbone: str = "tiny"
    size: int = 128
    max_size: Union[int, str, None] = None
    detector: Mapping[str, Any] = field(default_factory=lambda: dict(weak_proposals=10))
    moi_rules: str = "most_abnormal/most_malignant"
    mil_class_weights: Union[str, Sequence[float], None] = "inverse_frequency"
    # training
    steps: int = 800
    strong_full_steps: Optional[int] = None
    epochs: Mapping[str, float] = field(default_factory=dict)
    min_steps: int = 500
    method_steps: Mapping[str, int] = field(default_factory=dict)
    pretrain: Mapping[str, Any] = field(default_factory=dict)
    joint_warm_start: bool = False
    joint_steps: Optional[int] = None
    moi_teacher: Mapping[str, Any] = field(default_factory=dict)
    joint_trainer: Mapping[str, Any] = field(default_factory=dict)
    batch_strong: int = 2
    batch_weak: int = 2
    lr: float = 5e-4
    weight_decay: float = 5e-4
    alpha: Union[str, float] = "gradual"
    alpha_stretch: float = 4.0
    mixing: str = "combined"
    # self-training
    self_training: str = "paper"
    self_training_fraction: float = 0.5
    retrain: str = "scratch"
    per_class: bool = True
    self_training_rounds: int = 1
    self_training_steps: Optional[int] = None
    mean_teacher: Mapping[str, Any] = field(default_factory=dict)
    # evaluation
    n_boot: int = 1000
    panel_images: int = 2

    def __post_init__(self) -> None:
        if (self.n_strong is None) == (self.strong_fraction is None):
            raise ValueError("a recipe gives n_strong or strong_fraction (one of them)")
        if self.self_training not in ("paper", "mean_teacher"):
            raise ValueError(f"self_training must be 'paper' or 'mean_teacher', got {self.self_training!r}")
        if not self.alpha_stretch > 0:
            raise ValueError(f"alpha_stretch must be > 0, got {self.alpha_stretch!r}")
        for name in ("steps", "batch_strong", "batch_weak", "size", "n_boot"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("test_fraction", "val_fraction"):
            value = getattr(self, name)
            if value is not None and not 0.0 < float(value) < 1.0:
                raise ValueError(f"{name} must lie in (0, 1), got {value!r}")
        unknown = sorted(set(self.epochs) - {"strong_full", "joint", "joint_self_training"})
        if unknown:
            raise ValueError(f"epochs may set strong_full, joint and joint_self_training, got {unknown}")
        if isinstance(self.max_size, str) and self.max_size != "auto":
            raise ValueError(f"max_size must be a number, None or 'auto', got {self.max_size!r}")

    def used_by(self, method: str) -> "Recipe":
        """The recipe as far as ``method`` reads it: the fields it never reads (:data:`UNREAD_FIELDS`: e.g. the
        self-training's for every other method, the joint run's for strong_few) are reset to their defaults, so that
        a stored result stays valid when only those fields change (an experiment that changes the self-training
        keeps its trained baselines). Methods not listed (``joint_self_training``, which starts from ``joint``) read
        everything."""
        unread = UNREAD_FIELDS.get(method, ())
        if not unread:
            return self
        defaults = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                    for f in dataclasses.fields(self) if f.name in unread}
        return dataclasses.replace(self, **defaults)

    def steps_of(self, method: str) -> int:
        """Training steps of ``method``: ``strong_full_steps``, ``joint_steps`` and ``self_training_steps`` where
        set, else ``steps``; ``joint_paper`` trains as long as ``joint`` with its warm-up (equal compute)."""
        if method in self.method_steps:
            return int(self.method_steps[method])
        if method == "joint_paper":
            return int(self.joint_steps or self.steps) + (int(self.steps) if self.joint_warm_start else 0)
        special = {"strong_full": self.strong_full_steps, "joint": self.joint_steps,
                   "joint_self_training": self.self_training_steps}
        return int(special.get(method) or self.steps)

    def for_method(self, method: str) -> "Recipe":
        """The recipe as ``method`` trains: itself, except for ``joint_paper``, which trains the paper's joint
        method exactly whatever the recipe's joint does (:data:`PAPER_JOINT`: the paper's MoI map chosen by the head
        being trained, no teacher and no warm start, gradual alpha over the whole run, combined mini-batches of 1
        strong + 2 weak images, Adam at a constant 5e-4 with weight decay 5e-4, the MoI among the training-time
        proposals), for :meth:`steps_of` ``("joint_paper")`` steps. Data, detector size, anchors and MIL class
        weights stay the recipe's."""
        if method != "joint_paper":
            return self
        detector = dict(self.detector)
        detector.pop("weak_proposals", None)
        detector["weak_proposals"] = PAPER_WEAK_PROPOSALS
        return self.replace(joint_steps=self.steps_of("joint_paper"), detector=detector, **PAPER_JOINT)

    def held_out_sizes(self, n_images: int, n_pool: Optional[int] = None) -> Tuple[Counts, Counts]:
        """``(n_test, n_val)`` for a data set of ``n_images`` (and a training pool of ``n_pool``): the counts, or
        the fractions with their floors."""
        n_test = (held_out_count(n_images, self.test_fraction, self.min_test) if self.test_fraction is not None
                  else self.n_test)
        n_val = self.n_val
        if self.val_fraction is not None:
            n_val = held_out_count(n_images if n_pool is None else n_pool, self.val_fraction, self.min_val)
        return n_test, n_val

    def resolve(self, strong: Sequence[Any], weak: Sequence[Any]) -> "Recipe":
        """The recipe with every data-dependent field a number, for a split whose boxed training images are
        ``strong`` and weak ones ``weak``: the canvas (``max_size="auto"``), the anchors
        (``detector["anchor_sizes"] = "auto"``) and the steps of ``epochs``. A resolved recipe resolves to
        itself."""
        changes: Dict[str, Any] = {}
        train = list(strong) + list(weak)
        max_size = self.max_size
        if max_size == "auto":
            max_size = canvas_size([(s.height, s.width) for s in train], self.size)
        elif max_size is None:
            max_size = self.size
        if max_size != self.max_size:
            changes["max_size"] = max_size
        if self.detector.get("anchor_sizes") == "auto":
            scales = input_scales([(s.height, s.width) for s in strong], self.size,
                                  max_size if max_size is not None else self.size)
            sides = [float(np.sqrt((b[2] - b[0]) * (b[3] - b[1]))) * k for s, k in zip(strong, scales)
                     for b in s.boxes]
            changes["detector"] = {**self.detector, "anchor_sizes": anchor_sizes(sides)}
        counts = {"strong_full": (len(train), self.batch_strong), "joint": (len(weak), self.batch_weak),
                  "joint_self_training": (len(weak), self.batch_weak)}
        steps_field = {"strong_full": "strong_full_steps", "joint": "joint_steps",
                       "joint_self_training": "self_training_steps"}
        for method, epochs in self.epochs.items():
            n, batch = counts[method]
            changes[steps_field[method]] = epoch_steps(epochs, n, batch, self.min_steps)
        if self.epochs:
            changes["epochs"] = {}
        return self.replace(**changes) if changes else self

    def joint_is_papers(self) -> bool:
        """True when the recipe's ``joint`` trains as the paper does (:data:`PAPER_JOINT`'s choices: its MoI map
        chosen by the head being trained, gradual alpha over the whole run, combined mini-batches, no warm start);
        otherwise ``joint`` is ours and every table says so."""
        return (self.moi_rules == "paper" and not self.moi_teacher and not self.joint_warm_start
                and not self.joint_trainer and self.alpha == "gradual" and self.alpha_stretch == 1.0
                and self.mixing == "combined")

    def for_phantom_images(self, n_images: int) -> "Recipe":
        """The recipe for a phantom of ``n_images`` images (``phantom:N``): its image counts (``n_test``,
        ``n_val``, ``n_strong``) were chosen for ``phantom_images`` images, so a smaller draw scales each count by
        ``n_images / phantom_images`` (rounded, at least 1 where the recipe asks for any); fractions need no
        change, and a draw at least as large keeps the counts."""
        if n_images >= self.phantom_images:
            return self
        factor = n_images / self.phantom_images

        def scale(count: Any) -> Any:
            if isinstance(count, Mapping):
                return {k: scale(v) for k, v in count.items()}
            return count if count is None else (max(1, round(count * factor)) if count else 0)

        return self.replace(phantom_images=int(n_images), n_test=scale(self.n_test), n_val=scale(self.n_val),
                            n_strong=scale(self.n_strong))

    def replace(self, **changes: Any) -> "Recipe":
        """A copy with ``changes`` (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> Dict[str, Any]:
        """Plain data (for ``results.json``)."""
        d = dataclasses.asdict(self)
        for key in ("phantom", "detector", "mean_teacher", "moi_teacher", "joint_trainer", "epochs", "pretrain",
                    "method_steps"):
            d[key] = dict(getattr(self, key))
        for key in ("n_test", "n_val", "n_strong"):
            if isinstance(d[key], Mapping):
                d[key] = {str(k): int(v) for k, v in d[key].items()}
        return d

    def detector_options(self, train_samples: Sequence[Any], **overrides: Any) -> Dict[str, Any]:
        """Keyword arguments of :func:`wsbus.models.build_detector` (``backbone`` included) for a run on
        ``train_samples`` (they set the inverse-frequency MIL weights); ``overrides`` win."""
        options = dict(backbone=self.backbone, min_size=self.size,
                       max_size=self.max_size if self.max_size is not None else self.size,
                       moi_rules=self.moi_rules, mil_class_weights=mil_class_weights(self.mil_class_weights,
                                                                                    train_samples),
                       **dict(self.detector))
        options.update(overrides)
        return options

    def alpha_schedule(self, steps: int, spec: Any = None) -> Any:
        """The MIL weight of a joint run of ``steps`` steps: ``"gradual"`` climbs over ``alpha_stretch * steps``
        steps; a number is a constant. ``spec`` overrides the recipe's ``alpha``."""
        spec = self.alpha if spec is None else spec
        if isinstance(spec, str) and spec.strip().lower() == "gradual":
            return gradual(total_steps=max(1, int(round(self.alpha_stretch * steps))))
        return spec

    def trainer_options(self) -> Dict[str, Any]:
        """The :class:`wsbus.engine.Trainer` settings every run of the recipe shares."""
        return dict(batch_strong=self.batch_strong, batch_weak=self.batch_weak, lr=self.lr, weight_decay=self.weight_decay)


#: What ``joint_paper`` changes in any recipe (:meth:`Recipe.for_method`): the paper's joint training (Shin et al.,
#: Sec. III and Table II's proposed row; the reference TF code's optimiser).
PAPER_JOINT = dict(moi_rules="paper", moi_teacher={}, joint_warm_start=False, joint_trainer={}, alpha="gradual",
                   alpha_stretch=1.0, mixing="combined", batch_strong=1, batch_weak=2, lr=5e-4, weight_decay=5e-4)
#: The paper scores every training-time proposal of a weak image (the reference: all 2,000); ``"training"`` makes
#: the MoI candidates the detector's training-time post-NMS proposals.
PAPER_WEAK_PROPOSALS = "training"

#: The embedded phantom's recipe: ``wsbus demo`` (a few minutes of training on one CPU thread). Its self-training is
#: the mean teacher keeping the MIL loss (chosen on a validation split: docs/results/phantom/self_training_dev.json).
PHANTOM = Recipe(self_training="mean_teacher", mean_teacher=dict(decay=0.995, score_thresh=0.7, keep_mil=True))
#: A smoke run of the same outputs (well under a minute).
PHANTOM_QUICK = Recipe(phantom_images=70, size=64, n_test={0: 4, 1: 8, 2: 8}, strong_fraction=0.2, steps=8,
                       n_boot=200, panel_images=1)
#: Real B-mode scans (BUS-BRA, BUSI, VOC-BUS, COCO and mask folders): 50 boxed images; 20 % of the images for
#: test (at least 150) and 15 % of the training pool for validation (at least 100); the canvas and the anchors
#: from the data; the all-boxes reference trained for 15 epochs of its boxed images, the joint run and the
#: self-training for 2.4 epochs of the weak images; the joint training ours, measured best on BUS-BRA's validation
#: split (docs/decisions.md): a warm start from strong_few, a frozen teacher choosing the MoI and its regressed box
#: (its confidence gate open: closing it at 0.98 cost 8.9 CorLoc points on fold 1's validation split, McNemar
#: p = 9e-5), the most abnormal region for both labels among 30 proposals, a constant alpha and a cosine learning
#: rate; self-training with the mean teacher keeping the MIL loss; every method starting from a backbone pretrained
#: without labels (an autoencoder, 1,500 steps) on the split's training images (docs/results/busbra_levers/).
REAL = Recipe(n_strong=50, strong_fraction=None, test_fraction=0.2, min_test=150, val_fraction=0.15, min_val=100,
              size=160, max_size="auto", detector=dict(weak_proposals=30, anchor_sizes="auto"),
              moi_rules="most_abnormal/most_abnormal", steps=3000,
              epochs={"strong_full": 15.0, "joint": 2.4, "joint_self_training": 2.4}, min_steps=500,
              pretrain={"method": "autoencoder", "steps": 1500, "amp": True}, alpha=0.5,
              joint_warm_start=True, moi_teacher=dict(decay=1.0, min_confidence=0.0, confidence="abnormal",
                                                      regress=True),
              joint_trainer=dict(lr=2e-4, lr_schedule="cosine", lr_floor=0.02), self_training="mean_teacher",
              mean_teacher=dict(decay=0.995, score_thresh=0.7, keep_mil=True))
#: A smoke run on real scans (a small subset is enough).
REAL_QUICK = REAL.replace(n_strong=8, test_fraction=None, n_test=12, val_fraction=None, n_val=0, steps=6, epochs={},
                          n_boot=100, panel_images=1,
                          pretrain={"method": "autoencoder", "steps": 2, "batch_size": 8})


#: The paper's own settings (Table I's split of SNUBH, VGG16 at 600 px, 60k steps of 1 strong + 2 weak images, the
#: proposed MoI map, gradual alpha over the whole run, the reference's MIL weights, self-training ranked over all
#: weak images): for a GPU and a data set of SNUBH's size.
PAPER = Recipe(n_strong={1: 400, 2: 400}, strong_fraction=None, n_test={0: 200, 1: 200, 2: 200}, backbone="vgg16",
               size=600, max_size=1000, detector={}, moi_rules="paper", mil_class_weights="reference", steps=60000,
               batch_strong=1, batch_weak=2, alpha_stretch=1.0, per_class=False)
#: Every preset by name (the command line's ``--recipe``).
RECIPES = {"phantom": PHANTOM, "real": REAL, "paper": PAPER}
#: The smoke version of each preset that has one (``--recipe NAME --quick``).
QUICK_RECIPES = {"phantom": PHANTOM_QUICK, "real": REAL_QUICK}


def recipe_for(kind: str, quick: bool = False) -> Recipe:
    """The preset of a data source kind (``"phantom"``, or a real source: ``"voc"``, ``"busi"``, ``"busbra"``,
    ``"coco"``, ``"masks"``)."""
    if kind == "phantom":
        return PHANTOM_QUICK if quick else PHANTOM
    return REAL_QUICK if quick else REAL
