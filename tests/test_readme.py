"""The README's Python examples run as written (in a fresh folder, one namespace, in order)."""

import ast
import builtins
import os
import re
from pathlib import Path

import pytest

pytest.importorskip("nvidia.dali")

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _free_names(code: str) -> set:
    """The names a block reads but neither imports nor binds (nor are builtins): what it takes from the blocks
    before it, which one namespace for all blocks hides."""
    bound, used = set(dir(builtins)), set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Name):
            (used if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return used - bound


#: Blocks written to be copied alone (each found by a string in it): they import everything they use.
STANDALONE = {"dynamic mode": "kmixd.dcutmix("}


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


@pytest.mark.parametrize("marker", list(STANDALONE.values()), ids=list(STANDALONE))
def test_readme_standalone_examples_import_what_they_use(marker):
    """The dynamic-mode example once used IMAGENET_MEAN / IMAGENET_STD imported by an earlier block only."""
    (code,) = [b for b in _blocks() if marker in b]
    assert _free_names(code) == set()
