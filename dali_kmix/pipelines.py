"""ImageNet-style DALI pipelines with K-image mixing, and the PyTorch iterator.

The training pipeline is the one of DALI's ResNet-50 PyTorch example
(``docs/examples/use_cases/pytorch/resnet50/main.py`` in NVIDIA/DALI), with its defaults:
``readers.file`` (shuffled, padded last batch, a reader name) ->
``decoders.image_random_crop`` (random area (0.1, 1), aspect ratio (0.8, 1.25), 100 attempts;
``"mixed"`` on the GPU, with the example's nvJPEG pre-allocation hints) -> ``resize`` to the
crop size (triangular interpolation, DALI's default antialiasing) -> DMixup, DCutMix or
Saliency-DCutMix on the uint8 crops (``mix_on="uint8"``, the default) ->
``crop_mirror_normalize`` to float32 CHW with the ImageNet mean/std and a random mirror. With
``mix_on="float32"`` the mixing comes after the normalisation. The padded copies of the last
sample in the reader's last batch are never mixing partners (``reader_name`` of the operators).
The differences from the example: the CPU variant keeps ``crop_mirror_normalize`` on the CPU
(the example moves the images to the GPU for it), the labels are not handed to the GPU by the
pipeline, and the mixing step.

Where the outputs live: with ``device="cpu"`` every output is on the CPU. With ``device="gpu"`` the
images are on the GPU, and so are the mixed label outputs (``targets``, or ``label_idx`` and
``label_w``: the mixing operator writes them on the GPU); the ``labels`` of ``mix=None`` and of
the validation pipeline stay on the CPU, where the reader puts them (so the one-hot targets
:class:`DALIMixIterator` makes of them are CPU tensors too), and so does ``source_info``.

Uneven shards: every rank reads ``ceil(S / batch_size)`` batches an epoch, S the largest shard
(the reader pads the smaller shards), so every rank takes the same number of steps, as
DistributedDataParallel needs. A smaller shard whose size is a multiple of the batch size
therefore ends its epoch with an EMPTY batch (0 samples once the padded copies are cut off):
a mean loss over it is NaN (0 / 0), so skip it or weight the loss by the batch size.

The builders return a :class:`MixPipeline`: the DALI pipeline together with what
:class:`DALIMixIterator` needs to read it (output names, class count, reader name).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import math
import numbers
import os
import re
from pathlib import Path

import numpy as np

from . import _checks

__all__ = ["imagenet_train_pipeline", "imagenet_val_pipeline", "DALIMixIterator", "MixPipeline", "ProxyFolder",
           "count_classes", "class_names", "image_files", "tree_files", "listed_files", "DALI_FILE_FILTERS",
           "IMAGENET_MEAN", "IMAGENET_STD", "RANDOM_AREA", "RANDOM_ASPECT_RATIO"]

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
#: The random crop of DALI's ResNet-50 example (torchvision's RandomResizedCrop has (0.08, 1) and (3/4, 4/3)).
RANDOM_AREA = (0.1, 1.0)
RANDOM_ASPECT_RATIO = (0.8, 1.25)


@dataclasses.dataclass(frozen=True)
class MixPipeline:
    """A built-by-us DALI pipeline and how to read it.

    Attributes:
        pipeline: the ``nvidia.dali.Pipeline`` (not yet built).
        output_map: the names of its outputs, in order ("images", "targets", ...).
        num_classes: the number of classes of its labels.
        reader_name: the name of its reader (epoch size, sharding, last batch).
        layout: the layout of its images, "CHW" or "HWC" (channels-last for torch).

    Any other attribute is the pipeline's (``build``, ``run``, ``checkpoint``, ...), so a
    ``MixPipeline`` can be used where the pipeline was.
    """

    pipeline: object
    output_map: tuple
    num_classes: int
    reader_name: str
    layout: str = "CHW"  # of the "images" output: "HWC" is handed to torch as channels-last NCHW

    def __getattr__(self, name):
        if name == "pipeline":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.pipeline, name)


#: ``readers.file``'s default ``file_filters`` (DALI 2.4), matched case-insensitively.
DALI_FILE_FILTERS = ("*.jpg", "*.jpeg", "*.png", "*.bmp", "*.tif", "*.tiff", "*.pnm", "*.ppm", "*.pgm", "*.pbm",
                     "*.jp2", "*.webp", "*.flac", "*.ogg", "*.wav")
_READ = re.compile("|".join(fnmatch.translate(f) for f in DALI_FILE_FILTERS), re.IGNORECASE | re.DOTALL)


def class_names(data_dir) -> list[str]:
    """Class names in the order ``readers.file`` assigns labels 0, 1, ...

    As DALI 2.4 lists them (``discover_files.cc``): every sub-folder, hidden and empty ones
    included, symbolic links followed, sorted byte-wise; files beside them are not classes.
    """
    return sorted((p.name for p in Path(data_dir).iterdir() if p.is_dir()), key=os.fsencode)


def _read_by_dali(entries):
    """The names of the directory entries ``readers.file`` reads: regular files and links matching its filters."""
    for e in entries:
        if _READ.match(e.name) and (e.is_symlink() or e.is_file(follow_symlinks=False)):
            yield e.name


def image_files(class_dir) -> list[str]:
    """The files ``readers.file`` reads from one class folder (not recursive), sorted as it sorts them."""
    with os.scandir(class_dir) as entries:
        return sorted(_read_by_dali(entries), key=os.fsencode)


def tree_files(root) -> list[Path]:
    """Every file ``readers.file`` reads from the class tree ``root``, in its label order."""
    return [path for path, _ in _folder_files(root)]


def count_classes(data_dir) -> int:
    """Number of class folders under ``data_dir`` (as ``readers.file`` numbers them)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir {str(data_dir)!r} is not a folder")
    n = len(class_names(root))
    if n == 0:
        raise ValueError(f"data_dir {str(data_dir)!r} has no class sub-folders")
    return n


def _reader(data_dir, file_list, shard_id, num_shards, shuffle, reader_name):
    from nvidia.dali import fn

    kw = dict(shard_id=shard_id, num_shards=num_shards, random_shuffle=shuffle, pad_last_batch=True,
              name=reader_name)
    if file_list is not None:
        return fn.readers.file(file_root=str(data_dir), file_list=str(file_list), **kw)
    return fn.readers.file(file_root=str(data_dir), **kw)


class ProxyFolder:
    """The samples of an ImageNet-layout folder for DALI's PyTorch proxy, labels included.

    DALI's proxy (``nvidia.dali.plugin.pytorch.experimental.proxy``) lets a torch ``DataLoader``
    with workers feed a DALI pipeline through named ``fn.external_source`` inputs: each worker
    calls ``server.proxy(...)`` per sample and the pipeline runs on every collated batch. DALI's
    ResNet-50 example hands it only the file path (``ImageFolder(transform=server.proxy)``), so the
    labels never reach the pipeline; mixing needs them there. Item ``i`` of this dataset is
    ``proxy(**{images: path as int8 bytes, labels: int32 (1,)})``: the pipeline reads the file
    (``fn.io.file.read``), decodes, mixes with its label and returns the soft targets.

    Files and labels are those ``fn.readers.file(file_root=root)`` finds (:func:`tree_files`: one
    class per sub-folder, DALI's default file filters, one level deep, sorted as DALI sorts);
    or the lines of a DALI ``file_list`` ("relative/path label"). A map-style dataset (no torch
    import): shuffle and shard it with the ``DataLoader``'s ``shuffle`` / ``sampler``.
    """

    def __init__(self, root, proxy, *, file_list=None, images: str = "images", labels: str = "labels"):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"root {str(root)!r} is not a folder")
        self.proxy, self.images, self.labels = proxy, images, labels
        self.samples = listed_files(self.root, file_list) if file_list is not None else _folder_files(self.root)
        if not self.samples:
            raise ValueError(f"no image files under {str(root)!r}")

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        return self.proxy(**{self.images: np.frombuffer(os.fsencode(path), np.int8),
                             self.labels: np.array([label], np.int32)})


def _folder_files(root) -> list:
    """(path, label) of every file ``fn.readers.file(file_root=root)`` reads, in its order."""
    root = Path(root)
    return [(root / c / f, label) for label, c in enumerate(class_names(root)) for f in image_files(root / c)]


#: The largest label ``readers.file`` reads from a ``file_list`` as it is (an int32; larger ones wrap around).
MAX_LABEL = 2**31 - 1
_LABEL = re.compile(r"[0-9]+")


def listed_files(root, file_list) -> list:
    """(path, label) of every line of a DALI ``file_list`` ("relative/path label"), the paths under ``root``, in
    the list's order, as ``readers.file`` (DALI 2.4) reads it: lines split at "\\n", blank lines skipped, the
    label the last whitespace-separated field, digits only (no sign), at most :data:`MAX_LABEL`. The bytes are
    decoded as file names are (``os.fsdecode``: a name that is not UTF-8 keeps its bytes). Any other line raises
    ValueError naming the list, the line number and the line (DALI refuses it with an unnamed error)."""
    root = Path(root)
    out = []
    for lineno, raw in enumerate(Path(file_list).read_bytes().split(b"\n"), 1):
        line = os.fsdecode(raw)
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not _LABEL.fullmatch(parts[1]):
            raise ValueError(f"{file_list}:{lineno}: expected 'path label' (the label: digits), got {line!r}")
        label = int(parts[1])
        if label > MAX_LABEL:
            raise ValueError(f"{file_list}:{lineno}: label {label} is over {MAX_LABEL} (DALI reads labels as int32), "
                             f"got {line!r}")
        out.append((root / parts[0], label))
    return out


def _listed_classes(data_dir, file_list) -> int:
    """The class count of a ``file_list``: its largest label + 1 (the labels DALI reads, :func:`listed_files`)."""
    labels = [label for _, label in listed_files(data_dir, file_list)]
    if not labels:
        raise ValueError(f"file_list {str(file_list)!r} lists no files")
    return max(labels) + 1


def _source_info(jpegs):
    """The file path of each sample as a zero-padded uint8 vector, padded to the longest of the batch (so batches
    are dense whatever the paths' lengths; the width varies from batch to batch, the zeros are cut off when read)."""
    from nvidia.dali import fn

    return fn.pad(fn.get_property(jpegs, key="source_info"), fill_value=0, axes=(0,))


def _decode_info(rows) -> list[str]:
    return [os.fsdecode(bytes(r[r != 0])) for r in rows]


def decode_random_crop(jpegs, *, gpu: bool, crop: int, random_area=RANDOM_AREA,
                       random_aspect_ratio=RANDOM_ASPECT_RATIO):
    """Decode with a random area/aspect crop ("mixed" on the GPU) and resize to crop x crop: uint8 HWC.

    ``crop`` an integer >= 1, ``random_area`` two finite numbers 0 < lo <= hi <= 1 (fractions of the image's
    area), ``random_aspect_ratio`` two finite numbers 0 < lo <= hi; others raise (ValueError, TypeError)."""
    from nvidia.dali import fn, types

    crop = _checks.check_int("crop", crop, 1)
    random_area = _check_range_pair("random_area", random_area, upper=1)
    random_aspect_ratio = _check_range_pair("random_aspect_ratio", random_aspect_ratio)
    decode_kw = {}
    if gpu:
        # nvJPEG's buffers sized ahead for the largest ImageNet image, as DALI's ResNet-50 example does.
        decode_kw = dict(preallocate_width_hint=5980, preallocate_height_hint=6430)
    images = fn.decoders.image_random_crop(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB,
                                           random_area=list(random_area),
                                           random_aspect_ratio=list(random_aspect_ratio), num_attempts=100,
                                           **decode_kw)
    return fn.resize(images, resize_x=crop, resize_y=crop, interp_type=types.INTERP_TRIANGULAR)


def decode_center(jpegs, *, gpu: bool, size: int, crop: int, layout: str = "CHW", dtype: str = "float32"):
    """Evaluation-style preprocessing, no randomness: decode, resize the shorter side to ``size``,
    centre-crop ``crop`` and normalise (float32 CHW by default). ``size`` and ``crop`` integers with
    1 <= crop <= size (a larger crop would reach past the shorter side)."""
    from nvidia.dali import fn, types

    size, crop = _check_crop_size(crop, size)
    images = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB)
    images = fn.resize(images, resize_shorter=size, interp_type=types.INTERP_TRIANGULAR)
    return normalize_chw(images, crop=crop, mirror=False, layout=layout, dtype=dtype)


def _mirror_flags():
    """The training pipelines' random horizontal mirror: one coin per sample."""
    from nvidia.dali import fn

    return fn.random.coin_flip(probability=0.5)


def normalize_chw(images, *, crop: int, mirror: bool, layout: str = "CHW", dtype: str = "float32"):
    """Normalised with the ImageNet mean/std (and a random horizontal mirror when ``mirror``):
    float32 (or float16) CHW, or HWC for torch's channels-last."""
    from nvidia.dali import fn, types

    kw = dict(mirror=_mirror_flags()) if mirror else {}
    return fn.crop_mirror_normalize(images, dtype=types.FLOAT16 if dtype == "float16" else types.FLOAT,
                                    output_layout=layout, crop=(crop, crop), mean=list(IMAGENET_MEAN),
                                    std=list(IMAGENET_STD), **kw)


def _prob_schedule(pipe, reader_name, batch_size, prob, off_epoch):
    """A DataNode of ``prob`` per sample that turns 0 from epoch ``off_epoch`` (0-based) on.

    The epoch comes from the iteration index DALI hands the source (``batch_info``), which a
    checkpoint restores, and from the reader's epoch size read once the pipeline is built. With
    ``pad_last_batch=True`` (the reader of these pipelines) every shard is read as
    ``ceil(S / batch_size)`` batches an epoch, S the largest shard
    (:func:`dali_kmix.dali.padded_epoch_batches`, as :func:`dali_kmix.dali.real_sample_flags`
    counts them), not as many as its own size needs: so every shard of a run switches mixing off
    in the same iteration, at the start of ``off_epoch``.
    """
    from nvidia.dali import fn

    from .dali import padded_epoch_batches

    def source(info):
        steps = padded_epoch_batches(pipe.reader_meta(reader_name), batch_size)
        value = 0.0 if info.iteration // steps >= off_epoch else prob
        return [np.array(value, np.float32)] * batch_size

    return fn.external_source(source=source, batch=True, batch_info=True)


def _check_output_map(output_map) -> list[str]:
    """The output names :class:`DALIMixIterator` reads: "images" and one kind of labels, each name once."""
    names = list(output_map) if isinstance(output_map, (list, tuple)) else None
    if names is None or not all(isinstance(n, str) for n in names):
        raise TypeError(f"output_map must be a list of output names (str), got {output_map!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"output_map names an output twice: {names}")
    kinds = [group for group in DALIMixIterator.LABEL_OUTPUTS if any(n in names for n in group)]
    if "images" not in names or len(kinds) != 1 or not all(n in names for n in kinds[0]):
        raise ValueError(f"output_map must hold \"images\" and the labels as \"targets\", as \"label_idx\" and "
                         f"\"label_w\", or as \"labels\", got {names}")
    return names


def _check_common(device, batch_size, shard_id, num_shards, seed, reader_name):
    _checks.check_choice("device", device, ("cpu", "gpu"))
    _checks.check_int("batch_size", batch_size, 1)
    _checks.check_int("num_shards", num_shards, 1)
    _checks.check_int("shard_id", shard_id, 0)
    if shard_id >= num_shards:
        raise ValueError(f"shard_id must be < num_shards={num_shards}, got {shard_id}")
    if seed is not None:
        _checks.check_int("seed", seed, 0)
    _check_reader_name(reader_name)


def _check_reader_name(reader_name) -> str:
    """A reader's name: without one, DALI's iterator never ends an epoch (it reads on and on)."""
    what = "reader_name must be a non-empty str (the reader's name, by which the iterator ends its epochs)"
    if not isinstance(reader_name, str):
        raise TypeError(f"{what}, got {reader_name!r}")
    if not reader_name:
        raise ValueError(f"{what}, got {reader_name!r}")
    return reader_name


def _check_range_pair(name: str, value, upper=None) -> tuple[float, float]:
    """``(lo, hi)`` of a range argument: two finite numbers with 0 < lo <= hi (and hi <= ``upper`` when given)."""
    what = f"{name} must be two finite numbers 0 < lo <= hi{'' if upper is None else f' <= {upper}'}, got {value!r}"
    if isinstance(value, (str, bytes)):
        raise TypeError(what)
    try:
        pair = list(value)
    except TypeError:
        raise TypeError(what) from None
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in pair):
        raise TypeError(what)
    if len(pair) != 2:
        raise ValueError(what)
    lo, hi = float(pair[0]), float(pair[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi and (upper is None or hi <= upper)):
        raise ValueError(what)
    return lo, hi


def _check_crop_size(crop, size) -> tuple[int, int]:
    """``(size, crop)`` of the validation preprocessing: integers with 1 <= crop <= size."""
    crop = _checks.check_int("crop", crop, 1)
    size = _checks.check_int("size", size, 1)
    if crop > size:
        raise ValueError(f"crop={crop} must be <= size={size} (the shorter side is resized to size, then the centre "
                         f"crop x crop is cut out of it)")
    return size, crop


def _pipeline_seed(seed, shard_id: int, num_shards: int):
    """The pipeline's seed: ``seed`` itself for one shard; for several, a 31-bit seed drawn from ``(seed, shard_id)``
    (NumPy's SeedSequence), so that every rank crops and mirrors with its own stream from the same ``seed``."""
    if seed is None or num_shards == 1:
        return seed
    return int(np.random.SeedSequence([seed, shard_id]).generate_state(1)[0] & 0x7FFFFFFF)


def _is_default(value, default) -> bool:
    if value is default or default is None:
        return value is default
    if isinstance(default, str):
        return value == default
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value == default


#: The arguments of :func:`imagenet_train_pipeline` that only mixing uses, with their defaults. ``k`` and
#: ``label_format`` are left out: ``kmix bench``'s unmixed row builds the pipeline with the mixing rows' values.
_MIX_ARGS = dict(alpha=1.0, prob=1.0, mode="sample", smoothing=0.0, mix_on="uint8", mixup_off_epoch=None,
                 cutmix_alpha=None, switch_prob=0.5)
#: Those only ``mix="dmixup+dcutmix"`` uses.
_SWITCH_ARGS = {name: _MIX_ARGS[name] for name in ("cutmix_alpha", "switch_prob")}


def _refuse_unused(mix, given: dict):
    """ValueError for an argument given another value than its default where ``mix`` makes it do nothing."""
    if mix == _checks.SWITCH:
        return
    unused, why = (_MIX_ARGS, "no mixing") if mix is None else (_SWITCH_ARGS, "only 'dmixup+dcutmix' uses it")
    for name, default in unused.items():
        if not _is_default(given[name], default):
            hint = "; for smoothed one-hot targets pass it to DALIMixIterator" if name == "smoothing" else ""
            raise ValueError(f"{name}={given[name]!r} has no effect with mix={mix!r} ({why}); leave it out{hint}")


def _default_classes(data_dir, file_list, num_classes) -> int:
    """``num_classes`` as given, else the file list's largest label + 1, else the number of class folders."""
    if num_classes is not None:
        return num_classes
    if file_list is not None:
        return _listed_classes(data_dir, file_list)
    return count_classes(data_dir)


def _pipeline(*, batch_size, num_threads, device_id, seed, prefetch_queue_depth=2, checkpoint=None,
              enable_checkpointing=False):
    from nvidia.dali import Pipeline

    kw = {}
    if checkpoint is not None or enable_checkpointing:
        kw = dict(enable_checkpointing=True, checkpoint=checkpoint)
    return Pipeline(batch_size=batch_size, num_threads=num_threads or min(4, os.cpu_count() or 1),
                    device_id=device_id, seed=seed, prefetch_queue_depth=prefetch_queue_depth, **kw)


def imagenet_train_pipeline(data_dir, *, batch_size: int, device: str = "cpu", mix: str | None = "dcutmix",
                            k: int = 3, alpha=1.0, num_classes: int | None = None, seed: int = 0,
                            shard_id: int = 0, num_shards: int = 1, num_threads: int | None = None,
                            device_id: int | None = None, crop: int = 224, mode: str = "sample",
                            prob: float = 1.0, smoothing: float = 0.0, label_format: str = "dense",
                            file_list=None, random_area=RANDOM_AREA, random_aspect_ratio=RANDOM_ASPECT_RATIO,
                            reader_name: str = "Reader", prefetch_queue_depth: int = 2,
                            with_source_info: bool = False, mix_on: str = "uint8",
                            enable_checkpointing: bool = False, checkpoint: bytes | str | None = None,
                            cutmix_alpha=None, switch_prob: float = 0.5, mixup_off_epoch: int | None = None,
                            output_layout: str = "CHW", output_dtype: str = "float32") -> MixPipeline:
    """Build (not run) the training pipeline; returns a :class:`MixPipeline`.

    Outputs: ``(images, targets)`` float32 CHW ``(3, crop, crop)`` images and float32
    ``(num_classes,)`` targets; ``(images, label_idx, label_w)`` with
    ``label_format="sparse"``; ``(images, labels)`` with ``mix=None``. The names
    are in ``output_map`` for :class:`DALIMixIterator`. With ``device="gpu"`` the images and the
    mixed targets (or ``label_idx``, ``label_w``) are on the GPU, the ``labels`` of ``mix=None``
    (and ``source_info``) on the CPU, where the reader puts them.

    Sharded (``num_shards > 1``), every rank reads as many batches an epoch, those of the largest
    shard: a smaller shard may end its epoch with an empty batch (see the module doc; skip it, or
    weight the loss by the batch size), or pass ``drop_last=True`` to :class:`DALIMixIterator`.

    An argument that would have no effect raises ValueError instead of being ignored: with
    ``mix=None``, ``alpha``, ``prob``, ``mode``, ``smoothing``, ``mix_on``, ``mixup_off_epoch``,
    ``cutmix_alpha`` and ``switch_prob`` other than their defaults (give ``smoothing`` for one-hot
    targets to :class:`DALIMixIterator`); with one method, ``cutmix_alpha`` and ``switch_prob``.

    Args:
        data_dir: an ImageNet-layout folder (one sub-folder of JPEGs per class),
            or the root that ``file_list`` paths are relative to.
        device: "cpu" (decode and mix on the CPU; ``device_id`` may be None) or "gpu"
            (``"mixed"`` decoding, mixing on the GPU; ``device_id`` defaults to 0).
        mix: "dcutmix", "dmixup", "saliency-dcutmix", "dmixup+dcutmix" (one of the two per
            batch, DCutMix with probability ``switch_prob`` and Dirichlet ``cutmix_alpha``, see
            :func:`dali_kmix.dali.dmixup_or_dcutmix`) or None; ``k``, ``alpha``, ``mode``, ``prob``,
            ``smoothing``, ``label_format`` as in :func:`dali_kmix.dali.dcutmix`. (``k`` and
            ``label_format`` are accepted with ``mix=None`` and do nothing there.)
        mixup_off_epoch: from this epoch (0-based) on, no sample is mixed (timm's
            ``mixup_off_epoch``): ``prob`` is fed per iteration, the pipeline is not rebuilt.
        output_layout: "CHW" (default) or "HWC"; :class:`DALIMixIterator` hands HWC batches to
            torch as NCHW tensors in channels-last memory format (no copy).
        output_dtype: "float32" (default) or "float16" images.
        num_classes: number of classes (default: the number of class folders; with ``file_list``,
            its largest label + 1, the folders not counted).
        seed: the run's seed (an integer >= 0, or None for a random one); the same on every rank.
            With one shard it is the pipeline's seed; with several, the pipeline's seed is drawn from
            ``(seed, shard_id)``, so every shard crops and mirrors with its own stream, and the mixing
            draws from ``(seed, shard_id)`` too.
        shard_id, num_shards: the reader's shard (one per rank under torchrun).
        crop: the side of the square crops, an integer >= 1.
        file_list: a DALI file list ("relative/path label" per line, :func:`listed_files`) of
            files under ``data_dir``, which then need not be class folders.
        reader_name: the reader's name (a non-empty str), by which the iterator ends its epochs.
        with_source_info: also output each anchor's file path (for audits of what a
            rank saw; :class:`DALIMixIterator` exposes it as ``last_source_info``).
        mix_on: where the batch is mixed. "uint8" (default): on the decoded uint8 HWC
            crops, a quarter of the bytes of the float32 batch, by one operator that also
            mirrors and normalises in the same pass (:class:`dali_kmix.dali.Normalize`: the
            bits of ``crop_mirror_normalize`` after the mix, with no mixed batch written in
            between). DCutMix pastes the same pixels either way (the per-pixel normalisation
            commutes with cut and paste; the random mirror then flips the whole mix); DMixup
            rounds its blend to uint8 (at most 0.5/255 off, as timm's ``FastCollateMixup``).
            "float32": on the normalised float32 CHW tensors, after the mirror (no rounding).
        random_area, random_aspect_ratio: the random crop (default: DALI's ResNet-50 example's,
            :data:`RANDOM_AREA` and :data:`RANDOM_ASPECT_RATIO`): two finite numbers 0 < lo <= hi,
            and hi <= 1 for the area.
        enable_checkpointing, checkpoint: DALI checkpointing (``checkpoint``: what
            ``pipe.checkpoint()`` or :meth:`DALIMixIterator.checkpoints` returned, ``bytes`` in
            DALI 2.4, to continue from; giving it turns checkpointing on). ``prob`` and ``alpha`` may be DataNodes only
            when the pipeline is built by hand; here they are numbers.
    """
    from . import dali as kmix_ops

    _check_common(device, batch_size, shard_id, num_shards, seed, reader_name)
    if mix is not None:
        _checks.check_choice("mix", mix, _checks.METHODS + (_checks.SWITCH,))
    _checks.check_choice("mix_on", mix_on, ("uint8", "float32"))
    _checks.check_choice("output_layout", output_layout, _checks.LAYOUTS)
    _checks.check_choice("output_dtype", output_dtype, ("float32", "float16"))
    _checks.check_choice("label_format", label_format, _checks.LABEL_FORMATS)
    crop = _checks.check_int("crop", crop, 1)
    random_area = _check_range_pair("random_area", random_area, upper=1)
    random_aspect_ratio = _check_range_pair("random_aspect_ratio", random_aspect_ratio)
    if mixup_off_epoch is not None:
        _checks.check_int("mixup_off_epoch", mixup_off_epoch, 0)
    _refuse_unused(mix, dict(alpha=alpha, prob=prob, mode=mode, smoothing=smoothing, mix_on=mix_on,
                             mixup_off_epoch=mixup_off_epoch, cutmix_alpha=cutmix_alpha, switch_prob=switch_prob))
    num_classes = _default_classes(data_dir, file_list, num_classes)
    if device == "gpu" and device_id is None:
        device_id = 0
    pipe = _pipeline(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                     seed=_pipeline_seed(seed, shard_id, num_shards), prefetch_queue_depth=prefetch_queue_depth,
                     checkpoint=checkpoint, enable_checkpointing=enable_checkpointing)
    gpu = device == "gpu"
    with pipe:
        jpegs, labels = _reader(data_dir, file_list, shard_id, num_shards, True, reader_name)
        images = decode_random_crop(jpegs, gpu=gpu, crop=crop, random_area=random_area,
                                    random_aspect_ratio=random_aspect_ratio)
        norm = dict(crop=crop, mirror=True, layout=output_layout, dtype=output_dtype)
        if mix is None:
            outs, names = (normalize_chw(images, **norm), labels), ["images", "labels"]
        else:
            if mix == _checks.SWITCH:
                op = functools.partial(kmix_ops.dmixup_or_dcutmix, cutmix_alpha=cutmix_alpha,
                                       switch_prob=switch_prob)
            else:
                op = getattr(kmix_ops, mix.replace("-", "_"))
            fused = None
            if mix_on == "float32":
                images = normalize_chw(images, **norm)
            else:  # the mixing operator normalises in the same pass (the bits of normalize_chw after the mix)
                fused = kmix_ops.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, mirror=_mirror_flags(),
                                           output_layout=output_layout, dtype=output_dtype)
            if mixup_off_epoch is not None:
                prob = _prob_schedule(pipe, reader_name, batch_size, _checks.check_probability("prob", prob),
                                      mixup_off_epoch)
            # the mixing draws from (seed, shard_id) itself: the user's seed, not the pipeline's (per shard already)
            images, *label_outs = op(images, labels, k=k, alpha=alpha, num_classes=num_classes,
                                     layout="HWC" if mix_on == "uint8" else output_layout, mode=mode, prob=prob,
                                     smoothing=smoothing, label_format=label_format, seed=seed, shard_id=shard_id,
                                     reader_name=reader_name, normalize=fused)
            outs = (images, *label_outs)
            names = ["images", "targets"] if label_format == "dense" else ["images", "label_idx", "label_w"]
        if with_source_info:
            outs = (*outs, _source_info(jpegs))
            names.append("source_info")
        pipe.set_outputs(*outs)
    return MixPipeline(pipe, tuple(names), num_classes, reader_name, output_layout)


def imagenet_val_pipeline(data_dir, *, batch_size: int, device: str = "cpu", crop: int = 224, size: int = 256,
                          shard_id: int = 0, num_shards: int = 1, num_threads: int | None = None,
                          device_id: int | None = None, file_list=None, reader_name: str = "Reader",
                          num_classes: int | None = None, seed: int = 0, output_layout: str = "CHW",
                          output_dtype: str = "float32") -> MixPipeline:
    """Validation pipeline (no mixing, no randomness): decode, resize the shorter side to
    ``size``, centre-crop ``crop`` (integers, 1 <= crop <= size), normalise (float32 CHW, or
    ``output_layout`` / ``output_dtype`` as in :func:`imagenet_train_pipeline`). Outputs
    ``(images, labels)``; the labels on the CPU, where the reader puts them, also with
    ``device="gpu"`` (the images then on the GPU). ``num_classes``, ``file_list``, ``seed``,
    ``reader_name`` and the shards as in :func:`imagenet_train_pipeline` (a smaller shard may end
    its epoch with an empty batch)."""
    _checks.check_choice("output_layout", output_layout, _checks.LAYOUTS)
    _checks.check_choice("output_dtype", output_dtype, ("float32", "float16"))
    _check_common(device, batch_size, shard_id, num_shards, seed, reader_name)
    _check_crop_size(crop, size)
    num_classes = _default_classes(data_dir, file_list, num_classes)
    if device == "gpu" and device_id is None:
        device_id = 0
    pipe = _pipeline(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                     seed=_pipeline_seed(seed, shard_id, num_shards))
    with pipe:
        jpegs, labels = _reader(data_dir, file_list, shard_id, num_shards, False, reader_name)
        pipe.set_outputs(decode_center(jpegs, gpu=device == "gpu", size=size, crop=crop, layout=output_layout,
                                       dtype=output_dtype), labels)
    return MixPipeline(pipe, ("images", "labels"), num_classes, reader_name, output_layout)


class DALIMixIterator:
    """Iterate a DALI pipeline with mixing outputs as ``(images, targets)`` PyTorch tensors.

    ``pipe`` is a :class:`MixPipeline` (from :func:`imagenet_train_pipeline` /
    :func:`imagenet_val_pipeline`: it knows its output names, reader and class count) or any
    DALI ``Pipeline`` whose outputs are named by ``output_map``, as for DALI's
    ``DALIGenericIterator``: ``"images"`` and the labels as ``"targets"`` (dense),
    ``"label_idx"`` and ``"label_w"`` (sparse) or ``"labels"`` (unmixed class indices; one-hot
    targets need ``num_classes``). Other names (e.g. ``"source_info"``) are yielded in
    :attr:`last_outputs`. For example::

        DALIMixIterator(pipe, output_map=["images", "targets"], reader_name="Reader")

    Wraps ``nvidia.dali.plugin.pytorch.DALIGenericIterator`` with the reader's name
    (``reader_name``, a non-empty str; a :class:`MixPipeline` brings its own; for a plain
    pipeline without one, DALI's iterator runs until the pipeline raises StopIteration) and
    ``LastBatchPolicy.PARTIAL``: the padded duplicates of the last batch are cut off, so every
    sample of the shard is seen exactly once per epoch.

    Uneven shards: every rank yields ``len(it)`` batches an epoch, ``ceil(S / batch_size)`` with S
    the largest shard (every rank takes as many steps, as DistributedDataParallel needs). A
    smaller shard's last batch is short, and EMPTY (0 samples) where its size is a multiple of the
    batch size: a mean loss over it is NaN (0 / 0), so skip a batch of 0 samples, or weight the
    loss by the batch size (``kmix train`` sums ``loss * N``).

    With ``drop_last=True`` (which needs the reader's name) every rank yields only the first
    ``len(it) = S_min // batch_size`` batches of each epoch, S_min the smallest shard's size: all
    of them full on every rank, of real samples only, and as many on every rank; the rest of the
    epoch (the short and padded batches) is read and dropped before StopIteration, so the next
    epoch starts where it should (DALI's ``LastBatchPolicy.DROP`` left a padded batch unread on
    uneven shards, and the next epoch began with it). Like ``DataLoader(drop_last=True)`` for one
    shard; a smallest shard with fewer samples than a batch raises ValueError.

    Yields ``(images, targets)``: images ``(N, 3, H, W)``, in channels-last memory format for
    ``layout="HWC"`` (an "HWC" :class:`MixPipeline`); targets float32 ``(N, C)`` (dense), the tuple
    ``(label_idx, label_w)`` (sparse), or, for a pipeline without mixing, one-hot targets
    (``one_hot=True``, with ``smoothing``) or the int64 labels ``(N,)`` (``one_hot=False``). The
    tensors are on the device the pipeline put the outputs on (see the module doc): one-hot targets
    where the labels are. A label outside ``[0, num_classes)`` raises ValueError when the labels are
    on the CPU (as the builders' are: no device synchronisation); on a GPU, an asynchronous
    assertion (``torch._assert_async``) stops the run instead of a NaN target. ``smoothing`` and
    ``one_hot=False`` apply to the "labels" output only, and ``layout`` must agree with a
    :class:`MixPipeline`'s: given where they would do nothing, they raise ValueError.

    Checkpoints: for a pipeline built with ``enable_checkpointing=True``,
    :meth:`checkpoints` returns DALI's iterator checkpoints (one ``bytes`` per pipeline in DALI
    2.4; they include the position inside the epoch); a pipeline built again with
    ``checkpoint=`` that value, wrapped in a new iterator, continues with exactly the batches
    that would have come next, the end of the epoch included: a checkpoint taken after an epoch's
    last batch but before its StopIteration restores into an iterator that raises StopIteration
    first (and, with ``auto_reset``, then goes on with the next epoch), as the original does.
    """

    LABEL_OUTPUTS = (("targets",), ("label_idx", "label_w"), ("labels",))
    _YIELDED = frozenset(("images",) + sum(LABEL_OUTPUTS, ()))  # the outputs __next__ yields; the rest: last_outputs

    def __init__(self, pipe, output_map=None, *, reader_name: str | None = None, num_classes: int | None = None,
                 layout: str | None = None, one_hot: bool = True, smoothing: float = 0.0, auto_reset: bool = True,
                 drop_last: bool = False):
        from nvidia.dali import Pipeline
        from nvidia.dali.plugin.base_iterator import LastBatchPolicy
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        if isinstance(pipe, MixPipeline):
            if output_map is not None and tuple(output_map) != pipe.output_map:
                raise ValueError(f"output_map={list(output_map)} contradicts the MixPipeline's outputs "
                                 f"{list(pipe.output_map)}; leave it out")
            if layout is not None and layout != pipe.layout:
                raise ValueError(f"layout={layout!r} contradicts the MixPipeline's layout {pipe.layout!r}; "
                                 f"leave it out")
            output_map = pipe.output_map
            reader_name = _check_reader_name(pipe.reader_name if reader_name is None else reader_name)
            num_classes = pipe.num_classes if num_classes is None else num_classes
            layout = pipe.layout if layout is None else layout
            pipeline = pipe.pipeline
        elif isinstance(pipe, Pipeline):
            if output_map is None:
                raise TypeError("a DALI Pipeline needs output_map=[...], the names of its outputs in order "
                                "(\"images\" and \"targets\", or \"label_idx\" and \"label_w\", or \"labels\")")
            pipeline = pipe
        else:
            raise TypeError(f"pipe must be a DALI Pipeline (with output_map=) or a dali_kmix.pipelines.MixPipeline, "
                            f"got {type(pipe).__name__}")
        if reader_name is not None:
            _check_reader_name(reader_name)
        self.output_map = _check_output_map(output_map)
        self.num_classes = None if num_classes is None else _checks.check_int("num_classes", num_classes, 1)
        if "labels" in self.output_map and one_hot and self.num_classes is None:
            raise ValueError("num_classes is needed to turn the 'labels' output into one-hot targets "
                             "(or pass one_hot=False for the class indices)")
        self.one_hot = one_hot
        self.smoothing = _checks.check_smoothing(smoothing)
        if "labels" not in self.output_map:  # mixed targets: neither applies
            if self.smoothing:
                raise ValueError(f"smoothing={smoothing!r} applies to the 'labels' output (one-hot targets); this "
                                 f"pipeline outputs {self.output_map}, mixed with the pipeline's own smoothing: give "
                                 f"it to the pipeline (imagenet_train_pipeline(smoothing=...)) or, for sparse "
                                 f"targets, to sparse_mixed_cross_entropy")
            if not one_hot:
                raise ValueError(f"one_hot=False applies to the 'labels' output (class indices); this pipeline "
                                 f"outputs {self.output_map}, mixed targets, yielded as they are; leave it out")
        self.last_source_info: list[str] = []
        self.last_outputs: dict = {}
        self.channels_last = _checks.check_choice("layout", "CHW" if layout is None else layout,
                                                  _checks.LAYOUTS) == "HWC"
        # DALI restores a checkpoint when it builds the pipeline. A restored iterator must not read
        # its first batch ahead (DALI's ``prepare_first_batch``): restored at the end of an epoch, that
        # read-ahead meets the epoch's end and swallows its StopIteration, and the iterator would go
        # straight into the next epoch's batches. Read on demand, the first next() raises it, as the
        # original iterator's next call does, and the batches after it are the same.
        pipeline.build()
        self._full_batches = self._drop_last_batches(pipeline, reader_name) if drop_last else None
        self._auto_reset = auto_reset is True or auto_reset == "yes"  # as DALI reads it
        restored = bool(getattr(pipeline, "is_restored_from_checkpoint", False))
        self._it = DALIGenericIterator([pipeline], self.output_map, reader_name=reader_name,
                                       last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=auto_reset,
                                       prepare_first_batch=not restored)

    @staticmethod
    def _drop_last_batches(pipeline, reader_name) -> int:
        """The batches every rank yields per epoch with ``drop_last``: the smallest shard's full batches."""
        from .dali import _shard_sizes

        if not reader_name:
            raise ValueError("drop_last=True needs reader_name=, the name of the pipeline's reader: its shard sizes "
                             "give the full batches every rank yields per epoch")
        smallest, batch = min(_shard_sizes(pipeline.reader_meta(reader_name))), int(pipeline.max_batch_size)
        if smallest < batch:
            raise ValueError(f"drop_last=True: the smallest shard of reader {reader_name!r} holds {smallest} samples, "
                             f"fewer than batch_size={batch}: no rank would yield a batch")
        return smallest // batch

    def _batches_read(self) -> int:
        """The batches of this epoch read from DALI's iterator and handed out. From its sample count, which its
        checkpoints hold (a restored iterator knows where in the epoch it is), less the batch it reads ahead when
        it is made (``prepare_first_batch``), until that one is handed out."""
        ahead = getattr(self._it, "_first_batch", None) is not None
        return int(self._it._counter) // int(self._it.batch_size) - ahead

    def _drain_epoch(self):
        """Read the rest of the epoch (the batches drop_last drops) up to DALI's StopIteration, which, with
        ``auto_reset``, resets DALI's iterator for the next epoch."""
        while True:
            try:
                next(self._it)
            except StopIteration:
                return

    def __len__(self):
        return len(self._it) if self._full_batches is None else self._full_batches

    def __iter__(self):
        return self

    def reset(self):
        if self._full_batches is not None and self._batches_read() >= self._full_batches:
            self._drain_epoch()  # the epoch's batches are all out: read the dropped ones, so DALI can reset
            if self._auto_reset:
                return  # reset at the end of the epoch already
        self._it.reset()

    def checkpoints(self) -> list:
        """DALI's checkpoints of the wrapped pipeline at the current position (see the class doc)."""
        return self._it.checkpoints()

    def __next__(self):
        if self._full_batches is not None and self._batches_read() >= self._full_batches:
            self._drain_epoch()
            raise StopIteration
        data = next(self._it)[0]
        self.last_outputs = {k: v for k, v in data.items() if k not in self._YIELDED}
        images = data["images"]
        if self.channels_last:  # NHWC memory seen as NCHW: torch's channels_last format, no copy
            images = images.permute(0, 3, 1, 2)
        if "source_info" in data:
            self.last_source_info = _decode_info(data["source_info"].cpu().numpy())
        if "targets" in data:
            return images, data["targets"]
        if "label_idx" in data:
            return images, (data["label_idx"], data["label_w"])
        labels = data["labels"].reshape(-1).long()
        if self.one_hot:
            return images, _one_hot(labels, self.num_classes, self.smoothing)
        return images, labels


def _one_hot(labels, num_classes: int, smoothing: float):
    """One-hot targets of unmixed labels; a label outside [0, num_classes) raises instead of giving a NaN row.
    CPU labels (the builders' pipelines put them there) are checked on the host: ValueError naming the values, no
    device synchronisation. GPU labels (a pipeline of your own) get an asynchronous device-side assertion."""
    from .torch import one_hot_targets

    if labels.device.type == "cpu":
        return one_hot_targets(labels, num_classes, smoothing, check=True)
    import torch

    torch._assert_async(((labels >= 0) & (labels < num_classes)).all(),
                        f"labels must lie in [0, num_classes={num_classes}): DALIMixIterator got a label outside it")
    return one_hot_targets(labels, num_classes, smoothing)
