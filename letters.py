"""Pictures of what is no digit, for outlier exposure and the digit gate: letters and symbols in the fonts
matplotlib ships, scribbles, word pieces, blobs, specks and noise, each made into a 28x28 picture the way a photo's
digit is made into one (photo.to_mnist); and digits remade that way, for the gate to learn as digits.

    letter_pictures()              -> float32 [N, 28, 28, 1] in [0, 1], and the character each shows
    non_digit_pictures(n, seed)    -> the letters (each a few times) and n more of the other kinds (the digit
                                      gate's no digits)
    remade_digits(digits, n, seed) -> n of the digits as a photo's come out of photo.to_mnist

A network trained on digits alone has to call an A a digit (a 4, surely); shown letters as what is no digit
(train.Recipe.outlier_exposure), it learns to be unsure of them, and predict.py answers "?". Letters a digit
can look like (O, I, S, Z, B, G, q ...) are left out: they must stay free to be read as digits.
"""
import functools
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from skimage import filters

from photo import to_mnist

FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
FONTS = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
         "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSerif.ttf",
         "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "STIXGeneral.ttf", "STIXGeneralItalic.ttf",
         "STIXGeneralBol.ttf", "cmr10.ttf", "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf"]
LOOK_LIKE_DIGITS = "OoQDIlijJTZzSsBbGgqa"  # 0, 1, 7, 2, 5, 8, 6, 9: a digit may be written like these
CHARACTERS = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#*&@%+$" if c not in LOOK_LIKE_DIGITS]
FONT_SIZE = 90       # pixels: the character is drawn this large, then shrunk to MNIST's 20-pixel box
STROKES = [0, 4]     # each character as the font draws it, and with its outline widened by 4 pixels (a felt pen)


@functools.lru_cache(maxsize=1)
def letter_pictures():
    """Each character of CHARACTERS in each font of FONTS at each stroke width of STROKES -> (float32
    [N, 28, 28, 1] in [0, 1], light ink on black as MNIST's digits; the characters [N], str). Drawn afresh in
    a few seconds, the same every time; a font this matplotlib lacks is skipped."""
    pictures, shown = [], []
    for name in FONTS:
        if not (FONT_DIR / name).exists():
            continue
        font = ImageFont.truetype(str(FONT_DIR / name), FONT_SIZE)
        for character in CHARACTERS:
            for stroke in STROKES:
                canvas = Image.new("L", (2 * FONT_SIZE + 20, 2 * FONT_SIZE + 20), 0)
                ImageDraw.Draw(canvas).text((FONT_SIZE // 2, FONT_SIZE // 3), character, fill=255, font=font,
                                            stroke_width=stroke, stroke_fill=255)
                ink = np.asarray(canvas, np.float32) / 255
                if ink.max() > 0.5:  # else a character the font does not have
                    pictures.append(to_mnist(ink))
                    shown.append(character)
    return np.stack(pictures)[..., None], np.array(shown)


# ---- what is no digit, for the digit gate (model.DigitGate, train.train_digit_gate) ------------------------
# Each generator: (rng, n) -> float32 [n, 28, 28] in [0, 1], made into MNIST's 28x28 as photo.to_mnist makes a
# photo's digit. Letters as fonts draw them (letter_pictures), and shapes drawn here at random: none of them is
# a letter written by hand, so that benchmarks/photos.py's pen-stroke letters measure letters never shown so.

CANVAS = 120  # pixels: the scribbles, blobs and specks are drawn on a square this wide, then made 28x28


def scribbles(rng, n):
    """Pen strokes with random dynamics: 1-3 strokes, each a pen moving at a varying speed whose heading turns
    at a rate that itself drifts at random (straight runs, hooks, loops, zigzags), 2-14 pixels wide."""
    def draw(pen):
        for _ in range(rng.integers(1, 4)):
            position, heading = rng.uniform(20, 100, 2), rng.uniform(0, 2 * np.pi)
            turning, points = rng.normal(0, 0.3), []
            for _ in range(rng.integers(8, 40)):
                points.append(tuple(position))
                turning = 0.8 * turning + rng.normal(0, 0.25) + (rng.normal(0, 1.5) if rng.random() < 0.1 else 0)
                heading += turning
                position = np.clip(position + rng.uniform(2, 9) * np.array([np.cos(heading), np.sin(heading)]), 0,
                                   CANVAS - 1)
            pen.line(points, fill=255, width=int(rng.integers(2, 15)), joint="curve")
    return _drawn(n, draw)


def word_pieces(rng, n):
    """2-4 characters of CHARACTERS in a row in one of FONTS, a window of 1.5 characters or more of them."""
    fonts = [name for name in FONTS if (FONT_DIR / name).exists()]
    pictures = []
    while len(pictures) < n:
        font = ImageFont.truetype(str(FONT_DIR / fonts[rng.integers(len(fonts))]), 48)
        text = "".join(rng.choice(CHARACTERS, rng.integers(2, 5)))
        canvas = Image.new("L", (48 * len(text) + 40, 100), 0)
        ImageDraw.Draw(canvas).text((20, 20), text, fill=255, font=font, stroke_width=int(rng.integers(0, 4)),
                                    stroke_fill=255)
        ink = np.asarray(canvas, np.float32) / 255
        columns = np.flatnonzero(ink.max(axis=0) > 0.5)
        if len(columns) < 10:
            continue
        left, right = columns.min(), columns.max() + 1
        width = int(rng.uniform(min(1.5 / len(text), 1.0), 1.0) * (right - left))
        start = int(rng.integers(left, right - width + 1))
        piece = ink[:, start:start + width]
        if piece.max() > 0.5:
            pictures.append(to_mnist(piece))
    return np.stack(pictures)


def blobs(rng, n):
    """1-3 filled ellipses and polygons, overlapping or apart, none much longer than wide (an outlined
    ellipse is a 0, a long thin blob a 1)."""
    def draw(pen):
        for _ in range(rng.integers(1, 4)):
            x, y = rng.uniform(10, 110, 2)
            w = rng.uniform(8, 60)
            h = w * rng.uniform(0.5, 2.0)
            if rng.random() < 0.5:
                pen.ellipse([x - w, y - h, x + w, y + h], fill=255)
            else:
                corners = [tuple(p) for p in rng.uniform([x - w, y - h], [x + w, y + h], (rng.integers(3, 7), 2))]
                pen.polygon(corners, fill=255)
    return _drawn(n, draw)


def specks(rng, n):
    """2-12 dots of 1-6 pixels scattered over the canvas (dust a photo's cleaning let through)."""
    def draw(pen):
        for _ in range(rng.integers(2, 13)):
            x, y, radius = *rng.uniform(0, CANVAS, 2), rng.uniform(1, 6)
            pen.ellipse([x - radius, y - radius, x + radius, y + radius], fill=255)
    return _drawn(n, draw)


def noise(rng, n):
    """Uniform noise, noise blotches (coarse noise enlarged and cut at a random level), or nothing (a blank)."""
    pictures = np.zeros([n, 28, 28], np.float32)
    for picture in pictures[: n - n // 8]:  # an eighth stay blank
        if rng.random() < 0.5:
            picture[:] = rng.uniform(0, 1, (28, 28)) * (rng.random((28, 28)) < rng.uniform(0.05, 1))
        else:
            side = int(rng.integers(3, 10))
            coarse = Image.fromarray(rng.uniform(0, 1, (side, side)).astype(np.float32))
            smooth = np.asarray(coarse.resize((28, 28), Image.Resampling.BICUBIC))
            picture[:] = np.clip((smooth - rng.uniform(0.3, 0.8)) * 4, 0, 1)
    return pictures


def remade_digits(digits, n, seed=0):
    """n of the digits (float32 [N, 28, 28, 1], MNIST's) as a photo's would come out of photo.to_mnist: each
    enlarged to 40-200 pixels tall, its ink blurred a little and darkened or not, and made 28x28 again. The
    digit gate learns these as digits too: else it would tell what photo.to_mnist made (every letter it learns)
    from what it did not (every training digit), and refuse the photographed digits."""
    rng = np.random.default_rng(seed)
    pictures = []
    for digit in digits[rng.choice(len(digits), min(n, len(digits)), replace=False), ..., 0]:
        rows, columns = np.nonzero(digit > 0.05)
        box = digit[rows.min():rows.max() + 1, columns.min():columns.max() + 1]
        height = int(rng.integers(40, 201))
        width = max(1, round(box.shape[1] * height / box.shape[0]))
        ink = Image.fromarray(np.float32(box)).resize((width, height), Image.Resampling.BICUBIC)
        ink = filters.gaussian(np.asarray(ink), sigma=rng.uniform(0, 0.02) * height)
        pictures.append(to_mnist(np.clip(ink * rng.uniform(1, 2), 0, 1)))
    return np.stack(pictures)[..., None]


def _drawn(n, draw):
    """n pictures, each drawn by draw(pen) on a blank CANVAS-wide square and made 28x28 as photo.to_mnist makes a
    photo's digit (all paper if draw left no ink) -> float32 [n, 28, 28]."""
    pictures = []
    for _ in range(n):
        canvas = Image.new("L", (CANVAS, CANVAS), 0)
        draw(ImageDraw.Draw(canvas))
        ink = np.asarray(canvas, np.float32) / 255
        pictures.append(to_mnist(ink) if ink.max() > 0.5 else np.zeros([28, 28], np.float32))
    return np.stack(pictures)


NON_DIGITS = 8000  # run.py's digit gate learns from at most this many of NON_DIGIT_KINDS (and every letter)
# The font letters are few beside the drawn shapes, and letters are what the gate finds hard to refuse: each is
# shown this many times, so that they are about two fifths of what the gate learns as no digit.
LETTER_COPIES = 4
NON_DIGIT_KINDS = {"scribbles": scribbles, "word pieces": word_pieces, "blobs": blobs, "specks": specks,
                   "noise": noise}


def non_digit_pictures(n, seed=0):
    """What the digit gate learns as no digit -> float32 [N, 28, 28, 1]: every picture of letter_pictures,
    LETTER_COPIES times over, and n more shared among NON_DIGIT_KINDS (scribbles half of them, the other kinds an
    eighth each)."""
    rng = np.random.default_rng(seed)
    shares = {"scribbles": n // 2, "word pieces": n // 8, "blobs": n // 8, "specks": n // 8}
    shares["noise"] = n - sum(shares.values())
    made = [NON_DIGIT_KINDS[kind](rng, count) for kind, count in shares.items() if count]
    letters = np.tile(letter_pictures()[0], (LETTER_COPIES, 1, 1, 1))
    return np.concatenate([letters, *[pictures[..., None] for pictures in made]])
