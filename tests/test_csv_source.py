"""CSV label files (classifier/data/sources/csv.py): columns, empty labels, split column, bad rows."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from classifier.data.sources.csv import load_label_csv, parse_label_csv
from classifier.errors import ClassifierError


def _image(path, rgb=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), rgb).save(path)


@pytest.mark.parametrize("file_col,label_col", [("filename", "labels"), ("image", "label"), ("Path", "Labels")])
def test_columns_and_multilabel_matrix(tmp_path, file_col, label_col):
    for name in ("a.png", "b.png", "sub/c.png"):
        _image(tmp_path / name)
    (tmp_path / "labels.csv").write_text(f"{file_col},{label_col}\na.png,cat dog\nb.png,\nsub/c.png,dog\n")
    table = load_label_csv(tmp_path / "labels.csv")
    assert table.classes == ["cat", "dog"] and table.multilabel
    np.testing.assert_array_equal(table.labels(), [[1, 1], [0, 0], [0, 1]])  # the empty cell: no label
    assert table.rows[2].path == str(tmp_path / "sub/c.png")


def test_single_label_gives_indices_and_absolute_paths(tmp_path):
    _image(tmp_path / "x" / "a.png")
    _image(tmp_path / "b.png")
    (tmp_path / "l.csv").write_text(f"file,label\n{tmp_path / 'x' / 'a.png'},cat\nb.png,dog\n")
    table = load_label_csv(tmp_path / "l.csv")
    assert not table.multilabel
    np.testing.assert_array_equal(table.labels(), [0, 1])
    assert table.rows[0].path == str(tmp_path / "x" / "a.png")


def test_split_column(tmp_path):
    for i in range(4):
        _image(tmp_path / f"{i}.png")
    (tmp_path / "l.csv").write_text("filename,labels,split\n0.png,a,train\n1.png,b,VAL\n2.png,a,validation\n"
                                    "3.png,b,test\n")
    assert [r.split for r in load_label_csv(tmp_path / "l.csv").rows] == ["train", "val", "val", "test"]


def test_bad_rows_named_with_line_numbers(tmp_path):
    _image(tmp_path / "ok.png")
    _image(tmp_path / "ok2.png")
    (tmp_path / "broken.png").write_text("not an image")
    (tmp_path / "l.csv").write_text("filename,labels,split\nok.png,a,train\nmissing.png,a,train\n"
                                    "broken.png,b,train\nok2.png,b,tset\n,a,train\nok.png,b,train\n")
    table = parse_label_csv(tmp_path / "l.csv")
    assert [(line, file) for line, file, _ in table.problems] == [
        (3, "missing.png"), (4, "broken.png"), (5, "ok2.png"), (6, ""), (7, "ok.png")]
    with pytest.raises(ClassifierError, match=r"5 bad row\(s\): line 3 'missing.png': file not found; "
                                              r"line 4 'broken.png': not a readable image; line 5 'ok2.png': split"):
        load_label_csv(tmp_path / "l.csv")


def test_missing_columns_are_one_line_errors(tmp_path):
    (tmp_path / "l.csv").write_text("name,labels\n")
    with pytest.raises(ClassifierError, match="no file column.*found: name, labels"):
        load_label_csv(tmp_path / "l.csv")
    with pytest.raises(ClassifierError, match="does not exist"):
        load_label_csv(tmp_path / "nope.csv")


def test_registered_source_with_split_column(tmp_path):
    from classifier.data import load_dataset

    for i in range(6):
        _image(tmp_path / f"{i}.png", (20 * i, 0, 0))
    (tmp_path / "l.csv").write_text("filename,labels,split\n0.png,a b,train\n1.png,a,train\n2.png,,train\n"
                                    "3.png,b,val\n4.png,a,test\n5.png,b,test\n")
    info, official = load_dataset(f"csv:{tmp_path / 'l.csv'}")
    assert info.name == f"csv:{tmp_path / 'l.csv'}" and info.multilabel and info.classes == ["a", "b"]
    assert {k: len(v) for k, v in official.items()} == {"train": 3, "val": 1, "test": 2}
    np.testing.assert_array_equal(official["train"].labels, [[1, 1], [1, 0], [0, 0]])


def test_same_image_in_several_class_folders_is_one_multilabel_image(tmp_path):
    import shutil

    from classifier.data import load_dataset
    from classifier.data.labelsets import apply_task
    from tests.conftest import write_class_images

    folder = write_class_images(tmp_path / "d", per_class=4, size=8)
    shutil.copy(folder / "red" / "red_0.png", folder / "green" / "also_green.png")
    info, official = load_dataset(f"folder:{folder}")
    assert len(official["train"]) == 13 and not info.multilabel
    as_multiclass = apply_task(info, official, "auto")
    assert as_multiclass[1]["train"] is official["train"]  # auto keeps single-label data as it is
    info, merged = apply_task(info, official, "multilabel")
    train = merged["train"]
    assert info.multilabel and len(train) == 12  # the copy is the same image: one sample, two labels
    row = train.paths.index(str(folder / "green" / "also_green.png"))
    np.testing.assert_array_equal(train.labels[row], [0, 1, 1])  # classes blue, green, red
    assert train.labels.sum() == 13
