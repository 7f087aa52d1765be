"""Small real-photo datasets that install offline, written as ImageNet-layout JPEG trees.

:func:`make_photo_tree` uses the photographs bundled with scikit-image (public
domain / CC0: the astronaut Eileen Collins, Chelsea the cat, a cup of coffee, a
rocket launch, the Hubble deep field, a tissue stain, the cameraman, coins):
one class per photograph, each image a different random crop, flip and
brightness of it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .. import _checks
from ..pipelines import _read_by_dali, class_names, image_files, tree_files
from .common import UsageError, require_gpu

__all__ = ["PHOTOS", "make_photo_tree", "class_names", "image_files", "tree_files", "check_class_folders",
           "undecodable", "check_data", "FASHION_MNIST_DIR", "FASHION_MNIST_CLASSES", "read_idx", "make_fashion_mnist_tree"]

#: Where Debian's ``dataset-fashion-mnist`` package installs the IDX files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
#: Folder names in label order (sorted order = label order, as ``readers.file`` numbers them).
FASHION_MNIST_CLASSES = ("0_tshirt-top", "1_trouser", "2_pullover", "3_dress", "4_coat", "5_sandal", "6_shirt",
                         "7_sneaker", "8_bag", "9_ankle-boot")

#: Photographs bundled in scikit-image's wheel (no download needed).
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "camera", "coins")


def _check_target(final: Path):
    """``final`` may be written as a folder: absent, or a folder (not a file, not a link)."""
    if final.is_symlink():
        raise FileExistsError(f"{str(final)!r} is a symbolic link; give the folder itself")
    if final.exists() and not final.is_dir():
        raise FileExistsError(f"{str(final)!r} exists and is not a folder")


def _empty_folder(path: Path) -> bool:
    return path.is_dir() and next(path.iterdir(), None) is None


@contextlib.contextmanager
def _staged(final: Path, prefix: str):
    """Yield a temporary folder beside ``final``; on success it replaces ``final`` whole."""
    _check_target(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _load_photo(name: str) -> np.ndarray:
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)())
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


def _variant(img: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    area = rng.uniform(0.35, 1.0)
    side = int(round(min(h, w) * np.sqrt(area)))
    y = int(rng.integers(0, h - side + 1))
    x = int(rng.integers(0, w - side + 1))
    crop = img[y:y + side, x:x + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    out = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.BILINEAR), np.float32)
    out *= rng.uniform(0.8, 1.2)
    return np.clip(out, 0, 255).astype(np.uint8)


def _photo_stamp(images_per_class, size, seed, classes) -> str:
    return f"photos images_per_class={images_per_class} size={size} seed={seed} classes={','.join(classes)}\n"


def _is_photo_tree(root: Path) -> bool:
    """Whether ``root`` holds nothing but a photo tree this module wrote (its stamp, its class folders of its
    JPEGs; a tree of an earlier version has no stamp): such a folder may be written again with other settings,
    anything else is the user's."""
    def ours(e: Path) -> bool:
        if e.name == ".complete":
            return e.is_file() and not e.is_symlink()
        return (e.name in PHOTOS and e.is_dir() and not e.is_symlink()
                and all(f.is_file() and f.name.startswith(e.name + "_") and f.suffix == ".jpg" for f in e.iterdir()))

    entries = list(root.iterdir())
    return bool(entries) and all(ours(e) for e in entries)


def make_photo_tree(root, *, images_per_class: int = 12, size: int = 256, seed: int = 0,
                    classes=PHOTOS, overwrite: bool = False) -> Path:
    """Write ``root/<class>/<class>_<i>.jpg``; returns ``root``.

    The tree is written into a temporary folder and renamed into place, so a
    partly written tree is never left behind. An existing tree of the same settings
    (its ``.complete`` stamp) is kept unless ``overwrite``; a photo tree of other
    settings is written again; any other existing folder that is not empty is refused
    unless ``overwrite`` (so a mistyped path never deletes a user's files).
    """
    from PIL import Image

    root = Path(root)
    images_per_class = _checks.check_int("images_per_class", images_per_class, 1)
    size = _checks.check_int("size", size, 1)
    seed = _checks.check_int("seed", seed, 0)
    classes = tuple(classes)
    unknown = [c for c in classes if c not in PHOTOS]
    if not classes or unknown:
        raise ValueError(f"classes must be photographs of {PHOTOS}, got {classes!r}")
    _check_target(root)
    stamp = _photo_stamp(images_per_class, size, seed, classes)
    if root.is_dir() and not overwrite:
        done = root / ".complete"
        if done.is_file() and done.read_text() == stamp:
            return root
        if not _empty_folder(root) and not _is_photo_tree(root):
            raise FileExistsError(f"{str(root)!r} already exists and is not a photo tree written by dali_kmix; pass "
                                  f"overwrite=True (kmix data --overwrite) to replace it, or choose another folder")
    with _staged(root, ".photos-") as tmp:
        rng = np.random.default_rng(seed)
        for cls in classes:
            img = _load_photo(cls)
            (tmp / cls).mkdir()
            for i in range(images_per_class):
                Image.fromarray(_variant(img, size, rng)).save(tmp / cls / f"{cls}_{i:03d}.jpg", quality=90)
        (tmp / ".complete").write_text(stamp)
    return root


def _holds_an_image(class_dir) -> bool:
    with os.scandir(class_dir) as entries:
        return next(_read_by_dali(entries), None) is not None


def _tree_problems(split: str, root: Path, names) -> list[str]:
    """What ``readers.file`` would number wrongly in one class tree: hidden folders, class folders with no image."""
    problems = []
    hidden = [c for c in names if c.startswith(".")]
    if hidden:
        problems.append(f"{split} folder {str(root)!r} holds hidden folder(s) {_quoted(hidden)}, which DALI's "
                        f"readers.file numbers as classes: remove them")
    empty = [c for c in names if not c.startswith(".") and not _holds_an_image(root / c)]
    if empty:
        problems.append(f"{split} class folder(s) {_quoted(empty)} in {str(root)!r} hold no image "
                        f"readers.file reads")
    return problems


def check_class_folders(train_dir, val_dir) -> list[str]:
    """The class names of ``train_dir``, once train/ and val/ are sure to number classes alike.

    ``readers.file`` numbers the sub-folders of each tree on its own, every one of them (hidden
    and empty ones too): a stray ``.ipynb_checkpoints`` or an empty class folder in one tree
    shifts every label after it. Refused, in one :class:`UsageError` naming every culprit: a
    hidden folder, a class folder holding no image ``readers.file`` reads, and class names that
    differ between the trees.
    """
    trees = {"train": Path(train_dir), "val": Path(val_dir)}
    names = {split: class_names(root) for split, root in trees.items()}
    problems = []
    for split, root in trees.items():
        problems += _tree_problems(split, root, names[split])
    if not names["train"] and not problems:
        problems.append(f"train folder {str(trees['train'])!r} has no class sub-folders")
    only_train = [c for c in names["train"] if c not in names["val"] and not c.startswith(".")]
    only_val = [c for c in names["val"] if c not in names["train"] and not c.startswith(".")]
    if only_train or only_val:
        problems.append("train and val class folders differ (labels would not match): "
                        + "; ".join(f"only in {split}: {_quoted(cs)}"
                                    for split, cs in (("train", only_train), ("val", only_val)) if cs))
    if problems:
        raise UsageError("; ".join(problems))
    return names["train"]


def _quoted(names) -> str:
    return ", ".join(repr(n) for n in names)


def _dali_reason(exc: BaseException) -> str:
    """The line of a DALI pipeline error that says what went wrong (after DALI's ``encountered:``)."""
    text = str(exc)
    tail = text.split("encountered:", 1)[-1]
    lines = [ln.strip() for ln in tail.splitlines()
             if ln.strip() and not ln.strip().startswith(("Current pipeline object", "Critical error"))]
    return lines[0] if lines else text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def is_decode_error(exc: BaseException) -> bool:
    """Whether a DALI pipeline error was raised by one of its decoders."""
    return isinstance(exc, RuntimeError) and "fn.decoders." in str(exc)


def undecodable(files, *, device: str = "cpu", threads: int | None = None, batch_size: int = 32,
                progress: bool = True, desc: str = "decoding") -> list[tuple[str, str]]:
    """The files of ``files`` that DALI cannot decode, each with the reason: ``[(path, reason), ...]``.

    Every file goes through ``fn.decoders.image`` (the nvImageCodec decoder that the training
    pipeline's ``decoders.image_random_crop`` uses; ``"mixed"`` on the GPU with ``device="gpu"``),
    ``batch_size`` at a time; a batch that fails is decoded again one file at a time to name the
    culprits. A tqdm bar shows the progress.
    """
    from tqdm import tqdm

    files = [str(f) for f in files]
    gpu = device == "gpu"
    threads = threads or min(8, os.cpu_count() or 1)
    pipes: dict[int, object] = {}

    def run(paths) -> str | None:
        """None if every file of ``paths`` decodes, else the reason of the failure."""
        batch = []
        for p in paths:
            try:
                batch.append(np.fromfile(p, dtype=np.uint8))
            except OSError as exc:
                return f"cannot read: {exc.strerror or exc}"
        size = len(batch)
        if size not in pipes:
            pipes[size] = _decode_pipeline(size, threads, gpu)
        try:
            pipes[size].feed_input("encoded", batch)
            pipes[size].run()
            return None
        except RuntimeError as exc:
            del pipes[size]  # a DALI pipeline is not valid after an error
            return _dali_reason(exc)

    bad = []
    with tqdm(total=len(files), desc=desc, unit="file", disable=not progress) as bar:
        for i in range(0, len(files), batch_size):
            chunk = files[i:i + batch_size]
            if run(chunk) is not None:
                for f in chunk:
                    reason = run([f])
                    if reason is not None:
                        bad.append((f, reason))
            bar.update(len(chunk))
            if bad:
                bar.set_postfix(bad=len(bad))
    return bad


def _decode_pipeline(batch_size: int, threads: int, gpu: bool):
    from nvidia.dali import Pipeline, fn, types

    pipe = Pipeline(batch_size=batch_size, num_threads=threads, device_id=0 if gpu else None,
                    exec_async=False, exec_pipelined=False)
    with pipe:
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        pipe.set_outputs(fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=types.RGB))
    pipe.build()
    return pipe


def check_data(data_dir, *, device: str = "cpu", threads: int | None = None, progress: bool = True) -> dict:
    """``kmix data check DIR``: what ``kmix train`` would refuse or fail on, found up front.

    ``DIR`` is a class tree, or holds ``train/`` and ``val/`` class trees (then their class
    folders are checked to match, as ``kmix train`` does). Every file ``readers.file`` would read
    is decoded. Returns ``{"files": N, "bad": [(path, reason), ...], "problems": [str, ...]}``.
    """
    root = Path(data_dir)
    if not root.exists():
        raise FileNotFoundError(f"data folder {str(data_dir)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"data folder {str(data_dir)!r} is not a folder")
    if device == "gpu":
        require_gpu()
    splits = {"train": root / "train", "val": root / "val"}
    problems = []
    if any(p.is_dir() for p in splits.values()):  # a train/val tree, as kmix train --data reads it
        missing = [f"{split} folder {str(p)!r} does not exist" for split, p in splits.items() if not p.is_dir()]
        problems += missing
        if not missing:
            try:
                check_class_folders(splits["train"], splits["val"])
            except UsageError as exc:
                problems.append(str(exc))
        files = [f for p in splits.values() if p.is_dir() for f in tree_files(p)]
    else:  # one class tree (kmix train --train-dir / --val-dir)
        names = class_names(root)
        problems += _tree_problems("data", root, names)
        if not names:
            problems.append(f"data folder {str(root)!r} has no class sub-folders (nor train/ and val/)")
        files = tree_files(root)
    if not files and not problems:
        problems.append(f"no image under {str(root)!r} that readers.file reads")
    bad = undecodable(files, device=device, threads=threads, progress=progress, desc=f"checking {root}")
    return {"files": len(files), "bad": bad, "problems": problems}


def read_idx(path) -> np.ndarray:
    """Read an IDX file (optionally gzipped), as in the MNIST and Fashion-MNIST distributions."""
    import gzip

    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (gzip.BadGzipFile, EOFError) as exc:
        raise ValueError(f"{path} is not a gzipped IDX file: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX element type 0x{data[2]:02x}")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {int(np.prod(dims))} elements, found {arr.size}")
    return arr.reshape(dims)


def _write_split(root: Path, images, labels, per_class, rng, prefix):
    from PIL import Image

    for c, name in enumerate(FASHION_MNIST_CLASSES):
        (root / name).mkdir(parents=True)
        idx = np.flatnonzero(labels == c)
        if per_class is not None:
            idx = np.sort(rng.choice(idx, size=min(per_class, len(idx)), replace=False))
        for i in idx:
            Image.fromarray(images[i]).save(root / name / f"{prefix}{i:05d}.jpg", quality=95)


def make_fashion_mnist_tree(out_dir, *, source=FASHION_MNIST_DIR, train_per_class: int | None = None,
                            val_per_class: int | None = None, seed: int = 0, overwrite: bool = False) -> Path:
    """Write Fashion-MNIST as ``out_dir/train/<class>/*.jpg`` and ``out_dir/val/<class>/*.jpg``.

    ``source`` holds the four IDX files (Debian: ``apt-get install dataset-fashion-mnist``).
    ``train_per_class`` / ``val_per_class`` keep a random, class-balanced subset (fixed by
    ``seed``); None keeps all (6,000 / 1,000 per class). The tree is written into a
    temporary folder and renamed into place, whole or not at all.
    """
    for name, value in (("train_per_class", train_per_class), ("val_per_class", val_per_class)):
        if value is not None:
            _checks.check_int(name, value, 1)
    src = Path(source)
    files = {k: src / f"{k}-idx{n}-ubyte.gz" for k, n in (("train-images", 3), ("train-labels", 1),
                                                          ("t10k-images", 3), ("t10k-labels", 1))}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"Fashion-MNIST IDX files not found: {missing} "
                                f"(on Debian: apt-get install dataset-fashion-mnist)")
    out_dir = Path(out_dir)
    stamp = f"train_per_class={train_per_class} val_per_class={val_per_class} seed={seed}\n"
    _check_target(out_dir)
    if out_dir.exists() and not overwrite and not _empty_folder(out_dir):
        found = (out_dir / ".complete").read_text() if (out_dir / ".complete").is_file() else "(incomplete)"
        if found == stamp:
            return out_dir
        raise FileExistsError(f"{out_dir} already holds a different tree ({found.strip()}); pass overwrite=True "
                              f"(kmix data --overwrite) or choose another folder")
    splits = {}
    for split, prefix in (("train", "train"), ("val", "t10k")):
        images, labels = read_idx(files[f"{prefix}-images"]), read_idx(files[f"{prefix}-labels"])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{files[f'{prefix}-images']} and {files[f'{prefix}-labels']} do not match: images "
                             f"of shape {images.shape}, labels of shape {labels.shape}")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(FASHION_MNIST_CLASSES)):
            raise ValueError(f"{files[f'{prefix}-labels']}: labels must lie in [0, {len(FASHION_MNIST_CLASSES)}), "
                             f"got {int(labels.min())}..{int(labels.max())}")
        splits[split] = images, labels
    with _staged(out_dir, ".fmnist-") as tmp:
        rng = np.random.default_rng(seed)
        _write_split(tmp / "train", *splits["train"], train_per_class, rng, "train_")
        _write_split(tmp / "val", *splits["val"], val_per_class, rng, "test_")
        (tmp / ".complete").write_text(stamp)
    return out_dir
