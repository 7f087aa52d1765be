"""The kernel suite once more, with the CPU build under AddressSanitizer and UndefinedBehaviorSanitizer.

The kernel suite runs on its sanitizer grid (``DALI_KMIX_TEST_GRID=sanitizer``: fewer K and cut patterns,
every size, dtype, layout, method and scheduling kept), which reaches every line, branch outcome and
template instantiation of the kernels that the whole grid reaches (``benchmarks/sanitizer_grid_coverage.py``).

The instrumented library is built with -fsanitize=address,undefined
-fno-sanitize-recover=all and the suite runs in a subprocess with libasan
preloaded, so every buffer the kernels touch (NumPy's included) comes from the
instrumented allocator; any report fails the run.
"""

import itertools
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import _background as background
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


def _plugin_env():
    pytest.importorskip("nvidia.dali")
    env = _sanitized_env()
    # libstdc++ preloaded too: ASan's __cxa_throw interceptor needs the real one resolvable at start-up,
    # or the first C++ exception (a DALI_ENFORCE in the error tests) aborts in the interceptor.
    libstdcxx = _runtime("libstdc++.so")
    if libstdcxx:
        env["LD_PRELOAD"] = f"{env['LD_PRELOAD']}:{os.path.realpath(libstdcxx)}"
    return env


#: The sanitized suites: test name -> (pytest arguments, environment). Each runs in a subprocess of its own.
SUITES = {
    "test_kernel_suite_under_asan_and_ubsan": lambda: ([str(HERE / "test_backends.py")], _sanitized_env()),
    "test_dali_plugin_suite_under_asan_and_ubsan": lambda: (
        [str(HERE / "test_plugin.py"), "-k", "bit_exact or batch_sizes or empty or errors or kmix_draw"],
        _plugin_env()),
    # The CPU build's native steps outside the kernel suite: the spectral residual, the one-pass record check, the
    # soft targets and the native sampler (kmix_spectral.h, kmix_host_record_valid, kmix_host_mix_labels,
    # kmix_draw.h).
    "test_host_steps_beside_the_blend_under_asan_and_ubsan": lambda: (
        [str(HERE / "test_saliency.py"), str(HERE / "test_reference.py"), str(HERE / "test_mixing.py"),
         str(HERE / "test_sampling.py"),
         "-k", "cpu_build or one_pass"], _sanitized_env()),
    # The uint8 blend's SIMD steps for the other x86 targets than this machine's (-march=native here: AVX-512 where
    # the processor has it): AVX2 + FMA (x86-64-v3) and the baseline without either (the scalar loop alone), each
    # against the reference. Not sanitized; plain builds for those targets (DALI_KMIX_MARCH).
    "test_uint8_blend_built_for_avx2": lambda: _target_suite("x86-64-v3"),
    "test_uint8_blend_built_for_the_x86_64_baseline": lambda: _target_suite("x86-64"),
}


def _target_suite(march):
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"-march={march} is an x86-64 target")
    env = dict(os.environ, DALI_KMIX_MARCH=march, DALI_KMIX_NO_GPU="1")
    env.pop("DALI_KMIX_SANITIZE", None)
    return [str(HERE / "test_backends.py"), "-k", "uint8_blend_rounds or (blend_matches_reference and u8)"], env


def _suite_job(name):
    """The background job (tests/_background.py) of suite ``name``: its pytest run in a subprocess of its own."""

    def job():
        args, env = SUITES[name]()
        return ([sys.executable, "-m", "pytest", "-q", "-x", "-s", "-p", "no:cacheprovider", "-m", "not gpu", *args],
                env, None)

    return job


#: The suites as the background jobs that conftest.py starts when collection ends (their tests run last).
BACKGROUND_JOBS = {name: _suite_job(name) for name in SUITES}
_runner = background.RUNNER


def _finish(name):
    """Wait for suite ``name`` (run here if collection did not start it) and check it ran clean."""
    out, returncode, _ = _runner.result(name, _suite_job(name))
    assert "AddressSanitizer" not in out and "runtime error:" not in out, out[-20000:]
    assert returncode == 0, out[-20000:]
    assert " passed" in out and " failed" not in out, out[-5000:]
    return out


def test_kernel_suite_under_asan_and_ubsan():
    _finish("test_kernel_suite_under_asan_and_ubsan")
    # the instrumented library was really the one loaded
    from dali_kmix.backends import build

    assert any(p.name == "libkmix_asan.so" for p in build.cache_dir().glob("*/libkmix_asan.so"))


def test_dali_plugin_suite_under_asan_and_ubsan():
    """The native DALI operators (gathering the record, the pointers, the blocks) under ASan/UBSan.

    What this can see: the operator's own buffers (an off-by-one write into its gathered record
    was verified to be reported) and undefined behaviour. What it cannot: DALI's sample buffers
    come from DALI's pooled allocator, without redzones, so an over-read of an input sample would
    pass here; the kernels' bounds on individually allocated buffers are what the suite above checks.
    """
    _finish("test_dali_plugin_suite_under_asan_and_ubsan")
    from dali_kmix.backends import build

    assert list(build.cache_dir().glob("*/libkmix_dali_asan.so"))


def test_host_steps_beside_the_blend_under_asan_and_ubsan():
    _finish("test_host_steps_beside_the_blend_under_asan_and_ubsan")


def test_uint8_blend_built_for_avx2():
    _finish_target("test_uint8_blend_built_for_avx2", "x86-64-v3")


def test_uint8_blend_built_for_the_x86_64_baseline():
    _finish_target("test_uint8_blend_built_for_the_x86_64_baseline", "x86-64")


def _finish_target(name, march):
    _finish(name)
    from dali_kmix.backends import build

    # that build was really made for that target (its command line sits beside the library)
    assert any(f"-march={march}" in cmd.read_text() for cmd in build.cache_dir().glob("*/libkmix.so.cmd"))


@pytest.mark.parametrize("where", ["background", "foreground"])
def test_a_failing_sanitized_suite_fails_its_test(monkeypatch, where):
    # the background plumbing must not swallow a failure: a suite that fails (here: a test file asserting False)
    # fails the test that waits for it, with its output, whether the thread ran it or the test itself did
    monkeypatch.setitem(SUITES, "failing", lambda: ([str(HERE / "_failing_suite.py")], dict(os.environ)))
    runner = background.Runner()
    monkeypatch.setattr(sys.modules[__name__], "_runner", runner)
    if where == "background":
        runner.start([("failing", _suite_job("failing"))])
        assert runner.thread.is_alive() or runner.events["failing"].is_set()
    with pytest.raises(AssertionError, match="assert 1 == 2"):
        _finish("failing")
    runner.stop()


def test_a_background_job_runs_with_the_environment_the_session_started_with(monkeypatch):
    # A test beside the jobs sets DALI_KMIX_PLUGIN=0 for a while (test_dali.py, test_bench.py): a job the thread
    # started in that while once ran the sanitized plugin suite without its plugin. The jobs are prepared when the
    # runner starts, in the session's thread; the second job here starts only after the variable changed.
    monkeypatch.setenv("DALI_KMIX_PLUGIN", "1")
    callers = []

    def job(code):
        def prepare():
            callers.append(threading.current_thread())
            return [sys.executable, "-c", code], None, None

        return prepare

    runner = background.Runner()
    runner.start([("wait", job("import time; time.sleep(1)")),
                  ("print", job("import os; print('plugin=' + os.environ['DALI_KMIX_PLUGIN'])"))])
    monkeypatch.setenv("DALI_KMIX_PLUGIN", "0")
    try:
        out, returncode, _ = runner.result("print", None)
        assert returncode == 0 and "plugin=1" in out, out
        assert callers == [threading.current_thread()] * 2
    finally:
        runner.stop()


def test_a_job_folder_goes_to_its_test_or_is_removed_when_no_test_collected_it(tmp_path):
    # jobs prepare their folders when the runner starts; a session ended early (-x) must not leave them behind
    def job(folder, code):
        folder.mkdir()
        return lambda: ([sys.executable, "-c", code], None, folder)

    collected, abandoned = tmp_path / "collected", tmp_path / "abandoned"
    runner = background.Runner()
    wait = [sys.executable, "-c", "import time; time.sleep(60)"]
    runner.start([("collected", job(collected, "pass")), ("wait", lambda: (wait, None, None)),
                  ("abandoned", job(abandoned, "pass"))])
    assert runner.result("collected", None)[2] == collected
    runner.stop()  # kills the wait: the last job never runs and no test collects it
    assert collected.is_dir() and not abandoned.exists()


# --------------------------------------------------------------------------- the CUDA kernels under compute-sanitizer
# One tool per device call, a selection sized to run in a few minutes, CuPy without its memory pool (a pool hands out
# pieces of large blocks, so a kernel reading past a sample inside its block would not be reported), the tool's own
# log and the inner pytest's output written straight into a folder that survives a killed call
# (DALI_KMIX_SANITIZER_LOG_DIR; benchmarks/gpu_session.sh points it at its OUT folder).

_SHARED_MEMORY = re.compile(r"__shared__|__syncthreads|__syncwarp|__shfl\w*|cooperative_groups")


def _code_without_comments(text):
    return re.sub(r"//[^\n]*|/\*.*?\*/", " ", text, flags=re.S)


def kernels_using_shared_memory():
    """Device sources (kernels/, the host shim aside) that use shared memory or warp synchronisation."""
    from dali_kmix.backends.sources import kernels_dir

    return sorted(f.name for f in kernels_dir().iterdir()
                  if f.suffix in (".cu", ".cuh", ".h", ".hpp", ".cpp") and f.name != "kmix_host_shim.h"
                  and _SHARED_MEMORY.search(_code_without_comments(f.read_text())))


# memcheck: out-of-bounds and misaligned global accesses, device-side errors. racecheck (and synccheck) look only at
# shared memory and block/warp synchronisation, which no kernel uses today: they join when a kernel starts to.
SANITIZER_TOOLS = ["memcheck"] + (["racecheck", "synccheck"] if kernels_using_shared_memory() else [])
SANITIZER_SUMMARIES = {"memcheck": "ERROR SUMMARY: 0 errors", "racecheck": "RACECHECK SUMMARY: 0 hazards displayed",
                       "synccheck": "ERROR SUMMARY: 0 errors"}
SANITIZER_TIMEOUT_S = int(os.environ.get("DALI_KMIX_SANITIZER_TIMEOUT", "450"))  # inside one 600-second device call


#: Tests whose backend id comes last (parametrized outermost in test_backends.py, so that the backends of one case run
#: back to back and share its reference).
BACKEND_LAST = ("test_blend_matches_reference", "test_mix_blends_or_pastes_each_sample_as_its_flag_says")


def _ids(test, *params):
    if test in BACKEND_LAST:
        return [f"{test}[{'-'.join(combo + ('cupy',))}]" for combo in itertools.product(*params)]
    return [f"{test}[{'-'.join(('cupy',) + combo)}]" for combo in itertools.product(*params)]


DTYPE_IDS, LAYOUTS = ("u8", "f16", "f32"), ("HWC", "CHW")
#: The CuPy kernel tests run under the sanitizer (node ids in tests/test_backends.py): every kernel and branch (DMixup,
#: DCutMix, both in one kmix_mix launch, the box nesting with and without salient centres, the grey resize), every
#: dtype x layout, K = 2 and 9, odd sizes (65 samples of 3 x 5), a 1 x 1 image, empty and full boxes, images of
#: 225 x 227 split over many blocks, strided sample views, a non-default stream.
SANITIZER_SELECTION = [
    *_ids("test_blend_matches_reference", ["65x3x5x3"], ["2", "9"], ["dmixup", "dcutmix"], LAYOUTS, DTYPE_IDS),
    *_ids("test_blend_matches_reference", ["2x225x227x3"], ["3"], ["dmixup", "dcutmix"], LAYOUTS, ["u8", "f32"]),
    *_ids("test_blend_matches_reference", ["1x1x1x3"], ["2"], ["dmixup", "dcutmix"], ["CHW"], ["f16"]),
    *_ids("test_mix_blends_or_pastes_each_sample_as_its_flag_says", ["65x3x5x3"], ["2", "9"], LAYOUTS, DTYPE_IDS,
          ["alternating"]),
    *_ids("test_mix_blends_or_pastes_each_sample_as_its_flag_says", ["9x225x227x3"], ["3"], LAYOUTS, ["f16"],
          ["all-blend", "all-paste"]),
    *_ids("test_dcutmix_batch_mode_and_degenerate_boxes", ["tiny-alpha-empty-boxes", "big-alpha"], LAYOUTS),
    *_ids("test_full_image_and_empty_boxes", LAYOUTS),
    "test_dmixup_one_weight_is_a_copy[cupy]",
    *_ids("test_nesting_kernel_matches_numpy", ["65x3x5"], ["2", "9"], ["0.3"], ["sample", "batch"],
          ["dmixup", "dcutmix"]),
    *_ids("test_nesting_kernel_matches_numpy", ["1x1x1"], ["2"], ["0.001"], ["sample"], ["dcutmix"]),
    *_ids("test_nesting_kernel_matches_numpy", ["40x225x227"], ["9"], ["50.0"], ["batch"], ["dcutmix"]),
    *_ids("test_nesting_kernel_with_salient_centers_matches_numpy", ["65x3x5"], ["2", "9"], ["sample", "batch"]),
    *_ids("test_nesting_kernel_with_salient_centers_matches_numpy", ["1x1x1"], ["2"], ["sample"]),
    *_ids("test_grey_resize_matches_numpy", ["hwc-37x53x3", "chw-3x225x227", "hwc-9x300x1", "chw-4x70x64",
                                             "hwc-1x1x3"], DTYPE_IDS),
    *[f"test_cupy_strided_views_give_the_reference[{d}-{lay}-transposed]" for d in DTYPE_IDS for lay in LAYOUTS],
    "test_gpu_kernels_run_on_the_current_stream_without_sync",
    "test_device_sampler_gives_valid_records",
]


def sanitizer_command(exe, tool, log_dir):
    """compute-sanitizer running the selection with ``tool``; its report goes to ``log_dir/<tool>.log``."""
    return [exe, "--tool", tool, "--log-file", str(Path(log_dir) / f"{tool}.log"), "--error-exitcode", "97",
            "--target-processes", "all",
            sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "gpu", "--require-gpu",
            *[f"{HERE / 'test_backends.py'}::{t}" for t in SANITIZER_SELECTION]]


def sanitizer_env():
    """CuPy, torch and DALI without their memory pools, so memcheck sees every allocation's real bounds."""
    return dict(os.environ, DALI_KMIX_NO_POOL="1", PYTORCH_NO_CUDA_MEMORY_CACHING="1",
                DALI_USE_DEVICE_MEM_POOL="0", PYTHONUNBUFFERED="1")


def test_sanitizer_selection_names_existing_tests_and_covers_every_kernel(tmp_path):
    # runs without a device: the selection is checked against the collected node ids of test_backends.py
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          str(HERE / "test_backends.py")], capture_output=True, text=True, cwd=tmp_path).stdout
    collected = {line.split("::", 1)[1] for line in out.splitlines() if "::" in line}
    assert len(collected) > 1000, out[-2000:]
    missing = [t for t in SANITIZER_SELECTION if t not in collected]
    assert not missing, f"not in tests/test_backends.py: {missing}"
    assert len(set(SANITIZER_SELECTION)) == len(SANITIZER_SELECTION) <= 150
    sel = "\n".join(SANITIZER_SELECTION)
    for test in ("test_blend_matches_reference", "test_mix_blends_or_pastes_each_sample_as_its_flag_says",
                 "test_grey_resize_matches_numpy"):
        assert all(re.search(rf"{test}\[[^\]]*(?i:{lay})[^\]]*-{dt}(-[^\]]*)?\]", sel)
                   for lay in LAYOUTS for dt in DTYPE_IDS), f"{test}: not every dtype x layout"
    for method in ("dmixup", "dcutmix"):
        for k in ("2", "9"):
            assert re.search(rf"test_blend_matches_reference\[65x3x5x3-{k}-{method}-.*-cupy\]", sel)
            assert re.search(rf"test_nesting_kernel_matches_numpy\[cupy-65x3x5-{k}-.*-{method}\]", sel)
    cmd = sanitizer_command("compute-sanitizer", "memcheck", tmp_path)
    assert cmd[cmd.index("--log-file") + 1] == str(tmp_path / "memcheck.log") and "--require-gpu" in cmd


def test_racecheck_runs_where_a_kernel_uses_shared_memory(tmp_path, monkeypatch):
    # no kernel uses shared memory or warp synchronisation today, so racecheck, which checks only those, is not run;
    # a kernel that starts to use them brings racecheck and synccheck in (the scan ignores comments)
    from dali_kmix.backends import sources

    users = kernels_using_shared_memory()
    assert ("racecheck" in SANITIZER_TOOLS) == bool(users) and SANITIZER_TOOLS[0] == "memcheck"
    (tmp_path / "a.cu").write_text("// __shared__ in a comment\n/* __syncthreads() */\n__global__ void f() {}\n")
    (tmp_path / "kmix_host_shim.h").write_text("#define __shared__\n")
    monkeypatch.setattr(sources, "kernels_dir", lambda: tmp_path)
    assert kernels_using_shared_memory() == []
    (tmp_path / "b.cuh").write_text("__device__ void g() { __shared__ float tile[32]; }\n")
    assert kernels_using_shared_memory() == ["b.cuh"]


@pytest.mark.gpu
@pytest.mark.parametrize("tool", SANITIZER_TOOLS)
def test_gpu_kernel_suite_under_compute_sanitizer(tmp_path, tool):
    exe = shutil.which("compute-sanitizer")
    if exe is None:
        pytest.skip("compute-sanitizer not installed")
    log_dir = Path(os.environ.get("DALI_KMIX_SANITIZER_LOG_DIR") or tmp_path)
    log_dir.mkdir(parents=True, exist_ok=True)
    report, inner = log_dir / f"{tool}.log", log_dir / f"{tool}-pytest.txt"

    def tails():
        return "\n".join(f"--- {p.name}:\n{p.read_text(errors='replace')[-6000:]}" for p in (inner, report)
                         if p.exists())

    with open(inner, "w") as f:  # written as it runs: a call killed at its limit still leaves it
        try:
            proc = subprocess.run(sanitizer_command(exe, tool, log_dir), stdout=f, stderr=subprocess.STDOUT,
                                  env=sanitizer_env(), cwd=tmp_path, timeout=SANITIZER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{tool}: not done after {SANITIZER_TIMEOUT_S} s; shrink SANITIZER_SELECTION\n{tails()}")
    out = inner.read_text(errors="replace")
    assert proc.returncode == 0, tails()
    assert SANITIZER_SUMMARIES[tool] in report.read_text(errors="replace"), tails()
    assert f"{len(SANITIZER_SELECTION)} passed" in out and " failed" not in out and "skipped" not in out, tails()


#: Plain cudaMalloc'd device and pinned buffers for DALI (no pools, no VMM): memcheck sees each buffer's own bounds.
DALI_WITHOUT_POOLS = {"DALI_USE_DEVICE_MEM_POOL": "0", "DALI_USE_PINNED_MEM_POOL": "0", "DALI_USE_VMM": "0",
                      "DALI_USE_CUDA_MALLOC_ASYNC": "0"}
#: The native GPU operators' device tests of test_plugin.py that run under memcheck (sized for one 10-minute call).
NATIVE_UNDER_MEMCHECK = ("(gpu_operator_equals and K3 and sample) or gpu_operator_edge or record_errors_on_the_gpu "
                         "or failing_gpu_operator")


@pytest.mark.gpu
def test_native_gpu_operators_under_compute_sanitizer_memcheck(tmp_path):
    """fn.kmix_* on the GPU (the plugin's GPU backend: the record's copy, the pointer arrays, the kernels) under
    memcheck, DALI's memory pools off; the sanitizer's report goes to a log file per process under tmp_path."""
    exe = shutil.which("compute-sanitizer")
    if exe is None:
        pytest.skip("compute-sanitizer not installed")
    from dali_kmix.backends import plugin

    assert plugin.gpu_backend(), plugin.cuda_toolchain()[1]
    env = dict(os.environ, **DALI_WITHOUT_POOLS)
    cmd = [exe, "--tool", "memcheck", "--leak-check", "no", "--error-exitcode", "97", "--target-processes", "all",
           "--log-file", str(tmp_path / "memcheck-%p.log"), sys.executable, "-m", "pytest", "-q", "-x", "-p",
           "no:cacheprovider", "-m", "gpu", "-k", NATIVE_UNDER_MEMCHECK, str(HERE / "test_plugin.py")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=540)
    logs = {p.name: p.read_text() for p in tmp_path.glob("memcheck-*.log")}
    out = proc.stdout + proc.stderr + "".join(f"\n--- {n}\n{t[-5000:]}" for n, t in logs.items())
    assert proc.returncode == 0, out[-20000:]
    assert logs and all("ERROR SUMMARY: 0 errors" in t for t in logs.values()), out[-20000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout, out[-5000:]
