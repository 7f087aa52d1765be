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


def test_readme_documents_every_dali_entry_point():
    """Dynamic mode, the PyTorch proxy, your own pipeline, the ResNet-50 example's changes, the last batch; and a
    checkpoint is bytes in DALI 2.4 (json.dump fails on it), not a string."""
    text = README.read_text()
    for heading in ("Dynamic mode", "DALI's PyTorch proxy", "Your own pipeline in `DALIMixIterator`",
                    "From DALI's ResNet-50 example", "The last batch: padded copies are no partners"):
        assert f"\n### {heading}" in text, heading
    blocks = "\n".join(_blocks())
    assert "kmixd.dcutmix(" in blocks and "ProxyFolder(" in blocks and "output_map=" in blocks
    assert "squeeze(-1).long()" in text and "target.argmax(1)" in blocks
    assert "# a string" not in text and "isinstance(saved, bytes)" in blocks
