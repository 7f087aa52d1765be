"""What the applications share: whole-file writes and the removal of what killed writes leave behind."""

import argparse
import os
import subprocess

import pytest

from dali_kmix.apps.common import atomic_write, int_at_least, remove_stale_temporaries


def _dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_atomic_write_leaves_the_whole_file_or_nothing(tmp_path, monkeypatch):
    path = atomic_write(tmp_path / "sub" / "a.txt", "first")
    assert path.read_text() == "first" and sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, "second")
    assert path.read_text() == "first" and sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]


def test_remove_stale_temporaries_only_removes_dead_writers_files_by_name(tmp_path):
    dead = _dead_pid()
    stale = [tmp_path / f".checkpoint.pt.{dead}.tmp", tmp_path / f".metrics.csv.{dead}.tmp"]
    kept = [tmp_path / f".checkpoint.pt.{os.getpid()}.tmp", tmp_path / f".checkpoint.pt.{os.getppid()}.tmp",
            tmp_path / f".other.pt.{dead}.tmp", tmp_path / f".checkpoint.pt.x{dead}.tmp",
            tmp_path / f"checkpoint.pt.{dead}.tmp", tmp_path / "checkpoint.pt"]
    for p in stale + kept:
        p.write_text("x")
    (tmp_path / f".metrics.csv.{_dead_pid()}.tmp").mkdir()  # not a file: kept
    removed = remove_stale_temporaries(tmp_path, r"checkpoint\.pt|metrics\.csv")
    assert sorted(removed) == sorted(stale)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    assert remove_stale_temporaries(tmp_path / "missing", "x") == []


@pytest.mark.parametrize("text,minimum,even,want", [
    ("3", 1, None, 3), ("0", 0, None, 0), ("4", 2, "pairs", 4),
    ("0", 1, None, "must be an integer >= 1, got '0'"), ("x", 1, None, "must be an integer >= 1, got 'x'"),
    ("2.5", 1, None, "must be an integer >= 1, got '2.5'"), ("3", 2, "pairs", r"must be even \(pairs\), got '3'"),
], ids=["ok", "zero-allowed", "even", "below", "not-a-number", "not-an-integer", "odd"])
def test_int_at_least_parses_or_names_the_value(text, minimum, even, want):
    parse = int_at_least(minimum, even_because=even)
    if isinstance(want, int):
        assert parse(text) == want
    else:
        with pytest.raises(argparse.ArgumentTypeError, match=want):
            parse(text)
