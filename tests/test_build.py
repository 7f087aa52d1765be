"""The host build cache (dali_kmix.backends.build): one build per key, the compiler's output kept beside what it
built, and a first build announced before it starts."""

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


def _fake_compiler(monkeypatch, capsys, runs):
    """Builds that only create their output; each records what stderr had said when the compiler started."""
    import subprocess

    real = subprocess.run

    def run(cmd, *args, **kwargs):
        if "--version" in cmd or "--dryrun" in cmd:
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
    cmd = [cxx, "-std=c++17", "-O1", "-ffp-contract=off", "-fno-fast-math", "-pthread", f"-I{tmp_path}",
           f"-I{root / 'kernels'}", *flags, str(root / "tests" / "fuzz" / "kmix_host_fuzz.cpp"),
           str(root / "kernels" / "kmix_host.cpp"), str(tmp_path / "main.cpp"), *libs, "-o", str(exe)]
    made = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stderr[-3000:]
    ran = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0 and ran.stdout == "ran 2000 inputs\n", ran.stderr[-3000:]
