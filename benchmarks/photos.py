"""How well does predict.py read photos as people take them, and say "?" for what is not a digit?

    python run.py                          # a model that leaves a tenth of train.csv's digits unseen
    python benchmarks/photos.py            # a few minutes on that model/saved_model
    python benchmarks/photos.py --quick    # a smoke run in seconds; its numbers mean nothing

The digits are real: train.csv digits from the validation split of that run (data.split_train_validation with its
percent_data_for_training and seed, read from model/settings.json), which the model did not train on. Each is
enlarged and written onto a rendered photo under one condition: clean; dim; a lamp to one side; ruled paper;
squared paper; specks; a small digit in a 3000x2250 photo; blue ballpoint; pencil; JPEG at quality 8-20; and all
of the hard ones at once. Numbers of 2 to 5 such digits are written in a row (gaps from slightly touching to wide)
under a condition drawn at random. Pictures that are no digit: blank paper (plain, dim, lamp-lit, ruled, squared),
specks alone, noise (uniform, Gaussian, blotches) and letter-like pictures (handwritten-style capitals that are
not shaped like digits: A E F H K M N R W X, and a few symbols). A network trained with --outlier_exposure is
taught letters as no digit (letters.py): these capitals and symbols among others, but printed in fonts, not
written with a shaky pen as here; docs/photos.md gives what a network taught none of these capitals refuses.
The digit gate (run.py's, model.DigitGate) learns what is no digit from letters.py: letters and symbols as fonts
draw them, scribbles, word pieces, blobs, specks and noise; never a letter written with a pen, as here, so the
letter-like row measures letters in a style the gate never saw. Each row is also given without the gate (the
same readings at --min_digit_probability 0), and a last row reads the held-out digits as train.csv holds them,
with no photo.

predict.MIN_CONFIDENCE, predict.MAX_NOVELTY and predict.MIN_DIGIT_PROBABILITY are set on the first half of the
validation digits, never on the second. The calibration table shows them there, on photos and not-a-digit pictures
of one seed: the shares answered at each threshold, and the lowest novelty and highest digit probability that still
answer 99% of those digits (the gate's limit was set by a stricter rule on more of them: docs/photos.md). Every
other row is measured on the second half and pictures of another seed, letters drawn afresh. Prints a table,
whether each target below is met, and writes benchmarks/results/photos.json (not tracked by git; the measurements
the docs cite are kept in docs/results/).

There is no "before" column: the benchmark measures the code in the tree, and the single-threshold preprocessing
that photo.py's cleaning replaced is not in it (running an old commit's code out of git would measure something no
user runs). What the cleaning gained over it, when it came in, is recorded in docs/photos.md.

--quick is a smoke run: a handful of photos, on a model trained on a few rows; it checks that the benchmark runs
end to end, its figures mean nothing, and it judges no target.
"""
# ---- settings: each is also a flag, e.g. --per_condition 100 ----
per_condition = 100      # photos of single digits per condition (and not-a-digit pictures per kind)
per_length = 50          # numbers of each length 2..5
letter_like = 1000       # letter-like pictures: more than per_condition, since their target (95%) is judged to a
                         # point, which 100 pictures cannot tell (one picture is a point)
seed = 0                 # renders: this seed measures, seed + 1 calibrates
model = "model/saved_model"   # a SavedModel of python run.py, whose model/settings.json says what it left unseen
out = ""                 # the JSON's path (relative to the repo); default: benchmarks/results/photos.json,
                         # or photos_quick.json with --quick: a smoke run never overwrites a measurement
quick = False            # a smoke run: 2000 rows, 2 photos a condition, 1 number a length
# ------------------------------------------------------------------------------
import io
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import predict  # noqa: E402  (the repo's modules are importable only from here on)
import files  # noqa: E402
import flags  # noqa: E402

HARD = ["dim", "lamp", "ruled paper", "squared paper", "specks", "small in a large photo", "blue ink", "pencil",
        "JPEG quality 8-20", "all at once"]
CONDITIONS = ["clean", *HARD]
NOT_DIGITS = ["blank paper", "specks alone", "noise", "letter-like"]
AS_IN_TRAIN_CSV = "28x28 digit, no photo"
SMOKE_RUN = ("smoke run (--quick): a handful of photos of 2,000 rows' digits; it checks that the benchmark runs, "
             "its figures mean nothing, and it judges no target")


# ---- rendering ---------------------------------------------------------------------------------------------

GRAIN = 0.008 * np.random.default_rng(0).standard_normal((1024, 1024, 1), dtype=np.float32)


def blank_page(rng, height, width, tint=None):
    """White-ish paper, float32 [h, w, 3] in [0, 1], a little uneven as real paper is (its grain a tile of
    noise, rolled at random: drawing fresh noise for every 3000x2250 photo would be most of the time spent)."""
    if tint is None:
        tint = rng.uniform(0.88, 1.0) * np.array([1, rng.uniform(0.97, 1), rng.uniform(0.9, 1)], np.float32)
    grain = np.roll(GRAIN, (rng.integers(1024), rng.integers(1024)), axis=(0, 1))
    grain = np.tile(grain, (-(-height // 1024), -(-width // 1024), 1))[:height, :width]
    page = grain + tint
    return np.clip(page, 0, 1, out=page)


def enlarged_ink(digit, height):
    """A 28x28 digit (ink 1 on 0) -> its ink box, enlarged so that it is `height` pixels tall, float32."""
    rows, columns = np.nonzero(digit > 0.05)
    box = digit[rows.min():rows.max() + 1, columns.min():columns.max() + 1]
    width = max(1, round(box.shape[1] * height / box.shape[0]))
    ink = Image.fromarray(np.float32(box)).resize((width, height), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(ink), 0, 1)


def write(page, ink, top, left, colour, strength=1.0):
    """Lay ink (float [h, w] in [0, 1]) on the page at (top, left) in colour (RGB in [0, 1]), in place."""
    h, w = ink.shape
    alpha = (strength * ink)[..., None]
    region = page[top:top + h, left:left + w]
    region[:] = region * (1 - alpha) + np.asarray(colour, np.float32) * alpha


def draw_lines(page, rng, vertical):
    """Ruled paper's horizontal lines (and squared paper's vertical ones too), as dark as a pale pen."""
    height, width = page.shape[:2]
    pitch, thickness = rng.integers(22, 45), rng.integers(1, 4)
    colour = rng.choice([[0.45, 0.55, 0.8], [0.4, 0.4, 0.45], [0.3, 0.45, 0.6]])
    strength = rng.uniform(0.5, 0.9)
    line = np.zeros((height, width), np.float32)
    offset = rng.integers(0, pitch)
    for y in range(offset, height, pitch):
        line[y:y + thickness] = 1
    if vertical:
        for x in range(offset, width, pitch):
            line[:, x:x + thickness] = 1
    write(page, line, 0, 0, colour, strength)


def sprinkle_specks(page, rng, count, avoid=None):
    """`count` dark specks (dust, pen dots) 1-4 pixels across, anywhere but inside the box `avoid`."""
    height, width = page.shape[:2]
    specks = Image.new("L", (width, height), 0)
    pen = ImageDraw.Draw(specks)
    placed = 0
    while placed < count:
        y, x, radius = rng.integers(0, height), rng.integers(0, width), rng.uniform(0.7, 2.5)
        if avoid and avoid[0] - 6 <= y <= avoid[2] + 6 and avoid[1] - 6 <= x <= avoid[3] + 6:
            continue
        pen.ellipse([x - radius, y - radius, x + radius, y + radius], fill=255)
        placed += 1
    write(page, np.asarray(specks, np.float32) / 255, 0, 0, [0.1, 0.1, 0.12])


def light(page, rng, kind):
    """Dim light (all of it darker, and noisier) or a lamp to one side (bright near it, dark far away)."""
    height, width = page.shape[:2]
    if kind == "dim":
        field = np.full((height, width), rng.uniform(0.12, 0.35), np.float32)
    else:
        side = rng.integers(4)
        y, x = [(-0.3, rng.uniform(0, 1)), (1.3, rng.uniform(0, 1)), (rng.uniform(0, 1), -0.3),
                (rng.uniform(0, 1), 1.3)][side]
        rows, columns = np.ogrid[0:height, 0:width]
        distance = np.hypot(np.float32(rows / height - y), np.float32(columns / width - x))
        field = 0.2 + 0.85 / (1 + (distance / np.float32(rng.uniform(0.3, 0.6))) ** 2)
    page *= np.clip(field, 0, 1)[..., None]
    page += (0.012 if kind == "dim" else 0.008) * rng.standard_normal(page.shape, dtype=np.float32)
    np.clip(page, 0, 1, out=page)


def photo(rng, digits, condition):
    """digits: 28x28 digits (one, or a number's) -> (a PIL image of them written in a row under the
    condition, its format, JPEG quality)."""
    small = condition == "small in a large photo"
    everything = condition == "all at once"
    height = int(rng.integers(60, 121) if small else rng.integers(90, 200))
    page, box = written_row(rng, digits, height, condition)
    if condition == "specks" or everything:
        sprinkle_specks(page, rng, int(rng.integers(8, 40)), avoid=box)
    if condition in ("dim", "lamp") or everything:
        light(page, rng, "dim" if condition == "dim" else "lamp")
    image = Image.fromarray((page * 255 + 0.5).astype(np.uint8))
    if small:  # the page so far is the part of a 3000x2250 photo around the digit
        paper = (np.clip(blank_page(rng, 1024, 1024, tint=page[0, 0]), 0, 1) * 255 + 0.5).astype(np.uint8)
        large = Image.fromarray(np.tile(paper, (3, 3, 1))[:2250, :3000])  # the same paper, tiled
        large.paste(image, (int(rng.integers(0, 3000 - image.width)), int(rng.integers(0, 2250 - image.height))))
        image = large
    if condition == "clean":
        return image, "PNG", None
    quality = int(rng.integers(8, 21)) if condition == "JPEG quality 8-20" else (
        int(rng.integers(30, 60)) if everything else 90)
    return image, "JPEG", quality


def written_row(rng, digits, height, condition):
    """A page with the digits written on it in a row, each about `height` pixels tall, with gaps between
    them from slightly overlapping to wide -> (page float32 [h, w, 3], the row's box (top, left, bottom, right))."""
    inks = [enlarged_ink(digit, int(height * rng.uniform(0.9, 1.1))) for digit in digits]
    gaps = [int(height * rng.uniform(-0.05, 0.3)) for _ in inks[1:]]
    row_width = sum(ink.shape[1] for ink in inks) + sum(gaps)
    page_h, page_w = int(height * rng.uniform(1.6, 2.6)), int(row_width + height * rng.uniform(0.6, 1.6))
    page = blank_page(rng, page_h, page_w)
    margin = int(0.1 * height)  # the digits are on the page, not cut by its edge
    top = int(rng.integers(margin, page_h - 1.3 * height))
    left = int(rng.integers(margin, page_w - row_width - margin))
    everything = condition == "all at once"
    if condition in ("ruled paper", "squared paper") or everything:
        draw_lines(page, rng, vertical=condition != "ruled paper")
    colour, strength = [rng.uniform(0.0, 0.15)] * 3, 1.0
    if condition == "blue ink" or everything:
        colour = [rng.uniform(0.05, 0.25), rng.uniform(0.1, 0.3), rng.uniform(0.5, 0.8)]
        strength = rng.uniform(0.75, 0.95)
    if condition == "pencil":
        colour, strength = [rng.uniform(0.25, 0.4)] * 3, rng.uniform(0.55, 0.8)
    x, bottom = left, top
    for ink, gap in zip(inks, [0, *gaps]):
        x += gap
        y = top + int(height * rng.uniform(0, 0.1))
        write(page, ink, y, x, colour, strength)
        x += ink.shape[1]
        bottom = max(bottom, y + ink.shape[0])
    return page, (top, left, bottom, x)


def not_a_digit(rng, kind):
    """A picture with no digit in it -> (PIL image, format, JPEG quality)."""
    height, width = int(rng.integers(200, 500)), int(rng.integers(200, 600))
    page = blank_page(rng, height, width)
    if kind == "blank paper":
        variant = rng.integers(5)
        if variant in (1, 2):
            light(page, rng, "dim" if variant == 1 else "lamp")
        if variant in (3, 4):
            draw_lines(page, rng, vertical=variant == 4)
    elif kind == "specks alone":
        sprinkle_specks(page, rng, int(rng.integers(1, 40)))
    elif kind == "noise":
        page = noise(rng, height, width)
    else:
        letter = scribble_letter(rng, int(min(height, width) * rng.uniform(0.4, 0.7)))
        page = blank_page(rng, max(height, letter.shape[0] + 20), max(width, letter.shape[1] + 20))
        top = int(rng.integers(0, page.shape[0] - letter.shape[0]))
        left = int(rng.integers(0, page.shape[1] - letter.shape[1]))
        write(page, letter, top, left, [rng.uniform(0.0, 0.15)] * 3 if rng.random() < 0.7 else [0.1, 0.2, 0.7])
        if rng.random() < 0.3:
            light(page, rng, "lamp")
    image = Image.fromarray((np.clip(page, 0, 1) * 255 + 0.5).astype(np.uint8))
    return (image, "PNG", None) if rng.random() < 0.5 else (image, "JPEG", 85)


def noise(rng, height, width):
    """Uniform noise, Gaussian noise on grey, or blotches (noise at a sixteenth of the size, enlarged)."""
    kind = rng.integers(3)
    if kind == 0:
        return rng.uniform(0, 1, (height, width, 1)).repeat(3, axis=-1).astype(np.float32)
    if kind == 1:
        return np.clip(rng.normal(0.5, rng.uniform(0.1, 0.3), (height, width, 3)), 0, 1).astype(np.float32)
    coarse = rng.uniform(0, 1, (max(2, height // 16), max(2, width // 16))).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))[..., None] \
        .repeat(3, axis=-1).clip(0, 1)


# Capitals as pen strokes in a unit box (x right, y down): letters shaped like no digit, and a few symbols.
LETTERS = {
    "A": [[(0, 1), (0.5, 0), (1, 1)], [(0.22, 0.6), (0.78, 0.6)]],
    "E": [[(1, 0), (0, 0), (0, 1), (1, 1)], [(0, 0.5), (0.75, 0.5)]],
    "F": [[(1, 0), (0, 0), (0, 1)], [(0, 0.5), (0.75, 0.5)]],
    "H": [[(0, 0), (0, 1)], [(1, 0), (1, 1)], [(0, 0.5), (1, 0.5)]],
    "K": [[(0, 0), (0, 1)], [(1, 0), (0, 0.55), (1, 1)]],
    "M": [[(0, 1), (0, 0), (0.5, 0.6), (1, 0), (1, 1)]],
    "N": [[(0, 1), (0, 0), (1, 1), (1, 0)]],
    "R": [[(0, 1), (0, 0), (0.7, 0), (0.9, 0.15), (0.9, 0.35), (0.7, 0.5), (0, 0.5)], [(0.4, 0.5), (1, 1)]],
    "W": [[(0, 0), (0.25, 1), (0.5, 0.4), (0.75, 1), (1, 0)]],
    "X": [[(0, 0), (1, 1)], [(1, 0), (0, 1)]],
    "#": [[(0.3, 0), (0.2, 1)], [(0.8, 0), (0.7, 1)], [(0, 0.33), (1, 0.33)], [(0, 0.67), (1, 0.67)]],
    "*": [[(0.5, 0), (0.5, 1)], [(0.07, 0.25), (0.93, 0.75)], [(0.93, 0.25), (0.07, 0.75)]],
}


def scribble_letter(rng, height):
    """A capital or symbol from LETTERS, written as by hand (shaky points, a slant, a pen of random width)
    -> its ink, float32 [height, about height] in [0, 1]."""
    strokes = LETTERS[list(LETTERS)[rng.integers(len(LETTERS))]]
    width, slant = height * rng.uniform(0.6, 1.0), rng.uniform(-0.25, 0.25)
    pen = max(2, int(height * rng.uniform(0.05, 0.12)))
    margin = pen + int(abs(slant) * height) + 2
    canvas = Image.new("L", (int(width) + 2 * margin, height + 2 * margin), 0)
    drawing = ImageDraw.Draw(canvas)
    for stroke in strokes:
        points = [(margin + x * width + slant * (0.5 - y) * height + rng.normal(0, 0.03) * height,
                   margin + y * height + rng.normal(0, 0.03) * height) for x, y in stroke]
        drawing.line(points, fill=255, width=pen, joint="curve")
    canvas = canvas.filter(ImageFilter.GaussianBlur(1))
    return np.asarray(canvas, np.float32) / 255


def encoded(image, image_format, quality):
    """The picture as the bytes of a file, so that predict reads it as it would a user's."""
    buffer = io.BytesIO()
    image.save(buffer, image_format, **({"quality": quality} if quality else {}))
    buffer.seek(0)
    return buffer


# ---- measuring ---------------------------------------------------------------------------------------------

def measure(picture, classify):
    """One rendered picture -> {"digits": what predict.read answers, "pieces": [[the likeliest digit, its
    probability, the novelty, the digit gate's probability] of each digit it found] (none: no digit-like ink)}."""
    reading = predict.read(encoded(*picture), classify)
    pieces = [[int(p.argmax()), float(p.max()), float(n), float(g)]
              for p, n, g in zip(reading.probabilities, reading.novelty, reading.digit_probability)]
    return dict(digits=reading.digits, pieces=pieces)


def answer(pieces, min_confidence=predict.MIN_CONFIDENCE, max_novelty=predict.MAX_NOVELTY,
           min_digit_probability=predict.MIN_DIGIT_PROBABILITY):
    """What predict.read answers for a picture whose digits are pieces (measure's) at these limits: each piece
    likely, familiar and a digit to the gate (predict.digits_to_the_gate) is its digit, the others ?; ? alone if
    none is. The pieces do not depend on the limits, so one reading gives the answer at any of them (the same photos
    with and without the gate)."""
    gate = predict.digits_to_the_gate([g for *_, g in pieces], min_digit_probability)
    sure = [p >= min_confidence and n <= max_novelty and passes for (_, p, n, _), passes in zip(pieces, gate)]
    if not any(sure):
        return "?"
    return "".join(str(d) if ok else "?" for (d, *_), ok in zip(pieces, sure))


def row(kind, condition, results, truths):
    """Figures for one line of the table: results from measure, truths the right answers (None: no digit);
    with the digit gate (as predict.read answers) and, on the same readings, without it."""
    def figures(min_digit_probability):
        answers = [answer(result["pieces"], min_digit_probability=min_digit_probability) for result in results]
        summary = dict(answered=float(np.mean([a != "?" for a in answers])) if results else 0.0)
        if truths[0] is None:
            summary["not_a_digit"] = float(np.mean([a == "?" for a in answers]))
        else:
            summary["right"] = float(np.mean([a == t for a, t in zip(answers, truths)]))
        return summary
    return dict(kind=kind, condition=condition, n=len(results), **figures(predict.MIN_DIGIT_PROBABILITY),
                without_gate=figures(0.0), truths=truths, pieces=[result["pieces"] for result in results])


def single_digits(rng, digits, labels, n, classify):
    """{condition: (results, truths)} for n photos of single digits under each condition."""
    measured = {}
    for condition in CONDITIONS:
        chosen = rng.choice(len(digits), n, replace=False)
        results = [measure(photo(rng, [digits[k]], condition), classify) for k in chosen]
        measured[condition] = results, [str(labels[k]) for k in chosen]
        print(f"  {condition}: done", flush=True)
    return measured


def numbers(rng, digits, labels, n, classify):
    """{length: (results, truths)} for n numbers of each length 2..5, each under a random condition."""
    measured = {}
    for length in range(2, 6):
        results, truths = [], []
        for _ in range(n):
            chosen = rng.choice(len(digits), length, replace=False)
            condition = CONDITIONS[rng.integers(len(CONDITIONS))]
            results.append(measure(photo(rng, [digits[k] for k in chosen], condition), classify))
            truths.append("".join(str(labels[k]) for k in chosen))
        measured[length] = results, truths
    return measured


def no_digits(rng, n, classify, n_letter_like=None):
    """{kind: results} for n pictures of each kind that holds no digit (n_letter_like of the letter-like, if
    given)."""
    counts = {kind: n_letter_like if kind == "letter-like" and n_letter_like is not None else n for kind in NOT_DIGITS}
    return {kind: [measure(not_a_digit(rng, kind), classify) for _ in range(counts[kind])] for kind in NOT_DIGITS}


def as_in_train_csv(digits, labels, classify):
    """The 28x28 digits themselves, as train.csv holds them (no photo): (results, truths) as measure's."""
    said = classify(digits)
    results = [dict(pieces=[[int(p.argmax()), float(p.max()), float(n), float(g)]])
               for p, n, g in zip(said["probabilities"], said["novelty"], said["digit_probability"])]
    return results, [str(label) for label in labels]


def calibrate(digit_pieces, other_pieces):
    """The share of digits answered and of no-digit pictures refused at each threshold: of confidence (with no
    limit on novelty or the gate), of novelty (at predict.MIN_CONFIDENCE, no gate) and of the gate's digit
    probability (at predict.MIN_CONFIDENCE and MAX_NOVELTY); and the highest confidence, the lowest novelty and
    the highest digit probability that still answer 99 % of the digits."""
    def rates(*limits):
        return dict(digits_answered=float(np.mean([answer(p, *limits) != "?" for p in digit_pieces])),
                    others_refused=float(np.mean([answer(p, *limits) == "?" for p in other_pieces])))
    confidence = [dict(threshold=float(t), **rates(t, np.inf, 0.0)) for t in np.round(np.arange(0.05, 1, 0.05), 2)]
    novelty = [dict(threshold=float(t), **rates(predict.MIN_CONFIDENCE, t, 0.0))
               for t in np.round(np.arange(1, 2.51, 0.05), 2)]
    gate = [dict(threshold=float(t), **rates(predict.MIN_CONFIDENCE, predict.MAX_NOVELTY, t))
            for t in np.round([*np.arange(0.05, 0.95, 0.05), *np.arange(0.95, 0.996, 0.01)], 2)]
    keeping = [line["threshold"] for line in confidence if line["digits_answered"] >= 0.99]
    familiar = [line["threshold"] for line in novelty if line["digits_answered"] >= 0.99]
    gated = [line["threshold"] for line in gate if line["digits_answered"] >= 0.99]
    return dict(confidence=confidence, novelty=novelty, gate=gate, min_confidence=max(keeping) if keeping else None,
                max_novelty=min(familiar) if familiar else None,
                min_digit_probability=max(gated) if gated else None)


def percent(value):
    return "-" if value is None else f"{100 * value:.1f}%"


def print_table(rows):
    print(f"\n{'':21} {'condition':24} {'n':>5} {'right':>7} {'answered':>9} {'?':>7}   without the gate: "
          f"{'right':>7} {'?':>7}")
    for line in rows:
        before = line["without_gate"]
        refused, refused_before = (figures.get("not_a_digit", 1 - figures["answered"]) for figures in (line, before))
        print(f"{line['kind']:21} {line['condition']:24} {line['n']:5} {percent(line.get('right')):>7} "
              f"{percent(line['answered']):>9} {percent(refused):>7}   "
              f"{'':18}{percent(before.get('right')):>7} {percent(refused_before):>7}")
    print("right: read exactly (a ? counts as wrong); answered: not ?; without the gate: the same readings at "
          "--min_digit_probability 0")


def print_calibration(calibration, n_digits, n_others):
    print(f"\ncalibration (first half of the digits: {n_digits} photos under all conditions; {n_others} "
          f"pictures of no digit, of another seed), the share answered at each threshold:")
    print(f"{'confidence':>10} {'digits answered':>16} {'no digit: ?':>12}    {'novelty':>8} {'digits answered':>16} "
          f"{'no digit: ?':>12}  (novelty at confidence {predict.MIN_CONFIDENCE})")
    for by_confidence, by_novelty in itertools.zip_longest(calibration["confidence"], calibration["novelty"]):
        left = (f"{by_confidence['threshold']:10.2f} {percent(by_confidence['digits_answered']):>16} "
                f"{percent(by_confidence['others_refused']):>12}") if by_confidence else " " * 40
        print(left + (f"    {by_novelty['threshold']:8.2f} {percent(by_novelty['digits_answered']):>16} "
                      f"{percent(by_novelty['others_refused']):>12}" if by_novelty else ""))
    print(f"{'digit gate':>10} {'digits answered':>16} {'no digit: ?':>12}  (at confidence "
          f"{predict.MIN_CONFIDENCE} and novelty {predict.MAX_NOVELTY})")
    for line in calibration["gate"]:
        print(f"{line['threshold']:10.2f} {percent(line['digits_answered']):>16} {percent(line['others_refused']):>12}")
    print(f"still answering 99% of the calibration digits: the highest confidence threshold "
          f"{calibration['min_confidence']} (predict.MIN_CONFIDENCE = {predict.MIN_CONFIDENCE}), the lowest novelty "
          f"limit {calibration['max_novelty']} (predict.MAX_NOVELTY = {predict.MAX_NOVELTY}), the highest digit "
          f"probability {calibration['min_digit_probability']} (predict.MIN_DIGIT_PROBABILITY = "
          f"{predict.MIN_DIGIT_PROBABILITY})")


def targets(rows):
    """The targets photo.py's cleaning and predict.py's thresholds are held to, each with the figure measured on
    the held-out digits and whether it is met."""
    def pooled(kind, key, conditions=None):
        chosen = [line for line in rows if line["kind"] == kind and (conditions is None or line["condition"] in
                                                                       conditions)]
        return sum(line[key] * line["n"] for line in chosen) / sum(line["n"] for line in chosen)
    figures = [("single digits under the hard conditions, right", pooled("single digit", "right", HARD), 0.95),
               ("numbers of 2-5 digits, read exactly", pooled("number", "right"), 0.90),
               ("no digit (blank, specks, noise, letter-like), answered ?", pooled("not a digit", "not_a_digit"),
                0.95),
               ("blank paper, specks alone, noise, answered ?",
                pooled("not a digit", "not_a_digit", NOT_DIGITS[:3]), 0.99),
               ("letter-like (pen strokes, a style the gate never learnt), answered ?",
                pooled("not a digit", "not_a_digit", NOT_DIGITS[3:]), 0.95),
               ("real held-out digits (all conditions), answered", pooled("single digit", "answered"), 0.99),
               ("real held-out digits as train.csv holds them, answered", pooled(AS_IN_TRAIN_CSV, "answered"), 0.99)]
    return [dict(target=name, measured=value, at_least=bound, met=bool(value >= bound - 1e-12))
            for name, value, bound in figures]


def judge(rows, quick):
    """Print whether each target is met -> the targets (targets'); a smoke run judges none -> None."""
    if quick:
        print(SMOKE_RUN)
        return None
    met = targets(rows)
    for line in met:
        print(f"{'met   ' if line['met'] else 'MISSED'} {line['target']}: {100 * line['measured']:.1f}% "
              f"(target >= {100 * line['at_least']:.0f}%)")
    return met


def unseen_split(model_path):
    """(percent_data_for_training, seed) of the run that exported the model, from model/settings.json: its
    validation split holds the digits it never saw. -> None, having said why in a line, if there are none."""
    trained = files.read_json(model_path.parent / "settings.json")
    if not (model_path / "saved_model.pb").exists() or trained is None:
        print(f"error: no model in {model_path}; run python run.py first", file=sys.stderr)
        return None
    if trained["percent_data_for_training"] == 100:
        print(f"error: the model in {model_path} trained on every digit of train.csv (--percent_data_for_training "
              "100), so none is unseen; run python run.py, which keeps a validation split, first", file=sys.stderr)
        return None
    return trained["percent_data_for_training"], trained["seed"]


def main(settings):
    import data
    n, n_numbers, n_letter_like = (2, 1, 2) if settings.quick else (settings.per_condition, settings.per_length,
                                                                     settings.letter_like)
    if settings.quick:
        print(SMOKE_RUN, flush=True)
    model_path = REPO / settings.model
    split = unseen_split(model_path)
    if split is None:
        return 2
    classify = predict.load_classifier(str(model_path))
    images, labels = data.load_train(data.find_csv("train"), max_rows=2000 if settings.quick else None)
    _, _, val_images, val_labels = data.split_train_validation(images, labels, *split)
    half = len(val_images) // 2
    calibration, held_out = (val_images[:half, ..., 0], val_labels[:half]), (val_images[half:, ..., 0],
                                                                             val_labels[half:])
    if n > len(held_out[0]):
        print(f"error: --per_condition {n}: the model left only {len(held_out[0])} digits to measure on",
              file=sys.stderr)
        return 2
    print(f"digits: train.csv's validation split as the model's run made it (split_train_validation(images, "
          f"labels, {split[0]}, {split[1]})), {len(val_images)} digits model/saved_model did "
          f"not train on: the first {half} calibrate, the other {len(val_images) - half} are measured")
    started = time.time()
    print("calibrating on the first half and pictures of seed", settings.seed + 1, flush=True)
    rng = np.random.default_rng(settings.seed + 1)
    calibration_digits = single_digits(rng, *calibration, max(n // 2, 2), classify)
    calibration_others = no_digits(rng, max(n // 2, 2), classify)
    calibration = calibrate([r["pieces"] for results, _ in calibration_digits.values() for r in results],
                            [r["pieces"] for results in calibration_others.values() for r in results])
    print("measuring on the second half and pictures of seed", settings.seed, flush=True)
    rng = np.random.default_rng(settings.seed)
    singles = single_digits(rng, *held_out, n, classify)
    rows = [row("single digit", condition, *singles[condition]) for condition in CONDITIONS]
    rows += [row("number", f"{length} digits", *measured)
             for length, measured in numbers(rng, *held_out, n_numbers, classify).items()]
    rows += [row("not a digit", kind, results, [None])
             for kind, results in no_digits(rng, n, classify, n_letter_like).items()]
    rows.append(row(AS_IN_TRAIN_CSV, "no photo", *as_in_train_csv(held_out[0], held_out[1], classify)))

    print_table(rows)
    print_calibration(calibration, sum(len(results) for results, _ in calibration_digits.values()),
                      sum(len(results) for results in calibration_others.values()))
    met = judge(rows, settings.quick)
    print(f"{time.time() - started:.0f} s")
    results = dict(settings=vars(settings), smoke_run=settings.quick, digits=dict(source="train.csv validation split of the model's run",
                                                        calibration=half, measured=len(val_images) - half),
                   min_confidence=predict.MIN_CONFIDENCE, max_novelty=predict.MAX_NOVELTY,
                   min_digit_probability=predict.MIN_DIGIT_PROBABILITY, calibration=calibration,
                   rows=rows, targets=met, seconds=time.time() - started)
    path = REPO / (settings.out or f"benchmarks/results/photos{'_quick' if settings.quick else ''}.json")
    files.write_text(path, json.dumps(results, indent=2) + "\n")
    print(f"written: {path}")
    return 0


def parse_settings(argv=None):
    """-> the settings, each count at least 1 (else argparse's one-line error and exit 2)."""
    parser = flags.settings_parser(globals())
    settings = parser.parse_args(argv)
    for name in ("per_condition", "per_length", "letter_like"):
        if getattr(settings, name) < 1:
            parser.error(f"--{name} {getattr(settings, name)}: must be at least 1")
    return settings


if __name__ == "__main__":
    sys.exit(main(parse_settings()))
