"""The offline photo tree; class folders and files as DALI's readers.file numbers and reads them; the decode check."""

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from dali_kmix.apps.data import PHOTOS, class_names, make_photo_tree


def test_photo_tree_layout_and_content(tmp_path):
    root = make_photo_tree(tmp_path / "t", images_per_class=3, size=40, seed=1)
    assert class_names(root) == sorted(PHOTOS)
    files = sorted(root.rglob("*.jpg"))
    assert len(files) == 3 * len(PHOTOS)
    img = np.asarray(Image.open(files[0]))
    assert img.shape == (40, 40, 3) and img.dtype == np.uint8 and img.std() > 5  # a photo, not a flat fill
    # variants of one photo differ from each other
    a, b = (np.asarray(Image.open(f), np.float32) for f in sorted((root / "coffee").glob("*.jpg"))[:2])
    assert np.abs(a - b).mean() > 2


def test_existing_tree_is_kept_and_rewritten_on_request(tmp_path):
    root = make_photo_tree(tmp_path / "t", images_per_class=2, size=32)
    stamp = (root / "rocket" / "rocket_000.jpg").stat().st_mtime_ns
    make_photo_tree(tmp_path / "t", images_per_class=2, size=32)
    assert (root / "rocket" / "rocket_000.jpg").stat().st_mtime_ns == stamp
    make_photo_tree(tmp_path / "t", images_per_class=3, size=32)  # a different tree is rewritten whole
    assert len(list((root / "rocket").glob("*.jpg"))) == 3
    assert not list(tmp_path.glob(".photos-*"))  # no temporary folder left behind


def _jpeg(path, value):
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


@pytest.fixture
def odd_tree(tmp_path):
    """Class folders DALI 2.4's readers.file numbers though they hold nothing it reads, and names that Python's
    str order and the byte order of DALI's std::sort put differently (b"\\xff" against U+E000)."""
    root = tmp_path / "odd"
    names = ["b", ".ipynb_checkpoints", "a_empty", "c_text_only", "d_nested_only", os.fsdecode(b"\xff"), "\ue000",
             "B_upper"]
    for n in names:
        (root / n).mkdir(parents=True)
    for i, n in enumerate(["b", ".ipynb_checkpoints", os.fsdecode(b"\xff"), "\ue000", "B_upper"]):
        _jpeg(root / n / f"x{i}.jpg", 10 * i)
    _jpeg(root / "B_upper" / "y.JPG", 1)  # readers.file's filters ignore case
    _jpeg(root / "b" / ".hidden.jpg", 2)  # hidden files are read
    (root / "c_text_only" / "notes.txt").write_text("x")
    (root / "d_nested_only" / "sub").mkdir()
    _jpeg(root / "d_nested_only" / "sub" / "z.jpg", 3)  # not read: one level only
    _jpeg(root / "stray.jpg", 4)  # files beside the class folders are not read
    (root / "link").symlink_to(root / "b")  # a link to a folder is a class
    return root


def test_class_names_and_files_are_what_dalis_reader_numbers_and_reads(odd_tree):
    pytest.importorskip("nvidia.dali")
    from _helpers import file_reader_listing

    from dali_kmix.apps.data import tree_files

    seen = file_reader_listing(odd_tree)
    names = class_names(odd_tree)
    assert names[:3] == [".ipynb_checkpoints", "B_upper", "a_empty"] and len(names) == 9
    assert names.index(os.fsdecode(b"\xff")) > names.index("\ue000")  # byte order, as DALI sorts
    # the label DALI gives every file is the index of its folder in class_names; the files and their order match
    assert [(os.path.relpath(p, odd_tree), names.index(p.parent.name)) for p in tree_files(odd_tree)] == seen


def test_check_class_folders(odd_tree, tmp_path):
    from dali_kmix.apps.data import check_class_folders

    train, val = make_photo_tree(tmp_path / "train", images_per_class=1, size=16), tmp_path / "val"
    shutil.copytree(train, val)
    assert check_class_folders(train, val) == sorted(PHOTOS)
    (val / "coins").rename(val / "money")
    (train / ".ipynb_checkpoints").mkdir()
    (train / "empty").mkdir()
    with pytest.raises(ValueError, match=r"^train folder '.*/train' holds hidden folder\(s\) '.ipynb_checkpoints', "
                                         r"which DALI's readers.file numbers as classes: remove them; train class "
                                         r"folder\(s\) 'empty' in '.*/train' hold no image readers.file reads; train "
                                         r"and val class folders differ \(labels would not match\): only in train: "
                                         r"'coins', 'empty'; only in val: 'money'$"):
        check_class_folders(train, val)
    with pytest.raises(ValueError, match=r"hidden folder\(s\) '.ipynb_checkpoints'.*class folder\(s\) 'a_empty', "
                                         r"'c_text_only', 'd_nested_only' in"):
        check_class_folders(odd_tree, odd_tree)


def test_undecodable_names_every_bad_file_of_a_batch(tmp_path):
    pytest.importorskip("nvidia.dali")
    from dali_kmix.apps.data import check_data, undecodable

    root = make_photo_tree(tmp_path / "t", images_per_class=3, size=16)
    files = sorted(root.rglob("*.jpg"))
    files[1].write_bytes(b"\xff\xd8\xff" + b"not a jpeg" * 5)
    files[4].write_bytes(files[4].read_bytes()[:100])
    (root / "coins" / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    bad = undecodable(files + [root / "coins" / "gone.jpg"], batch_size=4, progress=False)
    assert [p for p, _ in bad] == [str(files[1]), str(files[4]), str(root / "coins" / "gone.jpg")]
    assert bad[0][1].startswith("nvImageCodec failure") and bad[2][1].startswith("cannot read: No such file")
    res = check_data(root, progress=False)
    assert res["files"] == 25 and len(res["bad"]) == 3 and res["problems"] == []


def test_a_folder_that_is_not_a_photo_tree_is_never_deleted(tmp_path):
    mine = tmp_path / "mine"
    (mine / "thesis").mkdir(parents=True)
    (mine / "thesis" / "chapter1.txt").write_text("irreplaceable")
    with pytest.raises(FileExistsError, match=r"'.*/mine' already exists and is not a photo tree written by "
                                              r"dali_kmix; pass overwrite=True"):
        make_photo_tree(mine, images_per_class=1, size=16)
    assert (mine / "thesis" / "chapter1.txt").read_text() == "irreplaceable"
    # a photo tree with something of the user's beside it is the user's too
    root = make_photo_tree(tmp_path / "t", images_per_class=1, size=16)
    (root / "coins" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"is not a photo tree"):
        make_photo_tree(tmp_path / "t", images_per_class=1, size=16, seed=3)
    assert (root / "coins" / "notes.txt").read_text() == "mine"
    make_photo_tree(mine, images_per_class=1, size=16, overwrite=True)  # asked for in so many words
    assert not (mine / "thesis").exists() and len(list(mine.rglob("*.jpg"))) == len(PHOTOS)
    (tmp_path / "empty").mkdir()
    assert len(list(make_photo_tree(tmp_path / "empty", images_per_class=1, size=16).rglob("*.jpg"))) == len(PHOTOS)


def test_photo_tree_targets_that_are_not_folders(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError, match=r"'.*/f' exists and is not a folder"):
        make_photo_tree(tmp_path / "f", images_per_class=1, size=16)
    assert (tmp_path / "f").read_text() == "x"
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(FileExistsError, match=r"'.*/link' is a symbolic link; give the folder itself"):
        make_photo_tree(tmp_path / "link", images_per_class=1, size=16, overwrite=True)
    with pytest.raises(ValueError, match=r"images_per_class must be >= 1, got 0"):
        make_photo_tree(tmp_path / "p", images_per_class=0)
    with pytest.raises(ValueError, match=r"seed must be >= 0, got -1"):
        make_photo_tree(tmp_path / "p", seed=-1)
    with pytest.raises(ValueError, match=r"classes must be photographs of .*, got \('dog',\)"):
        make_photo_tree(tmp_path / "p", classes=("dog",))


def test_photo_tree_settings_are_kept_in_its_stamp(tmp_path):
    a = make_photo_tree(tmp_path / "a", images_per_class=1, size=16, seed=1)
    first = (a / "coins" / "coins_000.jpg").read_bytes()
    b = make_photo_tree(tmp_path / "b", images_per_class=1, size=16, seed=2)
    assert (b / "coins" / "coins_000.jpg").read_bytes() != first  # the seed is used
    make_photo_tree(tmp_path / "a", images_per_class=1, size=16, seed=2)  # another seed: written again
    assert (a / "coins" / "coins_000.jpg").read_bytes() == (b / "coins" / "coins_000.jpg").read_bytes()
    # a tree of an earlier version (no stamp) is a photo tree: written again with the stamp
    (a / ".complete").unlink()
    make_photo_tree(tmp_path / "a", images_per_class=1, size=16, seed=1)
    assert (a / "coins" / "coins_000.jpg").read_bytes() == first and (a / ".complete").is_file()
    assert class_names(a) == sorted(PHOTOS)  # the stamp is a file: no class


def test_check_data_finds_what_train_refuses(tmp_path):
    pytest.importorskip("nvidia.dali")
    from dali_kmix.apps.data import check_data

    root = make_photo_tree(tmp_path / "t", images_per_class=1, size=16)
    (tmp_path / "empty").mkdir()
    assert check_data(tmp_path / "empty", progress=False)["problems"] == [
        f"data folder '{tmp_path / 'empty'}' has no class sub-folders (nor train/ and val/)"]
    (root / ".ipynb_checkpoints").mkdir()
    (root / "zz_empty").mkdir()
    res = check_data(root, progress=False)
    assert res["files"] == len(PHOTOS) and len(res["problems"]) == 2
    assert "hidden folder(s) '.ipynb_checkpoints'" in res["problems"][0] and "'zz_empty'" in res["problems"][1]
    split = tmp_path / "split"
    shutil.copytree(tmp_path / "t", split / "train", ignore=shutil.ignore_patterns(".*", "zz_empty"))
    res = check_data(split, progress=False)
    assert res["files"] == len(PHOTOS) and res["problems"] == [f"val folder '{split / 'val'}' does not exist"]
    (split / "val").mkdir()
    res = check_data(split, progress=False)
    assert res["files"] == len(PHOTOS) and "train and val class folders differ" in res["problems"][0]
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"data folder '.*/file' is not a folder"):
        check_data(tmp_path / "file", progress=False)


def _idx(path, array):
    import gzip

    codes = {np.dtype(np.uint8): 0x08}
    head = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + array.tobytes())


@pytest.fixture
def fake_fmnist(tmp_path):
    """Four small IDX files in Fashion-MNIST's names: 3 training and 2 test images of each class."""
    src = tmp_path / "src"
    src.mkdir()
    for prefix, per in (("train", 3), ("t10k", 2)):
        labels = np.repeat(np.arange(10, dtype=np.uint8), per)
        _idx(src / f"{prefix}-images-idx3-ubyte.gz", np.full((len(labels), 8, 8), 100, np.uint8))
        _idx(src / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return src


def test_fashion_mnist_tree_checks_its_arguments_and_sources(fake_fmnist, tmp_path):
    from dali_kmix.apps.data import make_fashion_mnist_tree

    (tmp_path / "empty").mkdir()  # an empty folder is simply used
    out = make_fashion_mnist_tree(tmp_path / "empty", source=fake_fmnist, train_per_class=2)
    assert len(list((out / "train").rglob("*.jpg"))) == 20 and len(list((out / "val").rglob("*.jpg"))) == 20
    for kw, match in (({"train_per_class": 0}, r"train_per_class must be >= 1, got 0"),
                      ({"val_per_class": -1}, r"val_per_class must be >= 1, got -1")):
        with pytest.raises(ValueError, match=match):
            make_fashion_mnist_tree(tmp_path / "x", source=fake_fmnist, **kw)
    (fake_fmnist / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz is not a gzipped IDX file"):
        make_fashion_mnist_tree(tmp_path / "y", source=fake_fmnist)
    _idx(fake_fmnist / "t10k-labels-idx1-ubyte.gz", np.zeros(7, np.uint8))
    with pytest.raises(ValueError, match=r"do not match: images of shape \(20, 8, 8\), labels of shape \(7,\)"):
        make_fashion_mnist_tree(tmp_path / "y", source=fake_fmnist)
    _idx(fake_fmnist / "t10k-labels-idx1-ubyte.gz", np.full(20, 12, np.uint8))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\), got 12..12"):
        make_fashion_mnist_tree(tmp_path / "y", source=fake_fmnist)
    assert not (tmp_path / "y").exists() and not (tmp_path / "x").exists()
