"""``wsbus ablate``: the paper's Table II ablation, on one split of a data source (the phantom by default).

Table II of Shin et al. (TMI 2019) changes one aspect of the proposed joint training at a time and reports CorLoc
with a 95 % bootstrap CI for each variant. The proposed method is

* MoI of benign images = most malignant region, of malignant images = most malignant region (:data:`wsbus.mil.PAPER`),
* MIL scale factor alpha increased gradually (:func:`wsbus.schedules.gradual`),
* strong and weak images combined in one mini-batch (``mixing="combined"``),

and the rows of :data:`TABLE_II_VARIANTS` each change one of these (three other MoI maps, a static alpha of 0.5,
alternating mini-batches). :func:`run_ablation` trains every variant on the split, boxed images, test set, initial
weights and data order that :func:`wsbus.experiments.run_experiment` uses for the same seed and recipe, so the
variants differ only in the aspect the row names, and the McNemar p-value of each row against "Proposed" is paired.

**Alternating budget.** An alternating run of ``n`` steps alternates strong-only and weak-only mini-batches, so it
sees each stream half as often as a combined run of ``n`` steps. By default (``alternating_budget="images"``) the
alternating variant therefore trains ``2 n`` steps: both variants see the same number of strong and of weak images
and do about the same amount of computation. ``alternating_budget="updates"`` keeps ``n`` steps (the same number
of optimiser updates, half the images); the paper does not say which it compared.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Union

import torch

from ..checkpoint import atomic_write_json, atomic_write_text
from ..evaluate import MethodResult, add_p_values, render_table, results_table, to_json_methods
from ..seeding import cpu_threads
from .data import prepare_data
from .methods import train_method
from .progress import StepProgress
from .recipe import PHANTOM, PHANTOM_QUICK, Recipe
from .runner import Experiment

__all__ = ["AblationVariant", "TABLE_II_VARIANTS", "AblationResult", "run_ablation", "run_ablations",
           "summarize_ablations"]

_MOI = "MIL definition of MoI for images labelled B / M"
_ALPHA = "MIL scale factor"
_MIXING = "Combining weakly and strongly supervised data"


@dataclass(frozen=True)
class AblationVariant:
    """One row of Table II: a joint-training configuration that differs from the proposed one in one aspect.

    Attributes
    ----------
    key : short identifier (CLI ``--variants``, JSON, log file names).
    aspect, variant : Table II's two text columns.
    moi_rules : MoI rule map (a :data:`wsbus.mil.RULE_MAPS` name or ``"<benign rule>/<malignant rule>"``).
    alpha : ``"gradual"`` or a constant (the MIL scale factor).
    mixing : ``"combined"`` or ``"alternating"``.
    """

    key: str
    aspect: str
    variant: str
    moi_rules: str = "paper"
    alpha: Union[str, float] = "gradual"
    mixing: str = "combined"


#: The six rows of the paper's Table II, in its order; the last one is the proposed method.
TABLE_II_VARIANTS = (
    AblationVariant("moi_benign", _MOI, "most benign region / most malignant region",
                    moi_rules="most_benign/most_malignant"),
    AblationVariant("moi_discriminative", _MOI, "most discriminative region / most malignant region",
                    moi_rules="most_discriminative/most_malignant"),
    AblationVariant("moi_abnormal", _MOI, "most abnormal region / most malignant region",
                    moi_rules="most_abnormal/most_malignant"),
    AblationVariant("static_alpha", _ALPHA, "static value (0.5)", alpha=0.5),
    AblationVariant("alternating", _MIXING, "alternating mini-batches from each set", mixing="alternating"),
    AblationVariant("proposed", "Proposed", "most malignant / most malignant, gradual increase, combined single "
                                            "mini-batch"),
)
_BY_KEY = {v.key: v for v in TABLE_II_VARIANTS}


@dataclass
class AblationResult:
    """What :func:`run_ablation` measured: one :class:`wsbus.evaluate.MethodResult` per variant (Table II order),
    with ``aspect``/``variant`` set and ``p_value`` = McNemar's exact test against the proposed row.
    """

    rows: List[Any]
    variants: List[AblationVariant]
    histories: Dict[str, Any] = field(repr=False)
    config: Dict[str, Any] = field(default_factory=dict)

    def table(self, fmt: Literal["markdown", "html"] = "markdown") -> str:
        """The Table II-shaped table (Aspect | Variant | CorLoc [%] | 95 % CI [%] | p vs proposed)."""
        return results_table(self.rows, kind="II", fmt=fmt)

    def to_json(self) -> Dict[str, Any]:
        """Plain data: ``{"rows": [{"key", "aspect", "variant", "corloc": {...}, "ci", "p_value", ...}], "config"}``.
        """
        entries = to_json_methods(self.rows)
        for entry, v, m in zip(entries, self.variants, self.rows):
            entry.update(key=v.key, aspect=v.aspect, variant=v.variant, moi_rules=v.moi_rules,
                         alpha=v.alpha, mixing=v.mixing, steps=len(self.histories[v.key]),
                         p_value_test=None if v.key == "proposed" else "mcnemar_exact",
                         n_test_images_with_mass=int(m.per_image.size))
        return {"rows": entries, "config": self.config}


def _variants(spec: Optional[Sequence[Union[str, AblationVariant]]]) -> List[AblationVariant]:
    if spec is None:
        return list(TABLE_II_VARIANTS)
    out: List[AblationVariant] = []
    for v in spec:
        if isinstance(v, AblationVariant):
            out.append(v)
        elif v in _BY_KEY:
            out.append(_BY_KEY[v])
        else:
            raise ValueError(f"unknown ablation variant {v!r}; use AblationVariant objects or keys from "
                             f"{[k for k in _BY_KEY]}")
    keys = [v.key for v in out]
    if len(set(keys)) != len(keys):
        raise ValueError(f"ablation variants must have distinct keys, got {keys}")
    if "proposed" not in keys:
        raise ValueError("the ablation needs the 'proposed' variant: every row is tested against it")
    return out


def run_ablation(out_dir: Union[str, os.PathLike, None] = "wsbus_ablation", quick: bool = False,
                 device: Union[str, torch.device, None] = None, seed: int = 0, progress: bool = True,
                 recipe: Optional[Recipe] = None,
                 variants: Optional[Sequence[Union[str, AblationVariant]]] = None,
                 alternating_budget: Literal["images", "updates"] = "images",
                 threads: Optional[int] = 1, data: str = "phantom") -> AblationResult:
    """Train every Table II variant on one split of ``data`` and tabulate CorLoc with 95 % CIs.

    Parameters
    ----------
    out_dir : output folder (created) receiving ``ablation.json``, ``table_ii.md`` and ``logs/<key>.csv``;
        ``None`` writes nothing.
    quick : use :data:`wsbus.experiments.PHANTOM_QUICK` (a smoke run) instead of :data:`~wsbus.experiments.PHANTOM`.
    device : ``"cpu"``, ``"cuda"``, ...; default CUDA when available, else CPU.
    seed : the experiment seed: data, split, initial weights and data order (the same for every variant).
    progress : one tqdm bar over all training steps.
    recipe : a custom :class:`~wsbus.experiments.Recipe` (overrides ``quick``); its ``moi_rules``, ``alpha`` and
        ``mixing`` are not used (each variant sets them).
    variants : keys of :data:`TABLE_II_VARIANTS` or :class:`AblationVariant` objects; default all six. Must
        include ``"proposed"``.
    alternating_budget : ``"images"`` (alternating runs train twice the steps, so both streams are seen as often
        as in a combined run) or ``"updates"`` (the same number of steps); see the module notes.
    threads : torch CPU threads during the runs (restored afterwards; ``None`` keeps the current setting).
    data : a ``--data`` spec (default the phantom).

    Returns
    -------
    AblationResult
        ``.table()`` is the Table II-shaped Markdown table; ``.rows`` the per-variant results.

    Taught in ``book/06_joint_training.md``.
    """
    if alternating_budget not in ("images", "updates"):
        raise ValueError(f"alternating_budget must be 'images' or 'updates', got {alternating_budget!r}")
    chosen = _variants(variants)
    recipe = recipe if recipe is not None else (PHANTOM_QUICK if quick else PHANTOM)
    with cpu_threads(threads):
        experiment = Experiment(prepare_data(data, recipe, seed), recipe, out_dir or ".", seed=seed, device=device,
                                methods=("joint",))
        result = _train_variants(experiment, chosen, alternating_budget, progress)
    result.config.update(quick=bool(quick and recipe is PHANTOM_QUICK), data=data,
                         alternating_budget=alternating_budget, torch_threads=threads)
    if out_dir is not None:
        out = Path(out_dir)
        (out / "logs").mkdir(parents=True, exist_ok=True)
        atomic_write_text("# Table II\n\n" + result.table() + _NOTE.format(n_boot=recipe.n_boot), out / "table_ii.md")
        for key, h in result.histories.items():
            h.to_csv(out / "logs" / f"{key}.csv")
        atomic_write_json(result.to_json(), out / "ablation.json")
    print(result.table() + _NOTE.format(n_boot=recipe.n_boot))
    return result


_NOTE = ("\nJoint training on few boxed + many image-labelled images; each row changes one aspect of the proposed "
         "method. CorLoc on the test set (IoU > 0.5, score >= 0.5, class must match), 95 % percentile bootstrap CI "
         "over {n_boot} resamples of the test images; p: McNemar's exact test against `proposed` on the same test "
         "images.\n")


def _train_variants(experiment: Experiment, chosen: List[AblationVariant], alternating_budget: str,
                    progress: bool) -> AblationResult:
    recipe = experiment.recipe

    def steps_of(v: AblationVariant) -> int:
        return 2 * recipe.steps if v.mixing == "alternating" and alternating_budget == "images" else recipe.steps

    t_start, c_start = time.perf_counter(), time.process_time()
    bar = StepProgress(total=sum(steps_of(v) for v in chosen), enabled=progress, desc="ablate")
    rows: Dict[str, MethodResult] = {}
    histories: Dict[str, Any] = {}
    timing: Dict[str, Dict[str, float]] = {}
    data = experiment.data
    try:
        for v in chosen:
            bar.run(v.key)
            t0, c0 = time.perf_counter(), time.process_time()
            # A variant is the recipe's joint run with one aspect changed, trained from the shared initial weights.
            variant = recipe.replace(moi_rules=v.moi_rules, alpha=v.alpha, mixing=v.mixing, joint_steps=steps_of(v),
                                     joint_warm_start=False, moi_teacher={}, joint_trainer={})
            run = train_method("joint", data, variant, None, seed=experiment.seed, device=experiment.device,
                               resume=False, progress=False, tensorboard=False, callbacks=[bar.step])
            histories[v.key] = run.history
            m, _ = experiment.evaluate("joint", run.model, len(data.strong), len(data.weak))
            rows[v.key] = replace(m, name=v.key, aspect=v.aspect, variant=v.variant)
            timing[v.key] = {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0}
    finally:
        bar.close()
    ordered = add_p_values([rows[v.key] for v in chosen], reference="proposed", test="mcnemar", n_boot=recipe.n_boot)
    config = {k: v for k, v in recipe.as_dict().items() if k not in ("moi_rules", "alpha", "mixing")}
    config.update(seed=experiment.seed, device=str(experiment.device),
                  timing={**timing, "total": {"wall": time.perf_counter() - t_start,
                                              "cpu": time.process_time() - c_start}})
    return AblationResult(rows=ordered, variants=chosen, histories=histories, config=config)


def summarize_ablations(results: Sequence[AblationResult], fmt: Literal["markdown", "html"] = "markdown",
                        alpha: float = 0.05) -> str:
    """Table II over several seeds: each variant's CorLoc per seed, the mean, and how often it beat the proposed row.

    Columns: Aspect | Variant | seed s [%] ... | mean [%] | vs proposed, where "vs proposed" counts the seeds on
    which the variant was above / equal to / below the proposed row, and in brackets those where McNemar's test
    found the difference significant at ``alpha``. One run is one draw (a different seed is a different phantom,
    split and initialisation); a difference that does not keep its sign over seeds is not a finding.
    """
    results = list(results)
    if not results:
        raise ValueError("summarize_ablations needs at least one AblationResult")
    keys = [v.key for v in results[0].variants]
    for r in results[1:]:
        if [v.key for v in r.variants] != keys:
            raise ValueError(f"the results have different variants: {keys} vs {[v.key for v in r.variants]}")
    seeds = [r.config.get("seed", i) for i, r in enumerate(results)]
    header = ["Aspect", "Variant"] + [f"seed {s} [%]" for s in seeds] + ["mean [%]", "vs proposed: > / = / <"]
    body, previous = [], None
    for i, key in enumerate(keys):
        rows = [r.rows[i] for r in results]
        proposed = [next(m for m in r.rows if m.name == "proposed") for r in results]
        values = [100.0 * m.overall for m in rows]
        if key == "proposed":
            versus = "-"
        else:
            above = sum(m.overall > p.overall for m, p in zip(rows, proposed))
            below = sum(m.overall < p.overall for m, p in zip(rows, proposed))
            sig_above = sum(m.overall > p.overall and m.p_value is not None and m.p_value < alpha
                            for m, p in zip(rows, proposed))
            sig_below = sum(m.overall < p.overall and m.p_value is not None and m.p_value < alpha
                            for m, p in zip(rows, proposed))
            versus = f"{above} ({sig_above}) / {len(rows) - above - below} / {below} ({sig_below})"
        aspect = rows[0].aspect or ""
        body.append(["" if aspect == previous else aspect, rows[0].variant or key]
                    + [f"{v:.2f}" for v in values] + [f"{sum(values) / len(values):.2f}", versus])
        previous = aspect
    return render_table(header, body, ["l", "l"] + ["r"] * (len(seeds) + 1) + ["c"], fmt)


def run_ablations(seeds: Sequence[int], out_dir: Union[str, os.PathLike, None] = "wsbus_ablation",
                  **kwargs: Any) -> List[AblationResult]:
    """:func:`run_ablation` once per seed (outputs in ``out_dir/seed_<s>/``), then ``out_dir/summary.md`` with
    :func:`summarize_ablations`. ``kwargs`` go to :func:`run_ablation`.
    """
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    if "seed" in kwargs:
        raise ValueError("pass the seeds as `seeds`, not `seed`")
    results = []
    for s in seeds:
        sub = None if out_dir is None else Path(out_dir) / f"seed_{s}"
        results.append(run_ablation(sub, seed=s, **kwargs))
    summary = summarize_ablations(results)
    note = ("\nCorLoc of each Table II variant on each seed (phantom, split and initial weights differ between "
            "seeds); '> / = / <': on how many seeds the variant was above / equal to / below the proposed row, "
            "in brackets how many of those differences McNemar's exact test found significant at 0.05.\n")
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text("# Table II over seeds\n\n" + summary + note, Path(out_dir) / "summary.md")
    print(summary + note)
    return results
