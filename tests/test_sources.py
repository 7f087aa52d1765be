"""Compile gate: every kernel compiles with NVRTC for sm_80 and sm_90 with the run-time options, and with
nvcc where it is installed; a compile error carries the compiler log pointing into the .cu file. The run-time
loader compiles through the same function with the same options (no -ftz, no fast math), caches on disk by a
key that covers every included header."""

import re
import shutil

import pytest

from dali_kmix.backends import sources as kernel_source

from _helpers import assert_ieee_ptx

ARCHS = ["sm_80", "sm_90"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", kernel_source.DEVICE_SOURCES)
def test_nvrtc_compiles_every_kernel(name, arch):
    cubin = kernel_source.compile_with_nvrtc(name, arch)
    assert cubin[:4] == b"\x7fELF"
    for expr in kernel_source.NAME_EXPRESSIONS[name] or ("kmix_nest_boxes",):
        assert expr.split("<")[0].encode() in cubin


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", kernel_source.DEVICE_SOURCES)
def test_nvcc_compiles_every_kernel(name, arch):
    cubin = kernel_source.compile_with_nvcc(name, arch)
    assert cubin[:4] == b"\x7fELF"


def test_options_keep_ieee_float_semantics():
    opts = kernel_source.nvrtc_options("sm_90")
    for o in ("-std=c++17", "--fmad=false", "-ftz=false", "-prec-div=true", "-prec-sqrt=true"):
        assert o in opts
    assert not any("fast" in o or o in ("-ftz=true", "--ftz=true", "-use_fast_math") for o in opts)
    assert opts[-1] == "--gpu-architecture=sm_90"
    with pytest.raises(ValueError, match="got 'ninety'"):
        kernel_source.nvrtc_options("ninety")


@pytest.fixture
def record_nvrtc_options(monkeypatch, tmp_path):
    """Every option list handed to nvrtc.compileProgram, with the disk cache in a temp folder."""
    from cupy.cuda import nvrtc

    seen = []
    real = nvrtc.compileProgram
    monkeypatch.setattr(nvrtc, "compileProgram", lambda prog, opts: (seen.append(tuple(opts)), real(prog, opts))[1])
    monkeypatch.setenv("DALI_KMIX_CACHE", str(tmp_path))
    return seen


def test_run_time_path_and_gate_compile_with_the_same_options(record_nvrtc_options, monkeypatch):
    from dali_kmix.backends import gpu

    monkeypatch.setattr(gpu, "device_arch", lambda device_id=None: "sm_90")
    monkeypatch.setattr(gpu, "KernelModule", lambda name, compiled: compiled)  # no device to load it on
    gate = kernel_source.compile_with_nvrtc("kmix_blend.cu", "sm_90")
    run = gpu._module.__wrapped__("kmix_blend.cu", 0)
    assert run.image == gate and run.kind == "cubin"
    assert record_nvrtc_options == [kernel_source.nvrtc_options("sm_90")] * 2
    assert set(run.lowered) == set(kernel_source.NAME_EXPRESSIONS["kmix_blend.cu"])


@pytest.mark.parametrize("name", kernel_source.DEVICE_SOURCES)
def test_ptx_has_no_flush_to_zero_and_fma_only_where_the_source_calls_fmaf(name):
    out = kernel_source.compile_nvrtc(name, "compute_90")
    assert out.kind == "ptx"
    assert_ieee_ptx(out.image.decode(), entries=max(1, len(kernel_source.NAME_EXPRESSIONS[name])))


def test_the_ptx_check_sees_what_cupy_would_add():
    """CuPy's RawModule(code=...) appends -ftz=true (cupy/cupy#9576): that PTX has .ftz, ours has none."""
    from cupy.cuda import nvrtc

    name = "kmix_saliency.cu"
    prog = nvrtc.createProgram(kernel_source.read_source(name), name, [], [])
    try:
        for expr in kernel_source.NAME_EXPRESSIONS[name]:
            nvrtc.addNameExpression(prog, expr)
        nvrtc.compileProgram(prog, list(kernel_source.nvrtc_options("compute_90")) + ["-ftz=true"])
        assert re.findall(r"\.ftz\b", nvrtc.getPTX(prog).decode())
    finally:
        nvrtc.destroyProgram(prog)


def test_target_arch_is_a_cubin_for_known_devices_else_ptx():
    from dali_kmix.backends.gpu import target_arch

    assert target_arch("90", (75, 80, 90, 100)) == "sm_90"
    assert target_arch(86, (75, 80, 86)) == "sm_86"
    assert target_arch("120", (75, 80, 90, 100)) == "compute_100"  # newer than NVRTC: PTX the driver JITs
    with pytest.raises(RuntimeError, match="compute capability 70"):
        target_arch("70", (75, 80))


@pytest.fixture
def kernel_copy(tmp_path, monkeypatch):
    """A copy of kernels/ that kernels_dir() points to, and a temp disk cache."""
    copy = tmp_path / "kernels"
    copy.mkdir()
    for f in kernel_source.kernels_dir().iterdir():
        if f.suffix in (".cu", ".cuh", ".h"):
            shutil.copy(f, copy / f.name)
    monkeypatch.setattr(kernel_source, "kernels_dir", lambda: copy)
    monkeypatch.setenv("DALI_KMIX_CACHE", str(tmp_path / "cache"))
    return copy


def test_source_files_follow_includes(kernel_copy):
    names = [p.name for p in kernel_source.source_files("kmix_blend.cu")]
    assert names == ["kmix_blend.cu", "kmix_common.cuh", "kmix_codes.h"]


@pytest.mark.parametrize("header", ["kmix_common.cuh", "kmix_codes.h"])
def test_a_header_only_change_changes_the_cache_key(kernel_copy, header):
    before = {n: kernel_source.cache_key(n, "sm_90") for n in kernel_source.DEVICE_SOURCES}
    assert kernel_source.cache_key("kmix_blend.cu", "sm_80") != before["kmix_blend.cu"]
    with open(kernel_copy / header, "a") as f:
        f.write("\n// an edit\n")
    after = {n: kernel_source.cache_key(n, "sm_90") for n in kernel_source.DEVICE_SOURCES}
    assert all(after[n] != before[n] for n in before)


def test_disk_cache_reuses_and_rebuilds_on_a_header_change(kernel_copy, monkeypatch):
    first = kernel_source.compile_cached("kmix_boxes.cu", "sm_90")
    assert first.image[:4] == b"\x7fELF"
    real = kernel_source.compile_nvrtc
    monkeypatch.setattr(kernel_source, "compile_nvrtc", lambda *a, **k: pytest.fail("cache missed"))
    again = kernel_source.compile_cached("kmix_boxes.cu", "sm_90")
    assert again == first
    with open(kernel_copy / "kmix_codes.h", "a") as f:
        f.write("\n#define KMIX_AN_EDIT 1\n")
    calls = []
    monkeypatch.setattr(kernel_source, "compile_nvrtc", lambda *a, **k: (calls.append(a[:2]), real(*a, **k))[1])
    kernel_source.compile_cached("kmix_boxes.cu", "sm_90")
    assert calls == [("kmix_boxes.cu", "sm_90")]
    assert len(list((kernel_copy.parent / "cache" / "nvrtc").iterdir())) == 2


def test_sources_start_with_a_line_directive():
    src = kernel_source.read_source("kmix_blend.cu")
    first = src.splitlines()[0]
    assert first.startswith("#line 1 \"") and first.endswith("kmix_blend.cu\"")


@pytest.fixture
def broken_kernels(tmp_path, monkeypatch):
    real = kernel_source.kernels_dir()
    for f in real.iterdir():
        if f.suffix in (".cu", ".cuh", ".h"):
            shutil.copy(f, tmp_path / f.name)
    text = (tmp_path / "kmix_boxes.cu").read_text().splitlines()
    text.insert(20, "  this_is_not_cuda;")
    (tmp_path / "kmix_boxes.cu").write_text("\n".join(text) + "\n")
    monkeypatch.setattr(kernel_source, "kernels_dir", lambda: tmp_path)
    return tmp_path


def test_nvrtc_error_names_the_file_and_line(broken_kernels):
    with pytest.raises(kernel_source.KernelCompileError, match=r"kmix_boxes\.cu\(21\).*this_is_not_cuda"):
        kernel_source.compile_with_nvrtc("kmix_boxes.cu", "sm_90")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_nvcc_error_names_the_file_and_line(broken_kernels):
    with pytest.raises(kernel_source.KernelCompileError, match=r"kmix_boxes\.cu\(21\).*this_is_not_cuda"):
        kernel_source.compile_with_nvcc("kmix_boxes.cu", "sm_90")


def test_a_kernel_edited_while_the_process_runs_is_compiled_as_it_now_is(kernel_copy):
    """The key and the compile read the same text: an edit after a first compile is compiled, not the old text stored
    under the new key."""
    first = kernel_source.compile_cached("kmix_boxes.cu", "sm_90")
    assert b"kmix_added_kernel" not in first.image
    with open(kernel_copy / "kmix_boxes.cu", "a") as f:
        f.write('\nextern "C" __global__ void kmix_added_kernel(int* p) { *p = 7; }\n')
    assert b"kmix_added_kernel" in kernel_source.compile_cached("kmix_boxes.cu", "sm_90").image
    assert b"kmix_added_kernel" in kernel_source.compile_cached("kmix_boxes.cu", "sm_90").image  # from the disk cache


def _in_threads(count, fn):
    """``fn()`` in ``count`` threads started together: (results, errors)."""
    import threading

    barrier, results, errors = threading.Barrier(count), [], []

    def go():
        try:
            barrier.wait()
            results.append(fn())
        except Exception as exc:  # noqa: BLE001 - the test reports it
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=go) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def test_nvrtc_is_called_by_one_thread_at_a_time(kernel_copy, monkeypatch):
    """NVRTC's first compile in a process loads libnvrtc-builtins, which fails (NVRTC_ERROR_BUILTIN_OPERATION_FAILURE)
    when another thread compiles or asks NVRTC anything meanwhile, even its version: no two NVRTC calls overlap."""
    import threading
    import time

    from cupy.cuda import nvrtc

    active, peak, lock = [0], [0], threading.Lock()

    def tracked(real):
        def call(*args):
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            time.sleep(0.02)
            try:
                return real(*args)
            finally:
                with lock:
                    active[0] -= 1
        return call

    for fn in ("compileProgram", "getVersion"):
        monkeypatch.setattr(nvrtc, fn, tracked(getattr(nvrtc, fn)))
    if hasattr(kernel_source.nvrtc_version, "cache_clear"):
        kernel_source.nvrtc_version.cache_clear()
    archs = iter(["sm_80", "sm_86", "sm_90", "sm_80", "sm_86", "sm_90"])
    calls = [lambda a=next(archs): kernel_source.compile_nvrtc("kmix_boxes.cu", a) for _ in range(3)]
    calls += [lambda a=next(archs): kernel_source.compile_cached("kmix_boxes.cu", a) for _ in range(3)]
    todo = iter(calls)
    results, errors = _in_threads(6, lambda: next(todo)())
    assert errors == [] and len(results) == 6 and peak[0] == 1


def test_threads_filling_the_disk_cache_compile_once_and_leave_no_temp_files(kernel_copy, monkeypatch):
    import time

    calls = []
    real = kernel_source.compile_nvrtc

    def slow(*args, **kwargs):
        calls.append(args[:2])
        time.sleep(0.1)
        return real(*args, **kwargs)

    monkeypatch.setattr(kernel_source, "compile_nvrtc", slow)
    results, errors = _in_threads(6, lambda: kernel_source.compile_cached("kmix_boxes.cu", "sm_90"))
    assert errors == [] and len(results) == 6 and len({r.image for r in results}) == 1
    assert calls == [("kmix_boxes.cu", "sm_90")]
    assert [p.name for p in (kernel_copy.parent / "cache").rglob("*") if "tmp" in p.name] == []


def test_an_unwritable_cache_keeps_the_compiled_kernels(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("DALI_KMIX_CACHE", str(blocker))
    with pytest.warns(RuntimeWarning, match=r"not-a-folder.*cannot be written.*DALI_KMIX_CACHE"):
        out = kernel_source.compile_cached("kmix_boxes.cu", "sm_90")
    assert out.image[:4] == b"\x7fELF" and out.kind == "cubin"
