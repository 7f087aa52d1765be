"""Coverage-guided fuzzing (Atheris, i.e. libFuzzer) of the native DALI operators ``fn.kmix_dmixup``,
``fn.kmix_dcutmix`` and ``fn.kmix_mix``: their record validation and the host kernels behind them.

Run by ``tests/fuzz/run.py`` (``make fuzz``), never collected by pytest. The plugin is built with clang and
``DALI_KMIX_SANITIZE=fuzzer`` (AddressSanitizer + UBSan + libFuzzer's coverage counters,
``-fsanitize=fuzzer-no-link``) and atheris's ``asan_with_fuzzer.so`` is preloaded, so libFuzzer sees the
operator's native branches (validation and kernels) as coverage and ASan watches every access. The external
sources hand DALI the NumPy buffers themselves (``no_copy=True``, checked to be zero-copy), so each image
sample and record sample is its own instrumented allocation with a redzone right after it.

Each input becomes one batch and one record, anything from valid to spoilt in any number of ways (raw
int32 sources, raw float32 weights with NaN/Inf/negatives, raw boxes, ragged K, wrong box shapes, cut
flags > 1, ragged images, a wrong image dtype or layout). A Python model of the operators' documented
contract (kernels/kmix_dali_op.cpp: sources[s][0] == s and in [0, N), weights finite and >= 0, boxes
0 <= y0 <= y1 <= H and 0 <= x0 <= x1 <= W and nested, cut 0 or 1, same-shape images of uint8/float16/float32)
decides what must happen: a record within it gives bit for bit the NumPy reference (NaN where it has NaN,
whatever the payload) and leaves its inputs
unchanged; any other raises an error that names one of the inputs it breaks. Anything else -- a crash, a
sanitizer report, a wrong output, an accepted bad record, an error naming the wrong input -- is a finding.
"""

from __future__ import annotations

import sys

import atheris
import numpy as np

with atheris.instrument_imports():
    from dali_kmix import reference
    from dali_kmix.record import MixParams

from nvidia.dali import fn, pipeline_def, types  # noqa: E402

from dali_kmix.backends import plugin  # noqa: E402

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
from _strategies import same_bits  # noqa: E402  (NaN equals NaN: which NaN an FMA passes on is the hardware's)

MAX_BATCH = 9
OPS = ("dmixup", "dcutmix", "mix")
INPUTS = {"dmixup": ("sources", "weights"), "dcutmix": ("sources", "boxes"), "mix": ("sources", "weights", "boxes", "cut")}
DTYPES = (np.uint8, np.float16, np.float32, np.int16, np.float64)  # the last two are refused
DALI_TYPES = {np.uint8: types.UINT8, np.float16: types.FLOAT16, np.float32: types.FLOAT, np.int16: types.INT16,
              np.float64: types.FLOAT64}
STATS = {"runs": 0, "valid": 0, "refused": 0, "builds": 0}


class Feed:
    pass


_PIPES: dict = {}


def pipeline(op, dtype, layout, input_layout):
    key = (op, dtype, layout, input_layout)
    if key in _PIPES:
        return _PIPES[key]
    feed = Feed()

    @pipeline_def(batch_size=MAX_BATCH, num_threads=2, device_id=None, exec_async=False, exec_pipelined=False,
                  prefetch_queue_depth=1)
    def pipe():
        ims = fn.external_source(source=lambda: feed.images, batch=True, layout=input_layout, dtype=DALI_TYPES[dtype],
                                 ndim=3, no_copy=True)
        rec = {"sources": fn.external_source(source=lambda: feed.sources, batch=True, dtype=types.INT32, ndim=1,
                                             no_copy=True),
               "weights": fn.external_source(source=lambda: feed.weights, batch=True, dtype=types.FLOAT, ndim=1,
                                             no_copy=True),
               "boxes": fn.external_source(source=lambda: feed.boxes, batch=True, dtype=types.INT32, ndim=2,
                                           no_copy=True),
               "cut": fn.external_source(source=lambda: feed.cut, batch=True, dtype=types.UINT8, ndim=1, no_copy=True)}
        return getattr(fn, f"kmix_{op}")(ims, *(rec[name] for name in INPUTS[op]), layout=layout)

    p = pipe()
    p.build()
    STATS["builds"] += 1
    _PIPES[key] = (p, feed)
    return _PIPES[key]


def _nested(rng, n, k, h, w):
    """Nested boxes inside an h x w image (the whole parent, empty and one-row boxes included)."""
    boxes = np.zeros((n, max(k - 1, 0), 4), np.int32)
    for s in range(n):
        py0, px0, py1, px1 = 0, 0, h, w
        for j in range(k - 1):
            if rng.random() < 0.2:
                y0, x0, y1, x1 = py0, px0, py1, px1
            else:
                y0, x0 = int(rng.integers(py0, py1 + 1)), int(rng.integers(px0, px1 + 1))
                y1, x1 = int(rng.integers(y0, py1 + 1)), int(rng.integers(x0, px1 + 1))
            boxes[s, j] = (y0, x0, y1, x1)
            py0, px0, py1, px1 = y0, x0, y1, x1
    return boxes


def _near(pick, delta, raw, bases):
    """An int at or next to one of ``bases`` (the edges a check compares with), or a raw one."""
    if pick % 4 == 0:
        return (-(2 ** 31), 2 ** 31 - 1, raw)[pick // 4 % 3]
    return int(bases[pick % len(bases)]) + delta


def decode(data):
    """One case from the fuzzer's bytes: the batch, the record, and how it was spoilt.

    The choices come first and running out of bytes means "valid" (a zero), so that short inputs are
    valid batches and every spoil is a few bytes the fuzzer can flip; the pixels and the valid record
    come from a NumPy generator seeded by four bytes.
    """
    fdp = atheris.FuzzedDataProvider(data)
    op = OPS[fdp.ConsumeIntInRange(0, 2)]
    wrong = fdp.ConsumeIntInRange(0, 31)
    dtype = DTYPES[3 + wrong % 2] if wrong >= 30 else DTYPES[fdp.ConsumeIntInRange(0, 2)]
    layout = ("HWC", "CHW")[fdp.ConsumeIntInRange(0, 1)]
    input_layout = ("CHW" if layout == "HWC" else "HWC") if fdp.ConsumeIntInRange(0, 31) == 31 else layout
    large = fdp.ConsumeIntInRange(0, 31) == 31  # more than 64 Ki elements: several chunks per sample
    n = 1 + fdp.ConsumeIntInRange(0, 1 if large else MAX_BATCH - 1)
    k = 1 + fdp.ConsumeIntInRange(0, 6)
    h, w, c = 1 + fdp.ConsumeIntInRange(0, 32), 1 + fdp.ConsumeIntInRange(0, 32), 1 + fdp.ConsumeIntInRange(0, 3)
    if large:
        h, w = 120 + 2 * h, 120 + 2 * w
    empty = fdp.ConsumeIntInRange(0, 15)  # 13, 14, 15: H = 0, W = 0, C = 0
    h, w, c = (0 if empty == 13 else h), (0 if empty == 14 else w), (0 if empty == 15 else c)
    ragged = fdp.ConsumeIntInRange(0, 31) == 31 and n > 1
    raw_bits = fdp.ConsumeBool()
    rng = np.random.default_rng(fdp.ConsumeIntInRange(0, 2 ** 32 - 1))
    spoils = [tuple(fdp.ConsumeIntInRange(0, 255) for _ in range(6)) + (fdp.ConsumeIntInRange(-60, 60),)
              for _ in range(fdp.ConsumeIntInRange(0, 3))]
    cuts = [fdp.ConsumeBool() for _ in range(n)]

    shape = (h, w, c) if layout == "HWC" else (c, h, w)
    shapes = [shape] * n
    if ragged:  # one sample of another shape
        i = 1 + int(rng.integers(0, n - 1))
        shapes[i] = tuple(int(v) + int(rng.integers(0, 3)) for v in shape)
    images = []
    for sh in shapes:
        dt = np.dtype(dtype)
        if dt.kind == "f" and raw_bits:  # any bit pattern: NaN, Inf, subnormals
            x = rng.integers(0, 2 ** (8 * dt.itemsize), sh, dtype=np.uint64).astype(f"u{dt.itemsize}").view(dt)
        elif dt.kind == "f":
            x = (rng.standard_normal(sh) * 50).astype(dt)
        else:
            x = rng.integers(0, 256, sh).astype(dt)
        images.append(np.ascontiguousarray(x))
    sources = np.concatenate([np.arange(n)[:, None], rng.integers(0, n, (n, k - 1))], axis=1).astype(np.int32)
    weights = rng.dirichlet(np.ones(k), n).astype(np.float32) if k > 1 else np.ones((n, 1), np.float32)
    boxes = _nested(rng, n, k, h, w)
    sources, weights, boxes = list(sources), list(weights), list(boxes)
    cut = [np.array([int(v)], np.uint8) for v in cuts]
    for what, s, j, e, pick, delta_raw, raw in spoils:
        s, delta = s % n, delta_raw % 3 - 1
        what %= 7
        if what == 0 and len(sources[s]):
            sources[s] = sources[s].copy()
            sources[s][j % len(sources[s])] = _near(pick, delta, raw, (0, s, n))
        elif what == 1 and len(weights[s]):
            weights[s] = weights[s].copy()
            weights[s][j % len(weights[s])] = (np.nan, np.inf, -np.inf, -0.0, -1e-30, -1.0, 3e38, 1e-45)[pick % 8]
        elif what == 2 and boxes[s].shape[0] and boxes[s].shape[1] == 4:  # next to an edge it is checked against
            boxes[s] = boxes[s].copy()
            d, e = j % boxes[s].shape[0], e % 4
            parent = boxes[s][d - 1] if d else np.array([0, 0, h, w])
            boxes[s][d, e] = _near(pick, delta, raw, (0, h if e % 2 == 0 else w, boxes[s][d, e],
                                                      boxes[s][d, (e + 2) % 4], parent[e]))
        elif what == 3:  # a sample with another K
            kk = j % 9
            sources[s] = np.concatenate([[s], rng.integers(0, n, max(kk - 1, 0))]).astype(np.int32)[:kk]
        elif what == 4:
            boxes[s] = np.zeros((j % 9, e % 6), np.int32)
        elif what == 5:
            cut[s] = np.array([pick], np.uint8)
        elif what == 6:
            weights[s] = np.full(j % 9, 0.5, np.float32)
    return dict(op=op, dtype=dtype, layout=layout, input_layout=input_layout, images=images, sources=sources,
                weights=weights, boxes=boxes, cut=cut)


def broken(case):
    """The inputs a case breaks, by the operators' contract (empty: the record is valid)."""
    op, images = case["op"], case["images"]
    bad = set()
    n = len(images)
    if np.dtype(case["dtype"]) not in (np.uint8, np.float16, np.float32):
        bad.add("images must have dtype")
    if case["input_layout"] != case["layout"]:
        bad.add("layout=")
    if any(im.shape != images[0].shape for im in images):
        bad.add("images:")
    shape = images[0].shape
    h, w = (shape[0], shape[1]) if case["layout"] == "HWC" else (shape[1], shape[2])
    src = case["sources"]
    k = len(src[0])
    if k < 1 or any(len(s) != k for s in src):
        bad.add("sources")
        return bad
    for s, row in enumerate(src):
        if row[0] != s or (row < 0).any() or (row >= n).any():
            bad.add("sources")
    if "weights" in INPUTS[op]:
        for row in case["weights"]:
            if row.shape != (k,) or not np.isfinite(row).all() or (row < 0).any():
                bad.add("weights")
    if "boxes" in INPUTS[op]:
        for b in case["boxes"]:
            if b.shape != (k - 1, 4):
                bad.add("boxes")
                continue
            b = b.astype(np.int64)
            ok = ((0 <= b[:, 0]) & (b[:, 0] <= b[:, 2]) & (b[:, 2] <= h) & (0 <= b[:, 1]) & (b[:, 1] <= b[:, 3])
                  & (b[:, 3] <= w)).all()
            ok = ok and ((b[1:, :2] >= b[:-1, :2]).all() and (b[1:, 2:] <= b[:-1, 2:]).all())
            if not ok:
                bad.add("boxes")
    if op == "mix" and any(int(c[0]) > 1 for c in case["cut"]):
        bad.add("cut")
    return bad


def expected(case):
    x = np.stack(case["images"])
    src = np.stack(case["sources"])
    n, k = src.shape
    wt = np.stack(case["weights"]) if case["op"] != "dcutmix" else np.zeros((n, k), np.float32)
    bx = np.stack(case["boxes"]) if case["op"] != "dmixup" else np.zeros((n, k - 1, 4), np.int32)
    blend = reference.mix_images(x, MixParams(src, wt), case["layout"])
    paste = reference.mix_images(x, MixParams(src, wt, bx), case["layout"])
    cut = {"dmixup": np.zeros(n, bool), "dcutmix": np.ones(n, bool),
           "mix": np.array([bool(c[0]) for c in case["cut"]])}[case["op"]]
    return np.where(cut.reshape((n,) + (1,) * (x.ndim - 1)), paste, blend)


def TestOneInput(data):  # noqa: N802 - atheris's name
    case = decode(data)
    key = (case["op"], case["dtype"], case["layout"], case["input_layout"])
    pipe, feed = pipeline(*key)
    for name in ("images", "sources", "weights", "boxes", "cut"):
        setattr(feed, name, case[name])
    before = [a.copy() for a in case["images"]]
    bad = broken(case)
    STATS["runs"] += 1
    if STATS["runs"] % 5000 == 0:  # libFuzzer ends the process without running atexit handlers
        print(f"fuzz_native_ops: {STATS}", flush=True)
    try:
        (out,) = pipe.run()
    except RuntimeError as exc:
        _PIPES.pop(key, None)  # DALI invalidates a pipeline that raised
        if not bad:
            raise AssertionError(f"a valid record was refused: {exc}") from None
        text = str(exc)
        if not any(word in text for word in bad):
            raise AssertionError(f"the error names none of {sorted(bad)}: {text[:2000]}") from None
        STATS["refused"] += 1
        return
    if bad:
        raise AssertionError(f"a record that breaks {sorted(bad)} was accepted")
    got = out.as_array()
    want = expected(case)
    if got.dtype != want.dtype or got.shape != want.shape or not same_bits(got, want):
        raise AssertionError("the output differs from the NumPy reference")
    for a, b in zip(case["images"], before):
        if not np.array_equal(a.view(np.uint8), b.view(np.uint8)):
            raise AssertionError("an input image was written")
    STATS["valid"] += 1


def main():
    if not plugin.load():
        raise SystemExit("the dali_kmix DALI plugin did not load (see the warning above)")
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
