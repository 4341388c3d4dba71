"""Fixtures shared by the tests: small slices of the real Digit Recognizer files shipped in the repo."""
import gzip
import itertools
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def write_rows(kind, n_rows, path):
    """Write the header and the first n_rows rows of the shipped {kind}.csv.gz to path, as plain csv; -> path."""
    with gzip.open(REPO / "digit-recognizer" / f"{kind}.csv.gz", "rb") as shipped:
        Path(path).write_bytes(b"".join(itertools.islice(shipped, n_rows + 1)))
    return Path(path)


def run_py(args, cwd, timeout=600, env=None):
    """python run.py ARGS in the directory cwd, as a user runs it -> subprocess.CompletedProcess (text)."""
    return subprocess.run([sys.executable, str(REPO / "run.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def draw_letter(strokes):
    """A letter as pen strokes in a unit box (x right, y down), written 150 pixels tall with a pen 16 wide, dark
    on a white 300x220 canvas -> a Pillow image."""
    from PIL import Image, ImageDraw
    canvas = Image.new("L", (300, 220), 255)
    for stroke in strokes:
        ImageDraw.Draw(canvas).line([(80 + 120 * x, 35 + 150 * y) for x, y in stroke], fill=0, width=16, joint="curve")
    return canvas


@pytest.fixture
def repo_dir():
    return REPO


@pytest.fixture
def small_train_csv(tmp_path):
    return write_rows("train", 300, tmp_path / "train.csv")


@pytest.fixture
def small_test_csv(tmp_path):
    return write_rows("test", 200, tmp_path / "test.csv")


@pytest.fixture(scope="session")
def real_digits():
    """(images, labels) of the first 500 training digits, loaded as the project loads them."""
    import data
    return data.load_train(REPO / "digit-recognizer" / "train.csv.gz", max_rows=500)


def train_with(model, split, seed=0, options=None, **recipe):
    """train.train on split (train_images, train_labels, val_images, val_labels) by a train.Recipe of these
    fields, one-cycle unless a schedule is given, quietly unless options say otherwise -> the history."""
    import train
    recipe = train.Recipe(**{"schedule": "one_cycle", **recipe})
    return train.train(model, split, recipe, seed, options or train.RunOptions(verbose=False))
