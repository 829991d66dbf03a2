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
    """README's BUS-BRA headline is the committed results, not numbers typed by hand."""
    import json

    results = ROOT / "docs" / "results" / "busbra"
    summary = json.loads((results / "summary.json").read_text())
    ten = json.loads((results / "boxes10" / "summary.json").read_text())
    first = {m["name"]: m for m in json.loads((results / "results.json").read_text())["methods"]}
    text = " ".join((ROOT / "README.md").read_text().split())
    mean = summary["mean"]
    for value in (mean["joint"], mean["strong_few"], mean["strong_full"], mean["weak_only"],
                  mean["joint_self_training"], ten["mean"]["strong_few"], ten["mean"]["joint"],
                  ten["mean"]["joint_self_training"]):
        assert f"{100 * value:.1f} %" in text
    assert f"+{100 * (mean['joint'] - mean['strong_few']):.1f} points" in text
    assert f"McNemar p ≤ {max(summary['p_strong_few_vs_joint']):.2g}" in text
    for name in ("joint", "strong_few"):
        lo, hi = first[name]["ci"]
        assert f"{100 * first[name]['corloc']['overall']:.1f} % [95 % CI {100 * lo:.1f}–{100 * hi:.1f}]" in text
