"""Helpers the test modules import (conftest.py only holds fixtures and hooks)."""

import os
import re

import numpy as np


def graph_operators(nodes) -> list:
    """Every operator instance upstream of the DataNodes ``nodes`` (a pipeline's outputs, or its ``_graph_out``):
    DALI's graph as it was defined, nothing built."""
    seen, todo = {}, list(nodes)
    while todo:
        op = todo.pop().source
        if op is not None and op.id not in seen:
            seen[op.id] = op
            todo += op.inputs
    return list(seen.values())


def random_images(rng, dtype, shape, scale=40.0):
    """Random test images: uniform 0..255 for uint8, normal with ``scale`` for float dtypes."""
    if np.dtype(dtype) == np.uint8:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return (rng.standard_normal(shape) * scale).astype(dtype)


def gpu_sleep(seconds, stream_ptr=None):
    """Queue a one-thread kernel that keeps a CUDA stream busy for about ``seconds`` (``__nanosleep``): work queued
    behind it on that stream waits, work on any other stream does not. ``stream_ptr``: a raw CUDA stream handle
    (e.g. ``torch.cuda.Stream().cuda_stream``); default CuPy's current stream."""
    import cupy

    from dali_kmix.apps.bench_gpu import _HOLD_SOURCE

    kern = cupy.RawKernel(_HOLD_SOURCE, "kmix_bench_hold")
    stream = cupy.cuda.get_current_stream() if stream_ptr is None else cupy.cuda.ExternalStream(stream_ptr)
    with stream:
        kern((1,), (1,), (np.int64(seconds * 1e9),))


#: Ragged label batches of two samples (as many values as samples, or not) and where fn.kmix_draw's message
#: "labels must hold one value per sample, got shape ..." finds the first wrong sample; with their ids.
RAGGED_LABELS = [([[1, 2], []], r"\(2,\) for sample 0"), ([[1], [2, 3]], r"\(2,\) for sample 1"),
                 ([[1], []], r"\(0,\) for sample 1")]
RAGGED_LABELS_IDS = ["two-then-none", "one-then-two", "one-then-none"]


#: The kernels whose source calls fmaf (the only fused multiply-adds allowed: --fmad=false).
FMAF_KERNELS = ("kmix_dmixup", "kmix_mix")  # kmix_mix and kmix_mix_norm blend with the same fmaf chain


def ptx_entries(ptx):
    """{kernel name: PTX body} of every .entry."""
    parts = re.split(r"\.entry\s+", ptx)[1:]
    return {p.split("(", 1)[0].strip(): p for p in parts}


def assert_ieee_ptx(ptx, entries):
    """The PTX holds ``entries`` kernels, no flush-to-zero anywhere and fused multiply-adds (fma.rn.f32) only
    in the kernels whose source calls fmaf: what --fmad=false -ftz=false must give."""
    assert re.findall(r"\.ftz\b", ptx) == []
    found = ptx_entries(ptx)
    assert len(found) == entries, sorted(found)
    for entry, body in found.items():
        fmas = re.findall(r"\bfma\.\w+\.f32", body)
        if any(k in entry for k in FMAF_KERNELS):
            assert fmas and set(fmas) == {"fma.rn.f32"}, entry
        else:
            assert fmas == [], entry


def kmix_here(argv, capsys):
    """``kmix ARGV`` in the test process (the same ``cli.main`` and ``parser.exit`` as the command): (exit status,
    stdout, stderr)."""
    from dali_kmix.apps import cli

    try:
        rc = cli.main(argv)
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def file_reader_listing(root):
    """``[(path relative to root, label), ...]``: every sample ``fn.readers.file(file_root=root)`` reads in one
    epoch, in its order (from each sample's source info), the reference for listings that claim to be DALI's."""
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def reader():
        jpegs, labels = fn.readers.file(file_root=str(root), name="R")
        return fn.get_property(jpegs, key="source_info"), labels

    pipe = reader()
    pipe.build()
    listing = []
    for _ in range(pipe.reader_meta("R")["epoch_size"]):
        info, label = (np.asarray(x.as_tensor()) for x in pipe.run())
        listing.append((os.fsdecode(bytes(info[0])), int(label.reshape(-1)[0])))
    return listing
