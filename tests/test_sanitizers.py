"""The kernel suite once more, with the CPU build under AddressSanitizer and UndefinedBehaviorSanitizer.

The kernel suite runs on its sanitizer grid (``DALI_KMIX_TEST_GRID=sanitizer``: fewer K and cut patterns,
every size, dtype, layout, method and scheduling kept), which reaches every line, branch outcome and
template instantiation of the kernels that the whole grid reaches (``benchmarks/sanitizer_grid_coverage.py``).

The instrumented library is built with -fsanitize=address,undefined
-fno-sanitize-recover=all and the suite runs in a subprocess with libasan
preloaded, so every buffer the kernels touch (NumPy's included) comes from the
instrumented allocator; any report fails the run.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.slow  # subprocesses



def _runtime(name):
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++")
    if not cxx:
        return None
    path = subprocess.run([cxx, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


def _sanitized_env():
    libasan = _runtime("libasan.so")
    if libasan is None:
        pytest.skip("no libasan runtime for the C++ compiler")
    env = dict(os.environ)
    env.update(
        DALI_KMIX_SANITIZE="1",
        DALI_KMIX_NO_GPU="1",
        # test_backends.py's reduced grid: every kernel line, branch outcome and instantiation the whole grid reaches
        # (benchmarks/sanitizer_grid_coverage.py checks it with gcov) in half the cases
        DALI_KMIX_TEST_GRID="sanitizer",
        LD_PRELOAD=libasan,
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1:exitcode=99",
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=98",
        PYTHONFAULTHANDLER="1",
    )
    return env


def _run_clean(args, env, tmp_path):
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-s", "-p", "no:cacheprovider", "-m", "not gpu", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=1800)
    out = proc.stdout + proc.stderr
    assert "AddressSanitizer" not in out and "runtime error:" not in out, out[-20000:]
    assert proc.returncode == 0, out[-20000:]
    assert " passed" in out and " failed" not in out, out[-5000:]
    return out


def test_kernel_suite_under_asan_and_ubsan(tmp_path):
    _run_clean([str(HERE / "test_backends.py")], _sanitized_env(), tmp_path)
    # the instrumented library was really the one loaded
    from dali_kmix.backends import build

    assert any(p.name == "libkmix_asan.so" for p in build.cache_dir().glob("*/libkmix_asan.so"))


def test_dali_plugin_suite_under_asan_and_ubsan(tmp_path):
    """The native DALI operators (gathering the record, the pointers, the blocks) under ASan/UBSan.

    What this can see: the operator's own buffers (an off-by-one write into its gathered record
    was verified to be reported) and undefined behaviour. What it cannot: DALI's sample buffers
    come from DALI's pooled allocator, without redzones, so an over-read of an input sample would
    pass here; the kernels' bounds on individually allocated buffers are what the suite above checks.
    """
    pytest.importorskip("nvidia.dali")
    env = _sanitized_env()
    # libstdc++ preloaded too: ASan's __cxa_throw interceptor needs the real one resolvable at start-up,
    # or the first C++ exception (a DALI_ENFORCE in the error tests) aborts in the interceptor.
    libstdcxx = _runtime("libstdc++.so")
    if libstdcxx:
        env["LD_PRELOAD"] = f"{env['LD_PRELOAD']}:{os.path.realpath(libstdcxx)}"
    _run_clean([str(HERE / "test_plugin.py"), "-k", "bit_exact or batch_sizes or empty or errors"], env, tmp_path)
    from dali_kmix.backends import build

    assert list(build.cache_dir().glob("*/libkmix_dali_asan.so"))


# memcheck: out-of-bounds and misaligned accesses, leaks of device memory; racecheck: shared-memory hazards
# between the threads of a block (the kernels use no shared memory today: this keeps it so checked if they do).
SANITIZER_SUMMARIES = {"memcheck": "ERROR SUMMARY: 0 errors", "racecheck": "RACECHECK SUMMARY: 0 hazards displayed"}


@pytest.mark.gpu
@pytest.mark.parametrize("tool", list(SANITIZER_SUMMARIES))
def test_gpu_kernel_suite_under_compute_sanitizer(tmp_path, tool):
    exe = shutil.which("compute-sanitizer")
    if exe is None:
        pytest.skip("compute-sanitizer not installed")
    cmd = [exe, "--tool", tool, "--error-exitcode", "97", "--target-processes", "all",
           sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "gpu", "-k", "cupy",
           str(HERE / "test_backends.py")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=3600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-20000:]
    assert SANITIZER_SUMMARIES[tool] in out, out[-5000:]
    assert " passed" in out and " failed" not in out, out[-5000:]
