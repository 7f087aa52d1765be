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
