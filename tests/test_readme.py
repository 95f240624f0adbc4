"""The README's code examples run as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 5  # the interface plus one per method


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, capsys):
    exec(compile(BLOCKS[index], f"README block {index}", "exec"), {})
    assert capsys.readouterr().out.strip()  # every example prints what it shows


ROOT = README.parent
COMMANDS = re.findall(r"^    (python3 -m venv .*)$", README.read_text(), flags=re.M)


def test_ci_runs_the_readme_test_command_verbatim():
    assert len(COMMANDS) == 2, COMMANDS  # set up and train; set up and test
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci_lines[-1] == COMMANDS[1]
    assert "apt-get install -y -qq dataset-fashion-mnist" in "\n".join(ci_lines)


def test_fresh_machine_commands_install_the_tested_torch_within_the_required_range():
    pinned = {re.search(r"pip install (?:-q )?torch==([\d.]+) && pip install", c).group(1) for c in COMMANDS}
    assert len(pinned) == 1
    version = tuple(int(v) for v in pinned.pop().split("."))
    pyproject = (ROOT / "pyproject.toml").read_text()
    low, high = re.search(r'"torch>=([\d.]+),<([\d.]+)"', pyproject).groups()
    assert tuple(int(v) for v in low.split(".")) <= version < tuple(int(v) for v in high.split("."))


def test_the_eval_example_reads_the_run_the_first_command_makes():
    out = re.search(r"--out (\S+)$", COMMANDS[0]).group(1)
    assert re.search(rf"^    \$ adaptrnn eval --run {re.escape(out)}$", README.read_text(), flags=re.M)
    assert f"run directory: {out} " in README.read_text()  # the printed result is that run's
