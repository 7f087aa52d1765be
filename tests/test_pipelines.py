"""The ImageNet-style pipelines and the iterator into PyTorch, on the CPU over real photographs."""

import dataclasses
import re

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali")

from dali_kmix.pipelines import (  # noqa: E402
    DALIMixIterator, count_classes, imagenet_train_pipeline, imagenet_val_pipeline)
from dali_kmix.torch import soft_target_cross_entropy, sparse_mixed_cross_entropy  # noqa: E402
from _helpers import file_reader_listing, graph_operators  # noqa: E402

CROP = 64


@pytest.mark.parametrize("mix_on", ["uint8", "float32"])
@pytest.mark.parametrize("mix", ["dcutmix", "dmixup", "saliency-dcutmix"])
def test_train_iterator_yields_torch_batches(photo_dir, mix, mix_on):
    pipe = imagenet_train_pipeline(photo_dir, batch_size=10, mix=mix, k=3, crop=CROP, seed=1, num_threads=2,
                                   mix_on=mix_on)
    it = DALIMixIterator(pipe)
    assert len(it) == 5  # 48 images, batches of 10, the last one partial
    sizes = []
    for images, targets in it:
        assert images.dtype == torch.float32 and images.shape[1:] == (3, CROP, CROP)
        assert targets.dtype == torch.float32 and targets.shape == (images.shape[0], 8)
        torch.testing.assert_close(targets.sum(1), torch.ones(images.shape[0]))
        sizes.append(images.shape[0])
        # normalised with the ImageNet mean/std: roughly centred values, not 0..255
        assert -3.0 < float(images.mean()) < 3.0 and float(images.abs().max()) < 5.0
    assert sizes == [10, 10, 10, 10, 8]


def test_one_sgd_step_on_mixed_targets_reduces_the_loss(photo_dir):
    torch.manual_seed(0)
    pipe = imagenet_train_pipeline(photo_dir, batch_size=16, mix="dcutmix", k=3, alpha=1.0, crop=CROP, seed=2)
    images, targets = next(iter(DALIMixIterator(pipe)))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before = soft_target_cross_entropy(model(images), targets)
    opt.zero_grad()
    before.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    opt.step()
    after = soft_target_cross_entropy(model(images), targets)
    assert after.item() < before.item()


def test_sparse_targets_through_the_iterator(photo_dir):
    pipe = imagenet_train_pipeline(photo_dir, batch_size=8, mix="dcutmix", k=4, crop=CROP, label_format="sparse")
    images, (idx, w) = next(iter(DALIMixIterator(pipe)))
    assert idx.shape == (8, 4) and w.shape == (8, 4)
    loss = sparse_mixed_cross_entropy(torch.zeros(8, 8), idx, w)
    torch.testing.assert_close(loss, torch.tensor(float(np.log(8))))


def test_no_mix_gives_one_hot_targets(photo_dir):
    pipe = imagenet_train_pipeline(photo_dir, batch_size=8, mix=None, crop=CROP)
    images, targets = next(iter(DALIMixIterator(pipe, smoothing=0.1)))
    assert targets.shape == (8, 8)
    torch.testing.assert_close(targets.max(1).values, torch.full((8,), 0.9 + 0.1 / 8))
    pipe = imagenet_train_pipeline(photo_dir, batch_size=8, mix=None, crop=CROP)
    _, labels = next(iter(DALIMixIterator(pipe, one_hot=False)))
    assert labels.dtype == torch.int64 and labels.shape == (8,)


def test_val_pipeline_is_deterministic_and_complete(photo_dir):
    def epoch():
        it = DALIMixIterator(imagenet_val_pipeline(photo_dir, batch_size=7, crop=CROP, size=72), one_hot=False)
        return [(x.clone(), y.clone()) for x, y in it]

    a, b = epoch(), epoch()
    assert sum(len(y) for _, y in a) == 48
    for (x1, y1), (x2, y2) in zip(a, b):
        torch.testing.assert_close(x1, x2)
        torch.testing.assert_close(y1, y2)
    labels = torch.cat([y for _, y in a])
    assert torch.bincount(labels).tolist() == [6] * 8


def test_shards_are_disjoint_and_cover_the_data(photo_dir):
    from nvidia.dali import fn  # noqa: F401  (pipelines import DALI lazily)

    seen = []
    for shard in (0, 1):
        pipe = imagenet_train_pipeline(photo_dir, batch_size=5, mix="dcutmix", label_format="sparse", crop=CROP,
                                       shard_id=shard, num_shards=2, seed=4)
        it = DALIMixIterator(pipe)
        anchors = [idx[:, 0] for _, (idx, _) in it]
        seen.append(torch.cat(anchors))
    assert len(seen[0]) == len(seen[1]) == 24
    # anchor labels: each class has 6 images, split over the two shards
    total = torch.bincount(torch.cat(seen).long(), minlength=8)
    assert total.tolist() == [6] * 8


def test_pipeline_argument_errors(photo_dir, tmp_path):
    with pytest.raises(ValueError, match=r"mix must be one of \['dmixup', 'dcutmix', 'saliency-dcutmix', 'dmixup\+dcutmix'\], got 'cutmix'"):
        imagenet_train_pipeline(photo_dir, batch_size=4, mix="cutmix")
    with pytest.raises(ValueError, match=r"mix_on must be one of \['uint8', 'float32'\], got 'float16'"):
        imagenet_train_pipeline(photo_dir, batch_size=4, mix_on="float16")
    with pytest.raises(ValueError, match=r"device must be one of \['cpu', 'gpu'\], got 'tpu'"):
        imagenet_train_pipeline(photo_dir, batch_size=4, device="tpu")
    with pytest.raises(ValueError, match=r"shard_id must be < num_shards=2, got 2"):
        imagenet_train_pipeline(photo_dir, batch_size=4, shard_id=2, num_shards=2)
    with pytest.raises(FileNotFoundError, match=r"is not a folder"):
        count_classes(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"has no class sub-folders"):
        count_classes(tmp_path)
    with pytest.raises(TypeError, match=r"pipe must be a DALI Pipeline \(with output_map=\) or a "
                                        r"dali_kmix.pipelines.MixPipeline, got object"):
        DALIMixIterator(object())


@pytest.mark.parametrize("method", ["dcutmix", "dmixup"])
def test_mixing_before_or_after_the_normalisation(method):
    """What ``mix_on="uint8"`` relies on: the per-pixel normalisation commutes with DCutMix
    exactly, and with DMixup up to the uint8 rounding of the blend (<= 0.5 / 255 / std)."""
    from nvidia.dali import fn, pipeline_def

    import dali_kmix
    from dali_kmix.pipelines import IMAGENET_STD, normalize_chw

    n, size = 6, 40
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    params = dali_kmix.sample_params(method, n, size, size, k=3, rng=rng)
    third = params.weights if method == "dmixup" else params.boxes

    @pipeline_def(batch_size=n, num_threads=2, device_id=None)
    def pipe():
        x = fn.external_source(source=lambda: list(images), batch=True, layout="HWC")
        src = fn.external_source(source=lambda: list(params.sources), batch=True)
        thr = fn.external_source(source=lambda: list(third), batch=True)
        op = fn.kmix_dmixup if method == "dmixup" else fn.kmix_dcutmix
        before = normalize_chw(op(x, src, thr, layout="HWC"), crop=size, mirror=False)
        after = op(normalize_chw(x, crop=size, mirror=False), src, thr, layout="CHW")
        return before, after

    from dali_kmix.backends import plugin

    if not plugin.load():
        pytest.skip("the dali_kmix DALI plugin is not available here")
    p = pipe()
    p.build()
    before, after = (o.as_array() for o in p.run())
    if method == "dcutmix":
        np.testing.assert_array_equal(before, after)
    else:
        tol = 0.5 / min(IMAGENET_STD) + 1e-4
        assert np.abs(before - after).max() <= tol
        assert np.abs(before - after).max() > 0  # the rounding is real, and bounded


# --------------------------------------------------------------------------- what timm users expect


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_channels_last_and_half_batches(photo_dir, dtype):
    chw = imagenet_train_pipeline(photo_dir, batch_size=8, mix="dcutmix", crop=CROP, seed=4, output_dtype=dtype)
    hwc = imagenet_train_pipeline(photo_dir, batch_size=8, mix="dcutmix", crop=CROP, seed=4, output_dtype=dtype,
                                  output_layout="HWC")
    (a, ta), (b, tb) = next(iter(DALIMixIterator(chw))), next(iter(DALIMixIterator(hwc)))
    want = torch.float16 if dtype == "float16" else torch.float32
    assert a.dtype == b.dtype == want and a.shape == b.shape == (8, 3, CROP, CROP)
    assert b.is_contiguous(memory_format=torch.channels_last) and not b.is_contiguous()
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same batch, only the memory order differs
    torch.testing.assert_close(ta, tb, rtol=0, atol=0)


def test_drop_last_drops_the_short_batch(photo_dir):
    pipe = imagenet_train_pipeline(photo_dir, batch_size=10, mix="dcutmix", crop=CROP)
    it = DALIMixIterator(pipe, drop_last=True)
    assert len(it) == 4
    assert [x.shape[0] for x, _ in it] == [10, 10, 10, 10]  # 48 images: the 8 of the fifth batch are dropped


@pytest.mark.parametrize("mixup_off_epoch", [0, 1])
def test_mixup_off_epoch_switches_mixing_off_without_a_rebuild(photo_dir, mixup_off_epoch):
    pipe = imagenet_train_pipeline(photo_dir, batch_size=16, mix="dcutmix", crop=CROP, label_format="sparse",
                                   mixup_off_epoch=mixup_off_epoch)
    it = DALIMixIterator(pipe)
    for epoch in range(2):  # 48 images, 3 batches an epoch
        w = torch.cat([lw for _, (_, lw) in it])
        unmixed = bool((w[:, 0] == 1).all())
        assert unmixed == (epoch >= mixup_off_epoch), (epoch, w[:4])


def test_mixup_off_epoch_is_the_same_epoch_on_unequal_shards(photo_dir):
    """48 images over 5 shards: 9 or 10 a shard. With batches of 3 and the padded last batch, DALI reads every
    shard as ceil(10 / 3) = 4 batches an epoch (a shard of 9 ends in a batch of padding only); an epoch counted
    from the shard's own size (3 batches) would switch mixing off before ``mixup_off_epoch`` on those shards."""
    off, switched = 2, []
    for shard in (0, 1):  # 9 and 10 images in epoch 0 (the reader moves on by one shard an epoch)
        pipe = imagenet_train_pipeline(photo_dir, batch_size=3, mix="dmixup", crop=16, label_format="sparse",
                                       mixup_off_epoch=off, num_shards=5, shard_id=shard, seed=3, num_threads=1)
        it = DALIMixIterator(pipe)
        assert len(it) == 4
        unmixed = []  # per epoch, per batch with samples: nothing mixed in it
        for _ in range(off + 1):
            unmixed.append([bool((w[:, 0] == 1).all()) for _, (_, w) in it if len(w)])
        assert all(unmixed), unmixed
        for epoch, flags in enumerate(unmixed):
            assert flags == [epoch >= off] * len(flags), (shard, epoch, unmixed)
        switched.append(next(e for e, flags in enumerate(unmixed) if any(flags)))
    assert switched == [off, off]


def test_dmixup_or_dcutmix_per_batch_in_the_pipeline(photo_dir):
    pipe = imagenet_train_pipeline(photo_dir, batch_size=16, mix="dmixup+dcutmix", switch_prob=0.5, alpha=0.8,
                                   cutmix_alpha=1.0, crop=CROP, label_format="sparse")
    images, (idx, w) = next(iter(DALIMixIterator(pipe)))
    assert idx.shape == (16, 3) and torch.allclose(w.sum(1), torch.ones(16))
    with pytest.raises(ValueError, match=r"mix must be one of .*'dmixup\+dcutmix'\], got 'mixup'"):
        imagenet_train_pipeline(photo_dir, batch_size=4, mix="mixup")
    with pytest.raises(ValueError, match=r"output_layout must be one of \['HWC', 'CHW'\], got 'NHWC'"):
        imagenet_train_pipeline(photo_dir, batch_size=4, output_layout="NHWC")


def _graph_ops(pipe) -> list:
    """The operators of a MixPipeline's graph, as it was defined (from what set_outputs was given)."""
    return graph_operators(pipe.pipeline._graph_out)


@pytest.mark.parametrize("mix,mix_on,fused", [
    ("dcutmix", "uint8", "KmixDcutmix"), ("dmixup", "uint8", "KmixDmixup"), ("saliency-dcutmix", "uint8", "KmixDcutmix"),
    ("dmixup+dcutmix", "uint8", "KmixMix"), ("dcutmix", "float32", None), (None, "uint8", None)])
def test_the_train_pipeline_mixes_and_normalises_uint8_crops_in_one_operator(photo_dir, mix, mix_on, fused):
    """mix_on="uint8": the mixing operator mirrors and normalises (no crop_mirror_normalize left in the graph), its
    mirror a coin per sample; mixing the float32 batch, or not mixing, keeps crop_mirror_normalize."""
    from dali_kmix.backends import plugin

    if mix is not None and not plugin.load():
        pytest.skip("no plugin here: the python_function path normalises in a second operator")
    pipe = imagenet_train_pipeline(photo_dir, batch_size=4, crop=CROP, mix=mix, mix_on=mix_on, output_dtype="float16")
    ops = {type(op._op).__name__: op for op in _graph_ops(pipe)}
    assert ("CropMirrorNormalize" in ops) == (fused is None)
    if fused is not None:
        args = ops[fused]._op._init_args
        assert list(args["mean"]) == pytest.approx([0.485 * 255, 0.456 * 255, 0.406 * 255])
        assert args["output_layout"] == "CHW" and "dtype" in args
        assert "CoinFlip" in ops
        images, *_ = next(iter(DALIMixIterator(pipe)))
        assert images.dtype == torch.float16 and tuple(images.shape) == (4, 3, CROP, CROP)


@pytest.mark.parametrize("mix", ["dcutmix", "dmixup+dcutmix"])
def test_the_gpu_train_pipeline_mixes_with_the_native_gpu_operator(photo_dir, mix):
    """imagenet_train_pipeline(device="gpu") goes through dali_kmix.dali: with the plugin's GPU backend its mixing is
    fn.kmix_* on the GPU (the graph is defined without a device; only building it needs one)."""
    from dali_kmix.backends import plugin

    if not plugin.gpu_backend():
        pytest.skip("the plugin has no GPU backend here (no nvcc)")
    pipe = imagenet_train_pipeline(photo_dir, batch_size=8, device="gpu", mix=mix, crop=CROP, seed=1)
    gpu_ops = sorted(type(op._op).__name__ for op in _graph_ops(pipe) if op._op.device == "gpu")
    assert ("KmixMix" if mix == "dmixup+dcutmix" else "KmixDcutmix") in gpu_ops
    assert "PythonFunction" not in gpu_ops, gpu_ops


# --------------------------------------------------------------------------- your own pipeline


def _own_pipeline(root, batch_size=10, label_format="dense", seed=5):
    """A pipeline written by hand, as from DALI's ResNet-50 example plus the mixing call (not a MixPipeline)."""
    from nvidia.dali import fn, pipeline_def, types

    import dali_kmix.dali as kmix

    @pipeline_def(batch_size=batch_size, num_threads=2, device_id=None, seed=seed)
    def pipe():
        jpegs, labels = fn.readers.file(file_root=str(root), random_shuffle=True, pad_last_batch=True, name="Reader")
        images = fn.decoders.image_random_crop(jpegs, output_type=types.RGB, random_area=[0.1, 1.0],
                                               random_aspect_ratio=[0.8, 1.25], num_attempts=100)
        images = fn.resize(images, resize_x=CROP, resize_y=CROP, interp_type=types.INTERP_TRIANGULAR)
        images, *labels_out = kmix.dcutmix(images, labels, k=3, num_classes=8, layout="HWC",
                                           label_format=label_format, reader_name="Reader")
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", crop=(CROP, CROP),
                                          mean=[0.485 * 255, 0.456 * 255, 0.406 * 255],
                                          std=[0.229 * 255, 0.224 * 255, 0.225 * 255])
        info = fn.pad(fn.get_property(jpegs, key="source_info"), fill_value=0, axes=(0,), shape=(1024,))
        return (images, *labels_out, info)

    return pipe()


@pytest.mark.parametrize("label_format", ["dense", "sparse"])
def test_the_iterator_takes_any_pipeline_with_named_outputs(photo_dir, label_format):
    from nvidia.dali.plugin.base_iterator import LastBatchPolicy
    from nvidia.dali.plugin.pytorch import DALIGenericIterator

    labels = ["targets"] if label_format == "dense" else ["label_idx", "label_w"]
    names = ["images", *labels, "source_info"]
    it = DALIMixIterator(_own_pipeline(photo_dir, label_format=label_format), output_map=names, reader_name="Reader")
    # the README's DALIGenericIterator equivalent, on an identical pipeline: the same batches
    generic = DALIGenericIterator([_own_pipeline(photo_dir, label_format=label_format)], names, reader_name="Reader",
                                  last_batch_policy=LastBatchPolicy.PARTIAL)
    assert len(it) == 5
    for epoch in range(2):
        seen = []
        for (images, targets), data in zip(it, generic):
            assert images.shape[1:] == (3, CROP, CROP)
            torch.testing.assert_close(images, data[0]["images"], rtol=0, atol=0)
            if label_format == "dense":
                torch.testing.assert_close(targets, data[0]["targets"], rtol=0, atol=0)
            else:
                assert torch.equal(targets[0], data[0]["label_idx"]) and torch.equal(targets[1], data[0]["label_w"])
            rows = it.last_outputs["source_info"].numpy()
            seen += [bytes(r[r != 0]).decode() for r in rows]
        # the padded copies are cut off: every photograph once per epoch, as an anchor
        assert len(seen) == 48 and len(set(seen)) == 48, epoch


def test_the_iterator_names_what_it_needs(photo_dir):
    pipe = _own_pipeline(photo_dir)
    with pytest.raises(TypeError, match=r"a DALI Pipeline needs output_map=\[...\], the names of its outputs"):
        DALIMixIterator(pipe)
    with pytest.raises(ValueError, match=r"output_map must hold \"images\" and the labels as \"targets\".* got "
                                         r"\['data', 'targets', 'info'\]"):
        DALIMixIterator(pipe, output_map=["data", "targets", "info"], reader_name="Reader")
    with pytest.raises(ValueError, match=r"got \['images', 'label_idx', 'info'\]"):
        DALIMixIterator(pipe, output_map=["images", "label_idx", "info"], reader_name="Reader")
    with pytest.raises(ValueError, match=r"num_classes is needed to turn the 'labels' output into one-hot targets"):
        DALIMixIterator(pipe, output_map=["images", "labels", "info"], reader_name="Reader")
    mix = imagenet_train_pipeline(photo_dir, batch_size=4, crop=CROP)
    with pytest.raises(ValueError, match=r"output_map=\['images', 'labels'\] contradicts the MixPipeline's outputs"):
        DALIMixIterator(mix, output_map=["images", "labels"])


def test_the_train_pipeline_has_the_resnet50_examples_defaults(photo_dir):
    """DALI's ResNet-50 example (docs/examples/use_cases/pytorch/resnet50/main.py): random area (0.1, 1), aspect
    ratio (0.8, 1.25), 100 attempts, triangular resize with DALI's default antialiasing."""
    import inspect

    from nvidia.dali import types

    from dali_kmix import pipelines

    sig = inspect.signature(imagenet_train_pipeline).parameters
    assert sig["random_area"].default == (0.1, 1.0) and sig["random_aspect_ratio"].default == (0.8, 1.25)
    pipe = imagenet_train_pipeline(photo_dir, batch_size=4, crop=CROP)
    args = {type(op._op).__name__: op._op._init_args for op in _graph_ops(pipe)}  # as the graph was defined
    crop = args["ImageRandomCrop"]
    assert list(crop["random_area"]) == [0.1, 1.0] and list(crop["random_aspect_ratio"]) == [0.8, 1.25]
    assert crop["num_attempts"] == 100
    assert args["Resize"]["interp_type"] == types.INTERP_TRIANGULAR and "antialias" not in args["Resize"]
    assert pipelines.RANDOM_AREA == (0.1, 1.0) and pipelines.RANDOM_ASPECT_RATIO == (0.8, 1.25)


# --------------------------------------------------------------------------- DALI's PyTorch proxy


class _ConstantImages(torch.utils.data.Dataset):
    """Sample i: an 8 x 12 image whose every pixel is i, labelled i; handed to the DALI server by its proxy."""

    def __init__(self, proxy, n):
        self.proxy, self.n = proxy, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.proxy(images=np.full((8, 12, 1), i, np.uint8), labels=np.array([i], np.int32))


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_the_pytorch_proxy_recipe_mixes_inside_the_pipeline(workers):
    """DALIServer + proxy DataLoader with workers: labels enter the pipeline beside the images, the mixing runs in
    it, the loader yields the mixed images with their soft targets (the README's recipe, on constant images)."""
    from nvidia.dali import fn, pipeline_def
    from nvidia.dali.plugin.pytorch.experimental import proxy as dali_proxy

    import dali_kmix.dali as kmix

    n = 21

    @pipeline_def(batch_size=6, num_threads=1, device_id=None, seed=4, exec_dynamic=True)
    def pipe():
        images = fn.external_source(name="images", no_copy=True, layout="HWC")
        labels = fn.external_source(name="labels", no_copy=True)
        return kmix.dcutmix(images, labels, k=3, num_classes=n, layout="HWC", label_format="sparse")

    anchors = []
    with dali_proxy.DALIServer(pipe(), deterministic=True) as server:
        loader = dali_proxy.DataLoader(server, _ConstantImages(server.proxy, n), batch_size=6, num_workers=workers,
                                       shuffle=True)
        for images, idx, w in loader:
            assert images.dtype == torch.uint8 and images.shape[1:] == (8, 12, 1)
            anchors += idx[:, 0].tolist()
            for x, i, wi in zip(images.numpy(), idx.numpy(), w.numpy()):
                share = np.bincount(x.ravel(), minlength=n) / x.size
                expect = np.zeros(n)
                np.add.at(expect, i, wi)
                np.testing.assert_allclose(share, expect, atol=1e-6)  # the pixels are the soft target's mix
            assert (w[:, 0] < 1).any()
    assert sorted(anchors) == list(range(n))  # every sample once per epoch, its own row's anchor (last batch: 3)


def test_proxy_folder_lists_a_tree_as_the_file_reader_does(tmp_path):
    # one level deep (a class's sub-folder is not read), DALI's filters (case aside), byte-wise order of folders
    # and files: what readers.file reads, labels included (the listing is pipelines.tree_files, shared with kmix)
    import os

    from nvidia.dali import backend
    from PIL import Image

    from dali_kmix.pipelines import DALI_FILE_FILTERS, ProxyFolder

    root = tmp_path / "tree"
    for rel in ("b/x.jpg", "b/.hidden.jpg", "a/Y.JPG", "a/sub/nested.jpg", os.fsdecode(b"\xff") + "/z.png",
                "\ue000/w.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / rel, format="PNG" if rel.endswith("png") else "JPEG")
    (root / "a" / "notes.txt").write_text("not an image")

    dali = [(root / rel, label) for rel, label in file_reader_listing(root)]
    assert ProxyFolder(root, None).samples == dali and len(dali) == 5
    default = backend.GetSchema("readers__File").GetArgumentDefaultValueString("file_filters")
    assert [f"'{f}'" for f in DALI_FILE_FILTERS] == [f.strip() for f in default.strip("[]").split(",")]


def test_proxy_folder_lists_what_the_file_reader_reads(photo_dir, tmp_path):
    from dali_kmix.pipelines import ProxyFolder

    (photo_dir.parent / "notes.txt").write_text("not an image")  # outside the class folders: never listed
    calls = []
    folder = ProxyFolder(photo_dir, lambda **kw: calls.append(kw) or len(calls))

    dali = [(str(photo_dir / rel), label) for rel, label in file_reader_listing(photo_dir)]
    assert [(str(path), label) for path, label in folder.samples] == dali and len(folder) == 48
    assert folder[5] == 1
    assert bytes(calls[0]["images"].view(np.uint8)).decode() == dali[5][0]
    assert calls[0]["labels"].tolist() == [dali[5][1]]
    listed = tmp_path / "list.txt"
    listed.write_text(f"{folder.samples[3][0].relative_to(photo_dir)} 7\n\n")
    assert ProxyFolder(photo_dir, None, file_list=listed).samples == [(folder.samples[3][0], 7)]
    with pytest.raises(FileNotFoundError, match=r"root '.*missing' is not a folder"):
        ProxyFolder(tmp_path / "missing", None)


# --------------------------------------------------------------------------- checkpoints


def _take(it, n):
    """The next ``n`` items of ``it``: each batch as its tensors, "EPOCH_END" for a StopIteration."""
    out = []
    while len(out) < n:
        try:
            images, (idx, w) = next(it)
            out.append((images.clone(), idx.clone(), w.clone()))
        except StopIteration:
            out.append("EPOCH_END")
    return out


def _same(a, b):
    return len(a) == len(b) and all(
        p == q if isinstance(p, str) or isinstance(q, str) else all(torch.equal(u, v) for u, v in zip(p, q))
        for p, q in zip(a, b))


def _sizes(items):
    return [p if isinstance(p, str) else p[0].shape[0] for p in items]


@pytest.mark.parametrize("drop_last", [False, True])
def test_a_checkpoint_after_the_last_batch_restores_the_end_of_the_epoch(photo_dir, drop_last):
    """Taken after an epoch's last batch, before its StopIteration: the restored iterator raises StopIteration
    first, as the original does, then yields the same batches (epoch ends included)."""
    def make(checkpoint=None):
        pipe = imagenet_train_pipeline(photo_dir, batch_size=10, mix="dcutmix", crop=16, seed=3, num_threads=1,
                                       enable_checkpointing=True, checkpoint=checkpoint, label_format="sparse")
        return DALIMixIterator(pipe, drop_last=drop_last)

    it = make()
    steps = len(it)  # 48 images: 5 batches (the last one of 8), or 4 with drop_last
    assert _sizes(_take(it, steps)) == [10, 10, 10, 10, 8][:steps]
    checkpoint = it.checkpoints()[0]
    want = _take(it, steps + 3)
    assert _sizes(want) == ["EPOCH_END"] + [10, 10, 10, 10, 8][:steps] + ["EPOCH_END", 10]
    restored = make(checkpoint)
    again = make(restored.checkpoints()[0])  # the restored iterator's checkpoint, before it yielded anything
    got = _take(restored, steps + 3)
    assert _same(got, want), (_sizes(got), _sizes(want))
    assert _same(_take(again, steps + 3), want)


# --------------------------------------------------------------------------- shards, epochs, arguments


def _shard_files(root, num_shards):
    """The files of each shard of the training reader over ``root`` (shuffled once with DALI's fixed seed, then
    split), as source info: what epoch 0 of shard j reads, every sample once (the padded copies cut off)."""
    shards = []
    for shard in range(num_shards):
        pipe = imagenet_train_pipeline(root, batch_size=16, mix=None, crop=8, num_threads=1, num_shards=num_shards,
                                       shard_id=shard, with_source_info=True)
        it = DALIMixIterator(pipe, one_hot=False)
        shards.append({name for _ in it for name in it.last_source_info})
    return shards


@pytest.mark.parametrize("batch", [3, 4])
def test_drop_last_on_uneven_shards_yields_full_batches_of_each_epochs_shard(photo_dir, batch):
    """48 images over 5 shards: 9 or 10 a shard, and the reader moves on by one shard an epoch. With drop_last every
    rank yields floor(9 / batch) batches an epoch (the smallest shard's full batches: as many on every rank, as DDP
    needs), each full, of distinct samples of that epoch's shard: no padded copy, and the next epoch starts with its
    own shard (DALI's DROP left the padded batch unread, so the next epoch began with it, a batch behind)."""
    shards = _shard_files(photo_dir, 5)
    assert [len(files) for files in shards] == [9, 10, 9, 10, 10] and len(set().union(*shards)) == 48
    want = 9 // batch
    for rank in (0, 1):
        pipe = imagenet_train_pipeline(photo_dir, batch_size=batch, mix="dcutmix", label_format="sparse", crop=16,
                                       num_threads=1, seed=3, num_shards=5, shard_id=rank, with_source_info=True)
        it = DALIMixIterator(pipe, drop_last=True)
        assert len(it) == want
        for epoch in range(3):
            sizes, names = [], []
            for images, (idx, w) in it:
                sizes.append(images.shape[0])
                assert idx.shape[0] == w.shape[0] == images.shape[0]
                names += it.last_source_info
            assert sizes == [batch] * want, (rank, epoch, sizes)
            assert len(names) == len(set(names)) == want * batch, (rank, epoch, names)
            assert set(names) <= shards[(rank + epoch) % 5], (rank, epoch, names)


def test_drop_last_needs_a_full_batch_on_every_shard_and_a_reader(photo_dir):
    pipe = imagenet_train_pipeline(photo_dir, batch_size=10, crop=16, num_threads=1, num_shards=5, shard_id=0)
    with pytest.raises(ValueError, match=r"drop_last=True: the smallest shard of reader 'Reader' holds 9 samples, "
                                         r"fewer than batch_size=10"):
        DALIMixIterator(pipe, drop_last=True)
    with pytest.raises(ValueError, match=r"drop_last=True needs reader_name"):
        DALIMixIterator(_own_pipeline(photo_dir), output_map=["images", "targets", "info"], drop_last=True)


def test_uneven_shards_end_some_epochs_with_an_empty_batch(photo_dir):
    """By design, without drop_last: every rank takes as many steps (DDP needs it; ``kmix train`` relies on it), so
    48 images over 5 shards in batches of 3 are 4 batches an epoch on every rank, and a shard of 9 ends its epoch
    with an EMPTY batch. Its mean loss is NaN (0 / 0): skip it, or weight the loss by the batch size."""
    for rank, want in ((0, [[3, 3, 3, 0], [3, 3, 3, 1]]), (1, [[3, 3, 3, 1], [3, 3, 3, 0]])):
        for build in (imagenet_train_pipeline, imagenet_val_pipeline):
            pipe = build(photo_dir, batch_size=3, crop=16, num_threads=1, num_shards=5, shard_id=rank)
            it = DALIMixIterator(pipe)
            assert len(it) == 4
            sizes = []
            for _ in range(2):
                epoch = [(x.shape[0], t) for x, t in it]
                sizes.append([n for n, _ in epoch])
                empty = [t for n, t in epoch if n == 0]
                for t in empty:
                    assert t.shape == (0, 8)
                    assert soft_target_cross_entropy(torch.zeros(0, 8), t, reduction="sum").item() == 0.0
                    assert torch.isnan(soft_target_cross_entropy(torch.zeros(0, 8), t))
            assert sizes == want, (build.__name__, rank, sizes)


def _flat_tree(photo_dir, root, n=3):
    """``n`` photographs directly under ``root`` (no class folders), as file lists often have them."""
    import shutil

    root.mkdir()
    for i, src in enumerate(sorted(photo_dir.glob("*/*_000.jpg"))[:n]):
        shutil.copy(src, root / f"{i}.jpg")
    return root


def test_a_file_list_gives_the_class_count(photo_dir, tmp_path):
    flat = _flat_tree(photo_dir, tmp_path / "flat")
    lst = tmp_path / "flat.txt"
    lst.write_text("0.jpg 0\n1.jpg 4\n2.jpg 2\n")
    train = imagenet_train_pipeline(flat, batch_size=3, crop=16, num_threads=1, file_list=lst)
    val = imagenet_val_pipeline(flat, batch_size=3, crop=16, size=16, num_threads=1, file_list=lst)
    assert train.num_classes == val.num_classes == 5  # max label + 1, not the (absent) class folders
    _, targets = next(iter(DALIMixIterator(train)))
    assert targets.shape == (3, 5)
    _, labels = next(iter(DALIMixIterator(val, one_hot=False)))
    assert sorted(labels.tolist()) == [0, 2, 4]
    two = tmp_path / "two.txt"  # a 2-class list over the 8-folder tree: 2 classes
    two.write_text("".join(f"{rel} {i % 2}\n" for i, (rel, _) in enumerate(file_reader_listing(photo_dir)[:6])))
    assert imagenet_train_pipeline(photo_dir, batch_size=2, crop=16, file_list=two).num_classes == 2
    assert imagenet_train_pipeline(photo_dir, batch_size=2, crop=16, file_list=two, num_classes=9).num_classes == 9
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(ValueError, match=r"file_list '.*empty.txt' lists no files"):
        imagenet_val_pipeline(flat, batch_size=2, file_list=empty)


def test_an_unmixed_label_outside_the_classes_raises(photo_dir, tmp_path):
    """The val pipeline and mix=None: a label >= num_classes raises (it made a NaN target row, a NaN loss)."""
    (a, _), (b, _) = file_reader_listing(photo_dir)[:2]
    lst = tmp_path / "label9.txt"
    lst.write_text(f"{a} 9\n{b} 1\n")
    for pipe in (imagenet_val_pipeline(photo_dir, batch_size=2, crop=16, size=16, num_threads=1, file_list=lst,
                                       num_classes=8),
                 imagenet_train_pipeline(photo_dir, batch_size=2, crop=16, num_threads=1, file_list=lst, mix=None,
                                         num_classes=8)):
        with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes=8\), got values in \[1, 9\]"):
            next(iter(DALIMixIterator(pipe)))


def test_crop_size_and_random_crop_arguments_are_checked(photo_dir):
    def val(**kw):
        return imagenet_val_pipeline(photo_dir, batch_size=2, num_threads=1, **{"crop": 16, "size": 16, **kw})

    def train(**kw):
        return imagenet_train_pipeline(photo_dir, batch_size=2, num_threads=1, **{"crop": 16, **kw})

    for build in (val, train):
        with pytest.raises(ValueError, match=r"crop must be >= 1, got 0"):
            build(crop=0)
        with pytest.raises(ValueError, match=r"crop must be >= 1, got -8"):
            build(crop=-8)
        with pytest.raises(TypeError, match=r"crop must be an integer, got 16.7"):
            build(crop=16.7)
    with pytest.raises(ValueError, match=r"size must be >= 1, got 0"):
        val(size=0)
    with pytest.raises(ValueError, match=r"crop=32 must be <= size=16"):
        val(crop=32, size=16)
    area = r"random_area must be two finite numbers 0 < lo <= hi <= 1, got "
    for bad in ((1.0, 0.1), (0, 1.0), (0.1, 2), (0.1, float("nan")), (0.5,), (0.1, 0.5, 1.0)):
        with pytest.raises(ValueError, match=area + re.escape(repr(bad))):
            train(random_area=bad)
    ratio = r"random_aspect_ratio must be two finite numbers 0 < lo <= hi, got "
    for bad in ((-1, 2), (2.0, 1.0), (0.5, float("inf")), (1.0,)):
        with pytest.raises(ValueError, match=ratio + re.escape(repr(bad))):
            train(random_aspect_ratio=bad)
    with pytest.raises(TypeError, match=r"random_area must be two finite numbers 0 < lo <= hi <= 1, got 'x'"):
        train(random_area="x")
    with pytest.raises(TypeError, match=r"random_aspect_ratio must be two finite numbers 0 < lo <= hi, got "
                                        r"\('a', 'b'\)"):
        train(random_aspect_ratio=("a", "b"))
    val(crop=16, size=16)  # crop == size, one-element areas and ratios: accepted
    train(random_area=(1.0, 1.0), random_aspect_ratio=(1, 1))
    train(random_area=[0.08, 1.0], random_aspect_ratio=np.array([0.75, 4 / 3]))


def test_every_shard_crops_and_mirrors_with_its_own_stream(photo_dir, tmp_path):
    """Eight copies of one photograph over two shards, the same seed: the crops and mirrors differ between the
    shards (the shard is folded into the pipeline's seed); one shard keeps the seed as given."""
    import shutil

    src = sorted(photo_dir.glob("*/*.jpg"))[0]
    root = tmp_path / "same"
    for c in range(2):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(4):
            shutil.copy(src, root / f"c{c}" / f"{i}.jpg")

    def build(shard, num_shards=2, seed=7):
        return imagenet_train_pipeline(root, batch_size=4, crop=32, num_threads=1, seed=seed, mix=None,
                                       num_shards=num_shards, shard_id=shard)

    first = [next(iter(DALIMixIterator(build(shard), one_hot=False)))[0] for shard in (0, 1)]
    assert not torch.equal(first[0], first[1])
    assert build(0, num_shards=1).pipeline.seed == 7
    seeds = [build(shard).pipeline.seed for shard in (0, 1)] + [build(0, seed=8).pipeline.seed]
    assert len(set(seeds)) == 3 and all(0 <= s < 2**31 for s in seeds), seeds
    assert build(1).pipeline.seed == seeds[1]  # a function of (seed, shard): the same pipeline every time


def test_arguments_without_effect_are_refused(photo_dir):
    def train(**kw):
        return imagenet_train_pipeline(photo_dir, batch_size=4, crop=16, num_threads=1, **kw)

    for name, value in (("smoothing", 0.2), ("mixup_off_epoch", 3), ("cutmix_alpha", 0.5), ("alpha", 0.5),
                        ("prob", 0.5), ("mode", "batch"), ("mix_on", "float32"), ("switch_prob", 0.2)):
        with pytest.raises(ValueError, match=rf"{name}={value!r} has no effect with mix=None"):
            train(mix=None, **{name: value})
    for mix in ("dcutmix", "dmixup", "saliency-dcutmix"):
        with pytest.raises(ValueError, match=rf"cutmix_alpha=0.01 has no effect with mix='{mix}'"):
            train(mix=mix, cutmix_alpha=0.01)
        with pytest.raises(ValueError, match=rf"switch_prob=0.0 has no effect with mix='{mix}'"):
            train(mix=mix, switch_prob=0.0)
    # the defaults, given or not, are accepted
    train(mix=None, smoothing=0.0, alpha=1.0, prob=1.0, mode="sample", mix_on="uint8", switch_prob=0.5)
    train(mix="dcutmix", switch_prob=0.5, cutmix_alpha=None)
    mixed = train(mix="dmixup")
    with pytest.raises(ValueError, match=r"smoothing=0.5 applies to the 'labels' output.*outputs \['images', "
                                         r"'targets'\]"):
        DALIMixIterator(mixed, smoothing=0.5)
    with pytest.raises(ValueError, match=r"one_hot=False applies to the 'labels' output"):
        DALIMixIterator(train(mix="dcutmix", label_format="sparse"), one_hot=False)
    hwc = train(mix="dcutmix", output_layout="HWC")
    with pytest.raises(ValueError, match=r"layout='CHW' contradicts the MixPipeline's layout 'HWC'; leave it out"):
        DALIMixIterator(hwc, layout="CHW")
    x, _ = next(iter(DALIMixIterator(hwc, layout="HWC", smoothing=0.0, one_hot=True)))
    assert x.shape == (4, 3, 16, 16) and x.is_contiguous(memory_format=torch.channels_last)


def test_the_reader_name_must_be_a_name(photo_dir):
    for build in (imagenet_train_pipeline, imagenet_val_pipeline):
        with pytest.raises(TypeError, match=r"reader_name must be a non-empty str .* got None"):
            build(photo_dir, batch_size=4, reader_name=None)
        with pytest.raises(ValueError, match=r"reader_name must be a non-empty str .* got ''"):
            build(photo_dir, batch_size=4, reader_name="")
    pipe = imagenet_val_pipeline(photo_dir, batch_size=4, crop=16, size=16, num_threads=1, reader_name="R")
    with pytest.raises(ValueError, match=r"reader_name must be a non-empty str .* got ''"):
        DALIMixIterator(pipe, reader_name="")
    with pytest.raises(TypeError, match=r"reader_name must be a non-empty str .* got None"):
        DALIMixIterator(dataclasses.replace(pipe, reader_name=None))
    with pytest.raises(ValueError, match=r"reader_name must be a non-empty str .* got ''"):
        DALIMixIterator(_own_pipeline(photo_dir), output_map=["images", "targets", "info"], reader_name="")
    assert sum(len(y) for _, y in DALIMixIterator(pipe, one_hot=False)) == 48  # its own name: the epoch ends


def test_source_info_of_a_listed_path_over_1_kib(photo_dir, tmp_path):
    """A file_list path of 1211 bytes beside a short one: the batch's source info is padded to its longest path
    (it was padded to a fixed 1 KiB, which a longer path overran: a ragged batch and DALI's opaque error)."""
    import shutil
    from pathlib import Path

    a, b = sorted(photo_dir.glob("*/*.jpg"))[:2]
    long_rel = str(Path(*["d" * 200] * 6) / "x.jpg")
    (tmp_path / long_rel).parent.mkdir(parents=True)
    shutil.copy(a, tmp_path / long_rel)
    shutil.copy(b, tmp_path / "y.jpg")
    lst = tmp_path / "list.txt"
    lst.write_text(f"{long_rel} 0\ny.jpg 1\n")
    pipe = imagenet_train_pipeline(tmp_path, batch_size=2, crop=16, num_threads=1, with_source_info=True, mix=None,
                                   file_list=lst)
    it = DALIMixIterator(pipe, one_hot=False)
    _, labels = next(it)
    assert sorted(zip(labels.tolist(), it.last_source_info)) == [(0, long_rel), (1, "y.jpg")]


def test_paths_that_are_not_utf8(photo_dir, tmp_path):
    """A class folder named b"caf\\xe9": its source info, its line in a file_list, and ProxyFolder handing it on."""
    import os
    import shutil

    from dali_kmix.pipelines import ProxyFolder

    odd_rel = os.fsdecode(b"caf\xe9/y.jpg")
    (tmp_path / odd_rel).parent.mkdir()
    shutil.copy(sorted(photo_dir.glob("*/*.jpg"))[0], tmp_path / odd_rel)
    pipe = imagenet_train_pipeline(tmp_path, batch_size=1, crop=16, num_threads=1, with_source_info=True, mix=None)
    it = DALIMixIterator(pipe, one_hot=False)
    next(it)
    assert it.last_source_info == [odd_rel]
    lst = tmp_path / "list.txt"
    lst.write_bytes(os.fsencode(f"{odd_rel} 3\n"))
    for folder in (ProxyFolder(tmp_path, lambda **kw: kw), ProxyFolder(tmp_path, lambda **kw: kw, file_list=lst)):
        assert [path for path, _ in folder.samples] == [tmp_path / odd_rel]
        assert bytes(folder[0]["images"].view(np.uint8)) == os.fsencode(tmp_path / odd_rel)
    assert imagenet_val_pipeline(tmp_path, batch_size=1, file_list=lst).num_classes == 4


@pytest.mark.parametrize("text,lineno,message", [
    ("c.jpg -1\n", 1, "expected 'path label'"), ("c.jpg +3\n", 1, "expected 'path label'"),
    ("c.jpg\n", 1, "expected 'path label'"), ("# images\nc.jpg 1\n", 1, "expected 'path label'"),
    ("c.jpg 1.0\n", 1, "expected 'path label'"),
    ("c.jpg 1\n\nd.jpg 2147483648\n", 3, "label 2147483648 is over 2147483647"),
])
def test_listed_files_refuses_what_dali_refuses(tmp_path, text, lineno, message):
    from dali_kmix.pipelines import listed_files

    lst = tmp_path / "list.txt"
    lst.write_text(text)
    line = text.split("\n")[lineno - 1]
    with pytest.raises(ValueError, match=re.escape(f"{lst}:{lineno}: {message}") + r".*, got " + re.escape(repr(line))):
        listed_files(tmp_path, lst)


def test_listed_files_reads_what_dali_reads(tmp_path):
    from dali_kmix.pipelines import listed_files

    lst = tmp_path / "list.txt"
    lst.write_bytes(b"c.jpg 2147483647\r\n   \n\na b.jpg\t01\nd.jpg 7  \n")
    assert listed_files(tmp_path, lst) == [(tmp_path / "c.jpg", 2**31 - 1), (tmp_path / "a b.jpg", 1),
                                           (tmp_path / "d.jpg", 7)]


def test_where_the_outputs_of_a_gpu_pipeline_live(photo_dir):
    """device="gpu" (the graph only: defining it needs no GPU): the images and the mixed targets on the GPU, the
    labels of mix=None and of the val pipeline where the reader puts them, on the CPU; source info on the CPU."""
    def devices(pipe):
        return {n: o.device for n, o in zip(pipe.output_map, pipe.pipeline._graph_out)}

    kw = dict(batch_size=4, device="gpu", crop=16, with_source_info=True)
    assert devices(imagenet_train_pipeline(photo_dir, mix="dcutmix", **kw)) == {
        "images": "gpu", "targets": "gpu", "source_info": "cpu"}
    assert devices(imagenet_train_pipeline(photo_dir, mix="dmixup", label_format="sparse", **kw)) == {
        "images": "gpu", "label_idx": "gpu", "label_w": "gpu", "source_info": "cpu"}
    assert devices(imagenet_train_pipeline(photo_dir, mix=None, **kw)) == {
        "images": "gpu", "labels": "cpu", "source_info": "cpu"}
    assert devices(imagenet_val_pipeline(photo_dir, batch_size=4, device="gpu", crop=16, size=16)) == {
        "images": "gpu", "labels": "cpu"}
