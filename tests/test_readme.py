"""README's two commands are the project's contract: CI must run the README's test command verbatim."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_readme_opens_with_the_two_commands():
    blocks = _bash_blocks((ROOT / "README.md").read_text())
    assert blocks[0] == "pip install -e . && wsbus demo"
    assert blocks[1] == 'pip install -e ".[dev,book]" && pytest --nbval'


def test_ci_runs_the_readme_test_command_verbatim():
    test_command = _bash_blocks((ROOT / "README.md").read_text())[1]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_console_script_and_module_entry_point_are_declared():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'wsbus = "wsbus.cli:main"' in pyproject
    assert (ROOT / "wsbus" / "__main__.py").exists()


def test_readme_quotes_the_published_busbra_results():
    """README's BUS-BRA headline is the committed folds study, not numbers typed by hand: every method's mean ± sd
    CorLoc, AP50 and FROC CPM over the folds run, joint's gain over the same boxes alone, the 10-box results, the
    folds and the command."""
    import json
    import statistics

    summary = json.loads((ROOT / "docs" / "results" / "busbra_folds" / "summary.json").read_text())
    folds = summary["folds"]
    text = " ".join((ROOT / "README.md").read_text().split())

    def values(name, key="corloc", methods="methods"):
        out = []
        for f in folds:
            m = next(m for m in f[methods] if m["name"] == name)
            out.append(m["corloc"]["overall"] if key == "corloc" else m[key]["mAP"] if key == "ap50" else m[key])
        return out

    def mean(name, key="corloc", methods="methods"):
        return statistics.fmean(values(name, key, methods))

    for name in ("strong_full", "strong_few", "weak_only", "joint", "joint_paper", "joint_self_training"):
        assert f"{100 * mean(name):.1f} %" in text, name
        for key in ("corloc", "ap50", "froc_cpm"):
            cell = f"{100 * mean(name, key):.1f} ± {100 * statistics.stdev(values(name, key)):.1f}"
            assert cell in text, (name, key)
    if all("methods_10" in f for f in folds):
        for name in ("strong_few", "joint", "joint_paper", "joint_self_training"):
            assert f"{100 * mean(name, methods='methods_10'):.1f} %" in text, name
    assert f"+{100 * (mean('joint') - mean('strong_few')):.1f} points" in text

    def located(name, level, methods="methods"):
        """Mean over the folds of a method's class-free CorLoc at an IoU level (``located``: one 0/1 per image)."""
        hits = [next(m for m in f[methods] if m["name"] == name)["located"][level] for f in folds]
        return statistics.fmean(h.count("1") / len(h) for h in hits)

    for level in ("0.1", "0.7"):
        assert f"{100 * located('strong_full', level):.1f} %" in text, level
        for methods in ("methods", "methods_10"):
            assert f"{100 * located('joint_self_training', level, methods):.1f} %" in text, (level, methods)
    assert f"folds {', '.join(str(f['fold']) for f in folds)} of 5" in text
    assert "docs/results/busbra_folds/" in text and "python scripts/busbra_folds.py" in text
