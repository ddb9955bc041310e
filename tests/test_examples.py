"""The Python examples of the README and of the documentation pages run as written, and every
network in them learns. Every ```python block of README.md and docs/*.md is one example (a
block that must not run is written ```text or ```py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = [(page, n, block) for page in PAGES for n, block in enumerate(
    re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S))]


def test_the_examples_are_where_the_tests_expect_them():
    """The README's loop and its own model, and the library guide's spiking network and your
    own network."""
    where = [(page.relative_to(ROOT).as_posix(), n) for page, n, _ in EXAMPLES]
    assert where == [("README.md", 0), ("README.md", 1), ("docs/library.md", 0),
                     ("docs/library.md", 1)], where


@pytest.mark.slow  # about 40 s idle, minutes on a busy machine: the spiking example trains
@pytest.mark.parametrize("page, n, block", EXAMPLES,
                         ids=[f"{p.name}-{n}" for p, n, _ in EXAMPLES])
def test_an_example_runs_and_learns(page, n, block, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # an example saves a model into the working folder
    exec(compile(block, str(page), "exec"), {"__name__": "example"})
    out = capsys.readouterr().out
    accuracies = [float(a) for a in re.findall(r"test accuracy ([0-9.]+)", out)]
    assert accuracies and min(accuracies) > 0.5, out  # chance is 0.1
    if "my_model.pt" in block:  # yours, and yours reloaded as a plain model: the same network
        assert len(accuracies) == 2 and accuracies[0] == accuracies[1], out
        assert (tmp_path / "my_model.pt").exists()
