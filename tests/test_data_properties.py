"""data.load_train / data.load_test on malformed files, property by property (issue #7, robustness).

Every file here is made from real rows of the shipped digit-recognizer/*.csv.gz, then broken by Hypothesis in one
way. The oracle is always one of two outcomes, stated by each test:
  * it loads, and the arrays equal those of the clean rows (computed here from the csv text, not by data.py); or
  * it raises data.DataError whose message is one line, starts with the path as given and, for a problem in a
    row, names that row's line of the file (line 1 being the header).
Any other exception, or a warning on the way, fails the test.

What counts as valid is data.py's documented behaviour: every cell a whole number (label 0..9, pixel 0..255) in
any spelling pandas reads as a number (3, 3.0, 3., +3, 003, 3e0, padded with spaces); quotes are literal (data.py
reads with csv.QUOTE_NONE, so "3" is text); a UTF-8 BOM, \\n, \\r\\n or \\r line endings (mixed too), a missing final
newline and blank lines at the end are harmless; gzip is recognised by its magic bytes.
"""
import gzip
import itertools
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import data
from conftest import run_py

REPO = Path(__file__).resolve().parents[1]
N_ROWS = {"train": 12, "test": 8}  # enough rows for a fault to land in the middle, few enough to be fast
LABEL_AND_PIXELS = {"train": ["label", *(f"pixel{i}" for i in range(784))], "test": [f"pixel{i}" for i in range(784)]}

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _real_lines(kind, n_rows):
    """The header and the first n_rows rows of the shipped file, each without its line ending."""
    with gzip.open(REPO / "digit-recognizer" / f"{kind}.csv.gz", "rb") as shipped:
        return [line.rstrip(b"\r\n") for line in itertools.islice(shipped, n_rows + 1)]


REAL_LINES = {kind: _real_lines(kind, n) for kind, n in N_ROWS.items()}
HEADER = {kind: lines[0] for kind, lines in REAL_LINES.items()}
ROWS = {kind: [line.split(b",") for line in lines[1:]] for kind, lines in REAL_LINES.items()}  # cells as bytes
CLEAN = {kind: b"\n".join(lines) + b"\n" for kind, lines in REAL_LINES.items()}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("properties")


# ---- the oracle ----

def csv_bytes(header, rows):
    return b"".join(line + b"\n" for line in [header, *(b",".join(cells) for cells in rows)])


def expected_arrays(kind, rows):
    """What loading the clean rows must give: pixels / 255 as float32 [N, 28, 28, 1], labels int32 [N]."""
    table = np.array([[int(cell) for cell in cells] for cells in rows], dtype=np.int64).reshape(len(rows), -1)
    pixels = table[:, 1:] if kind == "train" else table
    images = (pixels.astype(np.float32) / np.float32(255)).reshape(-1, 28, 28, 1)
    return (images, table[:, 0].astype(np.int32)) if kind == "train" else images


def load(kind, path, **kwargs):
    """data.load_{kind}(path) -> its arrays, or the DataError's message (str). Anything else fails the test."""
    loader = data.load_train if kind == "train" else data.load_test
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # recorded, not raised, so that the code path is the user's
        try:
            result = loader(path, **kwargs)
        except data.DataError as error:
            result = str(error)
        except Exception as error:  # noqa: BLE001 -- the point: nothing but DataError may escape
            pytest.fail(f"{type(error).__name__} escaped instead of DataError: {error}")
    # A user would see these on stderr above the one-line error.
    assert not caught, [f"{w.category.__name__}: {w.message}" for w in caught]
    return result


def assert_loads(kind, path, rows, **kwargs):
    result = load(kind, path, **kwargs)
    assert not isinstance(result, str), f"refused a valid file: {result}"
    wanted = expected_arrays(kind, rows)
    for got, want in zip(result if kind == "train" else [result], wanted if kind == "train" else [wanted]):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def assert_refused(kind, path, line=None, **kwargs):
    """Refused with one line that starts with the path as given, then ` line {line}: ` (or `: ` for line=None,
    a problem of the whole file). -> the message."""
    result = load(kind, path, **kwargs)
    assert isinstance(result, str), "loaded a file that should have been refused"
    assert len(result.splitlines()) == 1, result
    assert result.startswith(f"{path} line {line}: " if line else f"{path}: "), result
    return result


def write(scratch, kind, content, suffix=".csv"):
    path = scratch / f"{kind}{suffix}"
    path.write_bytes(content)
    return str(path)  # as a user types it: the message must start with exactly this


# ---- strategies: faults planted in the real rows ----

kinds = st.sampled_from(["train", "test"])


@st.composite
def cells(draw, kind):
    """(row index, column index) of one cell of the real rows."""
    return draw(st.integers(0, N_ROWS[kind] - 1)), draw(st.integers(0, len(LABEL_AND_PIXELS[kind]) - 1))


def highest(kind, column):
    return 9 if kind == "train" and column == 0 else 255


@st.composite
def whole_number_spellings(draw, value):
    """value (a whole number >= 0) as bytes, in one of the spellings pandas reads as that number."""
    sign = draw(st.sampled_from(["", "+", "-"] if value == 0 else ["", "+"]))
    form = draw(st.sampled_from(["{}", "00{}", "{}.", "{}.0", "{}.000", "{}e0", "{}E+0", "{}00e-2", "{}0E-1"]))
    before, after = draw(st.sampled_from(["", " ", "\t", "  "])), draw(st.sampled_from(["", " ", "\t"]))
    return f"{before}{sign}{form.format(value)}{after}".encode()


TEXT_OR_BLANK = [b"", b" ", b"NaN", b"nan", b"NA", b"N/A", b"null", b"None", b"-", b"+", b".", b"e", b"?", b"x",
                 b"1e", b"3-", b"1.2.3", b"0x1F", b"1_0", b"3 3", b"'3'", b'"', b"\xd9\xa3"]  # an Arabic-Indic 3


def fractions(kind, column):
    """Numbers with a non-zero fractional part, negative ones too."""
    return st.one_of(
        st.builds(lambda sign, whole, fraction: f"{sign}{whole}.{fraction}".encode(), st.sampled_from(["", "-"]),
                  st.integers(0, highest(kind, column)), st.from_regex(r"\A[0-9]{0,4}[1-9]\Z")),
        st.sampled_from([b"5e-1", b"1E-3", b"2.5", b".5"]))


def out_of_range(kind, column):
    """Whole numbers below 0 or above the column's highest (9 for the label, 255 for a pixel), up to far past
    64 bits and infinity."""
    top = highest(kind, column)
    return st.one_of(
        st.integers(min_value=top + 1).map(lambda n: str(n).encode()),  # Hypothesis reaches 2**64 and beyond
        st.integers(max_value=-1).map(lambda n: str(n).encode()),
        st.builds(lambda sign, mantissa, exponent: f"{sign}{mantissa}e{exponent}".encode(),
                  st.sampled_from(["", "-"]), st.integers(1, 9), st.integers(3, 400)),  # 1e3 .. beyond float64
        st.sampled_from([b"256", b"256.0", b"1e9", b"99999999999999999999", b"inf", b"-inf", b"-1.0"]))


def not_a_whole_number_in_range(kind, column):
    return st.one_of(st.sampled_from(TEXT_OR_BLANK), fractions(kind, column), out_of_range(kind, column))


NUMBER_BYTES = set(b"0123456789+-.eE \t")
LINE_BREAKS = set(b"\r\n")
# Random bytes with at least one that can appear in no number, so never a number; no line breaks, so still on its
# own line (line breaks in a row are the ragged-row and line-ending tests' business).
_any_byte = st.sampled_from([bytes([b]) for b in range(256) if b not in LINE_BREAKS])
_no_number_byte = st.sampled_from([bytes([b]) for b in range(256) if b not in NUMBER_BYTES | LINE_BREAKS])
junk = st.builds(lambda a, b, c: b"".join(a) + b + b"".join(c),
                 st.lists(_any_byte, max_size=4), _no_number_byte, st.lists(_any_byte, max_size=4))


def with_cell(kind, row, column, value):
    rows = [list(cells) for cells in ROWS[kind]]
    rows[row][column] = value
    return rows


# ---- cells ----

@PROPERTY
@given(data_=st.data(), kind=kinds)
def test_a_whole_number_in_range_in_any_spelling_loads_as_that_number(scratch, data_, kind):
    """3, 3.0, 3., +3, 003, 3e0, 300e-2, -0, " 3" are all 3 (0 for -0)."""
    row, column = data_.draw(cells(kind))
    value = data_.draw(st.integers(0, highest(kind, column)))
    spelling = data_.draw(whole_number_spellings(value))
    path = write(scratch, kind, csv_bytes(HEADER[kind], with_cell(kind, row, column, spelling)))
    assert_loads(kind, path, with_cell(kind, row, column, str(value).encode()))


def refused_cell(scratch, kind, row, column, bad):
    """Assert the real rows with one cell replaced by bad are refused naming its line and column -> the problem."""
    path = write(scratch, kind, csv_bytes(HEADER[kind], with_cell(kind, row, column, bad)))
    message = assert_refused(kind, path, line=row + 2)
    name_is = f"line {row + 2}: {LABEL_AND_PIXELS[kind][column]} is "
    assert name_is in message, message
    return message.split(name_is, 1)[1]


@PROPERTY
@given(data_=st.data(), kind=kinds)
def test_a_cell_of_text_or_blank_is_refused_naming_its_line_and_column(scratch, data_, kind):
    row, column = data_.draw(cells(kind))
    problem = refused_cell(scratch, kind, row, column, data_.draw(st.sampled_from(TEXT_OR_BLANK)))
    assert problem == "blank" or problem.endswith(", not a number")


@PROPERTY
@given(data_=st.data(), kind=kinds)
def test_a_quoted_number_is_text_and_refused_naming_its_line_and_column(scratch, data_, kind):
    """Quotes are literal (data.py reads with csv.QUOTE_NONE, so that a row is always one line): "3" is not 3."""
    row, column = data_.draw(cells(kind))
    quoted = b'"' + ROWS[kind][row][column] + b'"'
    assert refused_cell(scratch, kind, row, column, quoted).endswith(", not a number")


@PROPERTY
@given(data_=st.data(), kind=kinds)
def test_a_fraction_is_refused_naming_its_line_and_column(scratch, data_, kind):
    row, column = data_.draw(cells(kind))
    problem = refused_cell(scratch, kind, row, column, data_.draw(fractions(kind, column)))
    assert problem.endswith(", not a whole number")


@PROPERTY
@given(data_=st.data(), kind=kinds)
def test_a_number_out_of_range_is_refused_naming_its_line_and_column(scratch, data_, kind):
    """Negatives, a label of 10 or more, a pixel of 256 or more, up to 99999999999999999999, 1e400 and inf."""
    row, column = data_.draw(cells(kind))
    problem = refused_cell(scratch, kind, row, column, data_.draw(out_of_range(kind, column)))
    assert problem.endswith(f", expected 0..{highest(kind, column)}")


@PROPERTY
@given(data_=st.data(), kind=kinds, bad=junk)
def test_random_bytes_in_a_cell_are_refused_naming_its_line(scratch, data_, kind, bad):
    """Text, control characters, commas, bytes that are not UTF-8: whatever it is, line row + 2 is named."""
    row, column = data_.draw(cells(kind))
    path = write(scratch, kind, csv_bytes(HEADER[kind], with_cell(kind, row, column, bad)))
    assert_refused(kind, path, line=row + 2)


# ---- rows and lines ----

def _ragged(cells_, change):
    kind_of_change, k = change
    if kind_of_change == "drop":  # the last k cells
        return cells_[:-k]
    if kind_of_change == "drop middle":
        return cells_[:100] + cells_[100 + k:]
    if kind_of_change == "add":  # k more zeros, like a row of a wider image
        return cells_ + [b"0"] * k
    return cells_[:-1] + [cells_[-1] + b","]  # "trailing comma": one empty cell more


ragged_changes = st.tuples(st.sampled_from(["drop", "drop middle", "add", "trailing comma"]), st.integers(1, 3))


@PROPERTY
@given(data_=st.data(), kind=kinds)
def test_ragged_rows_are_refused_naming_the_first_and_its_width(scratch, data_, kind):
    changed = data_.draw(st.dictionaries(st.integers(0, N_ROWS[kind] - 1), ragged_changes, min_size=1, max_size=3))
    rows = [_ragged(cells_, changed[i]) if i in changed else cells_ for i, cells_ in enumerate(ROWS[kind])]
    first = min(changed)
    path = write(scratch, kind, csv_bytes(HEADER[kind], rows))
    message = assert_refused(kind, path, line=first + 2)
    width = len(LABEL_AND_PIXELS[kind])
    assert message.endswith(f"expected {width} columns, found {len(b','.join(rows[first]).split(b','))}")


@PROPERTY
@given(data_=st.data(), kind=kinds)
def test_blank_lines_are_refused_in_the_middle_and_harmless_at_the_end(scratch, data_, kind):
    """A blank (or all-space) line before row i is line i + 2; after the last row it changes nothing."""
    n = N_ROWS[kind]
    blanks = data_.draw(st.lists(st.tuples(st.integers(0, n), st.sampled_from([b"", b" ", b"\t", b"  "])),
                                 min_size=1, max_size=3))
    lines = [b",".join(cells_) for cells_ in ROWS[kind]]
    for before_row, blank in sorted(blanks, reverse=True):  # from the end, so that earlier indices still hold
        lines.insert(before_row, blank)
    path = write(scratch, kind, b"\n".join([HEADER[kind], *lines]) + b"\n")
    first = min(before_row for before_row, _ in blanks)
    if first == n:
        assert_loads(kind, path, ROWS[kind])
    else:
        assert assert_refused(kind, path, line=first + 2).endswith("found a blank line")


@PROPERTY
@given(data_=st.data(), kind=kinds, bom=st.booleans(), final_newline=st.booleans(),
       trailing=st.sampled_from([b"", b"\n", b"\r\n\r\n", b"\n \n"]), gzipped=st.booleans())
def test_line_endings_bom_and_final_newline_do_not_change_what_loads(scratch, data_, kind, bom, final_newline,
                                                                     trailing, gzipped):
    """\\n, \\r\\n and \\r, mixed line by line, with or without a BOM, final newline, trailing blank lines, gzip;
    and max_rows still takes exactly the first rows."""
    lines = REAL_LINES[kind]
    endings = data_.draw(st.lists(st.sampled_from([b"\n", b"\r\n", b"\r"]), min_size=len(lines),
                                  max_size=len(lines)))
    if not final_newline:
        endings[-1] = b""
    content = (b"\xef\xbb\xbf" if bom else b"") + b"".join(map(bytes.__add__, lines, endings))
    content += trailing if final_newline else b""
    max_rows = data_.draw(st.none() | st.integers(1, N_ROWS[kind] + 2))
    path = write(scratch, kind, gzip.compress(content) if gzipped else content)
    assert_loads(kind, path, ROWS[kind][:max_rows], max_rows=max_rows)


@PROPERTY
@given(data_=st.data(), kind=kinds, bad=st.sampled_from([b"abc", b"256", b"", b"\xff", b"0,0"]))
def test_line_numbers_count_cr_lf_and_crlf_alike(scratch, data_, kind, bad):
    """The line named is the same whichever mix of line endings the file has, even for bytes that are not UTF-8."""
    row, column = data_.draw(cells(kind))
    lines = [HEADER[kind], *(b",".join(cells_) for cells_ in with_cell(kind, row, column, bad))]
    endings = data_.draw(st.lists(st.sampled_from([b"\n", b"\r\n", b"\r"]), min_size=len(lines),
                                  max_size=len(lines)))
    path = write(scratch, kind, b"".join(map(bytes.__add__, lines, endings)))
    assert_refused(kind, path, line=row + 2)


@PROPERTY
@given(data_=st.data(), kind=kinds)
def test_of_several_bad_cells_the_first_in_reading_order_is_named(scratch, data_, kind):
    """The earliest row, and within it the leftmost column, whatever the order of the columns below."""
    bad_cells = data_.draw(st.lists(cells(kind), min_size=2, max_size=4, unique=True))
    rows = [list(cells_) for cells_ in ROWS[kind]]
    for row, column in bad_cells:
        rows[row][column] = data_.draw(not_a_whole_number_in_range(kind, column))
    row, column = min(bad_cells)
    path = write(scratch, kind, csv_bytes(HEADER[kind], rows))
    assert f"line {row + 2}: {LABEL_AND_PIXELS[kind][column]} is " in assert_refused(kind, path, line=row + 2)


@PROPERTY
@given(data_=st.data(), kind=kinds)
def test_of_several_bad_rows_the_first_is_named(scratch, data_, kind):
    """Whatever is wrong further down (bad cells, ragged rows, blank lines), the first bad line is the one named."""
    # The last row stays good, so that blank lines are never at the end (where they are harmless).
    faults = data_.draw(st.dictionaries(st.integers(0, N_ROWS[kind] - 2),
                                        st.sampled_from(["bad cell", "ragged", "blank"]), min_size=2, max_size=4))
    lines = []
    for i, cells_ in enumerate(ROWS[kind]):
        fault = faults.get(i)
        if fault == "bad cell":
            column = data_.draw(st.integers(0, len(cells_) - 1))
            cells_ = with_cell(kind, i, column, data_.draw(not_a_whole_number_in_range(kind, column)))[i]
        elif fault == "ragged":
            cells_ = _ragged(cells_, data_.draw(ragged_changes))
        lines.append(b"" if fault == "blank" else b",".join(cells_))
    path = write(scratch, kind, b"\n".join([HEADER[kind], *lines]) + b"\n")
    assert_refused(kind, path, line=min(faults) + 2)


# ---- the header, and the wrong kind of file ----

_name_text = st.text(st.characters(blacklist_characters=",\r\n\ufeff", blacklist_categories=["Cs"]), max_size=8)


@st.composite
def wrong_headers(draw, kind):
    names = list(LABEL_AND_PIXELS[kind])
    i = draw(st.integers(0, len(names) - 1))
    change = draw(st.sampled_from(["rename", "drop", "insert", "swap", "upper case", "quote", "pad"]))
    if change == "rename":
        names[i] = draw(_name_text.filter(lambda name: name != names[i]))
    elif change == "drop":
        del names[i]
    elif change == "insert":
        names.insert(i, draw(_name_text))
    elif change == "swap":
        j = draw(st.integers(0, len(names) - 1).filter(lambda j: j != i))
        names[i], names[j] = names[j], names[i]
    elif change == "upper case":
        names[i] = names[i].upper()
    elif change == "quote":
        names[i] = f'"{names[i]}"'
    else:
        names[i] = f" {names[i]}"
    return ",".join(names).encode()


@PROPERTY
@given(data_=st.data(), kind=kinds)
def test_a_wrong_header_is_refused_at_line_1(scratch, data_, kind):
    header = data_.draw(wrong_headers(kind))
    path = write(scratch, kind, csv_bytes(header, ROWS[kind]))
    assert_refused(kind, path, line=1)


@PROPERTY
@given(n_rows=st.integers(1, min(N_ROWS.values())), gzipped=st.booleans(),
       mix_up=st.sampled_from([("test", "train", "looks like a test file"),
                               ("train", "test", "looks like a training file")]))
def test_a_test_file_given_as_training_file_is_refused_and_vice_versa(scratch, n_rows, gzipped, mix_up):
    file_kind, loaded_as, words = mix_up
    content = csv_bytes(HEADER[file_kind], ROWS[file_kind][:n_rows])
    path = write(scratch, file_kind, gzip.compress(content) if gzipped else content)
    assert words in assert_refused(loaded_as, path, line=1)


# ---- gzip ----

@PROPERTY
@given(data_=st.data(), kind=kinds)
def test_a_gzip_cut_short_anywhere_is_refused(scratch, data_, kind):
    compressed = gzip.compress(CLEAN[kind], mtime=0)
    cut = data_.draw(st.integers(0, len(compressed) - 1))
    path = write(scratch, kind, compressed[:cut], suffix=".csv.gz")
    if cut < len(data._GZIP_MAGIC):  # too short to be recognised as gzip: read as a (bad) csv file
        assert_refused(kind, path, line=None if cut == 0 else 1)
    else:
        assert "gzip" in assert_refused(kind, path)


@settings(max_examples=10, deadline=None)
@given(kind=kinds, fraction=st.floats(0.5, 1, exclude_max=True), max_rows=st.integers(1, 5))
def test_with_max_rows_a_real_gzip_cut_after_its_first_rows_loads_them(scratch, kind, fraction, max_rows):
    """The shipped file cut anywhere in its second half: the first rows are long since complete."""
    shipped = (REPO / "digit-recognizer" / f"{kind}.csv.gz").read_bytes()
    path = write(scratch, kind, shipped[:int(fraction * len(shipped))], suffix=".csv.gz")
    assert_loads(kind, path, ROWS[kind][:max_rows], max_rows=max_rows)


@settings(max_examples=10, deadline=None)
@given(kind=kinds, cut=st.integers(2, 64), max_rows=st.integers(1, 5))
def test_with_max_rows_a_real_gzip_cut_within_its_header_is_refused(scratch, kind, cut, max_rows):
    with open(REPO / "digit-recognizer" / f"{kind}.csv.gz", "rb") as shipped:
        path = write(scratch, kind, shipped.read(cut), suffix=".csv.gz")
    assert "gzip" in assert_refused(kind, path, max_rows=max_rows)


# ---- the command line ----

def test_run_py_with_a_bad_training_file_says_one_line_exits_2_and_writes_nothing(tmp_path):
    (tmp_path / "test.csv").write_bytes(csv_bytes(HEADER["test"], ROWS["test"]))
    (tmp_path / "BAD.csv").write_bytes(csv_bytes(HEADER["train"],
                                                 with_cell("train", 4, 300, b"99999999999999999999")))
    result = run_py(["--train", "BAD.csv"], tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [result.stderr.strip()], result.stderr  # no traceback, no warnings
    assert result.stderr.startswith("error: BAD.csv line 6: pixel299 is "), result.stderr
    assert sorted(os.listdir(tmp_path)) == ["BAD.csv", "test.csv"]  # no submission.csv, no model/
