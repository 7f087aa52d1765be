"""The host build cache (dali_kmix.backends.build): one build per key, the compiler's output kept beside what it
built, and a first build announced before it starts; what the keys hold; the compiler, the target and the yes/no
variables as they are read; the loaders' answers to a missing, truncated or unloadable library; the DALI plugin's
CUDA toolchain."""

import os
import platform
import re
import shutil
from pathlib import Path

import pytest

from dali_kmix.backends import build


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    if build.compiler() is None:
        pytest.skip("no C++ compiler")
    monkeypatch.setenv("DALI_KMIX_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_a_build_is_announced_once_and_its_compiler_output_kept(cache):
    src = cache / "ok.cpp"
    src.write_text('extern "C" int kmix_answer() { return 42; }\n')
    said = []
    flags = ["-shared", "-fPIC", "-Wall", "-Wextra"]
    lib = build.compile_cached("libok.so", [src], flags, inputs=[src], announce=lambda: said.append(1))
    assert lib.is_file() and said == [1] and build.build_log(lib) == ""
    again = build.compile_cached("libok.so", [src], flags, inputs=[src], announce=lambda: said.append(2))
    assert again == lib and said == [1]  # cached: nothing built, nothing announced


def test_warnings_are_kept_and_a_changed_source_rebuilds(cache, capsys):
    src = cache / "warn.cpp"
    src.write_text('extern "C" int kmix_unused(int x) { int y; return x; }\n')
    flags = ["-shared", "-fPIC", "-Wall", "-Wextra"]
    lib = build.compile_cached("libwarn.so", [src], flags, inputs=[src], announce="building warn")
    assert "unused variable" in build.build_log(lib)
    assert "building warn" in capsys.readouterr().err
    src.write_text('extern "C" int kmix_unused(int x) { return x; }\n')
    other = build.compile_cached("libwarn.so", [src], flags, inputs=[src])
    assert other != lib and build.build_log(other) == ""


def test_a_failed_build_raises_with_the_compiler_output(cache):
    src = cache / "bad.cpp"
    src.write_text("int f( {\n")
    with pytest.raises(RuntimeError, match=r"(?s)building the test library failed:.*bad.cpp:1:9: error"):
        build.compile_cached("libbad.so", [src], ["-shared", "-fPIC"], inputs=[src], what="the test library")
    assert not list((cache / "cache").glob("*/libbad.so"))


def _fake_compiler(monkeypatch, capsys, runs, macros=None):
    """Builds that only create their output; each records what stderr had said when the compiler started.
    ``macros``: a dict whose "text" is what ``-dM -E`` (the macros a target predefines) answers, instead of the real
    compiler's answer."""
    import subprocess

    real = subprocess.run

    def run(cmd, *args, **kwargs):
        if macros is not None and "-dM" in cmd:
            return subprocess.CompletedProcess(cmd, 0, macros["text"], "")
        if "--version" in cmd or "--dryrun" in cmd or "-dM" in cmd or "-E" in cmd:
            return real(cmd, *args, **kwargs)
        out = cmd[cmd.index("-o") + 1]
        open(out, "wb").close()
        runs.append((cmd[0], capsys.readouterr().err))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(build.subprocess, "run", run)


def test_every_first_build_is_announced_in_one_line_before_it_starts(cache, monkeypatch, capsys):
    import warnings

    from dali_kmix.backends import cpu, plugin
    from dali_kmix.backends.sources import cuda_include_dirs

    runs = []
    _fake_compiler(monkeypatch, capsys, runs)
    cpu.build()
    assert runs[-1][1] == "dali_kmix: building the CPU kernels, once per version...\n"
    cpu.build()  # cached: no build, nothing said
    assert len(runs) == 1 and capsys.readouterr().err == ""
    if cuda_include_dirs():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", plugin.NoGpuBackendWarning)
            plugin.build(gpu=False)
        assert runs[-1][1] == "dali_kmix: building the DALI plugin (CPU only), about 30 s, once per version...\n"
    src = cache / "ok.cpp"
    src.write_text("int x;\n")
    build.compile_cached("libany.so", [src], ["-shared"], inputs=[src], what="anything else")
    assert runs[-1][1] == "dali_kmix: building anything else, once per version...\n"


def test_the_host_fuzz_harness_builds_and_runs_over_fixed_inputs(tmp_path):
    """``make fuzz`` needs clang; this builds its host harness (tests/fuzz/kmix_host_fuzz.cpp) with the project's
    compiler and a stand-in of libFuzzer's data provider, and runs it over 2000 seeded inputs: every check of the
    harness holds. The harness once declared an old signature of kmix_host_dcutmix_chunks (extern "C" hid it from
    the linker) and its per-block paste path failed its own checks; it now takes the entry points from
    kernels/kmix_host_api.h, which kmix_host.cpp includes."""
    import subprocess
    from pathlib import Path

    cxx = build.compiler()
    if cxx is None:
        pytest.skip("no C++ compiler")
    root = Path(__file__).resolve().parent.parent
    (tmp_path / "fuzzer").mkdir()
    (tmp_path / "fuzzer" / "FuzzedDataProvider.h").write_bytes(
        (root / "tests" / "fuzz" / "FuzzedDataProvider_standin.h").read_bytes())
    (tmp_path / "main.cpp").write_text(
        "#include <cstdint>\n#include <cstdio>\n#include <random>\n#include <vector>\n"
        'extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);\n'
        "int main() {\n  std::mt19937_64 rng(1234);\n  for (int r = 0; r < 2000; ++r) {\n"
        "    std::vector<uint8_t> in(rng() % 4096);\n    for (auto& b : in) b = static_cast<uint8_t>(rng());\n"
        "    LLVMFuzzerTestOneInput(in.data(), in.size());\n  }\n  std::puts(\"ran 2000 inputs\");\n}\n")
    flags, libs, _ = build.numpy_random()
    exe = tmp_path / "harness"
    cmd = [*cxx, "-std=c++17", "-O1", "-ffp-contract=off", "-fno-fast-math", "-pthread", f"-I{tmp_path}",
           f"-I{root / 'kernels'}", *flags, str(root / "tests" / "fuzz" / "kmix_host_fuzz.cpp"),
           str(root / "kernels" / "kmix_host.cpp"), str(tmp_path / "main.cpp"), *libs, "-o", str(exe)]
    made = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stderr[-3000:]
    ran = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0 and ran.stdout == "ran 2000 inputs\n", ran.stderr[-3000:]


# --------------------------------------------------------------------------- what the build key holds


@pytest.fixture()
def fresh_caches():
    """Clears the per-process caches of the build and the loaders (once a process, as on another machine or in a
    new process), before the test, after it and whenever the test calls it."""
    from dali_kmix.backends import cpu, plugin

    def clear():
        for mod in (build, cpu, plugin):
            for name, obj in list(vars(mod).items()):
                if name != "_load" or mod is cpu:  # the DALI plugin is loaded once a process, never again
                    if getattr(obj, "__module__", "") == mod.__name__ and hasattr(obj, "cache_clear"):
                        obj.cache_clear()

    clear()
    yield clear
    clear()


def _source(cache):
    src = cache / "k.cpp"
    src.write_text("int kmix_x;\n")
    return src


def test_a_native_build_is_keyed_by_what_the_native_target_resolves_to(cache, monkeypatch, capsys, fresh_caches):
    """Two machines whose /proc/cpuinfo names the same model ("AMD EPYC" under KVM) but whose -march=native differs
    (one with AVX2, one without) never share a library: the key holds what the compiler's native target is."""
    monkeypatch.delenv("DALI_KMIX_MARCH", raising=False)
    if not build.target_flags():
        pytest.skip("no -march/-mcpu target on this machine")
    runs, macros = [], {"text": "#define __SSE2__ 1\n#define __AVX2__ 1\n#define __FMA__ 1\n"}
    _fake_compiler(monkeypatch, capsys, runs, macros)
    src = _source(cache)
    flags = ["-shared", *build.target_flags()]
    here = build.compile_cached("libk.so", [src], flags, inputs=[src], announce="")
    fresh_caches()  # another machine, another process
    macros["text"] = "#define __SSE2__ 1\n"
    there = build.compile_cached("libk.so", [src], flags, inputs=[src], announce="")
    assert there != here and len(runs) == 2


def test_an_explicit_target_build_is_the_same_on_every_machine(cache, monkeypatch, capsys, fresh_caches):
    """DALI_KMIX_MARCH=x86-64-v3: a cache shared by several kinds of machine (README) holds one build for them all;
    no processor identity is part of its key."""
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("an x86-64 target")
    monkeypatch.setenv("DALI_KMIX_MARCH", "x86-64-v3")
    runs, macros = [], {"text": "#define __SSE2__ 1\n#define __AVX2__ 1\n#define __AVX512F__ 1\n"}
    _fake_compiler(monkeypatch, capsys, runs, macros)  # what the compiler says a target enables, machine by machine
    src = _source(cache)
    here = build.compile_cached("libk.so", [src], ["-shared", *build.target_flags()], inputs=[src], announce="")
    fresh_caches()  # another kind of machine, another process
    macros["text"] = "#define __SSE2__ 1\n"
    there = build.compile_cached("libk.so", [src], ["-shared", *build.target_flags()], inputs=[src], announce="")
    assert there == here and len(runs) == 1


@pytest.mark.parametrize("var,value", [("NVCC_APPEND_FLAGS", "-ftz=true"), ("NVCC_PREPEND_FLAGS", "-G"),
                                       ("CPATH", "/opt/other/include"), ("CPLUS_INCLUDE_PATH", "/opt/inc"),
                                       ("LIBRARY_PATH", "/opt/lib"), ("GCC_EXEC_PREFIX", "/opt/gcc/"),
                                       ("COMPILER_PATH", "/opt/bin")])
def test_the_compilers_environment_is_part_of_the_key_and_the_command_file(cache, monkeypatch, capsys, var, value):
    for name in ("NVCC_APPEND_FLAGS", "NVCC_PREPEND_FLAGS", "CPATH", "CPLUS_INCLUDE_PATH", "LIBRARY_PATH",
                 "GCC_EXEC_PREFIX", "COMPILER_PATH"):
        monkeypatch.delenv(name, raising=False)
    runs = []
    _fake_compiler(monkeypatch, capsys, runs)
    src = _source(cache)
    plain = build.compile_cached("libe.so", [src], ["-shared"], inputs=[src], announce="")
    monkeypatch.setenv(var, value)
    other = build.compile_cached("libe.so", [src], ["-shared"], inputs=[src], announce="")
    assert other != plain and len(runs) == 2
    assert other.with_name("libe.so.cmd").read_text().startswith(f"{var}={value} ")
    assert not plain.with_name("libe.so.cmd").read_text().startswith(var)


# --------------------------------------------------------------------------- the compiler and the target


def test_cxx_is_the_whole_command_or_refused(cache, monkeypatch, capsys, tmp_path):
    """$CXX is used as given ("ccache g++" keeps its launcher), never silently replaced by g++."""
    from dali_kmix.backends import plugin

    monkeypatch.setenv("CXX", "no-such-compiler-kmix")
    with pytest.raises(FileNotFoundError, match=r"CXX='no-such-compiler-kmix' not found"):
        build.compiler()
    launcher = tmp_path / "launcher"
    launcher.write_text('#!/bin/sh\nexec "$@"\n')
    launcher.chmod(0o755)
    monkeypatch.setenv("CXX", f"{launcher} g++")
    assert build.compiler() == [str(launcher), "g++"]
    runs = []
    _fake_compiler(monkeypatch, capsys, runs)
    src = _source(cache)
    lib = build.compile_cached("libc.so", [src], ["-shared"], inputs=[src], announce="")
    assert runs[-1][0] == str(launcher)
    assert lib.with_name("libc.so.cmd").read_text().startswith(f"{launcher} g++ -shared ")
    flags = plugin.nvcc_flags()  # nvcc takes one host compiler: the one behind the launcher
    assert flags[flags.index("-ccbin") + 1] == shutil.which("g++")


def test_an_unknown_target_is_refused_naming_the_variable(monkeypatch, fresh_caches):
    """A mistyped DALI_KMIX_MARCH is an error, not a quiet fall back to the NumPy reference."""
    from dali_kmix.backends import cpu

    if build.compiler() is None or platform.machine() not in ("x86_64", "AMD64", "aarch64", "arm64"):
        pytest.skip("no compiler or no -march/-mcpu here")
    monkeypatch.delenv("DALI_KMIX_SANITIZE", raising=False)
    monkeypatch.setenv("DALI_KMIX_MARCH", "x86-64-v9")
    with pytest.raises(ValueError, match=r"DALI_KMIX_MARCH='x86-64-v9'"):
        build.target_flags()
    monkeypatch.setattr(cpu, "build", lambda *a, **k: pytest.fail("built for an unknown target"))
    with pytest.raises(ValueError, match=r"DALI_KMIX_MARCH='x86-64-v9'"):
        cpu.load()


def test_a_target_this_processor_lacks_is_refused_before_loading(monkeypatch, tmp_path, fresh_caches):
    """x86-64-v4 (AVX-512) on an AVX2 machine: refused with the features it lacks, instead of a SIGILL later."""
    from dali_kmix.backends import cpu

    if build.compiler() is None or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("an x86-64 target")
    monkeypatch.delenv("DALI_KMIX_SANITIZE", raising=False)
    cpuinfo = ("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse sse2 pni ssse3 sse4_1 sse4_2 popcnt avx "
               "avx2 fma bmi1 bmi2 f16c abm movbe xsave\n")
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text",
                        lambda self, *a, **k: cpuinfo if str(self) == "/proc/cpuinfo" else real(self, *a, **k))
    monkeypatch.setattr(cpu, "build", lambda *a, **k: tmp_path / "libkmix.so")  # nothing to load: never reached
    monkeypatch.setenv("DALI_KMIX_MARCH", "x86-64-v4")
    with pytest.raises(RuntimeError, match=r"DALI_KMIX_MARCH='x86-64-v4' .*lacks \(avx512bw, avx512cd, avx512dq, "
                                           r"avx512f, avx512vl\)"):
        cpu.load()
    monkeypatch.setenv("DALI_KMIX_MARCH", "x86-64-v3")
    build.check_target()  # AVX2, FMA, BMI2 and the rest are all here


# --------------------------------------------------------------------------- one way to read a yes/no variable


@pytest.mark.parametrize("value,want", [("", False), ("0", False), ("false", False), (" No ", False), ("OFF", False),
                                        ("1", True), ("true", True), ("Yes", True), (" on ", True)])
def test_boolean_variables_are_read_one_way(monkeypatch, value, want):
    cupy = pytest.importorskip("cupy")
    from dali_kmix import backends
    from dali_kmix.backends import plugin

    monkeypatch.setenv("DALI_KMIX_SANITIZE", value)
    assert build.sanitize_requested() is want
    assert ("-fsanitize=address,undefined" in build.build_flags()) is want
    monkeypatch.delenv("DALI_KMIX_SANITIZE")
    monkeypatch.setenv("DALI_KMIX_PLUGIN", value)
    assert plugin.enabled() is (want or value == "")  # empty: as if unset, on by default
    monkeypatch.setenv("DALI_KMIX_NO_GPU", value)
    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", lambda: 1)  # a device is here
    assert backends.gpu_available() is not want


def test_the_sanitize_variable_is_read_as_os_environ_holds_it(monkeypatch):
    # Every kernel call reads DALI_KMIX_SANITIZE through the C library's getenv (os.environ keeps it in step):
    # what os.environ says, after each assignment and deletion, a value outside ASCII included.
    assert build._GETENV is not None  # Linux: the C library answers
    for value in ("1", "", " Fuzzer ", "caf\u00e9", "0"):
        monkeypatch.setenv("DALI_KMIX_SANITIZE", value)
        assert build._sanitize_raw() == os.environ["DALI_KMIX_SANITIZE"] == value
    monkeypatch.delenv("DALI_KMIX_SANITIZE")
    assert build._sanitize_raw() == ""
    os.environ["DALI_KMIX_SANITIZE"] = "yes"
    try:
        assert build.sanitize_requested()
    finally:
        del os.environ["DALI_KMIX_SANITIZE"]
    assert not build.sanitize_requested()


def test_sanitize_fuzzer_adds_the_coverage_counters(monkeypatch):
    monkeypatch.setenv("DALI_KMIX_SANITIZE", " Fuzzer ")
    assert build.sanitize_requested() and "-fsanitize=fuzzer-no-link" in build.build_flags()


@pytest.mark.parametrize("name", ["DALI_KMIX_SANITIZE", "DALI_KMIX_PLUGIN", "DALI_KMIX_NO_GPU"])
def test_a_boolean_variable_with_another_value_is_refused(monkeypatch, name):
    from dali_kmix import backends
    from dali_kmix.backends import plugin

    call = {"DALI_KMIX_SANITIZE": build.sanitize_requested, "DALI_KMIX_PLUGIN": plugin.enabled,
            "DALI_KMIX_NO_GPU": backends.gpu_available}[name]
    monkeypatch.setenv(name, "maybe")
    with pytest.raises(ValueError, match=rf"{name} must be 0, 1.* got 'maybe'"):
        call()


def test_an_asan_build_is_not_loaded_into_a_process_without_the_asan_runtime(monkeypatch, tmp_path, fresh_caches):
    """Loading it would end the process (ASan's runtime must come first); the error says what to preload."""
    import ctypes

    from dali_kmix.backends import cpu

    if hasattr(ctypes.CDLL(None), "__asan_init"):
        pytest.skip("this process has the ASan runtime preloaded")
    monkeypatch.setenv("DALI_KMIX_SANITIZE", "1")
    monkeypatch.delenv("DALI_KMIX_MARCH", raising=False)
    fake = tmp_path / "libkmix_asan.so"
    fake.write_bytes(b"\x7fELF")
    monkeypatch.setattr(cpu, "build", lambda *a, **k: fake)
    with pytest.raises(RuntimeError, match=r"DALI_KMIX_SANITIZE='1' .*LD_PRELOAD=\S*libasan"):
        cpu.load()


# --------------------------------------------------------------------------- where the cache is


def test_the_cache_folder_is_absolute(monkeypatch, tmp_path):
    import tempfile

    fallback = Path(tempfile.gettempdir()) / f"dali_kmix-{os.getuid()}"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DALI_KMIX_CACHE", "~/kmix-cache")
    assert build.cache_dir() == tmp_path / "kmix-cache"
    monkeypatch.setenv("DALI_KMIX_CACHE", "relative/cache")
    with pytest.warns(RuntimeWarning, match=r"DALI_KMIX_CACHE='relative/cache' .*" + re.escape(str(fallback))):
        assert build.cache_dir() == fallback
    monkeypatch.delenv("DALI_KMIX_CACHE")
    monkeypatch.delenv("HOME")
    monkeypatch.setattr(os.path, "expanduser", lambda p: p)  # no home folder: no $HOME and no passwd entry
    with pytest.warns(RuntimeWarning, match=r"no home folder.*" + re.escape(str(fallback))):
        assert build.cache_dir() == fallback


# --------------------------------------------------------------------------- a library that does not load


@pytest.fixture()
def stub_cpu_build(cache, monkeypatch, fresh_caches):
    """cpu.build() making a small library with every entry point kmix_host.cpp defines (each a stub), in the
    test's cache: what cpu.load() binds, built in a moment."""
    from dali_kmix.backends import cpu
    from dali_kmix.backends.sources import kernels_dir

    names = sorted(set(re.findall(r"^(?:int|void) (kmix_host_\w+)\(", (kernels_dir() / "kmix_host.cpp").read_text(),
                                  re.MULTILINE)))
    src = cache / "stub.cpp"
    src.write_text("".join(f'extern "C" int {n}() {{ return 0; }}\n' for n in names))
    monkeypatch.delenv("DALI_KMIX_SANITIZE", raising=False)
    monkeypatch.delenv("DALI_KMIX_MARCH", raising=False)

    def stub_build(sanitize=None, verbose=False):
        return build.compile_cached("libkmix.so", [src], ["-shared", "-fPIC"], inputs=[src], announce="")

    monkeypatch.setattr(cpu, "build", stub_build)
    return stub_build


def test_a_truncated_cached_library_is_moved_aside_and_rebuilt(stub_cpu_build):
    from dali_kmix.backends import cpu

    lib = stub_cpu_build()
    lib.write_bytes(b"")  # a build cut short: a full disk, a killed machine, a cache copied in part
    assert cpu.load() is not None
    assert lib.stat().st_size > 0


def test_the_cpu_functions_name_the_build_error_when_there_is_no_library(monkeypatch, fresh_caches):
    import numpy as np

    from dali_kmix.backends import cpu

    def broken(sanitize=None, verbose=False):
        raise RuntimeError("building the CPU kernels failed: simulated")

    monkeypatch.delenv("DALI_KMIX_SANITIZE", raising=False)
    monkeypatch.delenv("DALI_KMIX_MARCH", raising=False)
    monkeypatch.setattr(cpu, "build", broken)
    with pytest.warns(RuntimeWarning, match=r"using the NumPy reference instead.*simulated"):
        assert cpu.load() is None
    with pytest.raises(RuntimeError, match="dali_kmix CPU kernels are not built: building the CPU kernels failed: "
                                           "simulated"):
        cpu.half_to_float(np.zeros(2, np.uint16))


def test_a_library_is_synced_to_disk_before_it_appears(cache, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(build.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(build.os, "replace",
                        lambda a, b: (events.append(("replace", Path(b).name)), real_replace(a, b))[1])
    src = _source(cache)
    build.compile_cached("libs.so", [src], ["-shared", "-fPIC"], inputs=[src], announce="")
    assert "fsync" in events and events.index("fsync") < events.index(("replace", "libs.so"))


# --------------------------------------------------------------------------- the DALI plugin's CUDA toolchain


def test_the_plugin_key_names_dalis_cuda_version(monkeypatch):
    import warnings

    dali = pytest.importorskip("nvidia.dali")
    from dali_kmix.backends import plugin
    from dali_kmix.backends.sources import cuda_include_dirs

    if build.compiler() is None or not cuda_include_dirs():
        pytest.skip("no C++ compiler or CUDA runtime headers")
    calls = []
    monkeypatch.delenv("DALI_KMIX_SANITIZE", raising=False)
    monkeypatch.setattr(plugin, "compile_cached", lambda name, *a, **kw: calls.append(kw) or Path("/nowhere") / name)
    monkeypatch.setattr(plugin, "cuda_toolchain", lambda: (None, "nvcc not found"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", plugin.NoGpuBackendWarning)
        plugin.build()
    assert calls[-1]["key_extra"] == f"dali {dali.__version__} cuda {dali.__cuda_version__}"


# --------------------------------------------------------------------------- the C entry points


def test_every_c_entry_point_of_the_host_build_is_declared_in_its_header():
    """kmix_host.cpp includes kmix_host_api.h, so a definition that drifts from its prototype does not compile; that
    holds for the entry points the header declares."""
    from dali_kmix.backends.sources import kernels_dir

    body = (kernels_dir() / "kmix_host.cpp").read_text()
    defined = set(re.findall(r"^(?:int|void) (kmix_host_\w+)\(", body, re.MULTILINE))
    declared = set(re.findall(r"^(?:int|void) (kmix_host_\w+)\(", (kernels_dir() / "kmix_host_api.h").read_text(),
                              re.MULTILINE))
    assert len(defined) > 20 and sorted(defined - declared) == []
