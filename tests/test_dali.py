"""The DALI operators in real CPU pipelines (and GPU pipelines where a GPU is present)."""

import dataclasses
import re

import numpy as np
import pytest

pytest.importorskip("nvidia.dali")

from nvidia.dali import fn, pipeline_def, types  # noqa: E402

import dali_kmix  # noqa: E402
import dali_kmix.dali as kmix  # noqa: E402
from dali_kmix.apps.data import class_names  # noqa: E402
from _helpers import RAGGED_LABELS, RAGGED_LABELS_IDS, graph_operators  # noqa: E402

BATCH = 8
SIZE = 48


def _run(pipe, iters=1):
    pipe.build()
    out = []
    for _ in range(iters):
        res = pipe.run()
        out.append([(r.as_cpu() if hasattr(r, "as_cpu") else r).as_array() for r in res])
    return out


@pipeline_def(batch_size=BATCH, num_threads=2, device_id=None, seed=3)
def photo_pipe(root, method, layout="HWC", label_format="dense", op_seed=None, shard_id=0, prob=1.0, k=3,
               mode="sample", smoothing=0.0, with_labels=False, device="cpu"):
    jpegs, labels = fn.readers.file(file_root=str(root), random_shuffle=True, name="Reader")
    images = fn.decoders.image(jpegs, output_type=types.RGB, device="mixed" if device == "gpu" else "cpu")
    images = fn.resize(images, resize_x=SIZE, resize_y=SIZE)
    if layout == "CHW":
        images = fn.transpose(images, perm=[2, 0, 1], output_layout="CHW")
    op = getattr(kmix, method)
    outs = op(images, labels, k=k, alpha=1.0, num_classes=8, layout=layout, mode=mode, prob=prob,
              smoothing=smoothing, label_format=label_format, seed=op_seed, shard_id=shard_id)
    return (*outs, labels) if with_labels else outs


@pytest.mark.parametrize("label_format", ["dense", "sparse"])
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("method", ["dmixup", "dcutmix"])
def test_outputs_on_real_photos(photo_dir, method, layout, label_format):
    (out,) = _run(photo_pipe(photo_dir, method, layout=layout, label_format=label_format, with_labels=True))
    images, *lab, labels = out
    assert images.dtype == np.uint8
    assert images.shape == ((BATCH, SIZE, SIZE, 3) if layout == "HWC" else (BATCH, 3, SIZE, SIZE))
    labels = labels.reshape(-1)
    if label_format == "dense":
        (targets,) = lab
        assert targets.dtype == np.float32 and targets.shape == (BATCH, 8)
        np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-6)
        # the anchor's own class always has a share (> 0 unless its whole area was covered)
        assert (targets[np.arange(BATCH), labels] > 0).mean() > 0.5
    else:
        idx, w = lab
        assert idx.dtype == np.int32 and idx.shape == (BATCH, 3)
        assert w.dtype == np.float32 and w.shape == (BATCH, 3)
        np.testing.assert_array_equal(idx[:, 0], labels)  # every sample anchors its own row
        np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)


def test_output_layout_is_set(photo_dir):
    pipe = photo_pipe(photo_dir, "dcutmix", layout="CHW")
    pipe.build()
    images, _ = pipe.run()
    assert images.layout() == "CHW"


def test_same_seed_same_batches_and_seeds_and_shards_differ(photo_dir):
    a = _run(photo_pipe(photo_dir, "dcutmix", op_seed=11), iters=3)
    b = _run(photo_pipe(photo_dir, "dcutmix", op_seed=11), iters=3)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)
    c = _run(photo_pipe(photo_dir, "dcutmix", op_seed=12), iters=3)
    assert any(not np.array_equal(x[1], y[1]) for x, y in zip(a, c))
    d = _run(photo_pipe(photo_dir, "dcutmix", op_seed=11, shard_id=1), iters=3)
    assert any(not np.array_equal(x[1], y[1]) for x, y in zip(a, d))
    # without an op seed the pipeline's seed is used: still reproducible
    e = _run(photo_pipe(photo_dir, "dmixup"), iters=2)
    f = _run(photo_pipe(photo_dir, "dmixup"), iters=2)
    np.testing.assert_array_equal(e[1][1], f[1][1])


def test_sparse_and_dense_come_from_the_same_record(photo_dir):
    (dense,) = _run(photo_pipe(photo_dir, "dcutmix", op_seed=5, label_format="dense"))
    (sparse,) = _run(photo_pipe(photo_dir, "dcutmix", op_seed=5, label_format="sparse"))
    np.testing.assert_array_equal(dense[0], sparse[0])
    idx, w = sparse[1], sparse[2]
    rebuilt = np.zeros((BATCH, 8))
    np.add.at(rebuilt, (np.repeat(np.arange(BATCH), 3), idx.ravel()), w.ravel())
    np.testing.assert_allclose(dense[1], rebuilt, atol=1e-6)


@pipeline_def(batch_size=12, num_threads=2, device_id=None, seed=1)
def constant_pipe(method, k, dtype, layout="HWC", mode="sample", prob=1.0, device="cpu"):
    """Sample i is an image whose every pixel is i, labelled i: the output shows who was mixed."""
    h, w = 18, 26
    shape = (h, w, 2) if layout == "HWC" else (2, h, w)
    images = fn.external_source(source=lambda: [np.full(shape, i, dtype) for i in range(12)], batch=True,
                                layout=layout)
    labels = fn.external_source(source=lambda: [np.array([i], np.int32) for i in range(12)], batch=True)
    if device == "gpu":
        images = images.gpu()
    op = getattr(kmix, method)
    return op(images, labels, k=k, alpha=0.7, num_classes=12, layout=layout, mode=mode, prob=prob,
              label_format="sparse")


@pytest.mark.parametrize("mode", ["sample", "batch"])
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("k", [2, 3, 9])
def test_dcutmix_images_and_labels_agree(k, layout, mode):
    for images, idx, w in _run(constant_pipe("dcutmix", k, np.uint8, layout=layout, mode=mode), iters=2):
        for i in range(12):
            share = np.bincount(images[i].ravel(), minlength=12) / images[i].size
            expect = np.zeros(12)
            np.add.at(expect, idx[i], w[i])
            np.testing.assert_allclose(share, expect, atol=1e-6)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_dmixup_images_and_labels_agree(k):
    for images, idx, w in _run(constant_pipe("dmixup", k, np.float32), iters=2):
        expect = (w * idx).sum(axis=1)
        np.testing.assert_allclose(images.reshape(12, -1), np.repeat(expect[:, None], images[0].size, 1),
                                   rtol=1e-5)


def test_prob_zero_passes_images_through(photo_dir):
    (out,) = _run(photo_pipe(photo_dir, "dcutmix", prob=0.0, with_labels=True))
    images, targets, labels = out
    (ref,) = _run(photo_pipe(photo_dir, "dcutmix", prob=0.0, with_labels=True))  # same reader order
    np.testing.assert_array_equal(images, ref[0])
    np.testing.assert_array_equal(targets, np.eye(8, dtype=np.float32)[labels.reshape(-1)])


def test_smoothing_in_the_operator(photo_dir):
    (out,) = _run(photo_pipe(photo_dir, "dcutmix", prob=0.0, smoothing=0.1, with_labels=True))
    _, targets, labels = out
    expect = np.full((BATCH, 8), 0.1 / 8, np.float32)
    expect[np.arange(BATCH), labels.reshape(-1)] = 0.9 + 0.1 / 8
    np.testing.assert_allclose(targets, expect, atol=1e-7)


def test_every_sample_is_an_anchor_once_per_epoch(photo_dir):
    n_files = sum(1 for _ in photo_dir.rglob("*.jpg"))

    @pipeline_def(batch_size=7, num_threads=2, device_id=None, seed=9)  # 7 does not divide 48: a padded batch
    def pipe():
        jpegs, labels = fn.readers.file(file_root=str(photo_dir), random_shuffle=True, pad_last_batch=True,
                                        name="Reader")
        images = fn.resize(fn.decoders.image(jpegs), resize_x=32, resize_y=32)
        ids = fn.pad(fn.get_property(jpegs, key="source_info"), fill_value=0, axes=(0,), shape=(512,))
        _, idx, w = kmix.dcutmix(images, labels, k=3, num_classes=8, layout="HWC", label_format="sparse")
        return idx, ids

    from nvidia.dali.plugin.base_iterator import LastBatchPolicy
    from nvidia.dali.plugin.pytorch import DALIGenericIterator

    p = pipe()
    it = DALIGenericIterator([p], ["idx", "ids"], reader_name="Reader", last_batch_policy=LastBatchPolicy.PARTIAL)
    seen = []
    for batch in it:
        ids = batch[0]["ids"].numpy()
        seen += [bytes(r[r != 0]).decode() for r in ids]
    assert len(seen) == n_files and len(set(seen)) == n_files


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(layout="NHWC"), ValueError, r"layout must be 'HWC' or 'CHW', got 'NHWC'"),
        (dict(k=1), ValueError, r"k must be >= 2, got 1"),
        (dict(alpha=0.0), ValueError, r"alpha must be > 0"),
        (dict(alpha=[1.0, 2.0]), ValueError, r"alpha must be a scalar or have length k=3"),
        (dict(mode="grid"), ValueError, r"mode must be one of \['sample', 'batch'\], got 'grid'"),
        (dict(label_format="onehot"), ValueError, r"label_format must be one of \['dense', 'sparse'\]"),
        (dict(label_format="sparse", smoothing=0.1), ValueError, r"smoothing=0.1 applies to dense targets"),
        (dict(num_classes=0), ValueError, r"num_classes must be >= 1, got 0"),
        (dict(prob=2), ValueError, r"prob must be in \[0, 1\], got 2\.0"),
        (dict(seed=-1), ValueError, r"seed must be >= 0, got -1"),
    ],
)
def test_bad_arguments_fail_when_the_pipeline_is_defined(kwargs, exc, match):
    args = dict(k=3, num_classes=10, layout="HWC")
    args.update(kwargs)

    @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def pipe():
        x = fn.external_source(source=lambda: [np.zeros((4, 4, 3), np.uint8)] * 2, batch=True)
        y = fn.external_source(source=lambda: [np.array([1], np.int32)] * 2, batch=True)
        return kmix.dcutmix(x, y, **args)

    with pytest.raises(exc, match=match):
        pipe()


@pytest.mark.parametrize("kwargs,match", [
    (dict(std=0), r"std must be > 0, got 0"),
    (dict(std=[1.0, -2.0]), r"std must be > 0, got \[1.0, -2.0\]"),
    (dict(mean=[float("nan")]), r"mean must be one or more finite numbers, got \[nan\]"),
    (dict(mean=[]), r"mean must be one or more finite numbers, got \[\]"),
    (dict(output_layout="NCHW"), r"output_layout must be one of \['HWC', 'CHW'\], got 'NCHW'"),
    (dict(dtype="float64"), r"dtype must be one of \['float32', 'float16'\], got 'float64'"),
    (dict(mirror=2), r"mirror must be None, 0, 1 or a DataNode of one flag per sample, got 2"),
    (dict(mean="abc"), r"mean must be one or more finite numbers, got 'abc'"),
    (dict(std=[1.0, "x"]), r"std must be one or more finite numbers, got \[1.0, 'x'\]"),
    (dict(mean=[[1.0, 2.0], [3.0]]), r"mean must be one or more finite numbers, got \[\[1.0, 2.0\], \[3.0\]\]"),
    (dict(mean=[1.0, 2.0], std=[1.0, 2.0, 3.0]), r"mean and std must hold one value or one per channel each, so "
                                                 r"as many values as each other where both hold several; got 2 "
                                                 r"values in mean and 3 in std"),
], ids=["std-0", "std-negative", "mean-nan", "mean-empty", "output-layout", "dtype", "mirror", "mean-str",
        "std-str", "mean-ragged", "lengths-differ"])
def test_normalize_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kmix.Normalize(**kwargs)


def test_normalize_must_be_a_normalize():
    with pytest.raises(TypeError, match=r"normalize must be a dali_kmix.dali.Normalize or None, got dict"):
        _run_batch([np.zeros((4, 4, 3), np.uint8)] * 2, [np.array([1], np.int32)] * 2, normalize={"mean": 1})


@pipeline_def(batch_size=BATCH, num_threads=2, device_id=None, seed=5)
def norm_pipe(root, method, fused, layout, out_layout, dtype):
    jpegs, labels = fn.readers.file(file_root=str(root), random_shuffle=True, name="Reader")
    images = fn.decoders.image(jpegs, output_type=types.RGB)
    images = fn.resize(images, resize_x=SIZE, resize_y=SIZE)
    if layout == "CHW":
        images = fn.transpose(images, perm=[2, 0, 1], output_layout="CHW")
    mirror = fn.random.coin_flip(probability=0.5)
    norm = kmix.Normalize(mean=(120.0, 110.5, 100.25), std=(60.0, 62.5, 65.0), mirror=mirror,
                          output_layout=out_layout, dtype=dtype)
    outs = getattr(kmix, method)(images, labels, k=3, num_classes=8, layout=layout, label_format="sparse",
                                 normalize=norm if fused else None)
    if fused:
        return outs
    return (fn.crop_mirror_normalize(outs[0], **norm.operator_args(layout)), *outs[1:])


@pytest.mark.parametrize("path", ["plugin", "function"])
@pytest.mark.parametrize("layout,out_layout,dtype", [("HWC", "CHW", "float32"), ("CHW", "HWC", "float16")],
                         ids=["HWC-to-CHW-f32", "CHW-to-HWC-f16"])
@pytest.mark.parametrize("method", ["dcutmix", "dmixup", "saliency_dcutmix", "dmixup_or_dcutmix"])
def test_normalize_gives_the_mix_then_crop_mirror_normalize(photo_dir, monkeypatch, method, layout, out_layout,
                                                            dtype, path):
    """normalize= on either path: the batches of the same pipeline with the mix followed by
    fn.crop_mirror_normalize (same draws, same labels; float16 up to DALI's CPU rounding of exact ties)."""
    monkeypatch.setenv("DALI_KMIX_PLUGIN", "1" if path == "plugin" else "0")
    fused, unfused = (_run(norm_pipe(photo_dir, method, f, layout, out_layout, dtype), iters=2) for f in (True, False))
    for a, b in zip(fused, unfused):
        assert a[0].dtype == np.dtype(dtype)
        assert a[0].shape == ((BATCH, 3, SIZE, SIZE) if out_layout == "CHW" else (BATCH, SIZE, SIZE, 3))
        for u, v in zip(a[1:], b[1:]):
            np.testing.assert_array_equal(u, v)
        if path == "function" or dtype == "float32":  # the function path normalises with crop_mirror_normalize
            np.testing.assert_array_equal(a[0], b[0])
        else:
            off = a[0] != b[0]
            assert off.mean() < 0.01
            np.testing.assert_array_equal(np.abs(a[0].view(np.int16)[off] - b[0].view(np.int16)[off]), 1)


def _run_batch(images, labels, layout="HWC", src_layout=None, **kw):
    @pipeline_def(batch_size=len(images), num_threads=1, device_id=None, seed=0)
    def pipe():
        x = fn.external_source(source=lambda: images, batch=True, layout=src_layout)
        y = fn.external_source(source=lambda: labels, batch=True)
        return kmix.dcutmix(x, y, k=3, num_classes=10, layout=layout, **kw)

    p = pipe()
    p.build()
    return p.run()


def test_label_out_of_range_raises_at_run_time():
    imgs = [np.zeros((4, 4, 3), np.uint8)] * 3
    with pytest.raises(RuntimeError, match=r"labels must lie in \[0, num_classes=10\), got label 12"):
        _run_batch(imgs, [np.array([1], np.int32), np.array([12], np.int32), np.array([0], np.int32)])


def test_different_image_sizes_raise_and_name_the_shapes():
    imgs = [np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4, 3), np.uint8)]
    with pytest.raises(RuntimeError, match=r"same H x W; sample 0 has shape \(4, 4, 3\) but sample 1 has shape "
                                           r"\(5, 4, 3\)"):
        _run_batch(imgs, [np.array([1], np.int32)] * 2)


def test_layout_mismatch_with_the_images_raises():
    imgs = [np.zeros((3, 8, 8), np.uint8)] * 2
    with pytest.raises(RuntimeError, match=r"layout='HWC' was given but the images carry layout 'CHW'"):
        _run_batch(imgs, [np.array([1], np.int32)] * 2, layout="HWC", src_layout="CHW")


def test_wrong_dtype_raises():
    imgs = [np.zeros((4, 4, 3), np.int16)] * 2
    with pytest.raises(RuntimeError, match=r"images must have dtype uint8, float16 or float32, got int16"):
        _run_batch(imgs, [np.array([1], np.int32)] * 2)


@pytest.mark.parametrize("path", ["plugin", "function"])
@pytest.mark.parametrize("labels,where", RAGGED_LABELS, ids=RAGGED_LABELS_IDS)
def test_labels_must_hold_one_value_per_sample(monkeypatch, path, labels, where):
    """A ragged batch holding as many values as samples once passed the python_function paths (its labels shifted
    onto the wrong samples): fn.kmix_draw's message on every path."""
    monkeypatch.setenv("DALI_KMIX_PLUGIN", "1" if path == "plugin" else "0")
    labels = [np.array(v, np.int32) for v in labels]
    with pytest.raises(RuntimeError, match=rf"labels must hold one value per sample, got shape {where}"):
        _run_batch([np.zeros((4, 4, 3), np.uint8)] * 2, labels, prob=0.0, label_format="sparse")


@pytest.mark.parametrize("labels,where", RAGGED_LABELS, ids=RAGGED_LABELS_IDS)
def test_the_gpu_paths_host_label_check_refuses_ragged_labels(labels, where):
    """The GPU paths' host check (_LabelCheck) gives fn.kmix_draw's message."""
    with pytest.raises(ValueError, match=rf"labels must hold one value per sample, got shape {where}$"):
        kmix._LabelCheck(10)([np.array(v, np.int32) for v in labels])


def test_operators_are_documented():
    for op in (kmix.dmixup, kmix.dcutmix):
        assert "label_format" in op.__doc__ and "layout" in op.__doc__
    assert dali_kmix.dali is kmix


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["dmixup", "dcutmix"])
def test_gpu_pipeline_agrees_with_labels(method):
    dtype = np.float32 if method == "dmixup" else np.uint8
    p = constant_pipe(method, 3, dtype, device="gpu", device_id=0)
    for images, idx, w in _run(p, iters=2):
        for i in range(12):
            if method == "dcutmix":
                share = np.bincount(images[i].ravel(), minlength=12) / images[i].size
                expect = np.zeros(12)
                np.add.at(expect, idx[i], w[i])
                np.testing.assert_allclose(share, expect, atol=1e-6)
            else:
                np.testing.assert_allclose(images[i], (w[i] * idx[i]).sum(), rtol=1e-5)


@pytest.mark.gpu
def test_gpu_pipeline_on_photos_is_deterministic(photo_dir):
    a = _run(photo_pipe(photo_dir, "dcutmix", op_seed=3, device="gpu", device_id=0), iters=2)
    b = _run(photo_pipe(photo_dir, "dcutmix", op_seed=3, device="gpu", device_id=0), iters=2)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)
    assert class_names(photo_dir)


# --------------------------------------------------------------------------- checkpoints


@pipeline_def(batch_size=BATCH, num_threads=2, seed=21, enable_checkpointing=True)
def ckpt_pipe(root, method, label_format, device="cpu"):
    jpegs, labels = fn.readers.file(file_root=str(root), random_shuffle=True, name="Reader")
    images = fn.decoders.image_random_crop(jpegs, output_type=types.RGB, device="mixed" if device == "gpu" else "cpu")
    images = fn.resize(images, resize_x=SIZE, resize_y=SIZE)  # the crop is random too: DALI's own state
    op = getattr(kmix, method)
    return op(images, labels, k=3, alpha=1.0, num_classes=8, layout="HWC", label_format=label_format)


def _outputs(pipe, iters):
    return [[(r.as_cpu() if hasattr(r, "as_cpu") else r).as_array() for r in pipe.run()] for _ in range(iters)]


def _restore_equals_uninterrupted(root, method, label_format, device="cpu", device_id=None):
    first = ckpt_pipe(root, method, label_format, device=device, device_id=device_id)
    first.build()
    _outputs(first, 7)  # past the first epoch (48 files, batch 8): the reader's position and epoch count
    cpt = first.checkpoint()
    uninterrupted = _outputs(first, 4)
    # restored with another pipeline seed: DALI restores its operators' state whatever the seed, and the mixes
    # depend on the keys alone (the seed once went into their SeedSequence too: the mixes changed, the crops not)
    restored = ckpt_pipe(root, method, label_format, device=device, device_id=device_id, checkpoint=cpt, seed=22)
    restored.build()
    again = _outputs(restored, 4)
    for a, b in zip(uninterrupted, again):
        assert len(a) == len(b) == (2 if label_format == "dense" else 3)
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
    # and the batches after the checkpoint are not a replay of the first ones
    fresh = ckpt_pipe(root, method, label_format, device=device, device_id=device_id)
    fresh.build()
    assert not np.array_equal(_outputs(fresh, 1)[0][1], again[0][1])


@pytest.mark.parametrize("path", ["plugin", "function"])
@pytest.mark.parametrize("label_format", ["dense", "sparse"])
@pytest.mark.parametrize("method", ["dmixup", "dcutmix", "saliency_dcutmix", "dmixup_or_dcutmix"])
def test_restored_pipeline_continues_exactly(photo_dir, monkeypatch, method, label_format, path):
    from dali_kmix.backends import plugin

    monkeypatch.setenv("DALI_KMIX_PLUGIN", "1" if path == "plugin" else "0")
    if path == "plugin" and not plugin.load():
        pytest.skip("the DALI plugin cannot be built here")
    _restore_equals_uninterrupted(photo_dir, method, label_format, device_id=None)


def _gpu_path(monkeypatch, path):
    """Select the GPU path: "native" (the plugin's GPU operators) or "function" (python_function + CuPy)."""
    from dali_kmix.backends import plugin

    monkeypatch.setenv("DALI_KMIX_PLUGIN", "1" if path == "native" else "0")
    if path == "native" and not plugin.gpu_backend():
        pytest.fail("the plugin has no GPU backend on this GPU machine: " + (plugin.cuda_toolchain()[1] or "?"))


@pytest.mark.gpu
@pytest.mark.parametrize("path", ["native", "function"])
@pytest.mark.parametrize("label_format", ["dense", "sparse"])
@pytest.mark.parametrize("method", ["dmixup", "dcutmix", "saliency_dcutmix", "dmixup_or_dcutmix"])
def test_restored_gpu_pipeline_continues_exactly(photo_dir, monkeypatch, method, label_format, path):
    _gpu_path(monkeypatch, path)
    _restore_equals_uninterrupted(photo_dir, method, label_format, device="gpu", device_id=0)


@pytest.mark.gpu
@pytest.mark.parametrize("label_format", ["dense", "sparse"])
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("method", ["dmixup", "dcutmix", "saliency_dcutmix", "dmixup_or_dcutmix"])
def test_native_gpu_path_equals_the_python_function_gpu_path(photo_dir, monkeypatch, method, layout, label_format):
    """Same keys, same record, same kernels: the GPU pipeline gives the same bits through either path."""
    outs = {}
    for path in ("native", "function"):
        _gpu_path(monkeypatch, path)
        outs[path] = _run(photo_pipe(photo_dir, method, layout=layout, label_format=label_format, op_seed=9,
                                     device="gpu", device_id=0), iters=3)
    for a, b in zip(outs["native"], outs["function"]):
        assert len(a) == len(b) == (2 if label_format == "dense" else 3)
        for u, v in zip(a, b):
            assert u.dtype == v.dtype
            np.testing.assert_array_equal(u, v)


@pipeline_def(batch_size=9, num_threads=2, seed=5)
def random_images_pipe(method, dtype, layout, mode, device="cpu"):
    """Random images from one external source (the same on both devices), mixed on ``device``."""
    rng = np.random.default_rng(1)
    shape = (23, 31, 3) if layout == "HWC" else (3, 23, 31)
    images = fn.external_source(source=lambda: [(rng.random(shape) * 255).astype(dtype) for _ in range(9)],
                                batch=True, layout=layout)
    labels = fn.external_source(source=lambda: [np.array([i % 7], np.int32) for i in range(9)], batch=True)
    op = getattr(kmix, method)
    return op(images.gpu() if device == "gpu" else images, labels, k=3, alpha=0.7, num_classes=7, layout=layout,
              mode=mode, prob=0.8, label_format="sparse")


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["sample", "batch"])
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float16, np.float32], ids=["u8", "f16", "f32"])
@pytest.mark.parametrize("method", ["dmixup", "dcutmix", "dmixup_or_dcutmix"])
def test_gpu_pipeline_equals_the_cpu_pipeline(monkeypatch, method, dtype, layout, mode):
    """The record is drawn on the host alike and both backends of the native operators give the same bits."""
    _gpu_path(monkeypatch, "native")
    on_gpu = _run(random_images_pipe(method, dtype, layout, mode, device="gpu", device_id=0), iters=3)
    on_cpu = _run(random_images_pipe(method, dtype, layout, mode, device_id=None), iters=3)
    for a, b in zip(on_gpu, on_cpu):
        for u, v in zip(a, b):
            assert u.dtype == v.dtype
            np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("method", ["dcutmix", "dmixup_or_dcutmix"])
def test_plugin_and_function_paths_draw_the_same_stream(photo_dir, monkeypatch, method):
    outs = {}
    for path in ("1", "0"):
        monkeypatch.setenv("DALI_KMIX_PLUGIN", path)
        p = ckpt_pipe(photo_dir, method, "sparse", device_id=None)
        p.build()
        outs[path] = _outputs(p, 6)  # the switch draws DCutMix in some of them, DMixup in others
    for a, b in zip(outs["1"], outs["0"]):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)


# --------------------------------------------------------------------------- runtime switches


@pipeline_def(batch_size=12, num_threads=2, device_id=None, seed=1)
def switch_pipe(method, probs, alphas):
    def schedule(values):  # one value per iteration, the last one repeated (each source counts its own calls)
        calls = iter(range(10 ** 6))

        def source():
            return [np.array(values[min(next(calls), len(values) - 1)], np.float32)] * 12

        return source

    next_prob, next_alpha = schedule(probs), schedule(alphas)

    images = fn.external_source(source=lambda: [np.full((6, 8, 1), i, np.uint8) for i in range(12)], batch=True,
                                layout="HWC")
    labels = fn.external_source(source=lambda: [np.array([i], np.int32) for i in range(12)], batch=True)
    prob = fn.external_source(source=next_prob, batch=True)
    alpha = fn.external_source(source=next_alpha, batch=True)
    return getattr(kmix, method)(images, labels, k=3, alpha=alpha, num_classes=12, layout="HWC", prob=prob,
                                 label_format="sparse")


@pytest.mark.parametrize("method", ["dmixup", "dcutmix"])
def test_prob_and_alpha_as_data_nodes_switch_mixing_without_rebuilding(method):
    p = switch_pipe(method, probs=[1.0, 0.0, 1.0], alphas=[1.0, 1.0, 0.05])
    p.build()
    (img1, idx1, w1), (img2, idx2, w2), (img3, idx3, w3) = _outputs(p, 3)
    assert (w1[:, 0] < 1).sum() >= 10  # mixed
    np.testing.assert_array_equal(w2[:, 0], 1.0)  # prob 0: every sample passes through
    np.testing.assert_array_equal(img2[:, 0, 0, 0], np.arange(12))
    # alpha 0.05: nearly all the share on one image per sample
    assert np.median(w3.max(axis=1)) > 0.95 and np.median(w1.max(axis=1)) < 0.9


def test_runtime_prob_out_of_range_raises():
    p = switch_pipe("dcutmix", probs=[1.5], alphas=[1.0])
    p.build()
    with pytest.raises(RuntimeError, match=r"prob must be in \[0, 1\], got 1.5 for sample 0"):
        p.run()


def test_runtime_prob_with_an_empty_sample_names_it():
    # the python_function paths once raised a bare IndexError; fn.kmix_draw's message, the same text
    spec = kmix._spec("dcutmix", k=3, alpha=1.0, num_classes=4, layout="HWC", mode="sample", prob=0.5,
                      smoothing=0.0, label_format="sparse", seed=0, shard_id=0, saliency="spectral-residual")
    draws = kmix._Draws(dataclasses.replace(spec, prob=None))
    with pytest.raises(ValueError, match=r"prob given as a DataNode must hold a value per sample, got none for "
                                         r"sample 1$"):
        draws.runtime_args(2, [[np.array([0.5], np.float32), np.zeros((0,), np.float32)]])
    with pytest.raises(ValueError, match=r"prob given as a DataNode must hold one value per sample, got 2 for "
                                         r"sample 0$"):  # not read as its first value
        draws.runtime_args(2, [[np.array([0.5, 0.9], np.float32), np.array([1.0], np.float32)]])
    assert draws.runtime_args(2, [[np.array([0.5], np.float32), np.array([1.0], np.float32)]])[1].tolist() == \
        [0.5, 1.0]


def test_runtime_prob_with_several_values_in_a_sample_is_refused_by_the_operator():
    p = switch_pipe("dcutmix", probs=[[0.5, 0.9]], alphas=[1.0])
    p.build()
    with pytest.raises(RuntimeError, match=r"prob given as a DataNode must hold one value per sample, got 2 for "
                                           r"sample 0"):
        p.run()


def test_runtime_alpha_is_checked():
    p = switch_pipe("dcutmix", probs=[1.0], alphas=[-1.0])
    p.build()
    with pytest.raises(RuntimeError, match=r"alpha must be > 0 and finite, got -1.0"):
        p.run()


# --------------------------------------------------------------------------- alpha per sample


@pipeline_def(batch_size=12, num_threads=2, device_id=None, seed=4)
def alpha_pipe(alphas, mode="sample", method="dmixup", fixed=None, prob=1.0):
    """Sample i: an image whose every pixel is i, labelled i; alpha given per sample (``alphas[i]``), or the
    number ``fixed``."""
    images = fn.external_source(source=lambda: [np.full((6, 8, 1), i, np.uint8) for i in range(12)], batch=True,
                                layout="HWC")
    labels = fn.external_source(source=lambda: [np.array([i], np.int32) for i in range(12)], batch=True)
    alpha = fixed if fixed is not None else fn.external_source(
        source=lambda: [np.asarray(a, np.float32) for a in alphas], batch=True)
    return getattr(kmix, method)(images, labels, k=3, alpha=alpha, num_classes=12, layout="HWC", mode=mode,
                                 prob=prob, label_format="sparse")


@pytest.mark.parametrize("path", ["plugin", "function"])
@pytest.mark.parametrize("method", ["dmixup", "dcutmix"])
def test_alpha_per_sample_equal_for_all_is_the_fixed_alpha_stream(monkeypatch, method, path):
    # the order of the draws is unchanged: a per-sample alpha whose samples agree draws what the number draws
    monkeypatch.setenv("DALI_KMIX_PLUGIN", "1" if path == "plugin" else "0")
    given = _run(alpha_pipe([0.75] * 12, method=method, prob=0.8), 3)  # exact in float32
    fixed = _run(alpha_pipe(None, method=method, fixed=0.75, prob=0.8), 3)
    for a, b in zip(given, fixed):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)


def _built(pipe):
    pipe.build()
    return pipe


@pytest.mark.parametrize("path", ["plugin", "function"])
def test_alpha_per_sample_gives_every_sample_its_own_dirichlet(monkeypatch, path):
    monkeypatch.setenv("DALI_KMIX_PLUGIN", "1" if path == "plugin" else "0")
    # samples 0-5: Dirichlet(8, 1, 1) (mean share of the anchor 0.8); 6-10: (1, 1, 8) (0.1); 11: (0.02, 0.02, 0.02)
    alphas = [[8.0, 1.0, 1.0]] * 6 + [[1.0, 1.0, 8.0]] * 5 + [[0.02] * 3]
    w = np.stack([out[2] for out in _run(alpha_pipe(alphas), 12)])  # DMixup: weights are the shares
    assert abs(w[:, :6, 0].mean() - 0.8) < 0.06 and abs(w[:, 6:11, 2].mean() - 0.8) < 0.06
    assert abs(w[:, 6:11, 0].mean() - 0.1) < 0.04
    assert np.median(w[:, 11].max(axis=1)) > 0.99  # alpha 0.02: nearly all the share on one image


def test_alpha_per_sample_the_plugin_and_function_paths_agree(monkeypatch):
    outs = {}
    for path in ("1", "0"):
        monkeypatch.setenv("DALI_KMIX_PLUGIN", path)
        outs[path] = _run(alpha_pipe([[0.3 + i, 1.0, 2.0] for i in range(12)], method="dcutmix"), 3)
    for a, b in zip(outs["1"], outs["0"]):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)


def test_alpha_per_sample_in_batch_mode_must_agree_and_names_the_sample():
    p = _built(alpha_pipe([1.0] * 3 + [2.0] * 9, mode="batch"))
    with pytest.raises(RuntimeError, match=r"mode='batch' draws one Dirichlet for the whole batch, so alpha must be "
                                           r"the same for every sample; sample 3 has alpha \[2.0, 2.0, 2.0\] but "
                                           r"sample 0 has \[1.0, 1.0, 1.0\]"):
        p.run()
    agreeing = _run(alpha_pipe([[1.0, 2.0, 3.0]] * 12, mode="batch"), 1)[0]
    assert (agreeing[2] == agreeing[2][0]).all()  # one share vector for the batch


@pytest.mark.parametrize("alphas,match", [
    ([1.0] * 11 + [-1.0], r"alpha must be > 0 and finite, got -1.0 for sample 11"),
    ([[1.0, 2.0]] * 12, r"alpha must be a scalar or have length k=3, got shape \(2,\).* for sample 0"),
])
def test_alpha_per_sample_is_checked_per_sample(alphas, match):
    p = _built(alpha_pipe(alphas))
    with pytest.raises(RuntimeError, match=match):
        p.run()


def test_per_sample_alpha_draws_row_i_from_its_own_alpha():
    from dali_kmix.sampling import draw_raw

    n, k = 5, 3
    alpha = np.array([[0.5, 1.0, 2.0], [3.0, 3.0, 3.0], [0.1, 0.1, 9.0], [1.0, 1.0, 1.0], [7.0, 0.2, 0.4]])
    phi, *_ = draw_raw(np, np.random.default_rng(3), n, k, alpha, "sample", 1.0)
    # the same draws, made one row at a time with that row's alpha, in the order draw_raw makes them
    gen = np.random.default_rng(3)
    gamma = gen.standard_gamma(alpha + 1.0, size=(n, k))
    uni = 1.0 - gen.random((n, k))
    for i in range(n):
        logg = np.log(gamma[i]) + np.log(uni[i]) / alpha[i]
        e = np.exp(logg - logg.max())
        np.testing.assert_array_equal(phi[i], e / e.sum())
    with pytest.raises(ValueError, match=r"alpha must have shape \(K,\) or \(N=1, K=3\) in mode 'batch'"):
        draw_raw(np, np.random.default_rng(3), n, k, alpha, "batch", 1.0)


# --------------------------------------------------------------------------- what is not a DataNode


@pytest.mark.parametrize("what", ["numpy", "torch", "list"])
def test_arrays_given_to_an_operator_raise_a_type_error_that_points_to_the_array_api(what):
    torch = pytest.importorskip("torch")
    batch = {"numpy": np.zeros((2, 8, 8, 3), np.uint8), "torch": torch.zeros(2, 3, 8, 8),
             "list": [np.zeros((8, 8, 3), np.uint8)] * 2}[what]
    name = {"numpy": "numpy.ndarray", "torch": "torch.Tensor", "list": "list"}[what]
    hint = r"; to mix arrays outside DALI use dali_kmix.mix_images .*dali_kmix.torch.KMixup for torch tensors"

    @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def pipe(images_given):
        x = fn.external_source(source=lambda: [np.zeros((8, 8, 3), np.uint8)] * 2, batch=True)
        y = fn.external_source(source=lambda: [np.array([1], np.int32)] * 2, batch=True)
        return kmix.dcutmix(batch if images_given else x, y if images_given else np.array([1, 0]), k=3,
                            num_classes=10, layout="HWC")

    with pytest.raises(TypeError, match=rf"images must be a DALI DataNode .* got {name}{hint}"):
        pipe(True)
    with pytest.raises(TypeError, match=r"labels must be a DALI DataNode .* got numpy.ndarray"):
        pipe(False)
    with pytest.raises(TypeError, match=rf"images must be a DALI DataNode .* got {name}"):  # outside a pipeline
        kmix.dmixup(batch, np.array([0, 1]), num_classes=3, layout="HWC")


# --------------------------------------------------------------------------- a shape that contradicts layout=


CONTRADICTIONS = [((10, 12, 3), "CHW", r"shape \(10, 12, 3\) looks HWC \(3 channels last\)"),
                  ((3, 10, 12), "HWC", r"shape \(3, 10, 12\) looks CHW \(3 channels first\)"),
                  ((1, 9, 7), "HWC", r"shape \(1, 9, 7\) looks CHW \(1 channels first\)")]


@pytest.mark.parametrize("path", ["plugin", "function"])
@pytest.mark.parametrize("shape,layout,match", CONTRADICTIONS, ids=["hwc-as-chw", "chw-as-hwc", "grey-chw-as-hwc"])
def test_images_without_a_layout_whose_shape_contradicts_layout_raise(monkeypatch, path, shape, layout, match):
    monkeypatch.setenv("DALI_KMIX_PLUGIN", "1" if path == "plugin" else "0")
    imgs = [np.zeros(shape, np.uint8)] * 2
    with pytest.raises(RuntimeError, match=rf"images: layout='{layout}' was given but the images carry no layout and "
                                           rf"their {match}; mixed as {layout} the boxes would be cut across channels"):
        _run_batch(imgs, [np.array([1], np.int32)] * 2, layout=layout)


@pytest.mark.parametrize("path", ["plugin", "function"])
def test_a_shape_that_fits_its_layout_or_carries_one_is_mixed(monkeypatch, path):
    monkeypatch.setenv("DALI_KMIX_PLUGIN", "1" if path == "plugin" else "0")
    for shape, layout, src in [((10, 12, 3), "HWC", None), ((3, 10, 12), "CHW", None), ((4, 4, 3), "CHW", None),
                               ((6, 8, 2), "HWC", None), ((10, 12, 3), "CHW", "CHW"), ((3, 10, 12), "HWC", "HWC")]:
        out = _run_batch([np.full(shape, 7, np.uint8)] * 2, [np.array([1], np.int32)] * 2, layout=layout,
                         src_layout=src)
        assert np.asarray(out[0][0]).shape == shape


# (shape, the layout the images carry, layout=): the function path's error, or None where it mixes them
CARRIED = r"layout='{}' was given but the images carry layout '{}'"
LAYOUT_CASES = [
    ((3, 10, 12), "CHW", "HWC", CARRIED.format("HWC", "CHW")),  # a shape that looks CHW
    ((8, 10, 12), "CHW", "HWC", CARRIED.format("HWC", "CHW")),  # 8 channels first: nothing in the shape says so
    ((10, 12, 3), "HWC", "CHW", CARRIED.format("CHW", "HWC")),
    ((4, 4, 3), "CHW", "HWC", CARRIED.format("HWC", "CHW")),
    ((3, 10, 12), None, "HWC", r"images: layout='HWC' was given but the images carry no layout and their shape "
                               r"\(3, 10, 12\) looks CHW"),
    ((3, 10, 12), "CHW", "CHW", None),
    ((8, 10, 12), "CHW", "CHW", None),
    ((10, 12, 3), None, "HWC", None),
]
LAYOUT_IDS = [f"{'x'.join(map(str, s))}-{c}-as-{lay}" for s, c, lay, _ in LAYOUT_CASES]


@pipeline_def(batch_size=2, num_threads=1, device_id=None, seed=0)
def gpu_layout_draws_pipe(spec, shape, src_layout):
    """_GpuDraws given the images' shapes and carried layout as _gpu_path gives them (images.shape() and
    images.property("layout"): on the GPU images there, on CPU images here; the same metadata)."""
    x = fn.external_source(source=lambda: [np.zeros(shape, np.uint8)] * 2, batch=True, layout=src_layout)
    keys = kmix._keys(spec, None)
    return tuple(fn.python_function(keys, x.shape(), x.property("layout"), function=kmix._GpuDraws(spec),
                                    batch_processing=True, num_outputs=5))


def _layout_spec(layout):
    return kmix._spec("dcutmix", k=3, alpha=1.0, num_classes=10, layout=layout, mode="sample", prob=1.0,
                      smoothing=0.0, label_format="dense", seed=0, shard_id=0, saliency="spectral-residual")


@pytest.mark.parametrize("shape,src_layout,layout,match", LAYOUT_CASES, ids=LAYOUT_IDS)
def test_the_gpu_fallback_checks_the_images_layout_on_the_host_as_the_function_path_does(
        monkeypatch, shape, src_layout, layout, match):
    # The GPU fallback used to check a carried layout against layout= nowhere: images of (3, H, W) carrying "CHW"
    # mixed as "HWC" had their boxes cut across channels where the function path raises. Now _GpuDraws checks the
    # images' metadata on the host (no device sync) with the function path's checks, so both raise alike.
    monkeypatch.setenv("DALI_KMIX_PLUGIN", "0")
    labels = [np.array([1], np.int32)] * 2
    pipe = gpu_layout_draws_pipe(_layout_spec(layout), shape, src_layout)
    pipe.build()
    if match is None:
        out = _run_batch([np.zeros(shape, np.uint8)] * 2, labels, layout=layout, src_layout=src_layout)
        assert np.asarray(out[0][0]).shape == shape
        assert [len(t) for t in pipe.run()] == [2] * 5
        return
    with pytest.raises(RuntimeError, match=match):  # the function path
        _run_batch([np.zeros(shape, np.uint8)] * 2, labels, layout=layout, src_layout=src_layout)
    with pytest.raises(RuntimeError, match=match):  # the GPU fallback's host half
        pipe.run()


@pytest.mark.parametrize("shape,src_layout,layout,match", LAYOUT_CASES, ids=LAYOUT_IDS)
def test_the_gpu_fallback_without_the_dynamic_executor_checks_the_layout_read_from_the_device(
        monkeypatch, shape, src_layout, layout, match):
    # exec_dynamic=False cannot hand the GPU images' metadata to a CPU operator: _GpuMix gets the carried layout as
    # a GPU tensor and reads it back (once per batch, whatever the shape: a fitting shape can carry the other
    # layout too) before the same checks. int16 images: where the layout passes, the dtype check raises next.
    import sys

    reads = []
    fake = _numpy_as_cupy()
    fake.asnumpy = lambda a: reads.append(1) or np.asarray(a)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    mixer = kmix._GpuMix(_layout_spec(layout), check_labels=False)
    layout_prop = [np.frombuffer((src_layout or "").encode(), np.uint8)] * 2
    dtype_error = r"images must have dtype uint8, float16 or float32, got int16"
    with pytest.raises(TypeError if match is None else ValueError, match=dtype_error if match is None else match):
        mixer([np.zeros(shape, np.int16)] * 2, [np.array([1], np.int32)] * 2, *[[]] * 5, layout_prop)
    assert reads == [1]


def test_the_gpu_fallback_reads_the_layout_where_the_pipeline_can(monkeypatch):
    # The images' shapes and layout reach the host drawing as metadata (CPU _Shape and GetProperty of the GPU
    # images: DALI passes them without waiting for the device); the GPU mixer gets no layout to read back. Without
    # the dynamic executor (no GPU-to-CPU step) the layout goes to the GPU mixer instead.
    monkeypatch.setenv("DALI_KMIX_PLUGIN", "0")

    def python_functions(ops, device):
        return [op for op in ops if type(op._op).__name__ == "PythonFunction" and op._op.device == device]

    ops, outs = _gpu_graph("dcutmix", "cpu")
    (mixer,) = python_functions(ops, "gpu")
    assert [type(i.source._op).__name__ for i in mixer.inputs].count("GetProperty") == 0
    (draws,) = [op for op in python_functions(ops, "cpu") if type(op.inputs[0].source._op).__name__ == "Uniform"]
    shape, prop = (i.source for i in draws.inputs[-2:])
    assert (type(shape._op).__name__, type(prop._op).__name__) == ("_Shape", "GetProperty")
    assert prop._op._init_args["key"] == "layout" and shape._op.device == prop._op.device == "cpu"
    assert shape.inputs[0] is prop.inputs[0] is mixer.inputs[0] and mixer.inputs[0].device == "gpu"

    ops, _ = _gpu_graph("dcutmix", "cpu", exec_dynamic=False)
    (mixer,) = python_functions(ops, "gpu")
    prop = mixer.inputs[-1].source
    assert type(prop._op).__name__ == "GetProperty" and prop._op.device == "gpu" and prop.inputs[0] is mixer.inputs[0]
    assert not [op for op in ops if op._op.device == "cpu" and any(i.device == "gpu" for i in op.inputs)]


# --------------------------------------------------------------------------- the padded last batch


@pytest.fixture(scope="module")
def one_per_class(tmp_path_factory):
    """21 classes of one 4 x 4 PNG each (file i: class i), so a label names its sample."""
    from PIL import Image

    root = tmp_path_factory.mktemp("one_per_class")
    for i in range(21):
        (root / f"c{i:02d}").mkdir()
        Image.fromarray(np.full((4, 4, 3), 10 * i, np.uint8)).save(root / f"c{i:02d}" / "x.png")
    return root


@pipeline_def(batch_size=8, num_threads=1, device_id=None, seed=6)
def padded_pipe(root, reader_name="Reader", shard_id=0, num_shards=1, stick_to_shard=False, method="dcutmix"):
    jpegs, labels = fn.readers.file(file_root=str(root), random_shuffle=True, pad_last_batch=True, name="Reader",
                                    shard_id=shard_id, num_shards=num_shards, stick_to_shard=stick_to_shard)
    images = fn.decoders.image(jpegs)
    info = fn.pad(fn.get_property(jpegs, key="source_info"), fill_value=0, axes=(0,), shape=(256,))
    _, idx, w = getattr(kmix, method)(images, labels, k=3, num_classes=21, layout="HWC", label_format="sparse",
                                      reader_name=reader_name)
    return idx, w, info


def _padding(info_rows, previous):
    """DALI's padding, seen in the files: a copy of the shard's last sample repeats it to the end of the batch."""
    names = [bytes(r[r != 0]).decode() for r in info_rows]
    real = np.ones(len(names), bool)
    end = len(names) - 1
    while end > 0 and names[end] == names[end - 1]:
        real[end] = False
        end -= 1
    if all(n == names[0] for n in names) and names[0] == previous:  # a whole batch of copies (a smaller shard)
        real[:] = False
    return real, names[-1]


@pytest.mark.parametrize("method", ["dcutmix", "dmixup_or_dcutmix"])
@pytest.mark.parametrize("num_shards,stick", [(1, False), (2, False), (2, True), (3, False)])
def test_padded_copies_of_the_last_sample_are_no_partners(one_per_class, num_shards, stick, method):
    for shard in range(num_shards):
        p = _built(padded_pipe(one_per_class, shard_id=shard, num_shards=num_shards, stick_to_shard=stick,
                               method=method))
        previous, padded_batches = None, 0
        for _ in range(9):  # three epochs and more: the shards rotate unless they stick
            idx, w, info = _outputs(p, 1)[0]
            real, previous = _padding(info, previous)
            padded_batches += not real.all()
            # every real sample is a partner of exactly one real sample at every level; the copies of the last
            # one are not partners of them, and are not mixed themselves
            for level in (1, 2):
                assert sorted(idx[real, level]) == sorted(idx[real, 0])
            assert (w[~real, 0] == 1).all() and (idx[~real] == idx[~real, :1]).all()
        assert padded_batches >= 3


def test_without_reader_name_the_copies_are_partners(one_per_class):
    p = _built(padded_pipe(one_per_class, reader_name=None))
    previous, seen = None, 0
    for _ in range(9):
        idx, w, info = _outputs(p, 1)[0]
        real, previous = _padding(info, previous)
        if not real.all():  # 21 files, batch 8: 5 real samples, 3 copies of the last one
            seen += (w[~real, 0] < 1).any() or any(sorted(idx[real, j]) != sorted(idx[real, 0]) for j in (1, 2))
    assert seen >= 2


@pytest.mark.parametrize("num_shards,batch,stick", [(1, 5, False), (2, 4, False), (2, 4, True), (3, 5, False),
                                                    (4, 3, False)])
def test_real_sample_flags_are_the_readers_padding(one_per_class, num_shards, batch, stick):
    for shard in range(num_shards):
        @pipeline_def(batch_size=batch, num_threads=1, device_id=None, seed=2)
        def pipe():
            jpegs, _ = fn.readers.file(file_root=str(one_per_class), random_shuffle=True, pad_last_batch=True,
                                       name="R", shard_id=shard, num_shards=num_shards, stick_to_shard=stick)
            return fn.pad(fn.get_property(jpegs, key="source_info"), fill_value=0, axes=(0,), shape=(256,))

        p = _built(pipe())
        meta, previous = p.reader_meta("R"), None
        for it in range(4 * -(-21 // num_shards // batch + 1)):
            (info,) = _outputs(p, 1)[0]
            real, previous = _padding(info, previous)
            assert kmix.real_sample_flags(meta, it, batch) == real.astype(int).tolist(), (shard, it)


def test_padding_known_from_the_reader_restores_exactly(one_per_class):
    @pipeline_def(batch_size=8, num_threads=1, device_id=None, seed=6, enable_checkpointing=True)
    def pipe():
        jpegs, labels = fn.readers.file(file_root=str(one_per_class), random_shuffle=True, pad_last_batch=True,
                                        name="Reader")
        return kmix.dmixup(fn.decoders.image(jpegs), labels, k=3, num_classes=21, layout="HWC",
                           label_format="sparse", reader_name="Reader")

    first = _built(pipe())
    _outputs(first, 2)  # the next batch is the epoch's padded one
    cpt = first.checkpoint()
    expected = _outputs(first, 4)
    restored = _built(pipe(checkpoint=cpt))
    for a, b in zip(expected, _outputs(restored, 4)):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
    assert (expected[0][2][5:, 0] == 1).all()  # the padded batch: 5 real samples, 3 unmixed copies


def test_reader_name_is_checked():
    @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def pipe(reader_name):
        x = fn.external_source(source=lambda: [np.zeros((4, 4, 3), np.uint8)] * 2, batch=True)
        y = fn.external_source(source=lambda: [np.array([1], np.int32)] * 2, batch=True)
        return kmix.dcutmix(x, y, k=3, num_classes=10, layout="HWC", reader_name=reader_name)

    with pytest.raises(TypeError, match=r"reader_name must be the name of the pipeline's reader .* got 3"):
        pipe(3)
    p = _built(pipe("Nope"))
    with pytest.raises(Exception, match=r"reader_name='Nope': the pipeline has no reader of that name"):
        p.run()


# --------------------------------------------------------------------------- DMixup or DCutMix per batch


@pipeline_def(batch_size=12, num_threads=2, seed=5)
def switch_method_pipe(switch_prob, device="cpu", k=3):
    images = fn.external_source(source=lambda: [np.full((6, 8, 2), i, np.uint8) for i in range(12)], batch=True,
                                layout="HWC")
    labels = fn.external_source(source=lambda: [np.array([i], np.int32) for i in range(12)], batch=True)
    if device == "gpu":
        images = images.gpu()
    return kmix.dmixup_or_dcutmix(images, labels, k=k, alpha=1.0, cutmix_alpha=0.5, switch_prob=switch_prob,
                                  num_classes=12, layout="HWC", label_format="sparse")


def _batch_kind(images, idx, w):
    """'cut' when every pixel is one of the sources' values and the shares are the pixel areas, 'blend' when
    every pixel is the weighted sum; checks the images against the labels either way."""
    cut = all(np.isin(images[i], idx[i]).all() for i in range(len(images)))
    for i in range(len(images)):
        if cut:
            share = np.bincount(images[i].ravel(), minlength=12) / images[i].size
            expect = np.zeros(12)
            np.add.at(expect, idx[i], w[i])
            np.testing.assert_allclose(share, expect, atol=1e-6)
        else:
            np.testing.assert_allclose(images[i].astype(float), np.rint((w[i] * idx[i]).sum()), atol=0.51)
    return "cut" if cut else "blend"


def _switch_kinds(switch_prob, device="cpu", iters=24):
    p = switch_method_pipe(switch_prob, device=device, device_id=0 if device == "gpu" else None)
    p.build()
    return [_batch_kind(*out) for out in _outputs(p, iters)]


@pytest.mark.parametrize("path", ["plugin", "function"])
def test_switch_picks_one_method_per_batch(monkeypatch, path):
    monkeypatch.setenv("DALI_KMIX_PLUGIN", "1" if path == "plugin" else "0")
    assert set(_switch_kinds(1.0, iters=3)) == {"cut"}
    assert set(_switch_kinds(0.0, iters=3)) == {"blend"}
    kinds = _switch_kinds(0.5, iters=40)
    # binomial(40, 0.5): 10..30 holds with probability > 0.998
    assert 10 <= kinds.count("cut") <= 30


def test_switch_arguments_are_checked():
    @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def pipe(switch_prob=0.5, cutmix_alpha=None):
        x = fn.external_source(source=lambda: [np.zeros((4, 4, 3), np.uint8)] * 2, batch=True)
        y = fn.external_source(source=lambda: [np.array([1], np.int32)] * 2, batch=True)
        return kmix.dmixup_or_dcutmix(x, y, num_classes=3, layout="HWC", switch_prob=switch_prob,
                                      cutmix_alpha=cutmix_alpha)

    with pytest.raises(ValueError, match=r"switch_prob must be in \[0, 1\], got 1.5"):
        pipe(switch_prob=1.5)
    with pytest.raises(ValueError, match=r"^cutmix_alpha must be > 0 and finite, got -2"):
        pipe(cutmix_alpha=-2)
    with pytest.raises(ValueError, match=r"^cutmix_alpha must be a scalar or have length k=3"):
        pipe(cutmix_alpha=[1.0, 2.0])


@pytest.mark.gpu
def test_switch_on_the_gpu():
    kinds = _switch_kinds(0.5, device="gpu", iters=40)
    assert 10 <= kinds.count("cut") <= 30


# --------------------------------------------------------------------------- the GPU path's host logic, on the CPU
# The GPU path splits the work in two python_functions: _GpuDraws (CPU, DALI converts its outputs) and _GpuMix
# (GPU, CuPy arrays). Here _GpuDraws runs in a real CPU pipeline, and _GpuMix runs with NumPy standing in for CuPy,
# the reference nesting for kmix_nest_boxes and the CPU kernels for the CUDA ones: what it composes must be what
# the CPU path gives for the same keys, bit for bit. (The CUDA kernels against the reference: test_backends, gpu.)


def _numpy_as_cupy():
    import types

    fake = types.ModuleType("cupy")
    fake.__getattr__ = lambda name: getattr(np, name)
    return fake


@pipeline_def(batch_size=BATCH + 3, num_threads=1, device_id=None, seed=11)
def gpu_draws_pipe(spec):
    keys = kmix._keys(spec, None)
    draws = fn.python_function(keys, function=kmix._GpuDraws(spec), batch_processing=True, num_outputs=5)
    return (keys, *draws)


def _samples(tl):
    return [np.array(tl[i]) for i in range(len(tl))]


GPU_HOST_CASES = [
    ("dmixup", "sample", "dense", "HWC", np.float32),
    ("dmixup", "batch", "sparse", "CHW", np.uint8),
    ("dcutmix", "sample", "sparse", "HWC", np.uint8),
    ("dcutmix", "batch", "dense", "CHW", np.float16),
    ("saliency-dcutmix", "sample", "dense", "HWC", np.uint8),
    ("saliency-dcutmix", "sample", "sparse", "CHW", np.float32),
    ("dmixup+dcutmix", "sample", "dense", "HWC", np.uint8),
    ("dmixup+dcutmix", "sample", "sparse", "CHW", np.float32),
]


@pytest.mark.parametrize("method,mode,label_format,layout,dtype", GPU_HOST_CASES,
                         ids=[f"{m}-{mo}-{lf}-{la}-{np.dtype(d).name}" for m, mo, lf, la, d in GPU_HOST_CASES])
def test_gpu_path_host_logic_matches_the_cpu_path(monkeypatch, method, mode, label_format, layout, dtype):
    import sys

    import dali_kmix.backends as backends
    from dali_kmix.backends import gpu
    from dali_kmix.sampling import params_from_draws

    n, k = BATCH + 3, 3
    spec = kmix._spec(method, k=k, alpha=0.8, num_classes=10, layout=layout, mode=mode, prob=0.7, smoothing=0.0,
                      label_format=label_format, seed=5, shard_id=1, saliency="spectral-residual",
                      switch_prob=0.5, cutmix_alpha=0.4)
    pipe = gpu_draws_pipe(spec)
    pipe.build()
    rng = np.random.default_rng(0)
    shape = (13, 17, 3) if layout == "HWC" else (3, 13, 17)
    layout_prop = [np.frombuffer(layout.encode(), np.uint8)]
    reference_path = kmix._FunctionMix(spec, workers=1)

    def nest_boxes(method, phi, uniforms, perms, mixed, h, w, centers=None):
        p = params_from_draws(method, phi, uniforms, perms, mixed.astype(bool), h, w, centers)
        return p.sources, p.weights, p.boxes

    monkeypatch.setitem(sys.modules, "cupy", _numpy_as_cupy())
    monkeypatch.setattr(gpu, "nest_boxes", nest_boxes)
    monkeypatch.setattr(backends, "GpuBackend", lambda: backends.CpuBackend(workers=1))
    cuts = set()
    for _ in range(6):
        keys, *draws = (_samples(t) for t in pipe.run())
        assert [d.shape for d in draws[3]] == [(1,)] * n and [d.shape for d in draws[4]] == [(1,)] * n
        cuts |= {int(c[0]) for c in draws[4]}
        images = [(rng.random(shape) * 255).astype(dtype) for _ in range(n)]
        labels = kmix._LabelCheck(10)([np.array([v], np.int32) for v in rng.integers(0, 10, n)])
        expect = reference_path(images, labels, layout_prop, keys)
        got = kmix._GpuMix(spec, check_labels=False)(images, labels, *draws)
        assert len(got) == len(expect) == 1 + spec.label_outputs
        for g, e in zip(got, expect):
            np.testing.assert_array_equal(np.stack(g), np.stack(e))
    if spec.switch:
        assert cuts == {0, 1}, "both methods of dmixup+dcutmix must have been drawn"
    else:
        assert cuts == {int(method != "dmixup")}


@pytest.mark.parametrize("label_format", ["dense", "sparse"])
@pytest.mark.parametrize("method", ["dmixup", "dcutmix"])
def test_the_gpu_mixer_builds_the_labels_without_the_public_checks(monkeypatch, method, label_format):
    # On CuPy the public dali_kmix.mix_labels checks the labels (int(min), int(max)) and the record (bool(any(...)))
    # on the host: each a wait on DALI's stream. _GpuMix's labels are checked already (_LabelCheck on the host, or
    # _GpuMix itself with check_labels=True, once) and its record is built in-house: the targets come from the
    # unchecked computation, with the same bits as the public function's.
    import sys

    import dali_kmix.backends as backends
    from dali_kmix import _checks, mixing
    from dali_kmix.backends import gpu
    from dali_kmix.record import MixParams
    from dali_kmix.sampling import params_from_draws

    public_mix_labels = mixing.mix_labels
    n = BATCH + 3
    spec = kmix._spec(method, k=4, alpha=0.8, num_classes=10, layout="HWC", mode="sample", prob=0.7,
                      smoothing=0.0 if label_format == "sparse" else 0.1, label_format=label_format, seed=5,
                      shard_id=0, saliency="spectral-residual")
    pipe = gpu_draws_pipe(spec)
    pipe.build()
    records = []

    def nest_boxes(method, phi, uniforms, perms, mixed, h, w, centers=None):
        p = params_from_draws(method, phi, uniforms, perms, mixed.astype(bool), h, w, centers)
        records.append(p)
        return p.sources, p.weights, p.boxes

    def host_read(*args, **kwargs):
        raise AssertionError("a read from the device on the GPU mixer's label path")

    checked = []
    check_labels = _checks.check_labels
    fake = _numpy_as_cupy()
    fake.asnumpy = host_read
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(gpu, "nest_boxes", nest_boxes)
    monkeypatch.setattr(backends, "GpuBackend", lambda: backends.CpuBackend(workers=1))
    monkeypatch.setattr(_checks, "check_labels", lambda *a: checked.append(1) or check_labels(*a))
    for name in ("validate", "validate_rows"):
        monkeypatch.setattr(MixParams, name, host_read)
    monkeypatch.setattr(mixing, "mix_labels", host_read)
    monkeypatch.setattr(dali_kmix, "mix_labels", host_read)
    rng = np.random.default_rng(1)
    for check_on_device in (False, True):
        keys, *draws = (_samples(t) for t in pipe.run())
        labels = [np.array([v], np.int32) for v in rng.integers(0, 10, n)]
        images = [rng.integers(0, 256, (6, 5, 3), dtype=np.uint8) for _ in range(n)]
        checked.clear()
        _, *label_outs = kmix._GpuMix(spec, check_labels=check_on_device)(images, labels, *draws)
        assert len(checked) == int(check_on_device)  # the labels of a GPU pipeline: checked once, here
        lab = np.concatenate(labels).astype(np.int64)
        rec = records[-1]
        if label_format == "dense":
            want = public_mix_labels(lab, rec, 10, 0.1)
            assert want.dtype == np.float32 and np.stack(label_outs[0]).dtype == np.float32
            np.testing.assert_array_equal(np.stack(label_outs[0]), want)
        else:
            np.testing.assert_array_equal(np.stack(label_outs[0]), lab[rec.sources])
            np.testing.assert_array_equal(np.stack(label_outs[1]), rec.weights)


def test_the_unchecked_targets_are_the_public_targets():
    # kmix._label_outputs (every DALI path's dense targets) against the public dali_kmix.mix_labels (NumPy: the
    # CPU build's one-pass kernel where it loads): the same bits for every method, K, smoothing and class count
    rng = np.random.default_rng(2)
    for method, k, smoothing, classes in [("dmixup", 2, 0.0, 3), ("dmixup", 5, 0.1, 1000), ("dcutmix", 3, 0.0, 10),
                                          ("dcutmix", 6, 0.3, 7), ("dmixup", 9, 0.05, 2)]:
        spec = kmix._spec(method, k=k, alpha=0.5, num_classes=classes, layout="HWC", mode="sample", prob=0.8,
                          smoothing=smoothing, label_format="dense", seed=1, shard_id=0, saliency="spectral-residual")
        for n in (1, 7, 64):
            rec = dali_kmix.sample_params(method, n, 9, 11, k=k, alpha=0.5, prob=0.8, rng=rng)
            lab = rng.integers(0, classes, n).astype(np.int64)
            (got,) = kmix._label_outputs(spec, lab, rec)
            want = dali_kmix.mix_labels(lab, rec, classes, smoothing)
            np.testing.assert_array_equal(np.stack(got).view(np.uint32), want.view(np.uint32))


def test_a_raising_gpu_mixer_lets_go_of_dalis_stream(monkeypatch):
    # DALI 2.4 runs a GPU python_function in `with cupy.cuda.Stream(null=True)` whose ptr it set to its own stream,
    # and resets ptr only when the function returns; on an exception CuPy's Stream.__del__ would destroy DALI's
    # stream. _GpuMix hands the pointer back before the exception leaves it.
    cupy = pytest.importorskip("cupy")
    import nvidia.dali.python_function_plugin as plugin

    dali_stream = 0x5EED0
    wrapper = cupy.cuda.Stream(null=True)
    wrapper.ptr = dali_stream
    other = cupy.cuda.Stream(null=True)
    try:
        monkeypatch.setattr(plugin, "current_dali_stream", lambda: dali_stream)
        monkeypatch.setattr(cupy.cuda, "get_current_stream", lambda: wrapper)
        spec = kmix._spec("dcutmix", k=3, alpha=1.0, num_classes=10, layout="HWC", mode="sample", prob=1.0,
                          smoothing=0.0, label_format="dense", seed=0, shard_id=0, saliency="spectral-residual")
        images = [np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4, 3), np.uint8)]
        with pytest.raises(ValueError, match=r"sample 1 has shape \(5, 4, 3\)"):
            kmix._GpuMix(spec, check_labels=False)(images, [np.array([1], np.int32)] * 2, *[[]] * 5)
        assert wrapper.ptr == 0
        # a stream that is not DALI's is left alone
        other.ptr = 0x1234
        monkeypatch.setattr(cupy.cuda, "get_current_stream", lambda: other)
        with pytest.raises(ValueError, match=r"sample 1 has shape"):
            kmix._GpuMix(spec, check_labels=False)(images, [np.array([1], np.int32)] * 2, *[[]] * 5)
        assert other.ptr == 0x1234
    finally:
        wrapper.ptr = other.ptr = 0  # never let these objects destroy a stream


def _gpu_graph(method, labels_on, **pipe_kw):
    """The operators of a GPU pipeline with ``method`` (defined, not built: that needs a device) and its outputs."""
    from nvidia.dali import Pipeline

    pipe = Pipeline(batch_size=4, num_threads=1, device_id=0, seed=1, **pipe_kw)
    with pipe:
        x = fn.external_source(source=lambda: [np.zeros((8, 8, 3), np.uint8)] * 4, batch=True, layout="HWC")
        y = fn.external_source(source=lambda: [np.array([1], np.int32)] * 4, batch=True)
        prob = fn.external_source(source=lambda: [np.array([0.5], np.float32)] * 4, batch=True)
        outs = getattr(kmix, method)(x.gpu(), y.gpu() if labels_on == "gpu" else y, k=3, num_classes=10,
                                     layout="HWC", prob=prob, label_format="sparse")
    return graph_operators(outs), outs


NATIVE_OPS = {"dmixup": "KmixDmixup", "dcutmix": "KmixDcutmix", "saliency_dcutmix": "KmixDcutmix",
              "dmixup_or_dcutmix": "KmixMix"}


@pytest.mark.parametrize("path", ["native", "function"])
@pytest.mark.parametrize("labels_on", ["cpu", "gpu"])
@pytest.mark.parametrize("method", ["dmixup", "dcutmix", "saliency_dcutmix", "dmixup_or_dcutmix"])
def test_gpu_operators_place_every_input_where_dali_takes_it(monkeypatch, method, labels_on, path):
    # Defining a GPU pipeline needs no device (building one does): the graph shows where each operator runs.
    from dali_kmix.backends import plugin

    monkeypatch.setenv("DALI_KMIX_PLUGIN", "1" if path == "native" else "0")
    if path == "native" and not plugin.gpu_backend():
        pytest.skip("the plugin has no GPU backend here (no nvcc)")
    ops, outs = _gpu_graph(method, labels_on)
    assert [o.device for o in outs] == ["gpu"] * 3
    mixers = [op for op in ops if op._op.device == "gpu"]
    if path == "native":
        # the native GPU operator blends: images on the GPU, the record drawn on the host (CPU inputs)
        (blend,) = [op for op in mixers if type(op._op).__name__.startswith("Kmix")]
        assert type(blend._op).__name__ == NATIVE_OPS[method] and outs[0].source is blend
        assert [i.device for i in blend.inputs] == ["gpu"] + ["cpu"] * (len(blend.inputs) - 1)
        others = [type(op._op).__name__ for op in mixers if op is not blend]
        # Saliency-DCutMix: the salient points on the GPU (CuPy's FFT), handed to the host drawing by DALI
        assert others == (["PythonFunction"] if method == "saliency_dcutmix" else [])
        # the record drawn natively from the images' shapes (fn.kmix_draw with shape_input): no Python on the host
        (draw,) = [op for op in ops if type(op._op).__name__ == "KmixDraw"]
        assert draw._op.device == "cpu" and type(draw.inputs[0].source._op).__name__ == "_Shape"
        assert blend.inputs[1].source is draw
        assert not [op for op in ops if op._op.device == "cpu" and type(op._op).__name__ == "PythonFunction"]
    else:
        # one GPU python_function mixes; the images' layout and shapes are read on the host, as metadata
        assert [type(op._op).__name__ for op in mixers] == ["PythonFunction"]
        assert all(i.device == "gpu" for i in mixers[0].inputs)
    for op in ops:
        if op._op.device == "cpu" and type(op._op).__name__ not in ("_Shape", "GetProperty"):  # metadata readers
            assert all(i.device == "cpu" for i in op.inputs), f"{op.name} is a CPU operator with a GPU input"
    # the per-sample keys come from DALI's own random operator, on the CPU (checkpointed)
    assert any(type(op._op).__name__ == "Uniform" and op._op.device == "cpu" for op in ops)


def test_a_pipeline_without_the_dynamic_executor_keeps_the_python_function_path():
    """exec_dynamic=False cannot move data from the GPU to the CPU (the record drawing reads the images' shapes)."""
    from dali_kmix.backends import plugin

    if not plugin.gpu_backend():
        pytest.skip("the plugin has no GPU backend here (no nvcc)")
    for kw, native in (({}, True), ({"exec_dynamic": False}, False)):
        ops, _ = _gpu_graph("dcutmix", "cpu", **kw)
        kinds = {type(op._op).__name__ for op in ops if op._op.device == "gpu"}
        assert kinds == ({"KmixDcutmix"} if native else {"PythonFunction", "GetProperty"}), (kw, kinds)


# --------------------------------------------------------------------------- zero-area samples (issue 20 item 3)

ZERO_AREA = [("HWC", (0, 0, 3)), ("HWC", (0, 16, 3)), ("HWC", (16, 0, 3)), ("CHW", (3, 0, 16))]


@pytest.mark.parametrize("path", ["plugin", "function"])
@pytest.mark.parametrize("method", ["dmixup", "dcutmix", "saliency_dcutmix", "dmixup_or_dcutmix"])
@pytest.mark.parametrize("layout,shape", ZERO_AREA, ids=[f"{lay}-{'x'.join(map(str, s))}" for lay, s in ZERO_AREA])
def test_zero_area_samples(monkeypatch, layout, shape, method, path):
    # DCutMix-family label weights are box areas / (H x W) = 0 / 0: they used to come out as NaN targets with a
    # RuntimeWarning (dmixup_or_dcutmix: on the batches that tossed DCutMix). Now every boxed operator raises one
    # error naming the sample and its shape, whatever it tossed; DMixup blends empty images with finite targets.
    monkeypatch.setenv("DALI_KMIX_PLUGIN", "1" if path == "plugin" else "0")

    @pipeline_def(batch_size=4, num_threads=1, device_id=None, seed=1)
    def pipe():
        ims = fn.external_source(source=lambda: [np.zeros(shape, np.uint8)] * 4, batch=True, layout=layout)
        lab = fn.external_source(source=lambda: [np.array([i], np.int32) for i in range(4)], batch=True)
        return getattr(kmix, method)(ims, lab, k=3, num_classes=4, layout=layout, switch_prob=0.0) \
            if method == "dmixup_or_dcutmix" else getattr(kmix, method)(ims, lab, k=3, num_classes=4, layout=layout)

    p = pipe()
    p.build()
    if method == "dmixup":
        for _ in range(2):
            images, targets = (t.as_array() for t in p.run())
            assert images.shape == (4,) + shape
            assert np.isfinite(targets).all() and (targets >= 0).all()
            np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-6)
        return
    name = method.replace("_or_", "+").replace("saliency_", "saliency-")
    with pytest.raises(RuntimeError, match=rf"images: {re.escape(name)} needs images of at least 1 x 1 pixels \(its "
                                           rf"label weights are box areas / \(H x W\)\), but sample 0 has shape "
                                           rf"{re.escape(str(shape))} \(layout {layout}"):
        p.run()


@pytest.mark.parametrize("method", ["dmixup", "dcutmix", "saliency_dcutmix", "dmixup_or_dcutmix"])
@pytest.mark.parametrize("layout,shape", ZERO_AREA, ids=[f"{lay}-{'x'.join(map(str, s))}" for lay, s in ZERO_AREA])
def test_zero_area_samples_on_the_gpu_fallback(monkeypatch, layout, shape, method):
    # The GPU fallback's mixer refuses them as the CPU paths do (from the images' shapes: no read from the device),
    # before any kernel: NumPy stands in for CuPy, and DMixup goes on to the kernels (here: the fake's missing
    # module), past the check.
    import sys

    monkeypatch.setitem(sys.modules, "cupy", _numpy_as_cupy())
    spec = kmix._spec(method.replace("_or_", "+").replace("saliency_", "saliency-"), k=3, alpha=1.0, num_classes=10,
                      layout=layout, mode="sample", prob=1.0, smoothing=0.0, label_format="dense", seed=0,
                      shard_id=0, saliency="spectral-residual")
    mixer = kmix._GpuMix(spec, check_labels=False)
    images = [np.zeros(shape, np.uint8)] * 2
    if method == "dmixup":
        with pytest.raises(Exception) as info:
            mixer(images, [np.array([1], np.int32)] * 2, *[[]] * 5)
        assert "1 x 1 pixels" not in str(info.value)
        return
    with pytest.raises(ValueError, match=rf"images: {re.escape(spec.method)} needs images of at least 1 x 1 pixels "
                                         rf"\(its label weights are box areas / \(H x W\)\), but sample 0 has shape "
                                         rf"{re.escape(str(shape))} \(layout {layout}"):
        mixer(images, [np.array([1], np.int32)] * 2, *[[]] * 5)


def test_batch_generators_seed_as_the_list_of_ints_did():
    # _entropy_words gives SeedSequence the uint32 words of [word, *key bits] at once: the same sequence as the list
    # of Python ints (keys of 0.0 and of one word, first words of one and of three words), so the same draws. The
    # batch's generator starts with 0 whatever the pipeline's seed (which reaches it through the keys): a
    # pipeline restored with another seed continues the same mixes.
    from dali_kmix import dali as kd

    rng = np.random.default_rng(0)
    keys = [np.array([v]) for v in np.concatenate([rng.random(61), [0.0, 5e-324, 1.0]])]
    words = np.concatenate([k.reshape(-1) for k in keys]).view(np.uint64)
    for first in (0, 7, 2**64 + 3):
        np.testing.assert_array_equal(np.random.SeedSequence(kd._entropy_words(first, words)).generate_state(8),
                                      np.random.SeedSequence([first, *words.tolist()]).generate_state(8))
    for seed in (None, 0, 7, 2**64 + 3):
        spec = kd.MixSpec(method="dcutmix", k=3, alpha=(1.0,) * 3, num_classes=5, layout="HWC", mode="sample",
                          prob=1.0, smoothing=0.0, label_format="sparse", saliency="spectral-residual", seed=seed,
                          shard_id=2, index=1)
        got = kd._Draws(spec).generator(keys)
        seq = np.random.SeedSequence(entropy=[0, *words.tolist()], spawn_key=(2, 1))
        want = np.random.Generator(np.random.PCG64(seq))
        np.testing.assert_array_equal(got.random(8), want.random(8))
        np.testing.assert_array_equal(got.bit_generator.state["state"]["state"],
                                      want.bit_generator.state["state"]["state"])
