"""predict.py: your own handwriting, photographed as people do, made to look like MNIST (photo.py), then read by the
exported SavedModel: one digit, a whole number, or "?" when there is no digit."""
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps
from skimage import measure

import photo
import predict
from conftest import draw_letter
from photo import NoDigit, mnist_digits

REPO = Path(__file__).resolve().parents[1]
PREDICTION = re.compile(r"^(?P<path>\S+): (?P<digit>\d)  \((?P<top3>\d \d\.\d\d, \d \d\.\d\d, \d \d\.\d\d)\)$")
NUMBER = re.compile(r"^(?P<path>\S+): (?P<digits>[\d?]{2,})  \((?P<each>[\d?]{1,2} \d\.\d\d(, [\d?]{1,2} \d\.\d\d)+)\)$")
NO_DIGIT = re.compile(r"^(?P<path>\S+): \?  \(no digit: .+\)$")


def unsure(pictures):
    """A stand-in for the model that knows nothing: every digit equally likely (and nothing novel)."""
    return {"probabilities": np.full((len(pictures), 10), 0.1, np.float32), "novelty": np.zeros(len(pictures))}


def seen(image):
    """What the network would see of a picture: float32 [n, 28, 28]."""
    return mnist_digits(image, unsure)


def draw(digit, ink=0, paper=255):
    """A thick-stroked digit drawn in the right half of a 300x220 canvas, far from its centre."""
    canvas = Image.new("L", (300, 220), paper)
    pen = ImageDraw.Draw(canvas)
    if digit == 1:
        pen.line([(220, 40), (200, 190)], fill=ink, width=16)
    elif digit == 7:
        pen.line([(150, 40), (260, 40), (190, 190)], fill=ink, width=16, joint="curve")
    else:
        pen.ellipse([170, 30, 270, 190], outline=ink, width=16)
    return canvas


def on_paper(digits, size=(600, 450), top=130, left=40, gap=30, height=280):
    """Real 28x28 MNIST digits (ink 1 on 0), enlarged to `height` pixels and written dark on white paper in a
    row -> float32 [h, w] in [0, 1] (1: white)."""
    paper = np.ones(size[::-1], np.float32)
    for digit in digits:
        enlarged = np.asarray(Image.fromarray(np.float32(digit)).resize((height, height), Image.Resampling.BICUBIC))
        rows, columns = np.nonzero(enlarged > 0.05)
        ink = np.clip(enlarged[:, columns.min():columns.max() + 1], 0, 1)
        region = paper[top:top + height, left:left + ink.shape[1]]
        region[:] = np.minimum(region, 1 - ink)
        left += ink.shape[1] + gap
    return paper


def picture(paper):
    return Image.fromarray(np.uint8(np.round(np.clip(paper, 0, 1) * 255)))


def correlation(a, b):
    return np.corrcoef(np.ravel(a), np.ravel(b))[0, 1]


def ink_box(digit):
    """(height, width) of the smallest box holding every non-zero pixel."""
    rows, columns = np.nonzero(digit)
    return rows.max() - rows.min() + 1, columns.max() - columns.min() + 1


# ---- MNIST's way: the 28x28 pictures ----------------------------------------------------------------------

@pytest.mark.parametrize("digit", [1, 7, 0])
def test_gives_a_28x28_float_image_in_0_1(digit):
    images = seen(draw(digit))
    assert images.shape == (1, 28, 28) and images.dtype == np.float32
    assert images.min() == 0 and images.max() == 1


@pytest.mark.parametrize("digit", [1, 7, 0])
def test_dark_ink_on_white_paper_becomes_light_ink_on_black(digit):
    image = seen(draw(digit))[0]
    assert np.median(image) == 0  # the paper, black
    assert np.mean(image > 0.5) > 0.05  # the strokes, light
    # ... and light exactly where the strokes were: the drawing's own ink, inverted by hand and made MNIST's way,
    # is the same picture (a halo round the strokes, or the paper inside the 0, is not)
    by_hand = photo.to_mnist(1 - np.asarray(draw(digit), np.float32) / 255)
    assert correlation(image, by_hand) > 0.9
    assert np.mean(image[by_hand > 0.5] > 0.5) > 0.9 and np.all(image[by_hand == 0] < 0.5)


@pytest.mark.parametrize("digit", [1, 7, 0])
def test_the_larger_side_is_scaled_to_20_pixels(digit):
    assert max(ink_box(seen(draw(digit))[0])) == 20


def test_the_aspect_ratio_is_kept():
    height, width = ink_box(seen(draw(1))[0])  # a stroke 150 tall and about 35 wide
    assert height == 20 and 3 <= width <= 7


@pytest.mark.parametrize("digit", [1, 7, 0])
def test_the_centre_of_mass_is_at_the_centre_to_half_a_pixel(digit):
    centre = np.array(measure.centroid(seen(draw(digit))[0]))
    assert np.all(np.abs(centre - 14) <= 0.5 + 1e-5), centre  # where MNIST puts it, to a whole-pixel shift


def test_a_light_digit_on_a_dark_background_is_not_inverted():
    dark_on_light = draw(7)
    light_on_dark = ImageOps.invert(dark_on_light)
    np.testing.assert_allclose(seen(light_on_dark), seen(dark_on_light), atol=1e-6)


def test_a_transparent_background_counts_as_white_paper():
    drawing = draw(7)
    transparent = Image.new("RGBA", drawing.size, (0, 0, 0, 0))  # transparent black, as drawing apps save it
    transparent.putalpha(ImageOps.invert(drawing))  # opaque black where the ink is
    np.testing.assert_allclose(seen(transparent), seen(drawing), atol=1e-6)


def test_a_16_bit_grey_picture_reads_as_its_8_bit_copy():
    drawing = draw(0, ink=60, paper=200)  # greys, which clipping at 255 would flatten into one
    sixteen_bit = Image.fromarray(np.asarray(drawing).astype(np.uint16) * 257)  # 255 -> 65535
    assert sixteen_bit.mode == "I;16"
    np.testing.assert_allclose(seen(sixteen_bit), seen(drawing), atol=1e-5)


def test_real_mnist_digits_enlarged_on_paper_come_back_as_themselves(real_digits):
    images, _ = real_digits
    correlations = [correlation(seen(picture(on_paper([original])))[0], original)
                    for original in images[:20, :, :, 0]]
    assert np.mean(correlations) > 0.9 and min(correlations) > 0.6, correlations


# ---- photos as people take them ---------------------------------------------------------------------------

@pytest.fixture
def clean(real_digits):
    """A real digit (train.csv's 14th, a 9), enlarged on white paper, and what the network sees of it."""
    digit = real_digits[0][13, :, :, 0]
    return on_paper([digit]), seen(picture(on_paper([digit])))[0]


def test_a_speck_far_from_the_digit_does_not_move_the_crop(clean):
    paper, expected = clean
    paper[420:422, 580:582] = 0  # a 4-pixel speck, as dark as the ink
    np.testing.assert_allclose(seen(picture(paper))[0], expected, atol=1e-6)


def test_specks_around_the_digit_are_dropped(clean):
    paper, expected = clean
    for y, x in [(40, 100), (60, 400), (300, 20), (430, 300), (100, 560), (200, 360)]:
        paper[y:y + 3, x:x + 3] = 0
    assert correlation(seen(picture(paper))[0], expected) > 0.98


def test_the_lines_of_squared_paper_are_removed(clean):
    paper, expected = clean
    lines = np.ones_like(paper)
    lines[::30] = lines[:, ::30] = 0.45  # dark grey lines, one pixel thick, every 30 pixels
    assert correlation(seen(picture(np.minimum(paper, lines)))[0], expected) > 0.95


def test_a_ruled_line_tilted_by_a_few_pixels_across_the_page_is_removed(clean):
    """Each of its rows holds only a stretch of it, a third of the page wide."""
    paper, expected = clean
    height, width = paper.shape
    for x in range(width):
        y = height // 2 + round(3 * x / width)  # three pixels lower at the right than at the left
        paper[y:y + 2, x] = np.minimum(paper[y:y + 2, x], 0.45)
    assert correlation(seen(picture(paper))[0], expected) > 0.95


def test_squared_paper_alone_holds_no_digit():
    lines = np.ones((450, 600), np.float32)
    lines[5::30] = lines[:, 5::30] = 0.45
    with pytest.raises(NoDigit):
        seen(picture(lines))


def test_dust_whose_specks_line_up_holds_no_digit():
    paper = np.ones((450, 300), np.float32)
    for top in range(20, 430, 45):  # ten 8-pixel dots in one column: together as tall as a digit
        paper[top:top + 8, 150:158] = 0
    with pytest.raises(NoDigit, match="specks"):
        seen(picture(paper))


def test_a_digit_broken_in_two_is_still_one_digit(clean):
    paper, expected = clean
    rows = np.flatnonzero((paper < 0.5).any(axis=1))
    middle = (rows.min() + rows.max()) // 2
    paper[middle:middle + 3] = 1  # a white gap across the middle: two pieces, each about half the digit
    assert correlation(seen(picture(paper))[0], expected) > 0.9


def test_paper_darker_than_mid_grey_reads_like_daylight(clean):
    paper, expected = clean
    dim = picture(0.12 * paper)  # an evening photo: the paper at 12 % grey, the ink darker still
    assert correlation(seen(dim)[0], expected) > 0.95


def test_a_lamp_to_one_side_does_not_change_the_digit(clean):
    paper, expected = clean
    light = np.linspace(0.1, 1.0, paper.shape[1], dtype=np.float32)  # the digit, on the left, in the shadow
    assert correlation(seen(picture(paper * light))[0], expected) > 0.98


def test_ink_of_any_colour_is_seen_even_yellow(clean):
    paper, expected = clean
    ink = 1 - paper[..., None]
    yellow = 1 - ink * np.array([0.0, 0.1, 0.9], np.float32)  # hardly darker than white, but in blue
    assert correlation(seen(picture(yellow))[0], expected) > 0.98


def test_a_small_digit_in_a_large_photo_is_found(clean):
    _, expected = clean
    digit = Image.fromarray(np.uint8(255 * clean[0][130:410, 40:320]))
    photo = Image.new("L", (3000, 2250), 255)
    photo.paste(digit.resize((100, 100), Image.Resampling.LANCZOS), (2100, 400))
    assert correlation(seen(photo)[0], expected) > 0.9


def test_a_number_in_a_row_gives_its_digits_left_to_right(real_digits):
    images, _ = real_digits
    digits = images[[7, 1, 3, 2], :, :, 0]
    number = seen(picture(on_paper(list(digits), size=(1000, 400), height=200)))  # no shrinking: 1000 < 1024
    assert len(number) == 4
    alone = [seen(picture(on_paper([digit], size=(400, 400), height=200)))[0] for digit in digits]
    assert all(correlation(found, single) > 0.95 for found, single in zip(number, alone))


def test_digits_that_touch_are_cut_where_they_meet():
    two_blobs = np.zeros((100, 160), bool)
    two_blobs[10:90, 5:75] = two_blobs[10:90, 85:155] = True  # two 70-wide digits ...
    two_blobs[48:52, 75:85] = True  # ... joined by a thin stroke at columns 75-84
    in_two = [way for way in photo.ways_to_split(two_blobs) if len(way) == 2]
    assert len(in_two) == 1 and in_two[0][0][0] == 0 and in_two[0][1][1] == 160
    assert 75 <= in_two[0][0][1] == in_two[0][1][0] <= 85, in_two


def test_touching_digits_are_split_when_the_model_is_sure_of_each_piece(real_digits):
    images, _ = real_digits
    touching = picture(on_paper(list(images[[13, 8], :, :, 0]), size=(700, 400), height=200, gap=-30))
    assert len(mnist_digits(touching, unsure)) == 1  # one piece of ink: the shapes alone cannot tell
    assert len(mnist_digits(touching, sure_of(lambda i: 1))) == 2


def test_touching_digits_are_cut_only_if_each_piece_is_read_at_least_sure_split_surely(real_digits):
    images, _ = real_digits
    touching = picture(on_paper(list(images[[13, 8], :, :, 0]), size=(700, 400), height=200, gap=-30))

    def reading_every_piece_as_a_1(sureness):
        def classify(pictures):
            probabilities = np.full((len(pictures), 10), (1 - sureness) / 9, np.float32)
            probabilities[:, 1] = sureness
            return {"probabilities": probabilities, "novelty": np.zeros(len(pictures))}
        return classify

    assert len(mnist_digits(touching, reading_every_piece_as_a_1(photo.SURE_SPLIT + 0.005))) == 2
    assert len(mnist_digits(touching, reading_every_piece_as_a_1(photo.SURE_SPLIT - 0.005))) == 1


def test_a_piece_is_not_cut_into_a_digit_and_a_stroke_the_model_is_unsure_of(real_digits):
    images, _ = real_digits  # as a letter N, cut into a 1 and the rest, would pass for a number

    def sure_of_the_first_of_several(pictures):
        probabilities = unsure(pictures)["probabilities"]
        if len(pictures) > 1:
            probabilities[0] = np.eye(10, dtype=np.float32)[1] * 0.9 + 0.01
        return {"probabilities": probabilities, "novelty": np.zeros(len(pictures))}

    touching = picture(on_paper(list(images[[13, 8], :, :, 0]), size=(700, 400), height=200, gap=-30))
    assert len(mnist_digits(touching, sure_of_the_first_of_several)) == 1


def test_a_blank_picture_holds_no_digit():
    with pytest.raises(NoDigit, match="no ink"):
        seen(Image.new("L", (100, 100), 255))


def test_noise_holds_no_digit():
    noise = np.random.default_rng(0).uniform(0, 255, (300, 400)).astype(np.uint8)
    with pytest.raises(NoDigit):
        seen(Image.fromarray(noise))


def png_header_only(width, height):
    """The start of a PNG that claims width x height pixels: Pillow reads the size from it without decoding."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [20000, 8000])  # Pillow's own bomb error, and predict's limit below it
def test_a_picture_of_too_many_pixels_is_refused_before_it_is_decoded(tmp_path, side):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(side, side))
    with pytest.raises(photo.PictureTooLarge, match="picture too large"):
        predict.read(bomb, unsure)


# ---- the answer -------------------------------------------------------------------------------------------

def sure_of(digit_for, novelty=0.5):
    """A stand-in for the model, sure (0.95, above photo.SURE_SPLIT) of digit_for(picture index) for each picture;
    of the others, the lower digits a little likelier (about 0.005 each); each picture of this novelty."""
    def classify(pictures):
        probabilities = np.tile(np.linspace(0.0058, 0.0052, 10, dtype=np.float32), (len(pictures), 1))
        probabilities[np.arange(len(pictures)), [digit_for(i) for i in range(len(pictures))]] = 0.95
        return {"probabilities": probabilities, "novelty": np.full(len(pictures), novelty, np.float32)}
    return classify


def test_a_digit_the_model_is_unsure_of_is_answered_with_a_question_mark(tmp_path):
    draw(7).save(tmp_path / "seven.png")
    reading = predict.read(tmp_path / "seven.png", unsure)
    assert reading.digits == "?" and reading.details.startswith("no digit: the model is unsure")


def test_a_digit_unlike_the_training_digits_is_answered_with_a_question_mark(tmp_path):
    draw(7).save(tmp_path / "seven.png")
    reading = predict.read(tmp_path / "seven.png", sure_of(lambda i: 7, novelty=predict.MAX_NOVELTY + 0.01))
    assert reading.digits == "?" and reading.details.startswith("no digit: unlike the digits the model learnt")


def exactly(probability, novelty):
    """A stand-in for the model that gives every picture a 7 of exactly this probability (the rest shared among
    the others) and exactly this novelty."""
    def classify(pictures):
        probabilities = np.full((len(pictures), 10), (1 - probability) / 9, np.float32)
        probabilities[:, 7] = probability
        return {"probabilities": probabilities, "novelty": np.full(len(pictures), novelty, np.float32)}
    return classify


def test_a_digit_at_exactly_the_minimum_confidence_and_the_maximum_novelty_is_answered(tmp_path):
    """The limits are inclusive, as documented: at least MIN_CONFIDENCE, at most MAX_NOVELTY."""
    draw(7).save(tmp_path / "seven.png")
    at_the_limits = exactly(predict.MIN_CONFIDENCE, predict.MAX_NOVELTY)
    assert predict.read(tmp_path / "seven.png", at_the_limits).digits == "7"
    # a float32 step beyond either limit, and it is refused: the boundary is where the limits say
    stricter = float(np.nextafter(np.float32(predict.MIN_CONFIDENCE), np.float32(1)))
    assert predict.read(tmp_path / "seven.png", at_the_limits, min_confidence=stricter).digits == "?"
    stricter = float(np.nextafter(np.float32(predict.MAX_NOVELTY), np.float32(0)))
    assert predict.read(tmp_path / "seven.png", at_the_limits, max_novelty=stricter).digits == "?"


def test_a_sure_digit_is_answered_with_its_three_likeliest(tmp_path):
    draw(7).save(tmp_path / "seven.png")
    reading = predict.read(tmp_path / "seven.png", sure_of(lambda i: 7))
    assert reading.digits == "7" and reading.details == "7 0.95, 0 0.01, 1 0.01"


# ---- python predict.py, end to end ------------------------------------------------------------------------

TRAINED_ON = 3000  # the tiny model's digits: train.csv's first rows; the next ones it never saw


@pytest.fixture(scope="session")
def more_digits():
    """(images, labels) of train.csv's first TRAINED_ON + 100 digits: the tiny model's, and 100 it never saw."""
    import data
    return data.load_train(REPO / "digit-recognizer" / "train.csv.gz", max_rows=TRAINED_ON + 100)


@pytest.fixture(scope="session")
def tiny_saved_model(tmp_path_factory, more_digits):
    """model/saved_model of a network trained briefly (2 epochs) on TRAINED_ON real digits, enough to tell digits
    from letters, made once for the whole session (tests/test_serve.py uses it too, through this fixture)."""
    path = tmp_path_factory.getbasetemp() / "tiny_model" / "saved_model"
    if not (path / "saved_model.pb").exists():
        import tensorflow as tf
        from conftest import train_with
        from ensemble import export_saved_model
        from model import DigitNet

        images, labels = more_digits
        tf.random.set_seed(0)
        network = DigitNet(seed=0)
        split = images[:TRAINED_ON], labels[:TRAINED_ON], images[TRAINED_ON:], labels[TRAINED_ON:]
        train_with(network, split, max_n_epochs=2, patience=2, batch_size=32, learning_rate=3e-3)
        export_saved_model([network], str(path), *split[:2])
    return path


# ---- not a digit: novelty ---------------------------------------------------------------------------------

LETTERS = {  # a capital that the tiny model reads surely as a digit (a 4, at 0.8), as pen strokes in a unit box
    # (an E, an N were too, before DigitNet pooled first; now it is unsure of them, so they say nothing of novelty)
    "H": [[(0, 0), (0, 1)], [(1, 0), (1, 1)], [(0, 0.5), (1, 0.5)]],
}


@pytest.fixture(scope="module")
def tiny_model(tiny_saved_model):
    """The tiny model, loaded once, as predict.py loads it."""
    return predict.load_classifier(str(tiny_saved_model))


@pytest.mark.parametrize("letter", LETTERS)
def test_a_letter_the_model_reads_surely_as_a_digit_is_answered_with_a_question_mark(tiny_model, tmp_path, letter):
    draw_letter(LETTERS[letter]).save(tmp_path / "letter.png")
    reading = predict.read(tmp_path / "letter.png", tiny_model)
    assert reading.probabilities.max() >= predict.MIN_CONFIDENCE  # its likeliest digit alone would not refuse it
    assert reading.digits == "?" and "unlike the digits the model learnt" in reading.details, reading.details


def test_real_digits_the_model_never_saw_are_not_novel(tiny_model, more_digits):
    images, _ = more_digits
    novelty = tiny_model(images[TRAINED_ON:, :, :, 0])["novelty"]
    assert novelty.max() <= predict.MAX_NOVELTY, np.sort(novelty)[-5:]


@pytest.mark.parametrize("digit", [1, 7, 0])
def test_a_drawn_digit_is_answered_at_predicts_own_thresholds(tiny_model, tmp_path, digit):
    draw(digit).save(tmp_path / "digit.png")
    assert predict.read(tmp_path / "digit.png", tiny_model).digits == str(digit)


def test_novelty_is_the_mahalanobis_distance_to_the_read_digits_training_mean_averaged_over_layers(
        tmp_path, more_digits):
    """At each layer of DigitNet.features: the features' distance to the mean of the training digits of the
    digit the model reads, under the inverse of their covariance around their own digit's mean (plus the ridge),
    squared and per feature; averaged over the layers, and its root."""
    from ensemble import NOVELTY_RIDGE, export_saved_model
    from model import DigitNet
    images, labels = more_digits
    train_images, train_labels, unseen = images[:TRAINED_ON], labels[:TRAINED_ON], images[TRAINED_ON:TRAINED_ON + 20]
    network = DigitNet(seed=1)  # untrained: the definition holds for any weights
    export_saved_model([network], str(tmp_path / "saved_model"), train_images, train_labels)
    novelty = predict.load_classifier(str(tmp_path / "saved_model"))(unseen[..., 0])["novelty"]

    read_as = network(unseen).numpy().argmax(axis=1)
    squared = []
    for trained, seen_ in zip(network.features(train_images), network.features(unseen)):
        trained, seen_ = np.float64(trained), np.float64(seen_)
        means = np.stack([trained[train_labels == digit].mean(axis=0) for digit in range(10)])
        covariance = np.cov((trained - means[train_labels]).T, bias=True)
        covariance += NOVELTY_RIDGE * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
        deviation = seen_ - means[read_as]
        squared.append(np.sum(deviation * np.linalg.solve(covariance, deviation.T).T, axis=1) / len(covariance))
    np.testing.assert_allclose(novelty, np.sqrt(np.mean(squared, axis=0)), rtol=1e-3)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_saved_model, real_digits):
    """A scratch directory as run.py leaves it (the tiny model in model/saved_model) with three drawn digits,
    in PNG and JPEG, a number, a blank page and a file that is not a picture."""
    workdir = tmp_path_factory.mktemp("predict")
    (workdir / "model").mkdir()
    os.symlink(tiny_saved_model, workdir / "model" / "saved_model")
    # as run.py --percent_data_for_training 90 records it (benchmarks/photos.py reads which digits were unseen)
    (workdir / "model" / "settings.json").write_text('{"percent_data_for_training": 90, "seed": 42}')
    draw(1).save(workdir / "one.png")
    draw(7).convert("RGB").save(workdir / "seven.jpg", quality=90)
    draw(0).save(workdir / "zero.png")
    picture(on_paper(list(real_digits[0][[7, 1, 3], :, :, 0]), size=(1100, 450), height=250)).save(
        workdir / "number.png")
    Image.new("L", (200, 150), 255).save(workdir / "blank.png")
    (workdir / "notes.txt").write_text("not a picture\n")
    return workdir


def predict_py(args, cwd):
    return subprocess.run([sys.executable, str(REPO / "predict.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def finished(workdir):
    """python predict.py --show, always guessing, on the pictures and, among them, the file that is not one."""
    return predict_py(["--show", "--min_confidence", "0", "--max_novelty", "inf", "one.png", "seven.jpg", "notes.txt", "zero.png",
                       "number.png", "blank.png"], cwd=workdir)


def test_prints_each_pictures_digit_and_top_3_probabilities(finished):
    lines = finished.stdout.splitlines()
    singles = [PREDICTION.match(line) for line in lines[:3]]
    assert [match["path"] for match in singles] == ["one.png", "seven.jpg", "zero.png"], lines
    for match in singles:
        top3 = [pair.split() for pair in match["top3"].split(", ")]
        digits, probabilities = [d for d, _ in top3], [float(p) for _, p in top3]
        assert digits[0] == match["digit"] and len(set(digits)) == 3
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.02


def test_a_number_prints_its_digits_then_each_digits_probability(finished):
    match = NUMBER.match(finished.stdout.splitlines()[3])
    assert match and match["path"] == "number.png", finished.stdout
    each = match["each"].split(", ")
    assert len(match["digits"]) == len(each) == 3
    assert [pair.split()[0].rstrip("?") for pair in each] == list(match["digits"])


def test_a_blank_page_prints_a_question_mark_and_why(finished):
    assert NO_DIGIT.match(finished.stdout.splitlines()[4]).group("path") == "blank.png"


def test_a_file_that_is_not_a_picture_gets_one_error_line_and_exit_code_2(finished):
    errors = [line for line in finished.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: notes.txt: not a picture Pillow can read"]
    assert finished.returncode == 2


def test_show_saves_what_the_network_saw_beside_the_picture(finished, workdir):
    classify = predict.load_classifier(str(workdir / "model" / "saved_model"))
    for name, count in [("one.png", 1), ("seven.jpg", 1), ("zero.png", 1), ("number.png", 3)]:
        with Image.open(workdir / name.replace(Path(name).suffix, ".mnist.png")) as preview:
            assert preview.format == "PNG" and preview.size == (28 * count, 28) and preview.mode == "L"
            pixels = np.asarray(preview)
        with Image.open(workdir / name) as image:
            pictures = mnist_digits(image, classify)
        np.testing.assert_array_equal(pixels, np.round(255 * np.concatenate(list(pictures), axis=1)))
    assert not (workdir / "blank.mnist.png").exists()


def test_exit_code_is_0_when_every_picture_is_read(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)  # in this process, with a stand-in model, to spare another start of TensorFlow
    monkeypatch.setattr(predict, "load_classifier", lambda: sure_of(lambda i: 3))
    assert predict.main(["one.png", "blank.png"]) == 0
    assert capsys.readouterr().out.splitlines() == ["one.png: 3  (3 0.95, 0 0.01, 1 0.01)",
                                                    "blank.png: ?  (no digit: no ink stands out from the paper)"]


def test_a_missing_file_is_named_in_its_error(workdir):
    result = predict_py(["nowhere.png"], cwd=workdir)
    assert result.returncode == 2
    assert "error: nowhere.png: No such file or directory" in result.stderr
    assert result.stdout == ""


def test_without_a_model_says_run_python_run_py_first(tmp_path):
    draw(7).save(tmp_path / "seven.png")
    result = predict_py(["seven.png"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "run python run.py first" in result.stderr


def test_the_photos_benchmark_refuses_a_count_below_1_in_one_line():
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "photos.py"), "--letter_like", "0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines()[-1].endswith("error: --letter_like 0: must be at least 1")


def test_the_photos_benchmark_smoke_run_prints_its_table_and_writes_its_json(tmp_path, workdir):
    out = tmp_path / "photos.json"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "photos.py"), "--quick", "--model",
                             str(workdir / "model" / "saved_model"), "--out", str(out)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validation split" in result.stdout  # it says which digits it used
    results = json.loads(out.read_text())
    assert [row["kind"] for row in results["rows"]] == (["single digit"] * 11 + ["number"] * 4 + ["not a digit"] * 4
                                                       + ["28x28 digit, no photo"])
    assert results["calibration"]["gate"] and "without_gate" in results["rows"][0]
    assert results["calibration"]["novelty"]
    # a smoke run says so, first and last, and judges no target on figures that mean nothing
    lines = result.stdout.splitlines()
    assert lines[0].startswith("smoke run") and "mean nothing" in lines[0] and lines.count(lines[0]) == 2
    assert not any(line.startswith(("MISSED", "met ")) for line in lines)
    assert results["smoke_run"] is True and results["targets"] is None
