"""data.py: finding, loading and refusing csv files, the train/validation split and the submission file."""
import gzip
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import data

KAGGLE_URL = "https://www.kaggle.com/c/digit-recognizer/data"


# ---- find_csv ----

def test_find_csv_prefers_the_override_to_the_working_directory(tmp_path, monkeypatch, small_train_csv):
    monkeypatch.chdir(tmp_path)
    override = tmp_path / "elsewhere.csv"
    override.write_bytes(small_train_csv.read_bytes())
    assert data.find_csv("train", str(override)) == override


def test_find_csv_takes_train_csv_from_the_working_directory(tmp_path, monkeypatch, small_train_csv):
    monkeypatch.chdir(tmp_path)
    assert data.find_csv("train").resolve() == small_train_csv.resolve()


def test_find_csv_takes_a_gzipped_csv_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "test.csv.gz").write_bytes(b"")
    assert data.find_csv("test").resolve() == (tmp_path / "test.csv.gz").resolve()


def test_find_csv_falls_back_to_the_shipped_copy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert data.find_csv("train") == data.SHIPPED_DIR / "train.csv.gz"
    assert data.find_csv("test") == data.SHIPPED_DIR / "test.csv.gz"


def test_find_csv_treats_an_empty_override_as_none(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # run.py's default for --train and --test is ""
    assert data.find_csv("train", "") == data.SHIPPED_DIR / "train.csv.gz"


def test_find_csv_refuses_a_missing_override_and_says_where_to_get_the_data(tmp_path):
    missing = str(tmp_path / "nowhere" / "train.csv")
    with pytest.raises(data.DataError) as caught:
        data.find_csv("train", missing)
    assert missing in str(caught.value) and KAGGLE_URL in str(caught.value)


# ---- loading ----

def test_load_train_gives_float_images_in_0_1_and_int_labels_0_9(real_digits):
    images, labels = real_digits
    assert images.shape == (500, 28, 28, 1) and images.dtype == np.float32
    assert labels.shape == (500,) and labels.dtype == np.int32
    assert images.min() == 0 and images.max() == 1
    assert set(labels) == set(range(10))


def test_load_train_keeps_the_pixels_in_row_major_order_divided_by_255(small_train_csv):
    images, labels = data.load_train(small_train_csv)
    first_row = [int(cell) for cell in small_train_csv.read_text().splitlines()[1].split(",")]
    assert labels[0] == first_row[0]
    np.testing.assert_array_equal(np.rint(images[0, :, :, 0] * 255), np.reshape(first_row[1:], (28, 28)))


def test_load_test_gives_float_images_in_0_1(small_test_csv):
    images = data.load_test(small_test_csv)
    assert images.shape == (200, 28, 28, 1) and images.dtype == np.float32
    assert images.min() == 0 and images.max() == 1


def test_gzipped_and_plain_csv_load_the_same(small_train_csv):
    plain_images, plain_labels = data.load_train(small_train_csv)
    gzipped_images, gzipped_labels = data.load_train(data.SHIPPED_DIR / "train.csv.gz", max_rows=300)
    np.testing.assert_array_equal(plain_images, gzipped_images)
    np.testing.assert_array_equal(plain_labels, gzipped_labels)


def test_max_rows_loads_only_the_first_rows(small_test_csv):
    np.testing.assert_array_equal(data.load_test(small_test_csv, max_rows=10), data.load_test(small_test_csv)[:10])


@pytest.mark.parametrize("change", [
    pytest.param(lambda text: b"\xef\xbb\xbf" + text, id="utf-8 BOM"),
    pytest.param(lambda text: text.replace(b"\n", b"\r\n"), id="Windows CRLF line endings"),
    pytest.param(lambda text: b"\xef\xbb\xbf" + text.replace(b"\n", b"\r\n"), id="BOM and CRLF"),
    pytest.param(lambda text: text.rstrip(b"\n"), id="no newline at the end"),
    pytest.param(lambda text: text + b"\n\n", id="blank lines at the end"),
    pytest.param(lambda text: gzip.compress(text), id="gzipped under a .csv name"),
])
def test_harmless_variations_load_like_the_clean_file(small_train_csv, change):
    clean_images, clean_labels = data.load_train(small_train_csv)
    small_train_csv.write_bytes(change(small_train_csv.read_bytes()))
    images, labels = data.load_train(small_train_csv)
    np.testing.assert_array_equal(images, clean_images)
    np.testing.assert_array_equal(labels, clean_labels)


# ---- refusing bad files ----
# Each edit takes the real file's lines (header first, as bytes) and returns the bad file's bytes.

def joined(lines):
    return b"\n".join(lines) + b"\n"


def set_cell(line_number, column_name, value):
    def edit(lines):
        cells = lines[line_number - 1].split(b",")
        cells[lines[0].decode().split(",").index(column_name)] = value
        return joined(lines[:line_number - 1] + [b",".join(cells)] + lines[line_number:])
    return edit


def set_line(line_number, change):
    def edit(lines):
        return joined(lines[:line_number - 1] + [change(lines[line_number - 1])] + lines[line_number:])
    return edit


def corrupt_the_middle(compressed):
    middle = len(compressed) // 2
    return compressed[:middle] + bytes(64) + compressed[middle + 64:]


BAD_FILES = [  # kind, edit, the line the message names (None: the whole file), words in the message
    pytest.param("train", lambda lines: b"", None, "no rows", id="empty file"),
    pytest.param("train", lambda lines: joined(lines[:1]), None, "no rows", id="header only"),
    pytest.param("train", set_cell(1, "pixel2", b"pixel_2"), 1, "'pixel_2', expected 'pixel2'", id="misspelt header"),
    pytest.param("train", set_line(1, lambda line: line.rsplit(b",", 1)[0]), 1, "header has 784 columns",
                 id="header one column short"),
    pytest.param("train", lambda lines: joined([line.split(b",", 1)[1] for line in lines]), 1,
                 "looks like a test file", id="train file without labels"),
    pytest.param("test", lambda lines: joined([b"label," + lines[0]] + [b"7," + line for line in lines[1:]]), 1,
                 "looks like a training file", id="test file with labels"),
    pytest.param("train", set_line(5, lambda line: line.rsplit(b",", 1)[0]), 5, "expected 785 columns, found 784",
                 id="row one cell short"),
    pytest.param("train", set_line(7, lambda line: line + b",0"), 7, "expected 785 columns, found 786",
                 id="row one cell long"),
    pytest.param("test", set_line(3, lambda line: line.rsplit(b",", 1)[0]), 3, "expected 784 columns, found 783",
                 id="test row one cell short"),
    pytest.param("train", set_line(4, lambda line: b""), 4, "found a blank line", id="blank line"),
    pytest.param("train", set_cell(4, "pixel299", b"abc"), 4, "pixel299 is 'abc', not a number", id="text"),
    pytest.param("train", set_cell(6, "pixel10", b""), 6, "pixel10 is blank", id="blank cell"),
    pytest.param("train", set_cell(6, "pixel10", b"NaN"), 6, "pixel10 is 'NaN', not a number", id="NaN"),
    pytest.param("train", set_cell(3, "pixel200", b"12.5"), 3, "pixel200 is 12.5, not a whole number",
                 id="fraction"),
    pytest.param("train", set_cell(8, "pixel400", b"256"), 8, "pixel400 is 256, expected 0..255", id="pixel 256"),
    pytest.param("train", set_cell(8, "pixel400", b"-1"), 8, "pixel400 is -1, expected 0..255", id="pixel -1"),
    pytest.param("test", set_cell(5, "pixel0", b"300"), 5, "pixel0 is 300, expected 0..255", id="test pixel 300"),
    pytest.param("train", set_cell(9, "label", b"10"), 9, "label is 10, expected 0..9", id="label 10"),
    pytest.param("train", set_cell(10, "pixel5", b"\xff"), 10, "not UTF-8", id="undecodable byte"),
    pytest.param("train", lambda lines: gzip.compress(joined(lines))[:-100], None, "gzip", id="truncated gzip"),
    pytest.param("train", lambda lines: corrupt_the_middle(gzip.compress(joined(lines))), None, "gzip",
                 id="corrupt gzip"),
]


@pytest.mark.parametrize("kind, edit, line_number, words", BAD_FILES)
def test_a_bad_file_is_refused_with_a_one_line_message_naming_file_and_line(request, kind, edit, line_number,
                                                                            words):
    path = request.getfixturevalue(f"small_{kind}_csv")
    path.write_bytes(edit(path.read_bytes().splitlines()))
    load = data.load_train if kind == "train" else data.load_test
    with pytest.raises(data.DataError) as caught:
        load(path)
    message = str(caught.value)
    assert message.startswith(f"{path} line {line_number}: " if line_number else f"{path}: ")
    assert words in message
    assert len(message.splitlines()) == 1


def test_a_missing_file_is_named_with_where_to_get_the_data(tmp_path):
    missing = str(tmp_path / "train.csv")
    with pytest.raises(data.DataError) as caught:
        data.load_train(missing)
    assert str(caught.value).startswith(missing) and KAGGLE_URL in str(caught.value)


def test_the_first_bad_cell_in_reading_order_is_the_one_named(small_train_csv):
    edits = [set_cell(6, "pixel50", b"abc"), set_cell(4, "pixel100", b"999"), set_cell(4, "pixel500", b"abc"),
             set_line(9, lambda line: line + b",0")]
    for edit in edits:
        small_train_csv.write_bytes(edit(small_train_csv.read_bytes().splitlines()))
    with pytest.raises(data.DataError, match=" line 4: pixel100 is 999,"):
        data.load_train(small_train_csv)


# ---- the train/validation split ----

def test_split_puts_every_row_on_exactly_one_side(real_digits):
    _, labels = real_digits
    row_numbers = np.arange(len(labels))  # standing in for the images, to see where each row went
    train_rows, train_labels, val_rows, val_labels = data.split_train_validation(row_numbers, labels, 80, seed=0)
    assert sorted([*train_rows, *val_rows]) == list(range(len(labels)))
    np.testing.assert_array_equal(train_labels, labels[train_rows])
    np.testing.assert_array_equal(val_labels, labels[val_rows])


@settings(max_examples=30, deadline=None)
@given(percent=st.floats(1, 99.99), seed=st.integers(0, 2**32 - 1))
def test_split_gives_each_class_round_percent_of_its_rows_for_training(real_digits, percent, seed):
    images, labels = real_digits
    _, train_labels, _, val_labels = data.split_train_validation(images, labels, percent, seed)
    for digit in range(10):
        count = np.sum(labels == digit)
        assert np.sum(train_labels == digit) == min(round(percent / 100 * count), count - 1)
        assert np.sum(val_labels == digit) >= 1


def test_split_keeps_one_row_of_a_tiny_class_for_validation(real_digits):
    images, labels = real_digits
    rows = np.r_[np.flatnonzero(labels != 3), np.flatnonzero(labels == 3)[:2]]  # only two 3s
    _, train_labels, _, val_labels = data.split_train_validation(images[rows], labels[rows], 99, seed=0)
    assert np.sum(train_labels == 3) == 1 and np.sum(val_labels == 3) == 1


def test_split_is_the_same_for_the_same_seed(real_digits):
    first = data.split_train_validation(*real_digits, 90, seed=7)
    second = data.split_train_validation(*real_digits, 90, seed=7)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_split_differs_for_a_different_seed(real_digits):
    _, train_labels_7, _, _ = data.split_train_validation(*real_digits, 90, seed=7)
    _, train_labels_8, _, _ = data.split_train_validation(*real_digits, 90, seed=8)
    assert not np.array_equal(train_labels_7, train_labels_8)


def test_split_mixes_the_classes_rather_than_grouping_them(real_digits):
    _, train_labels, _, val_labels = data.split_train_validation(*real_digits, 80, seed=0)
    assert np.any(np.diff(train_labels) < 0) and np.any(np.diff(val_labels) < 0)


def test_split_at_100_percent_leaves_an_empty_validation_set_of_the_right_shapes(real_digits):
    images, labels = real_digits
    train_images, train_labels, val_images, val_labels = data.split_train_validation(images, labels, 100, seed=0)
    assert len(train_labels) == 500
    assert val_images.shape == (0, 28, 28, 1) and val_images.dtype == np.float32
    assert val_labels.shape == (0,) and val_labels.dtype == np.int32


# ---- the submission ----

def test_submission_is_image_id_from_1_then_label(tmp_path):
    path = tmp_path / "submission.csv"
    data.write_submission(path, np.array([3, 1, 4], dtype=np.int64))  # as argmax gives them
    assert path.read_text() == "ImageId,Label\n1,3\n2,1\n3,4\n"


def test_a_failure_while_writing_leaves_the_old_submission_intact_and_no_temporary_file(tmp_path):
    path = tmp_path / "submission.csv"
    data.write_submission(path, [7, 2])

    def labels_that_fail_midway():
        yield 1
        yield 2
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        data.write_submission(path, labels_that_fail_midway())
    assert path.read_text() == "ImageId,Label\n1,7\n2,2\n"
    assert os.listdir(tmp_path) == ["submission.csv"]
