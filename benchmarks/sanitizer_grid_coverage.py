"""Check that the reduced grid tests/test_sanitizers.py runs under ASan/UBSan reaches the same kernel code as the
whole grid of tests/test_backends.py.

Builds the CPU kernels with gcov instrumentation (``--coverage -O0``, each grid in its own build cache), runs
tests/test_backends.py once with the whole grid and once with ``DALI_KMIX_TEST_GRID=sanitizer``, and compares
what gcov saw in kernels/: the template instantiations run, the lines run (per instantiation) and the branch
outcomes taken. Prints the three comparisons and exits 1 if the reduced grid misses anything.

    python benchmarks/sanitizer_grid_coverage.py      # about 3 minutes on 2 cores
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PLUGIN = '''
import dali_kmix.backends.build as build
import dali_kmix.backends.cpu as cpu

_flags = build.build_flags


def _coverage_flags(sanitize=None):
    return [f for f in _flags(False) if f != "-O3" and not f.startswith(("-march", "-mcpu"))] + ["-O0", "--coverage"]


cpu.build_flags = _coverage_flags
'''


def run_grid(work: Path, grid: str | None) -> Path:
    cache = work / f"cache-{grid or 'whole'}"
    env = dict(os.environ, DALI_KMIX_CACHE=str(cache), DALI_KMIX_NO_GPU="1",
               PYTHONPATH=os.pathsep.join([str(work), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("DALI_KMIX_TEST_GRID", None)
    if grid:
        env["DALI_KMIX_TEST_GRID"] = grid
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "kmix_coverage_flags", "-p", "no:cacheprovider", "-m", "not gpu",
           str(ROOT / "tests" / "test_backends.py")]
    proc = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True)
    print(f"{grid or 'whole'} grid: {proc.stdout.strip().splitlines()[-1]}")
    if proc.returncode:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    return cache


def coverage(cache: Path):
    gcda = Path(glob.glob(str(cache / "*" / "*.gcda"))[0]).resolve()
    out = Path(tempfile.mkdtemp(dir=cache))
    subprocess.run(["gcov", "-b", "-c", "-j", "-o", str(gcda.parent), str(gcda)], cwd=out, capture_output=True,
                   check=True)
    report = json.load(gzip.open(next(out.glob("*.gcov.json.gz"))))
    functions, lines, branches = set(), set(), set()
    for f in report["files"]:
        if "/kernels/" not in f["file"]:
            continue
        name = os.path.basename(f["file"])
        functions |= {(name, fn["demangled_name"]) for fn in f["functions"] if fn["execution_count"]}
        for ln in f["lines"]:
            key = (name, ln.get("function_name"), ln["line_number"])
            if ln["count"]:
                lines.add(key)
            branches |= {key + (i,) for i, b in enumerate(ln["branches"]) if b["count"]}
    return {"template instantiations run": functions, "lines run": lines, "branch outcomes taken": branches}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "kmix_coverage_flags.py").write_text(PLUGIN)
        whole, reduced = (coverage(run_grid(work, grid)) for grid in (None, "sanitizer"))
    missed = 0
    for what in whole:
        lost = sorted(whole[what] - reduced[what])
        missed += len(lost)
        print(f"{what}: whole grid {len(whole[what])}, sanitizer grid {len(reduced[what])}, missed {len(lost)}"
              + (f": {lost[:20]}" if lost else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
