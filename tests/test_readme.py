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
