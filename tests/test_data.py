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
