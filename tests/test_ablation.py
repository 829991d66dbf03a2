"""``wsbus.ablation`` (Table II on the phantom) and ``wsbus ablate``: rows, files, the shared split and weights, the
alternating budget, the p-value column, and bad input."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from wsbus.evaluate import results_table
from wsbus.experiments import PHANTOM_QUICK, TABLE_II_VARIANTS, AblationVariant, run_ablation, run_demo

TINY = replace(PHANTOM_QUICK, steps=4, n_boot=50)


def _losses(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return [(int(r["step"]), r["batch"], float(r["loss_mil"]), float(r["loss_classifier"])) for r in rows]


def test_table_ii_variants_follow_the_paper():
    keys = [v.key for v in TABLE_II_VARIANTS]
    assert keys == ["moi_benign", "moi_discriminative", "moi_abnormal", "static_alpha", "alternating", "proposed"]
    proposed = TABLE_II_VARIANTS[-1]
    assert (proposed.moi_rules, proposed.alpha, proposed.mixing) == ("paper", "gradual", "combined")
    # every other row changes exactly one aspect of the proposed method
    for v in TABLE_II_VARIANTS[:-1]:
        changed = [a for a in ("moi_rules", "alpha", "mixing") if getattr(v, a) != getattr(proposed, a)]
        assert len(changed) == 1, (v.key, changed)
    assert [v.moi_rules.split("/")[0] for v in TABLE_II_VARIANTS[:3]] == [
        "most_benign", "most_discriminative", "most_abnormal"]


@pytest.mark.slow
def test_run_ablation_rows_files_and_streams(tmp_path):
    out = tmp_path / "abl"
    res = run_ablation(out, recipe=TINY, device="cpu", progress=False,
                       variants=["moi_abnormal", "static_alpha", "alternating", "proposed"])
    assert [r.name for r in res.rows] == ["moi_abnormal", "static_alpha", "alternating", "proposed"]
    # p-values: McNemar against the proposed row, none for that row
    assert res.rows[-1].p_value is None and all(0.0 <= r.p_value <= 1.0 for r in res.rows[:-1])
    for r in res.rows:
        assert r.per_image.size == sum(TINY.n_test[c] for c in (1, 2))
        lo, hi = r.ci
        assert 0.0 <= lo <= r.overall <= hi <= 1.0
    table = res.table()
    assert table.splitlines()[0] == "| Aspect | Variant | CorLoc [%] | 95% CI [%] | p-value |"
    assert len(table.splitlines()) == 2 + 4 and table.splitlines()[-1].endswith("| - |")
    # the histories: alternating trains 2x the steps (same images per stream), static alpha stays 0.5
    h = res.histories
    assert h["alternating"].column("batch") == ["strong", "weak"] * TINY.steps
    assert set(h["static_alpha"].column("alpha")) == {0.5}
    assert h["proposed"].column("alpha") == sorted(h["proposed"].column("alpha"))
    # files
    data = json.loads((out / "ablation.json").read_text())
    assert [r["key"] for r in data["rows"]] == ["moi_abnormal", "static_alpha", "alternating", "proposed"]
    assert data["rows"][2]["steps"] == 2 * TINY.steps and data["rows"][2]["mixing"] == "alternating"
    assert data["config"]["alternating_budget"] == "images" and "moi_rules" not in data["config"]
    assert (out / "table_ii.md").read_text().startswith("# Table II\n\n" + table)
    assert sorted(p.name for p in (out / "logs").iterdir()) == sorted(f"{k}.csv" for k in
                                                                     ("moi_abnormal", "static_alpha", "alternating",
                                                                      "proposed"))
    # all variants start from the same weights and draw the same first batch: identical step-0 losses up to the MIL
    # term, which depends on the rule (a static alpha changes only the weighted sum, not the logged terms)
    first = {k: _losses(out / "logs" / f"{k}.csv")[0] for k in ("moi_abnormal", "static_alpha", "proposed")}
    assert first["static_alpha"] == first["proposed"]
    assert first["moi_abnormal"][3] == first["proposed"][3]


@pytest.mark.slow
def test_proposed_row_is_the_demo_joint_run_with_the_papers_moi_rules(tmp_path):
    """Same seed, same data, same weights, same batches: the ablation's proposed row *is* the demo's joint run
    trained with the paper's rule map (an independent code path: run_demo's own loop)."""
    cfg = replace(TINY, moi_rules="paper")
    run_demo(tmp_path / "demo", recipe=cfg, device="cpu", progress=False, seed=1)
    res = run_ablation(tmp_path / "abl", recipe=TINY, device="cpu", progress=False, seed=1, variants=["proposed"])
    assert _losses(tmp_path / "abl" / "logs" / "proposed.csv") == _losses(tmp_path / "demo" / "runs" / "joint" /
                                                                       "log.csv")
    demo = json.loads((tmp_path / "demo" / "results.json").read_text())
    joint = next(m for m in demo["methods"] if m["name"] == "joint")
    assert joint["corloc"]["overall"] == pytest.approx(res.rows[0].overall)


@pytest.mark.slow
def test_alternating_budget_updates_keeps_the_step_count():
    res = run_ablation(None, recipe=TINY, device="cpu", progress=False, variants=["alternating", "proposed"],
                       alternating_budget="updates")
    assert res.histories["alternating"].column("batch") == ["strong", "weak"] * (TINY.steps // 2)
    assert len(res.histories["proposed"]) == TINY.steps


def test_bad_variants_are_explained():
    with pytest.raises(ValueError, match="unknown ablation variant 'nope'"):
        run_ablation(None, recipe=TINY, variants=["nope", "proposed"])
    with pytest.raises(ValueError, match="needs the 'proposed' variant"):
        run_ablation(None, recipe=TINY, variants=["alternating"])
    with pytest.raises(ValueError, match="distinct keys"):
        run_ablation(None, recipe=TINY, variants=["proposed", "proposed"])
    with pytest.raises(ValueError, match="alternating_budget"):
        run_ablation(None, recipe=TINY, variants=["proposed"], alternating_budget="both")


def test_table_ii_p_value_column_exact():
    rows = [
        {"aspect": "MoI", "variant": "most abnormal / most malignant", "corloc": 0.82, "ci": (0.7825, 0.8575),
         "p_value": 0.0312},
        {"aspect": "Proposed", "variant": "paper", "corloc": 0.845, "ci": (0.81, 0.88), "p_value": None},
    ]
    assert results_table(rows, kind="II") == (
        "| Aspect | Variant | CorLoc [%] | 95% CI [%] | p-value |\n"
        "|---|---|---:|---:|---:|\n"
        "| MoI | most abnormal / most malignant | 82.00 | 78.25–85.75 | 0.0312 |\n"
        "| Proposed | paper | 84.50 | 81.00–88.00 | - |\n"
    )
    html = results_table(rows, kind="II", fmt="html")
    assert html.count("<tr>") == 3 and "p-value" in html


def test_cli_ablate_help_lists_the_rows_without_importing_torch():
    code = ("import sys\nfrom wsbus.cli import main\n"
            "try:\n    main(['ablate', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for v in TABLE_II_VARIANTS:
        assert v.key in proc.stdout
    assert proc.stdout.strip().endswith("NO TORCH")
    bad = subprocess.run([sys.executable, "-m", "wsbus", "ablate", "--variants", "bogus", "proposed", "--quick"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown ablation variant 'bogus'" in bad.stderr


def test_custom_variant_object(tmp_path):
    v = AblationVariant("static_0.1", "MIL scale factor", "static value (0.1)", alpha=0.1)
    res = run_ablation(None, recipe=replace(TINY, steps=2), device="cpu", progress=False,
                       variants=[v, "proposed"])
    assert res.rows[0].variant == "static value (0.1)" and set(res.histories["static_0.1"].column("alpha")) == {0.1}
    assert np.isfinite(res.histories["static_0.1"].column("loss_mil")).all()


def test_cpu_threads_sets_and_restores_the_thread_count():
    import torch

    from wsbus.seeding import cpu_threads

    before = torch.get_num_threads()
    target = 2 if before == 1 else 1
    with cpu_threads(target) as n:
        assert n == target == torch.get_num_threads()
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with cpu_threads(target):
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before          # restored on error too
    with cpu_threads(None) as n:
        assert n == before
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            with cpu_threads(bad):
                pass


@pytest.mark.slow
def test_ablation_records_its_thread_count_and_restores_the_callers():
    import torch

    before = torch.get_num_threads()
    res = run_ablation(None, recipe=replace(TINY, steps=1), device="cpu", progress=False, variants=["proposed"],
                       threads=1)
    assert res.config["torch_threads"] == 1 and torch.get_num_threads() == before


def _fake_result(seed, values, p_values):
    from wsbus.experiments import AblationResult
    from wsbus.evaluate import MethodResult

    variants = [v for v in TABLE_II_VARIANTS if v.key in ("static_alpha", "alternating", "proposed")]
    rows = [MethodResult(name=v.key, n_strong=1, n_weak=2, overall=x, p_value=p, aspect=v.aspect, variant=v.variant)
            for v, x, p in zip(variants, values, p_values)]
    return AblationResult(rows=rows, variants=variants, histories={}, config={"seed": seed})


def test_summarize_ablations_by_hand():
    from wsbus.experiments import summarize_ablations

    results = [_fake_result(0, [0.80, 0.85, 0.85], [0.01, 1.0, None]),
               _fake_result(3, [0.90, 0.70, 0.85], [0.20, 0.03, None])]
    assert summarize_ablations(results) == (
        "| Aspect | Variant | seed 0 [%] | seed 3 [%] | mean [%] | vs proposed: > / = / < |\n"
        "|---|---|---:|---:|---:|:---:|\n"
        "| MIL scale factor | static value (0.5) | 80.00 | 90.00 | 85.00 | 1 (0) / 0 / 1 (1) |\n"
        "| Combining weakly and strongly supervised data | alternating mini-batches from each set | 85.00 | 70.00 "
        "| 77.50 | 0 (0) / 1 / 1 (1) |\n"
        "| Proposed | most malignant / most malignant, gradual increase, combined single mini-batch | 85.00 | 85.00 "
        "| 85.00 | - |\n")
    with pytest.raises(ValueError, match="at least one"):
        summarize_ablations([])
    other = _fake_result(1, [0.8, 0.8, 0.8], [0.5, 0.5, None])
    other.variants = other.variants[::-1]
    with pytest.raises(ValueError, match="different variants"):
        summarize_ablations([results[0], other])


@pytest.mark.slow
def test_cli_ablate_over_seeds_writes_each_seed_and_a_summary(tmp_path, capsys):
    from wsbus.cli import main

    out = tmp_path / "abl"
    assert main(["ablate", "--quick", "--seeds", "0", "1", "--variants", "static_alpha", "proposed",
                 "--out", str(out), "--device", "cpu"]) == 0
    for s in (0, 1):
        data = json.loads((out / f"seed_{s}" / "ablation.json").read_text())
        assert data["config"]["seed"] == s and [r["key"] for r in data["rows"]] == ["static_alpha", "proposed"]
    summary = (out / "summary.md").read_text()
    table = summary.split("\n\n")[1]                     # after the "# Table II over seeds" title
    assert table.startswith("| Aspect | Variant | seed 0 [%] | seed 1 [%] | mean [%] |")
    assert table in capsys.readouterr().out
    with pytest.raises(ValueError, match="distinct"):
        from wsbus.experiments import run_ablations
        run_ablations([0, 0], None, recipe=TINY)
