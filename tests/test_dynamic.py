"""K-image mixing in DALI's dynamic mode (dali_kmix.dynamic, and dali_kmix.dali given dynamic-mode batches).

On the CPU in full: the native operators as part of dynamic mode whichever is imported first, the images against
their labels, the native path against the host path bit for bit, reproducibility from an ndd.random.RNG, a
restore through ndd.checkpoint, per-sample alpha, and the errors. On the GPU without a device: the path chosen
(the operators' GPU backends, the record on the CPU); under the gpu marker, the real thing.
"""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("nvidia.dali")
ndd = pytest.importorskip("nvidia.dali.experimental.dynamic")

import dali_kmix.dali as ops  # noqa: E402
import dali_kmix.dynamic as kmix  # noqa: E402
from dali_kmix.backends import plugin  # noqa: E402
from _helpers import RAGGED_LABELS, RAGGED_LABELS_IDS  # noqa: E402

N = 12


def _array(batch):
    return np.stack([np.asarray(t) for t in batch.cpu().tensors])


def _constant_batch(dtype=np.uint8, layout="HWC", device="cpu"):
    """Sample i: an image whose every pixel is i, labelled i (the output shows who was mixed)."""
    shape = (10, 14, 2) if layout == "HWC" else (2, 10, 14)
    images = ndd.as_batch([np.full(shape, i, dtype) for i in range(N)], layout=layout)
    labels = ndd.as_batch([np.array([i], np.int32) for i in range(N)])
    if device == "gpu":
        images = images.gpu()
    return images, labels


def _check_agrees(method, images, idx, w):
    """The pixels are the labels' mix: pasted areas (DCutMix) or weighted sums (DMixup); "dmixup+dcutmix" is one
    or the other for the whole batch."""
    cut = method != "dmixup" and all(np.isin(images[i], idx[i]).all() for i in range(N))
    if method == "cut":
        assert cut
    for i in range(N):
        if cut:
            share = np.bincount(images[i].ravel().astype(int), minlength=N) / images[i].size
            expect = np.zeros(N)
            np.add.at(expect, idx[i], w[i])
            np.testing.assert_allclose(share, expect, atol=1e-6)
        else:
            np.testing.assert_allclose(images[i].astype(float), (w[i] * idx[i]).sum(), rtol=1e-5, atol=0.51)


@pytest.fixture(params=["native", "host"])
def path(request, monkeypatch):
    """"native": ndd.kmix_* (the plugin in dynamic mode); "host": the same draws and kernels without the plugin."""
    monkeypatch.setenv("DALI_KMIX_PLUGIN", "1" if request.param == "native" else "0")
    if request.param == "native" and not plugin.load():
        pytest.skip("the DALI plugin cannot be built here")
    return request.param


METHODS = ["dmixup", "dcutmix", "saliency_dcutmix", "dmixup_or_dcutmix"]


@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("method", METHODS)
def test_a_dynamic_mode_batch_is_mixed_and_labelled_from_one_record(path, method, layout):
    images, labels = _constant_batch(np.float32 if method == "dmixup" else np.uint8, layout)
    rng = ndd.random.RNG(seed=5)
    for _ in range(3):
        out, idx, w = getattr(kmix, method)(images, labels, k=3, num_classes=N, rng=rng, label_format="sparse")
        assert isinstance(out, ndd.Batch) and out.layout == layout and out.device.device_type == "cpu"
        idx, w = _array(idx), _array(w)
        assert idx.shape == (N, 3) and (idx[:, 0] == np.arange(N)).all()
        np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-6)
        _check_agrees("dmixup" if method == "dmixup" else "cut" if method != "dmixup_or_dcutmix" else method,
                      _array(out), idx, w)


def test_the_native_operators_are_used_in_dynamic_mode(monkeypatch):
    if not plugin.load():
        pytest.skip("the DALI plugin cannot be built here")
    called = []
    real = ndd.kmix_dcutmix
    monkeypatch.setattr(ndd, "kmix_dcutmix", lambda *a, **kw: called.append(1) or real(*a, **kw))
    images, labels = _constant_batch()
    kmix.dcutmix(images, labels, k=3, num_classes=N, rng=ndd.random.RNG(seed=1))
    assert called == [1]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("label_format", ["dense", "sparse"])
def test_native_and_host_paths_give_the_same_bits(monkeypatch, method, label_format):
    if not plugin.load():
        pytest.skip("the DALI plugin cannot be built here")
    rng = np.random.default_rng(2)
    images = ndd.as_batch([rng.integers(0, 256, (9, 13, 3), dtype=np.uint8) for _ in range(N)], layout="HWC")
    labels = ndd.as_batch([np.array([v], np.int32) for v in rng.integers(0, 5, N)])
    outs = {}
    for env in ("1", "0"):
        monkeypatch.setenv("DALI_KMIX_PLUGIN", env)
        outs[env] = [_array(b) for b in getattr(kmix, method)(images, labels, k=3, num_classes=5, prob=0.8,
                                                               label_format=label_format, rng=ndd.random.RNG(seed=8))]
    for a, b in zip(outs["1"], outs["0"]):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_the_same_seed_gives_the_same_mixes_and_another_seed_others(path):
    images, labels = _constant_batch()

    def run(seed):
        rng = ndd.random.RNG(seed=seed)
        return [_array(kmix.dcutmix(images, labels, k=3, num_classes=N, rng=rng, label_format="sparse")[2])
                for _ in range(3)]

    a, b, c = run(4), run(4), run(5)
    assert all((x == y).all() for x, y in zip(a, b))
    assert not all((x == y).all() for x, y in zip(a, c))
    ndd.random.set_seed(11)  # without rng=: dynamic mode's default generator, as its own random operators
    d = kmix.dmixup(images, labels, k=3, num_classes=N, label_format="sparse")[2]
    ndd.random.set_seed(11)
    e = kmix.dmixup(images, labels, k=3, num_classes=N, label_format="sparse")[2]
    np.testing.assert_array_equal(_array(d), _array(e))


@pytest.fixture(scope="module")
def photos_root(tmp_path_factory):
    from dali_kmix.apps.data import make_photo_tree

    return make_photo_tree(tmp_path_factory.mktemp("photos"), images_per_class=2, size=32)


def _epoch(reader, rng, method="dmixup_or_dcutmix"):
    out = []
    for jpegs, labels in reader.next_epoch(batch_size=5):
        images = ndd.resize(ndd.decoders.image(jpegs), resize_x=16, resize_y=16)
        mixed = getattr(kmix, method)(images, labels, k=3, num_classes=8, rng=rng, label_format="sparse")
        out.append([_array(b) for b in mixed])
    return out


def test_a_restored_checkpoint_continues_exactly(path, photos_root):
    reader = ndd.readers.File(file_root=str(photos_root), random_shuffle=True, seed=1)
    rng = ndd.random.RNG(seed=3)
    ckpt = ndd.checkpoint.Checkpoint()
    ckpt.register(reader, "reader")
    ckpt.register(rng, "mixing")
    _epoch(reader, rng)
    ckpt.collect()
    saved = ckpt.serialize()  # a JSON string: store it beside the model
    expected = _epoch(reader, rng) + _epoch(reader, rng)

    reader2 = ndd.readers.File(file_root=str(photos_root), random_shuffle=True, seed=1)
    rng2 = ndd.random.RNG(seed=12345)  # its state comes from the checkpoint
    restored = ndd.checkpoint.Checkpoint()
    restored.deserialize(saved)
    restored.register(reader2, "reader")
    restored.register(rng2, "mixing")
    again = _epoch(reader2, rng2) + _epoch(reader2, rng2)
    assert len(again) == len(expected) == 8
    for a, b in zip(expected, again):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
    fresh = _epoch(ndd.readers.File(file_root=str(photos_root), random_shuffle=True, seed=1), ndd.random.RNG(seed=3))
    assert not all((u == v).all() for u, v in zip(fresh[0], again[0]))


def test_alpha_and_prob_per_sample(path):
    images, labels = _constant_batch(np.float32)
    alpha = ndd.as_batch([np.array([8.0, 1.0, 1.0] if i < 6 else [0.02] * 3, np.float32) for i in range(N)])
    prob = ndd.as_batch([np.float32(i % 2) for i in range(N)])  # the odd samples only
    rng = ndd.random.RNG(seed=9)
    w = np.stack([_array(kmix.dmixup(images, labels, alpha=alpha, prob=prob, num_classes=N, rng=rng,
                                     label_format="sparse")[2]) for _ in range(10)])
    assert (w[:, 0::2, 0] == 1).all()
    assert abs(w[:, 1:6:2, 0].mean() - 0.8) < 0.1 and np.median(w[:, 7::2].max(axis=2)) > 0.99
    with pytest.raises(ValueError, match=r"sample 6 has alpha \[0.0199.*\] but sample 0 has \[8.0, 1.0, 1.0\]"):
        kmix.dmixup(images, labels, alpha=alpha, mode="batch", num_classes=N, rng=rng)


def test_the_pipeline_operators_forward_dynamic_mode_batches(path):
    """dali_kmix.dali.dcutmix(batch, ...) mixes a dynamic-mode batch (on main: AttributeError from the device
    check), from dynamic mode's default generator."""
    images, labels = _constant_batch()
    ndd.random.set_seed(21)
    via_ops = ops.dcutmix(images, labels, k=3, num_classes=N, layout="HWC", label_format="sparse")
    ndd.random.set_seed(21)
    direct = kmix.dcutmix(images, labels, k=3, num_classes=N, label_format="sparse")
    for a, b in zip(via_ops, direct):
        np.testing.assert_array_equal(_array(a), _array(b))
    with pytest.raises(ValueError, match=r"seed= applies to pipelines; in dynamic mode .* pass "
                                         r"rng=ndd.random.RNG\(seed=...\) to dali_kmix.dynamic.dcutmix"):
        ops.dcutmix(images, labels, k=3, num_classes=N, layout="HWC", seed=3)
    with pytest.raises(ValueError, match=r"normalize= applies to pipelines; in dynamic mode normalise the mixed "
                                         r"batch with ndd.crop_mirror_normalize"):
        ops.dcutmix(images, labels, k=3, num_classes=N, layout="HWC", normalize=ops.Normalize())


def test_dynamic_mode_errors():
    images, labels = _constant_batch()
    with pytest.raises(TypeError, match=r"images must be a DALI DataNode .* got numpy.ndarray; .*mix_images"):
        kmix.dcutmix(np.zeros((2, 4, 4, 3), np.uint8), labels, num_classes=N)
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def in_a_pipeline():  # the pipeline functions are dali_kmix.dali's
        x = fn.external_source(source=lambda: [np.zeros((4, 4, 3), np.uint8)] * 2, batch=True, layout="HWC")
        return kmix.dmixup_or_dcutmix(x, [0, 1], num_classes=N)[0]

    with pytest.raises(TypeError, match=r"images is a DataNode of a pipeline definition; dali_kmix.dynamic mixes "
                                        r"dynamic-mode batches .* use dali_kmix.dali.dmixup_or_dcutmix$"):
        in_a_pipeline()
    with pytest.raises(TypeError, match=r"images must be an ndd.Batch .* got an ndd.Tensor"):
        kmix.dcutmix(ndd.as_tensor(np.zeros((2, 4, 4, 3), np.uint8)), labels, num_classes=N)
    with pytest.raises(ValueError, match=r"labels has 3 samples but images has 12"):
        kmix.dcutmix(images, [0, 1, 2], num_classes=N)
    with pytest.raises(ValueError, match=r"layout='CHW' was given but the images carry layout 'HWC'"):
        kmix.dcutmix(images, labels, num_classes=N, layout="CHW")
    no_layout = ndd.as_batch([np.zeros((3, 10, 12), np.uint8)] * 2)
    with pytest.raises(ValueError, match=r"layout must be given \('HWC' or 'CHW'\): the images carry layout ''"):
        kmix.dcutmix(no_layout, [0, 1], num_classes=N)
    with pytest.raises(ValueError, match=r"shape \(3, 10, 12\) looks CHW \(3 channels first\)"):
        kmix.dcutmix(no_layout, [0, 1], num_classes=N, layout="HWC")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes=5\), got label 11"):
        kmix.dcutmix(images, labels, num_classes=5)
    out, targets = kmix.dcutmix(images, list(range(N)), num_classes=N)  # labels as any array-like
    assert _array(targets).shape == (N, N)


@pytest.mark.parametrize("labels,where", RAGGED_LABELS, ids=RAGGED_LABELS_IDS)
def test_labels_must_hold_one_value_per_sample(path, labels, where):
    """A ragged batch holding as many values as samples was once mixed, its labels shifted onto the wrong samples;
    fn.kmix_draw's message."""
    images = ndd.as_batch([np.full((8, 10, 3), i, np.uint8) for i in range(2)], layout="HWC")
    ragged = ndd.as_batch([np.array(v, np.int32) for v in labels])
    with pytest.raises(ValueError, match=rf"^labels must hold one value per sample, got shape {where}$"):
        kmix.dcutmix(images, ragged, k=2, num_classes=3, prob=0.0, label_format="sparse", rng=ndd.random.RNG(seed=1))


REFUSED = {  # a call that fails its checks: (what to change, the message)
    "label-out-of-range": (dict(labels=[0, 1, 2, 99]), r"labels must lie in \[0, num_classes=4\), got label 99"),
    "ragged-labels": (dict(labels=[[0, 1], [], [2], [3]]), r"labels must hold one value per sample"),
    "prob-out-of-range": (dict(prob=[0.5, 1.5, 0.5, 0.5]), r"prob must be in \[0, 1\], got 1.5 for sample 1"),
    "alpha-per-sample": (dict(alpha=[1.0, -1.0, 1.0, 1.0]), r"alpha must be > 0 and finite, got -1.0 for sample 1"),
    "empty-images": (dict(shape=(0, 6, 3)), r"images: .*0 x 6"),
    "sizes-differ": (dict(shapes=[(8, 6, 3)] * 3 + [(9, 6, 3)]), r"sample 0 has shape \(8, 6, 3\) but sample 3"),
    "dtype": (dict(dtype=np.int16), r"images must have dtype uint8, float16 or float32, got int16"),
    "layout-contradicts-shape": (dict(shape=(3, 8, 6), layout=None), r"shape \(3, 8, 6\) looks CHW"),
}


@pytest.mark.parametrize("case", list(REFUSED), ids=list(REFUSED))
def test_a_refused_call_leaves_the_rng_where_it_was(path, case):
    """The checks run before the keys are drawn: after a call that raised, the RNG gives what a fresh one does."""
    change, match = REFUSED[case]

    def call(rng, labels=(0, 1, 2, 3), prob=1.0, alpha=1.0, shape=(8, 6, 3), shapes=None, dtype=np.uint8,
             layout="HWC"):
        shapes = shapes or [shape] * 4
        images = ndd.as_batch([np.full(sh, i, dtype) for i, sh in enumerate(shapes)], layout=layout)
        labels = ndd.as_batch([np.array(v, np.int32).reshape(-1) for v in labels])
        per_sample = [ndd.as_batch([np.float32(v) for v in x]) if isinstance(x, list) else x for x in (prob, alpha)]
        return kmix.dcutmix(images, labels, k=2, num_classes=4, prob=per_sample[0], alpha=per_sample[1],
                            layout="HWC", label_format="sparse", rng=rng)

    expected = [_array(b) for b in call(ndd.random.RNG(seed=4))]
    rng = ndd.random.RNG(seed=4)
    with pytest.raises((ValueError, TypeError), match=match):
        call(rng, **change)
    again = [_array(b) for b in call(rng)]
    assert len(again) == len(expected) == 3
    for a, b in zip(expected, again):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("label_format", ["dense", "sparse"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32], ids=["u8", "f32"])
@pytest.mark.parametrize("method", METHODS)
def test_an_empty_batch_gives_empty_batches(path, method, dtype, label_format):
    """As ndd.kmix_* do (an empty batch carries no layout: any given, or none), in the dtypes of a full batch's
    outputs, without drawing from the RNG."""
    full = getattr(kmix, method)(*_constant_batch(dtype), k=3, num_classes=N, label_format=label_format,
                                 rng=ndd.random.RNG(seed=3))
    assert [_array(b).dtype for b in full] == [dtype] + ([np.float32] if label_format == "dense"
                                                         else [np.int32, np.float32])
    images = ndd.Batch([], dtype=ndd.uint8 if dtype == np.uint8 else ndd.float32)
    rng = ndd.random.RNG(seed=3)
    for labels, layout in ((ndd.Batch([], dtype=ndd.int32), "HWC"), ([], None)):
        outs = getattr(kmix, method)(images, labels, k=3, num_classes=5, layout=layout, label_format=label_format,
                                     rng=rng)
        assert all(isinstance(b, ndd.Batch) and b.batch_size == 0 and b.device.device_type == "cpu" for b in outs)
        assert [b.dtype for b in outs] == [b.dtype for b in full]
    fresh = ndd.random.RNG(seed=3)
    images, labels = _constant_batch()
    for a, b in zip(kmix.dcutmix(images, labels, num_classes=N, rng=rng), kmix.dcutmix(images, labels, num_classes=N,
                                                                                        rng=fresh)):
        np.testing.assert_array_equal(_array(a), _array(b))


def _pipeline_given(**kw):
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def pipe():
        x = fn.external_source(source=lambda: [np.zeros((4, 4, 3), np.uint8)] * 2, batch=True, layout="HWC")
        y = fn.external_source(source=lambda: [np.array([1], np.int32)] * 2, batch=True)
        args = dict(labels=y, num_classes=3, layout="HWC")
        args.update(kw)
        return ops.dcutmix(x, **args)

    return pipe()


@pytest.mark.parametrize("arg", ["labels", "alpha", "prob"])
def test_a_dynamic_mode_batch_beside_pipeline_images_names_the_argument(arg):
    """labels once sent the call to dynamic mode, whose message blamed the images; alpha and prob raised an
    AttributeError from DALI's internals."""
    batch = ndd.as_batch([np.array([1], np.int32)] * 2 if arg == "labels" else [np.float32(1)] * 2)
    with pytest.raises(TypeError, match=rf"^{arg} is a batch of DALI's dynamic mode \(.*Batch\) but images is a "
                                        rf"DataNode of a pipeline definition; dynamic-mode batches go with "
                                        rf"dynamic-mode images"):
        _pipeline_given(**{arg: batch})


def test_reader_name_in_dynamic_mode_points_to_the_padding():
    images, labels = _constant_batch()
    with pytest.raises(ValueError, match=r"^reader_name= applies to pipelines, .* in dynamic mode leave the reader's "
                                         r"pad_last_batch off \(see the README, \"The last batch: padded copies are "
                                         r"no partners\"\)$"):
        ops.dcutmix(images, labels, k=3, num_classes=N, layout="HWC", reader_name="Reader")


_ORDER_SCRIPT = """
import sys
{first}
{second}
import nvidia.dali.experimental.dynamic as ndd
assert all(callable(getattr(ndd, f)) for f in ("kmix_dmixup", "kmix_dcutmix", "kmix_mix")), "not in dynamic mode"
print("ok", "gpu" in ndd._ops.KmixDcutmix._supported_backends)
"""


@pytest.mark.slow
@pytest.mark.parametrize("order", ["dynamic-first", "plugin-first"])
def test_the_operators_join_dynamic_mode_whichever_comes_first(order):
    if not plugin.load():
        pytest.skip("the DALI plugin cannot be built here")
    load = "from dali_kmix.backends import plugin; assert plugin.load()"
    imp = "import nvidia.dali.experimental.dynamic"
    first, second = (imp, load) if order == "dynamic-first" else (load, imp)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_ORDER_SCRIPT.format(first=first, second=second))],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[:2] == ["ok", str(plugin.gpu_backend())]


def test_gpu_batches_go_to_the_gpu_backends_with_the_record_on_the_cpu():
    """Without a device: the path a GPU batch takes (the native operators' GPU backends, record inputs on the host)."""
    if not plugin.gpu_backend():
        pytest.skip("the plugin has no GPU backend here (no nvcc)")
    assert ops._dynamic_native(gpu=True) and ops._dynamic_native(gpu=False)
    for name in ("KmixDmixup", "KmixDcutmix", "KmixMix"):
        op = getattr(ndd._ops, name)
        assert {"cpu", "gpu"} <= op._supported_backends
        # what dynamic mode asks when it places the inputs of a GPU call (a device is only needed to run it)
        assert op._schema.GetInputDevice(0, "gpu", "gpu") in ("gpu", None)  # the images stay on the device
        for i in range(1, 5 if name == "KmixMix" else 3):
            assert op._schema.GetInputDevice(i, "cpu", "gpu") == "cpu", (name, i)  # the record stays on the host


@pytest.mark.gpu
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [np.uint8, np.float16, np.float32], ids=["u8", "f16", "f32"])
def test_gpu_batches_mix_as_cpu_batches(method, dtype):
    assert ops._dynamic_native(gpu=True), "the plugin has no GPU backend on this GPU machine"
    rng = np.random.default_rng(4)
    samples = [(rng.random((11, 15, 3)) * 255).astype(dtype) for _ in range(N)]
    labels = ndd.as_batch([np.array([v], np.int32) for v in rng.integers(0, 6, N)])
    outs = {}
    for device in ("cpu", "gpu"):
        images = ndd.as_batch(samples, layout="HWC")
        images = images.gpu() if device == "gpu" else images
        mixed = getattr(kmix, method)(images, labels, k=3, num_classes=6, label_format="sparse",
                                      rng=ndd.random.RNG(seed=2))
        assert all(b.device.device_type == device for b in mixed)
        outs[device] = [_array(b) for b in mixed]
    for a, b in zip(outs["gpu"], outs["cpu"]):
        np.testing.assert_array_equal(a, b)
