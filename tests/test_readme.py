"""The README's Python examples run as written, and every network in them learns."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.slow  # about 40 s idle, minutes on a busy machine: the spiking example trains
def test_the_library_examples_run_and_learn(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # an example saves a model into the working folder
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 3
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    accuracies = [float(a) for a in re.findall(r"test accuracy ([0-9.]+)", out)]
    # the dense net, DANP and BPTT on a spiking net, yours, and yours reloaded as a plain model
    assert len(accuracies) == 5, out
    assert min(accuracies) > 0.5, out  # chance is 0.1
    assert accuracies[3] == accuracies[4], out  # the plain model is the trained network
    assert (tmp_path / "my_model.pt").exists()
