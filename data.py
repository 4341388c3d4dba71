"""Kaggle's Digit Recognizer files: find, load (refusing bad ones), split train/validation, write a submission.

train.csv is `label,pixel0,...,pixel783` and test.csv is `pixel0,...,pixel783`, one 28x28 digit per row, pixels
0-255 row by row. Either may be gzipped.
"""
import csv
import gzip
import io
import itertools
import re
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from files import atomic_open

SHIPPED_DIR = Path(__file__).resolve().parent / "digit-recognizer"
_KAGGLE_URL = "https://www.kaggle.com/c/digit-recognizer/data"
_PIXEL_COLUMNS = [f"pixel{i}" for i in range(28 * 28)]
_TRAIN_COLUMNS = ["label", *_PIXEL_COLUMNS]
_GZIP_MAGIC = b"\x1f\x8b"
_UTF8_BOM = b"\xef\xbb\xbf"
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")  # where a line ends, as for pandas' rows and bytes.splitlines
# The header is checked by hand; quotes are literal so that every row is exactly one line of the file, and blank
# lines are kept so that row i of the table is line i + 2 of the file.
_CSV_OPTIONS = dict(skiprows=1, header=None, engine="c", quoting=csv.QUOTE_NONE, skip_blank_lines=False)


class DataError(Exception):
    """A bad input file; str(e) is a one-line message naming the file (and row, where there is one)."""


def find_csv(kind: str, override: str | None = None) -> Path:
    """kind is 'train' or 'test'. Precedence: override path (if given; must exist) > ./{kind}.csv or ./{kind}.csv.gz
    in the current working directory (where Kaggle's instructions put them) > SHIPPED_DIR/{kind}.csv.gz."""
    if override:
        if not Path(override).exists():
            raise DataError(f"{override}: no such file or directory; get train.csv and test.csv from {_KAGGLE_URL}")
        return Path(override)
    for name in (f"{kind}.csv", f"{kind}.csv.gz"):
        if Path(name).exists():
            return Path(name)
    return SHIPPED_DIR / f"{kind}.csv.gz"


def load_train(path, max_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """-> images float32 [N, 28, 28, 1] scaled to [0, 1], labels int32 [N]."""
    table = _read_table(path, _TRAIN_COLUMNS, max_rows)
    return _to_images(table[:, 1:]), table[:, 0].astype(np.int32)


def load_test(path, max_rows: int | None = None) -> np.ndarray:
    """-> images float32 [N, 28, 28, 1] in [0, 1]."""
    return _to_images(_read_table(path, _PIXEL_COLUMNS, max_rows))


def _to_images(pixels):
    return (pixels.astype(np.float32) / 255).reshape(-1, 28, 28, 1)


def _read_table(path, columns, max_rows):
    """The file's rows as uint8 [N, len(columns)], after checking its header against `columns` and every cell."""
    text = _read_bytes(path, max_rows).removeprefix(_UTF8_BOM).rstrip()  # trailing blank lines are harmless
    if not text:
        raise DataError(f"{path}: empty file, no rows")
    if not text.isascii():
        try:
            text.decode("utf-8")
        except UnicodeDecodeError as error:
            line_number = len(_LINE_BREAK.findall(text, 0, error.start)) + 1
            raise DataError(f"{path} line {line_number}: bytes that are not UTF-8 text "
                            f"({text[error.start:error.end]!r}); is this really a csv file?") from None
    header, *rows = _LINE_BREAK.split(text, maxsplit=1)
    _check_header(path, header.decode("utf-8").split(","), columns)
    if not rows:
        raise DataError(f"{path}: no rows, only the header")

    highest = np.array([9 if name == "label" else 255 for name in columns], dtype=np.uint8)
    try:  # the fast path: the C parser reads straight into uint8, refusing blanks, fractions, text and 256+
        with np.errstate(invalid="ignore"):  # pandas casting 1e20 or inf to uint8 before refusing it
            table = pd.read_csv(io.BytesIO(text), dtype=np.uint8, **_CSV_OPTIONS).to_numpy()
        if table.shape[1] == len(columns) and (table <= highest).all():
            return table
    except (ValueError, OverflowError):  # the latter for a number past 64 bits, e.g. 99999999999999999999
        pass  # pandas' own message names neither the line nor, always, the problem: found below instead
    bad_line = _first_bad_line(text, columns, highest)
    if bad_line is None:
        raise DataError(f"{path}: cannot be read as a table of whole numbers")
    line_number, problem = bad_line
    raise DataError(f"{path} line {line_number}: {problem}")


def _read_bytes(path, max_rows):
    """The whole file (only the header and max_rows rows if given), decompressed if it starts like a gzip file."""
    try:
        file = open(path, "rb")
    except OSError as error:
        raise DataError(f"{path}: {error.strerror.lower()}; get train.csv and test.csv from {_KAGGLE_URL}") from None
    with file:
        gzipped = file.read(2) == _GZIP_MAGIC
        file.seek(0)
        source = gzip.GzipFile(fileobj=file) if gzipped else file
        try:
            if max_rows is None:
                return source.read()
            # Lines as the file object splits them (at \n only), then cut again at \r too.
            head = b"".join(itertools.islice(source, max_rows + 1))
            return b"".join(head.splitlines(keepends=True)[:max_rows + 1])
        except (OSError, EOFError, zlib.error) as error:
            raise DataError(f"{path}: corrupt or truncated gzip file ({error})") from None


def _check_header(path, found, columns):
    where = f"{path} line 1"
    if found == columns:
        return
    if "label" in found and "label" not in columns:
        raise DataError(f"{where}: has a label column, so it looks like a training file, not a test file")
    if found == _PIXEL_COLUMNS:
        raise DataError(f"{where}: has no label column, so it looks like a test file, not a training file")
    if len(found) != len(columns):
        raise DataError(f"{where}: the header has {len(found)} columns, expected {len(columns)} "
                        f"({columns[0]},{columns[1]},...,{columns[-1]})")
    i = next(i for i, (name, expected) in enumerate(zip(found, columns)) if name != expected)
    raise DataError(f"{where}: header column {i + 1} is {found[i]!r}, expected {columns[i]!r}")


def _first_bad_line(text, columns, highest):
    """(line number, what is wrong) for the first line of text (header included) that is not len(columns) whole
    numbers in range, or None. Called only once the fast path has failed, so it may take a second or two."""
    lines = text.splitlines()  # at \r\n, \n or \r, as pandas splits rows
    # A row of the wrong width is cheap to find; bad cells are then looked for only in the rows above it, which
    # also spares pandas ragged rows.
    wrong_width = None
    for line_number, line in enumerate(lines, start=1):
        if line.count(b",") != len(columns) - 1:
            found = "a blank line" if not line.strip() else line.count(b",") + 1
            wrong_width = line_number, f"expected {len(columns)} columns, found {found}"
            break
    above = lines[:wrong_width[0] - 1] if wrong_width else lines
    if len(above) < 2:  # the header alone
        return wrong_width

    # Parsed again with every cell kept as written ("NaN" stays text), then the first bad cell in reading order:
    # the earliest row, and within it the leftmost column.
    frame = pd.read_csv(io.BytesIO(b"\n".join(above)), keep_default_na=False, low_memory=False, **_CSV_OPTIONS)
    bad_row, bad_column, bad_number = len(frame), None, None
    for column in range(len(columns)):
        numbers = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)  # text -> NaN
        good = (numbers == np.round(numbers)) & (numbers >= 0) & (numbers <= highest[column])
        bad = np.flatnonzero(~good[:bad_row])
        if len(bad):
            bad_row, bad_column, bad_number = bad[0], column, numbers[bad[0]]
    if bad_column is None:
        return wrong_width

    name, cell = columns[bad_column], frame.iat[bad_row, bad_column]
    if np.isnan(bad_number):
        problem = "blank" if not str(cell).strip() else f"{str(cell)!r}, not a number"
    elif bad_number != np.round(bad_number):
        problem = f"{cell}, not a whole number"
    else:
        problem = f"{bad_number:g}, expected 0..{highest[bad_column]}"
    return bad_row + 2, f"{name} is {problem}"


def split_train_validation(images, labels, percent_for_training: float, seed: int):
    """Stratified, seeded split -> (train_images, train_labels, val_images, val_labels).
    Each class contributes round(percent/100 * its count) rows to training (at least 1 to validation when
    percent < 100 and the class has >= 2 rows); order within each split is shuffled with the seed.
    percent_for_training == 100 -> empty validation arrays of the right shapes/dtypes."""
    rng = np.random.default_rng(seed)
    train_rows, val_rows = [], []
    for digit in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == digit))
        n_train = round(percent_for_training / 100 * len(rows))
        if percent_for_training < 100 and len(rows) >= 2:
            n_train = min(n_train, len(rows) - 1)  # so that every class is measured on validation
        train_rows.append(rows[:n_train])
        val_rows.append(rows[n_train:])
    # Mixed across classes, so that a mini-batch is never all one digit.
    train_rows = rng.permutation(np.concatenate(train_rows))
    val_rows = rng.permutation(np.concatenate(val_rows))
    return images[train_rows], labels[train_rows], images[val_rows], labels[val_rows]


def write_submission(path, labels) -> None:
    """Write `ImageId,Label` (ImageId from 1) atomically (files.atomic_open): a crash never leaves a
    half-written file, and an existing file is intact on error."""
    with atomic_open(path) as file:
        file.write("ImageId,Label\n")
        file.writelines(f"{image_id},{int(label)}\n" for image_id, label in enumerate(labels, start=1))
