"""``wsbus experiment``: the paper's Table V and Table IV protocol on any data source.

The methods (:data:`wsbus.experiments.METHODS`: ``strong_full``, ``strong_few``, ``weak_only``, ``joint``,
``joint_paper``, ``joint_self_training``) are trained on one patient-level split
(:func:`wsbus.experiments.prepare_data`) through the one training path (:func:`wsbus.experiments.train_method`),
each from the same initial weights and with the same mini-batch order, and evaluated on the same test images.

Every run trains with checkpoints under ``out_dir/runs/<method>/`` and writes its result there when it ends, so an
interrupted experiment, started again with the same arguments, skips the finished methods and resumes the
unfinished one from its last checkpoint (bit for bit on CPU). A stored result is reused only when the same recipe,
seed, evaluation images and code (:mod:`wsbus.provenance`) made it. Outputs: ``results.json`` (design §11's schema
plus CIs, McNemar p-values against ``joint``, the bootstrap t-test, the finding's checks, what the MIL loss
reached, pseudo-box precision, FROC, timings and provenance), ``table_v.md``, ``table_iv.md``, ``detections.png``,
``loss_curves.png``, ``precision_vs_rank.png`` and ``froc.png``.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoint import atomic_save, atomic_write_json, atomic_write_text, load_checkpoint
from ..data.sources import parse_source
from ..distributed import resolve_device
from ..engine import History
from ..evaluate import (MethodResult, add_p_values, evaluate_detections, froc, mcnemar_exact, paired_test,
                        render_table, results_table, to_json_methods)
from ..inference import detect
from ..models import PRESETS
from ..pretrain import load_pretrained
from ..provenance import describe_code, provenance, same_code
from ..seeding import cpu_threads
from ..self_training import MeanTeacherSettings, self_train
from ..viz.detections import plot_precision_vs_rank
from .data import (ExperimentData, display_source, experiment_seeds, prepare_cross_site, prepare_data,
                   samples_description)
from .figures import froc_figure, loss_figure, panels_figure
from .methods import (METHODS, build_method_model, method_names, mil_warning, pretrained_backbone, train_method,
                      warm_start_of)
from .parallel import method_dependencies, run_parallel
from .progress import StepProgress
from .recipe import Recipe, recipe_for

__all__ = ["METHODS", "SUPERVISION", "Experiment", "run_experiment", "run_experiments", "run_folds",
           "summarize_experiments", "check_finding", "check_cross_site", "supervision_of", "describe_settings",
           "default_methods"]

logger = logging.getLogger("wsbus.experiments")

#: How Table V names each self-training procedure.
PROCEDURE_NAMES = {"paper": "paper's self-training", "mean_teacher": "mean teacher, ours"}
#: Table V's "Supervision" column of each method (see :func:`supervision_of` for the joint runs' labels).
SUPERVISION = {"strong_full": "Strong", "strong_few": "Strong", "weak_only": "Weak", "joint": "Weak & Semi",
               "joint_paper": "Weak & Semi (paper)", "joint_self_training": "Weak & Semi",
               "source_only": "Strong (source boxes)", "target_few": "Strong (a few target boxes)",
               "target_full": "Strong (every target box)"}
#: What a cross-site experiment's joint run must gain over source_only (CorLoc, a fraction) to meet its goal.
CROSS_SITE_GAIN = 0.05
#: Significance level of the finding's checks.
FINDING_ALPHA = 0.05
Device = Union[str, torch.device, None]


def supervision_of(method: str, recipe: Recipe) -> str:
    """Table V's "Supervision" text of ``method`` under ``recipe``: the joint run says "(ours)" when the recipe's joint
    training is not the paper's (:meth:`Recipe.joint_is_papers`), the self-training names its procedure."""
    text = SUPERVISION[method]
    if method == "joint":
        text += " (paper)" if recipe.joint_is_papers() else " (ours)"
    if method == "joint_self_training":
        text += f" ({PROCEDURE_NAMES[recipe.self_training]})"
    return text


def check_finding(by_name: Mapping[str, Any], p_values: Optional[Mapping[str, float]] = None,
                  alpha: float = FINDING_ALPHA) -> Dict[str, Any]:
    """The orderings the paper reports (Table V), as measured: joint significantly above strong_few (McNemar
    ``p_values["strong_few"]`` < ``alpha``; without p-values the check is False), strong_few below strong_full,
    weak_only more than 20 points below both; ``holds`` when all three do. The differences are in fractions;
    ``joint_paper`` (when present) is reported beside, with its own p-value against strong_few."""
    c = {k: float(m.overall) for k, m in by_name.items()}
    p = dict(p_values or {})
    p_few = p.get("strong_few")
    checks = {"joint_above_strong_few": c["joint"] > c["strong_few"] and p_few is not None and p_few < alpha,
              "strong_few_below_strong_full": c["strong_few"] < c["strong_full"],
              "weak_only_far_below": c["weak_only"] < min(c["strong_few"], c["joint"]) - 0.2}
    out = {"checks": checks, "holds": all(checks.values()), "alpha": alpha,
           "p_joint_vs_strong_few": p_few,
           "joint_minus_strong_few": c["joint"] - c["strong_few"],
           "strong_full_minus_strong_few": c["strong_full"] - c["strong_few"],
           "joint_minus_weak_only": c["joint"] - c["weak_only"],
           "joint_over_strong_full": c["joint"] / c["strong_full"] if c["strong_full"] > 0 else float("nan")}
    if "joint_paper" in c:
        out["joint_paper_minus_strong_few"] = c["joint_paper"] - c["strong_few"]
        out["p_joint_paper_vs_strong_few"] = p.get("joint_paper_vs_strong_few")
    return out


def check_cross_site(by_name: Mapping[str, Any], p_values: Mapping[str, float], alpha: float = FINDING_ALPHA,
                     gain: float = CROSS_SITE_GAIN) -> Dict[str, Any]:
    """A cross-site experiment's finding on the target: joint at least ``gain`` above source_only with McNemar
    ``p_values["source_only"]`` < ``alpha`` (the p-values are against ``source_only``: ``p_values["joint"]``), and
    joint_self_training not below joint; ``holds`` when both do."""
    c = {k: float(m.overall) for k, m in by_name.items()}
    p = p_values.get("joint")
    checks = {"joint_gains_over_source_only": c["joint"] - c["source_only"] >= gain and p is not None and p < alpha}
    if "joint_self_training" in c:
        checks["self_training_not_below_joint"] = c["joint_self_training"] >= c["joint"]
    out = {"checks": checks, "holds": all(checks.values()), "alpha": alpha, "required_gain": gain,
           "p_joint_vs_source_only": p, "joint_minus_source_only": c["joint"] - c["source_only"]}
    for ref in ("target_few", "target_full"):
        if ref in c:
            out[f"joint_minus_{ref}"] = c["joint"] - c[ref]
    return out


def _result_state(m: MethodResult, detections: List[Dict[str, torch.Tensor]], history: History,
                  timing: Mapping[str, float], extra: Mapping[str, Any]) -> Dict[str, Any]:
    """A finished method as ``weights_only``-loadable data (``runs/<method>/result.pt``)."""
    return {"name": m.name, "n_strong": m.n_strong, "n_weak": m.n_weak, "overall": m.overall, "benign": m.benign,
            "malignant": m.malignant, "ci": list(m.ci) if m.ci is not None else None, "supervision": m.supervision,
            "per_image": torch.as_tensor(np.asarray(m.per_image, dtype=bool)), "detections": detections,
            "ap50": m.ap50, "ap": m.ap, "froc_cpm": m.froc_cpm, "auc": m.auc,
            "history": history.records, "timing": dict(timing), "extra": dict(extra)}


def _method_of(state: Mapping[str, Any]) -> MethodResult:
    return MethodResult(name=state["name"], n_strong=state["n_strong"], n_weak=state["n_weak"],
                        overall=state["overall"], benign=state["benign"], malignant=state["malignant"],
                        ci=tuple(state["ci"]) if state["ci"] is not None else None,
                        supervision=state["supervision"], per_image=state["per_image"].numpy(),
                        ap50=state.get("ap50"), ap=state.get("ap"), froc_cpm=state.get("froc_cpm"),
                        auc=state.get("auc"))


def default_methods(data: ExperimentData) -> Tuple[str, ...]:
    """The methods an experiment runs by default: every method of the paper's protocol (:data:`METHODS`), or for a
    cross-site experiment ``source_only``, ``joint`` and ``joint_self_training``, plus ``target_few`` when target
    boxes were set aside and ``target_full`` when the target has boxes."""
    if data.design != "cross_site":
        return METHODS
    extra = (("target_few",) if data.target_strong else ()) + (
        ("target_full",) if all(s.is_strong for s in data.weak) else ())
    return ("source_only", "joint", "joint_self_training") + extra


class _MethodJob:
    """Trains one method of an experiment in a child process (picklable, for the ``spawn`` start method)."""

    def __init__(self, experiment: "Experiment", threads: Optional[int]) -> None:
        self.experiment, self.threads = experiment, threads

    def __call__(self, name: str) -> None:
        with cpu_threads(self.threads):
            self.experiment.train_one(name, StepProgress(total=self.experiment.steps_of(name), enabled=False))


class Experiment:
    """One seed of the protocol on one split; :meth:`run` trains what is not finished yet and writes the outputs.

    ``reuse_results=True`` reuses stored method results that other code (another wsbus commit or version) made;
    by default such a result is refused with a message naming both.
    """

    def __init__(self, data: ExperimentData, recipe: Recipe, out_dir: Union[str, os.PathLike], *, seed: int = 0,
                 methods: Optional[Sequence[str]] = None, device: Device = None, progress: bool = True,
                 evaluate_on: str = "test", reuse_results: bool = False) -> None:
        methods = default_methods(data) if methods is None else methods
        if not methods:
            raise ValueError(f"no method to run; choose from {list(default_methods(data))}")
        methods = method_names(methods, data.design)
        if "joint_self_training" in methods and "joint" not in methods:
            raise ValueError("joint_self_training starts from the joint model: include 'joint' in the methods")
        needed = warm_start_of("joint", recipe, data.design)
        if needed and "joint" in methods and needed not in methods:
            raise ValueError(f"the recipe's joint run starts from {needed} (joint_warm_start): include '{needed}'")
        if evaluate_on not in ("test", "val"):
            raise ValueError(f"evaluate_on must be 'test' or 'val', got {evaluate_on!r}")
        self.eval_set = data.test if evaluate_on == "test" else data.val
        if not any(s.image_label > 0 for s in self.eval_set):
            raise ValueError(f"the {evaluate_on} set holds no benign or malignant image: CorLoc is undefined (the "
                             f"recipe asks for n_test={recipe.n_test}, n_val={recipe.n_val})")
        self.data, self.recipe, self.seed = data, recipe.resolve(data.strong, data.weak), int(seed)
        self.methods = methods
        self.evaluate_on = evaluate_on
        self.out = Path(out_dir)
        self.device = resolve_device(device)
        self.progress = progress
        self.reuse_results = bool(reuse_results)
        self.init_seed, self.train_seed = experiment_seeds(seed)
        self.backbone: Optional[Path] = None  # the label-free pretrained backbone (recipe.pretrain), once made
        self.results: Dict[str, MethodResult] = {}
        self.states: Dict[str, Dict[str, Any]] = {}

    # -- pieces ------------------------------------------------------------------------------------------------
    def run_dir(self, name: str) -> Path:
        """Where method ``name`` keeps its checkpoints and its result."""
        return self.out / "runs" / name

    def build_model(self, method: str = "strong_few", **overrides: Any) -> torch.nn.Module:
        """The recipe's detector for ``method``, initialised from the experiment's initial weights."""
        return build_method_model(method, self.data, self.recipe, self.seed, backbone=self.backbone, **overrides)

    def steps_of(self, name: str) -> int:
        """Training steps of a method (:meth:`Recipe.steps_of`)."""
        return self.recipe.steps_of(name)

    def trained_weights(self, name: str) -> Dict[str, torch.Tensor]:
        """The final weights of a method already trained in this experiment (its ``last.pt``)."""
        path = self.run_dir(name) / "last.pt"
        if not path.is_file():
            raise ValueError(f"{name} has not been trained in {self.out} yet (no {path}); the recipe needs it first")
        return load_checkpoint(path, map_location="cpu")["model"]

    def evaluate(self, name: str, model: torch.nn.Module, n_strong: int, n_weak: int):
        """Detect on the evaluation images and measure: CorLoc with its CI, COCO AP50 / AP, FROC CPM and the
        malignancy AUC (:func:`wsbus.evaluate.evaluate_detections`)."""
        dets = detect(model, self.eval_set, device=self.device)
        return self.measured(name, dets, n_strong, n_weak), dets

    def measured(self, name: str, dets: list, n_strong: int, n_weak: int) -> MethodResult:
        """The :class:`~wsbus.evaluate.MethodResult` of detections on the evaluation images."""
        report = evaluate_detections(dets, self.eval_set, n_boot=self.recipe.n_boot)
        return MethodResult.from_report(name, report, n_strong=n_strong, n_weak=n_weak,
                                        supervision=supervision_of(name, self.recipe))

    def finish(self, name: str, m: MethodResult, dets: list, history: History, started: Tuple[float, float],
               **extra: Any) -> None:
        timing = {"wall": time.perf_counter() - started[0], "cpu": time.process_time() - started[1]}
        state = _result_state(m, dets, history, timing, {**extra, "provenance": self.provenance(name),
                                                         "code": provenance(self.device)})
        atomic_save(state, self.run_dir(name) / "result.pt")
        self.results[name], self.states[name] = m, state

    def provenance(self, name: str) -> Dict[str, Any]:
        """What the stored result of method ``name`` was made with: the recipe as that method reads it
        (:meth:`Recipe.used_by`), the seed and the images evaluated on."""
        return {"recipe": repr(self.recipe.used_by(name)), "seed": self.seed, "evaluated_on": self.evaluate_on,
                "eval_ids": [s.id for s in self.eval_set]}

    def metadata(self) -> Dict[str, Any]:
        """What a run's checkpoint records about its data (``wsbus evaluate --checkpoint`` reloads the split)."""
        d = self.data
        meta = {"data": d.source, "seed": self.seed, "phantom_size": self.recipe.size, "design": d.design,
                "samples": samples_description(d.source, self.recipe, self.seed),
                "split_ids": {role: [s.id for s in getattr(d, role)] for role in ("strong", "weak", "val", "test")}}
        if d.target is not None:
            meta.update(target=d.target, target_samples=samples_description(d.target, self.recipe, self.seed))
        return meta

    def load_finished(self, name: str) -> bool:
        path = self.run_dir(name) / "result.pt"
        if not path.is_file():
            return False
        state = load_checkpoint(path, require=("name", "per_image", "detections"))
        extra = state.get("extra") or {}
        made = extra.get("provenance")
        expected = self.provenance(name)
        if made != expected:
            what = [k for k in ("recipe", "seed", "evaluated_on", "eval_ids") if (made or {}).get(k) != expected[k]]
            raise ValueError(f"{path} belongs to another experiment (its {', '.join(what) or 'provenance'} "
                             f"differs); resume an experiment with the same arguments, or use another output folder")
        code, now = extra.get("code"), provenance(self.device)
        if not same_code(code, now):
            if not self.reuse_results:
                raise ValueError(f"{path} was made by {describe_code(code)}, not by this {describe_code(now)}; "
                                 f"pass --reuse-results to reuse it anyway, or use another output folder")
            logger.warning("reusing %s, made by %s (this is %s)", path, describe_code(code), describe_code(now))
        self.results[name], self.states[name] = _method_of(state), state
        return True

    # -- training ----------------------------------------------------------------------------------------------
    def train(self, name: str, bar: StepProgress) -> None:
        """Train method ``name`` (resuming its checkpoint), evaluate it and store its result."""
        started = (time.perf_counter(), time.process_time())
        needed = warm_start_of(name, self.recipe, self.data.design)
        steps = self.steps_of(name)
        run = train_method(name, self.data, self.recipe, self.run_dir(name), seed=self.seed, device=self.device,
                           backbone=self.backbone,
                           warm_start=self.trained_weights(needed) if needed else None,
                           checkpoint_every=max(1, steps // 10), progress=False, tensorboard=False,
                           callbacks=[bar.step], metadata=self.metadata())
        warning = mil_warning(name, run.mil)
        if warning:
            logger.warning("wsbus: warning: %s", warning)
        strong, weak = run.trainer.datasets.get("strong"), run.trainer.datasets.get("weak")
        m, dets = self.evaluate(name, run.model, len(strong or ()), len(weak or ()))
        self.finish(name, m, dets, run.history, started, mil=run.mil, mil_warning=warning)

    def self_training(self, bar: StepProgress) -> Any:
        """Table IV: from the joint model, the recipe's self-training procedure (the paper's or the mean teacher)."""
        started = (time.perf_counter(), time.process_time())
        name = "joint_self_training"
        joint = self.build_model("joint")
        joint.load_state_dict(self.trained_weights("joint"))
        r = self.recipe
        st = self_train(self.data.strong, self.data.weak, self.eval_set,
                        model_factory=lambda: self.build_model("joint"),
                        initial=joint.to(self.device), procedure=r.self_training,
                        fractions=(r.self_training_fraction,), steps=r.steps, retrain_steps=self.steps_of(name),
                        retrain=r.retrain, rounds=r.self_training_rounds, per_class=r.per_class,
                        mean_teacher=MeanTeacherSettings(**dict(r.mean_teacher)), device=self.device,
                        seed=self.train_seed, init_seed=self.init_seed, n_boot=r.n_boot, progress=False,
                        trainer_kwargs=dict(r.trainer_options(), alpha=r.alpha_schedule(r.steps), mixing=r.mixing),
                        on_step=lambda *_: bar.step(), out_dir=self.run_dir(name))
        final = st.methods[-1]
        m = self.measured(name, st.detections[final.name], final.n_strong, final.n_weak)
        summary = st.to_json()
        self.finish(name, m, st.detections[final.name], st.histories[final.name], started,
                    table_iv=st.table(), self_training=summary["methods"], procedure=r.self_training,
                    pseudo_box_precision=summary["pseudo_box_precision"], class_accuracy=summary["class_accuracy"],
                    teacher=summary["teacher"], moved=st.moved.get(final.name, []),
                    precision_curve={"scores": st.precision.scores.tolist(), "correct": st.precision.correct.tolist()}
                    if st.precision is not None else None)
        return st

    # -- the whole protocol ------------------------------------------------------------------------------------
    def run(self, jobs: int = 1, threads: Optional[int] = None) -> Dict[str, Any]:
        """Train every method that has no stored result yet, then write and return ``results.json``'s content.
        ``jobs > 1`` trains independent methods side by side in processes (:mod:`wsbus.experiments.parallel`), each
        with ``threads`` torch threads."""
        t0, c0 = time.perf_counter(), time.process_time()
        self.out.mkdir(parents=True, exist_ok=True)
        todo = [m for m in self.methods if not self.load_finished(m)]
        cached = self.out / "pretrain" / "backbone.pt"
        if self.recipe.pretrain and (todo or cached.is_file()):
            # before any method (and any process): they all start from it; with every result stored, it is read
            # back (checked against the split) so that results.json still says what the pretraining did
            self.backbone = pretrained_backbone(self.data, self.recipe, self.seed, cached, device=self.device,
                                                progress=self.progress)
        if int(jobs) > 1 and len(todo) > 1:
            self._run_parallel(todo, int(jobs), threads)
        else:
            bar = StepProgress(total=sum(self.steps_of(m) for m in todo), enabled=self.progress, desc="experiment")
            try:
                for name in todo:
                    bar.run(name)
                    self.train_one(name, bar)
            finally:
                bar.close()
        results = self.summary()
        results["timing"]["total"] = {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0,
                                      "jobs": int(jobs)}
        self.write(results)
        return results

    def train_one(self, name: str, bar: StepProgress) -> None:
        """Train (or self-train) method ``name`` and store its result."""
        if name == "joint_self_training":
            self.self_training(bar)
        else:
            self.train(name, bar)

    def _run_parallel(self, todo: List[str], jobs: int, threads: Optional[int]) -> None:
        deps = method_dependencies(self.methods, {m: warm_start_of(m, self.recipe, self.data.design)
                                                  for m in self.methods})

        work = _MethodJob(self, threads)
        bar = tqdm(total=len(todo), disable=not self.progress, desc=f"experiment ({jobs} processes)",
                   unit="method", file=sys.stderr, dynamic_ncols=True)
        start = "spawn" if self.device.type == "cuda" else "fork"
        try:
            run_parallel(todo, deps, work, jobs, start_method=start,
                         on_done=lambda name: (self.load_finished(name), bar.update(1)))
        finally:
            bar.close()

    def summary(self) -> Dict[str, Any]:
        """``results.json``'s content from the stored method results."""
        names = self.methods
        cross = self.data.design == "cross_site"
        reference = ("source_only" if cross and "source_only" in names else "joint" if "joint" in names else names[0])
        ordered = add_p_values([self.results[m] for m in names], reference=reference, test="mcnemar",
                               n_boot=self.recipe.n_boot)
        entries = to_json_methods(ordered)
        for entry, m in zip(entries, ordered):
            entry["p_value_test"] = None if m.name == reference else "mcnemar_exact"
            if m.name != reference:
                r = paired_test(m.per_image, self.results[reference].per_image, n_boot=self.recipe.n_boot)
                entry.update(p_value_bootstrap_t=r.t_pvalue, difference_vs_reference=r.difference,
                             difference_vs_reference_ci=list(r.difference_ci))
            entry["n_test_images_with_mass"] = int(m.per_image.size)
            entry["froc"] = froc(self.states[m.name]["detections"], self.eval_set).as_dict()
            entry["timing"] = self.states[m.name]["timing"]
            extra = self.states[m.name].get("extra") or {}
            entry["mil"] = extra.get("mil")
            entry["provenance"] = extra.get("code")
        st = self.states.get("joint_self_training", {}).get("extra", {})
        p_values = {m.name: m.p_value for m in ordered if m.p_value is not None}
        if {"joint_paper", "strong_few"} <= set(names):
            p_values["joint_paper_vs_strong_few"] = mcnemar_exact(self.results["joint_paper"].per_image,
                                                                  self.results["strong_few"].per_image)[2]
        results: Dict[str, Any] = {
            "methods": entries,
            "finding": (check_cross_site(self.results, p_values) if cross and {"source_only", "joint"} <= set(names)
                        else check_finding(self.results, p_values) if {"strong_full", "strong_few", "weak_only",
                                                                       "joint"} <= set(names) else None),
            "design": self.data.design, "reference": reference,
            "evaluated_on": self.evaluate_on,
            "pseudo_box_precision": st.get("pseudo_box_precision"),
            "self_training": st.get("self_training"),
            "self_training_procedure": st.get("procedure"),
            "self_training_class_accuracy": st.get("class_accuracy"),
            "self_training_teacher": st.get("teacher"),
            "data": self.data.counts(),
            "config": {**self.recipe.as_dict(), "seed": self.seed, "device": str(self.device),
                       "methods": list(names)},
            "joint_is_papers": self.recipe.joint_is_papers(),
            "pretrain": self.pretrain_summary(),
            "provenance": provenance(self.device),
            "timing": {"torch_threads": torch.get_num_threads()},
        }
        results["table_v"] = results_table(ordered, kind="V")
        return results

    def title(self) -> str:
        """What the experiment measured, without local paths: ``busbra:BUSBRA, fold 1`` or
        ``busbra:BUSBRA?device=Logiq 7 -> busbra:BUSBRA?device!=Logiq 7``."""
        d = self.data
        text = display_source(d.source) + (f" -> {display_source(d.target)}" if d.target else "")
        return text + (f", fold {d.fold}" if d.fold is not None else f", split seed {self.seed}")

    def pretrain_summary(self) -> Optional[Dict[str, Any]]:
        """What the label-free pretraining did (its settings, the images it saw, its first and last loss)."""
        if self.backbone is None:
            return None
        f = load_pretrained(self.backbone)
        losses = [h["loss"] for h in f.get("history") or []]
        file = Path(self.backbone)
        file = file.relative_to(self.out) if file.is_relative_to(self.out) else Path(file.name)  # no local paths
        return {"file": str(file), "config": dict(f["config"]), "n_images": f["images"]["n"],
                "ids_sha256": f["images"]["ids_sha256"], "steps": f.get("step"),
                "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
                "saw_test_or_val": bool(set(f["images"].get("ids") or []) & {s.id for s in self.data.test +
                                                                             self.data.val})}

    def write(self, results: Dict[str, Any]) -> None:
        """``table_v.md``, ``table_iv.md``, the figures and ``results.json`` (written last, atomically)."""
        out, what = self.out, "test" if self.evaluate_on == "test" else "validation"
        note = (f"\nCorLoc on the {what} set (IoU > 0.5, score >= 0.5, class must match), 95 % percentile bootstrap "
                f"CI over {self.recipe.n_boot} resamples of the images; AP50 and AP@[.5:.95] by the COCO protocol; "
                "FROC CPM: the mean sensitivity at 1/8 to 8 false positives per image; malignancy AUC: malignant vs "
                f"benign images by their highest malignant score; p-values: McNemar's exact test of each method "
                f"against `{results['reference']}` on the same images (the paper's bootstrap t-test is in "
                "results.json as `p_value_bootstrap_t`).\n")
        atomic_write_text(f"Table V ({self.title()})\n\n" + results["table_v"] + note, out / "table_v.md")
        st = self.states.get("joint_self_training", {}).get("extra", {})
        if st.get("table_iv"):
            atomic_write_text(f"Table IV ({self.title()}): self-training\n\n" + st["table_iv"], out / "table_iv.md")
        histories = {m: History(self.states[m]["history"]) for m in self.methods}
        loss_figure(histories).savefig(out / "loss_curves.png", dpi=110)
        detections = {m: self.states[m]["detections"] for m in self.methods}
        panels_figure(self.eval_set, detections, self.recipe.panel_images).savefig(out / "detections.png", dpi=110)
        froc_figure(self.eval_set, detections).savefig(out / "froc.png", dpi=110)
        curve = st.get("precision_curve")
        if curve and curve["scores"]:
            plot_precision_vs_rank(np.asarray(curve["scores"]), np.asarray(curve["correct"], dtype=bool),
                                   fractions=(self.recipe.self_training_fraction,)).savefig(
                out / "precision_vs_rank.png", dpi=110)
        atomic_write_json(results, out / "results.json")


def run_experiment(data: str = "phantom", out_dir: Union[str, os.PathLike] = "wsbus_experiment", *,
                   recipe: Optional[Recipe] = None, quick: bool = False, seed: int = 0,
                   methods: Optional[Sequence[str]] = None, device: Device = None, threads: Optional[int] = 1,
                   progress: bool = True, evaluate_on: str = "test", samples: Optional[Sequence[Any]] = None,
                   verbose: bool = True, reuse_results: bool = False,
                   folds: Union[str, os.PathLike, None] = None, fold: Optional[int] = None,
                   jobs: int = 1, target: Optional[str] = None, n_source_strong: Optional[int] = None,
                   n_target_strong: int = 0) -> Dict[str, Any]:
    """Run the Table V + IV protocol on one split of ``data`` and write its outputs to ``out_dir``.

    Parameters
    ----------
    data : a ``--data`` spec: ``phantom``, ``voc:DIR``, ``busi:DIR``, ``busbra:DIR``, ...
    out_dir : output folder; started again with the same arguments, the experiment resumes.
    recipe : the settings (:class:`wsbus.experiments.Recipe`); default :func:`~wsbus.experiments.recipe_for` the
        source (``quick`` picks its smoke preset).
    seed : the split, the phantom, the initial weights and the data order; another seed is another independent
        repetition of the whole experiment.
    methods : a subset of :data:`METHODS` (``joint_self_training`` needs ``joint``); default all of them (for a
        cross-site experiment: :func:`default_methods`).
    device : ``"cpu"``, ``"cuda"``, ...; default CUDA when available.
    threads : torch CPU threads during the experiment (restored afterwards; ``None`` keeps the setting). One thread,
        the default, makes a table repeat exactly on the same machine and library versions: the thread count
        changes the order of floating-point sums, which short training runs amplify.
    evaluate_on : ``"test"`` (the published protocol, scored once) or ``"val"`` (choosing settings).
    samples : already loaded samples of ``data`` (skips loading).
    verbose : print Table V and the finding.
    reuse_results : reuse stored method results that other code made (default: refuse them, naming the code).
    folds, fold : test on fold ``fold`` of a folds file (:func:`wsbus.data.read_folds`; ``fold`` alone: the file
        the source ships, BUS-BRA's ``5-fold-cv.csv``); validation is carved from the other folds' patients.
    jobs : train independent methods in this many processes at once (the numbers are the same, bit for bit on
        CPU, as with one; :func:`wsbus.experiments.parallel_plan`).
    target, n_source_strong, n_target_strong : a cross-site experiment (:func:`wsbus.experiments.prepare_cross_site`):
        the boxes of ``data`` (all, or ``n_source_strong``), the image labels and the test images of ``target``'s
        patients, and ``n_target_strong`` target boxes for the ``target_few`` reference; methods
        :data:`wsbus.experiments.CROSS_SITE_METHODS`, p-values against ``source_only``.

    Returns
    -------
    dict : the content of ``results.json``.

    Taught in ``book/01_introduction.md``.
    """
    recipe = recipe if recipe is not None else recipe_for(parse_source(data).kind, quick)
    with cpu_threads(threads):
        if target is not None:
            if fold is not None or folds is not None:
                raise ValueError("a cross-site experiment splits its target by patient; --fold does not apply")
            split = prepare_cross_site(data, target, recipe, seed, n_source_strong=n_source_strong,
                                       n_target_strong=n_target_strong, samples=samples)
        else:
            split = prepare_data(data, recipe, seed, samples=samples, folds=folds, fold=fold)
        experiment = Experiment(split, recipe, out_dir, seed=seed, methods=methods, device=device,
                                progress=progress, evaluate_on=evaluate_on, reuse_results=reuse_results)
        if verbose:
            print(describe_settings(experiment))
        results = experiment.run(jobs=jobs, threads=threads)
    if verbose:
        print(results["table_v"])
        for m in results["methods"]:
            warning = mil_warning(m["name"], m.get("mil") or {})
            if warning:
                print(f"warning: {warning}")
        f = results["finding"]
        if f is not None and results["design"] == "cross_site":
            print(f"joint - source_only = {100 * f['joint_minus_source_only']:+.2f} points on the target (McNemar p = "
                  f"{f['p_joint_vs_source_only']:.3g}); the cross-site goal (at least +{100 * f['required_gain']:g} "
                  f"points, p < {f['alpha']:g}, self-training not below joint) "
                  f"{'is met' if f['holds'] else 'is NOT met'}; outputs in {out_dir}")
        elif f is not None:
            who = "paper's" if results["joint_is_papers"] else "ours"
            p = f["p_joint_vs_strong_few"]
            print(f"joint ({who}) - strong_few = {100 * f['joint_minus_strong_few']:+.2f} points (McNemar p = "
                  f"{p:.3g}); strong_full - strong_few = {100 * f['strong_full_minus_strong_few']:+.2f}; joint - "
                  f"weak_only = {100 * f['joint_minus_weak_only']:+.2f}; the paper's ordering "
                  f"{'holds' if f['holds'] else 'does NOT hold'} here (joint above strong_few needs p < "
                  f"{f['alpha']:g}); outputs in {out_dir}")
            if "joint_paper_minus_strong_few" in f:
                print(f"joint_paper (the paper's method) - strong_few = {100 * f['joint_paper_minus_strong_few']:+.2f}"
                      f" points (McNemar p = {f['p_joint_paper_vs_strong_few']:.3g})")
        p = results["pseudo_box_precision"]
        if p is not None and p.get("overall") is not None:
            line = (f"pseudo-box precision (IoU > 0.5 with the hidden box): {100 * p['overall']:.1f} % of "
                    f"{p['n_pseudo_labelled']} weak images")
            for name, moved in p["moved"].items():
                if moved["precision"] is not None:
                    line += f", {100 * moved['precision']:.1f} % of the {moved['n']} moved ({name})"
            print(line + f" ({results['self_training_procedure']})")
    return results


def describe_settings(experiment: "Experiment") -> str:
    """One line of the settings an experiment resolved from its data (sizes, canvas, anchors, steps)."""
    d, r = experiment.data.counts(), experiment.recipe
    where = f"fold {d['fold']} as test" if d["fold"] is not None else f"split seed {experiment.seed}"
    steps = ", ".join(f"{m} {r.steps_of(m)}" for m in experiment.methods)
    sites = (f"{d['n_strong']} boxed source images; target {d['target']}: {d['n_weak']} weak, "
             if d["design"] == "cross_site" else f"{d['n_strong']} boxed, {d['n_weak']} weak, ")
    return (f"{d['source']}: {where}; {sites}{d['n_val']} validation and {d['n_test']} test images; canvas {r.max_size if r.max_size is not None else r.size} px, input "
            f"{r.size} px, anchors {tuple(r.detector.get('anchor_sizes', PRESETS[r.backbone].anchor_sizes))}; "
            f"steps: {steps}")


def summarize_experiments(results: Sequence[Mapping[str, Any]], seeds: Sequence[int],
                          fmt: str = "markdown", label: str = "seed") -> Tuple[str, Dict[str, Any]]:
    """The same experiment over several seeds: each method's CorLoc per seed, its mean and standard deviation,
    and on each seed joint's difference from strong_few with McNemar's p-value. Returns ``(table, data)``."""
    names = [m["name"] for m in results[0]["methods"]]
    per: Dict[str, List[float]] = {n: [] for n in names}
    for r in results:
        got = {m["name"]: m for m in r["methods"]}
        if sorted(got) != sorted(names):
            raise ValueError(f"the experiments ran different methods: {names} vs {sorted(got)}")
        for n in names:
            per[n].append(float(got[n]["corloc"]["overall"]))
    header = ["method"] + [f"{label} {s} [%]" for s in seeds] + ["mean [%]", "sd [points]"]
    body = [[n] + [f"{100 * v:.2f}" for v in per[n]] + [f"{100 * np.mean(per[n]):.2f}",
                                                        f"{100 * np.std(per[n], ddof=1) if len(seeds) > 1 else 0:.2f}"]
            for n in names]
    data: Dict[str, Any] = {"seeds": list(seeds), "corloc": per,
                            "mean": {n: float(np.mean(v)) for n, v in per.items()}}
    if {"joint", "strong_few"} <= set(names):
        p = [next(m for m in r["methods"] if m["name"] == "strong_few")["p_value"] for r in results]
        diff = [j - f for j, f in zip(per["joint"], per["strong_few"])]
        body.append(["joint - strong_few"] + [f"{100 * d:+.2f} (p {q:.3g})" for d, q in zip(diff, p)]
                    + [f"{100 * np.mean(diff):+.2f}", ""])
        data.update(joint_minus_strong_few=diff, p_strong_few_vs_joint=p,
                    ordering_holds=[bool(r["finding"]["holds"]) if r.get("finding") else None for r in results])
    return render_table(header, body, ["l"] + ["r"] * (len(seeds) + 2), fmt), data


def run_experiments(data: str = "phantom", out_dir: Union[str, os.PathLike] = "wsbus_experiment", *,
                    seeds: Sequence[int] = (0, 1, 2), **kwargs: Any) -> List[Dict[str, Any]]:
    """:func:`run_experiment` once per seed (outputs in ``out_dir/seed_<s>/``), then ``out_dir/summary.md`` and
    ``out_dir/summary.json`` (:func:`summarize_experiments`). ``kwargs`` go to :func:`run_experiment`.
    """
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    results = [run_experiment(data, Path(out_dir) / f"seed_{s}", seed=s, **kwargs) for s in seeds]
    table, summary = summarize_experiments(results, seeds)
    atomic_write_text(f"# {data} over seeds {seeds}\n\n" + table, Path(out_dir) / "summary.md")
    atomic_write_json(summary, Path(out_dir) / "summary.json")
    print(table)
    return results


def run_folds(data: str, out_dir: Union[str, os.PathLike], *, folds: Union[str, os.PathLike, None] = None,
              fold_numbers: Sequence[int] = (1, 2, 3, 4, 5), **kwargs: Any) -> List[Dict[str, Any]]:
    """:func:`run_experiment` with each of ``fold_numbers`` as the test fold (outputs in ``out_dir/fold_<K>/``),
    then ``out_dir/summary.json`` (``{"folds": [results.json content + "fold"]}``) and ``out_dir/summary.md``
    (each method's CorLoc per fold, mean and standard deviation). ``kwargs`` go to :func:`run_experiment`."""
    fold_numbers = [int(k) for k in fold_numbers]
    if not fold_numbers or len(set(fold_numbers)) != len(fold_numbers):
        raise ValueError(f"folds must be distinct and at least one, got {fold_numbers}")
    results = []
    for k in fold_numbers:
        r = run_experiment(data, Path(out_dir) / f"fold_{k}", folds=folds, fold=k, **kwargs)
        results.append({**r, "fold": k})
    table, _ = summarize_experiments(results, fold_numbers, label="fold")
    atomic_write_text(f"# {data}: test folds {fold_numbers}\n\n" + table, Path(out_dir) / "summary.md")
    atomic_write_json({"folds": results}, Path(out_dir) / "summary.json")
    print(table)
    return results
