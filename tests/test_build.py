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
