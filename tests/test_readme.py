"""The README's Python examples run as written (in a fresh folder, one namespace, in order)."""

import os
import re
from pathlib import Path

import pytest

pytest.importorskip("nvidia.dali")

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(_blocks()) >= 4


def test_readme_examples_run(tmp_path, capsys):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        ns = {"__name__": "__readme__"}
        for i, code in enumerate(_blocks()):
            exec(compile(code, f"README.md[python block {i}]", "exec"), ns)
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert "last loss" in out
