"""predict.py: your own handwriting, made to look like MNIST, then recognised by the exported SavedModel."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps
from scipy import ndimage

from predict import to_mnist

REPO = Path(__file__).resolve().parents[1]
PREDICTION = re.compile(r"^(?P<path>\S+): (?P<digit>\d)  \((?P<top3>\d \d\.\d\d, \d \d\.\d\d, \d \d\.\d\d)\)$")


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


def ink_box(digit):
    """(height, width) of the smallest box holding every non-zero pixel."""
    rows, columns = np.nonzero(digit)
    return rows.max() - rows.min() + 1, columns.max() - columns.min() + 1


def predict(args, cwd):
    return subprocess.run([sys.executable, str(REPO / "predict.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


# ---- to_mnist, the preprocessing --------------------------------------------------------------------------

@pytest.mark.parametrize("digit", [1, 7, 0])
def test_gives_a_28x28_float_image_in_0_1(digit):
    image = to_mnist(draw(digit))
    assert image.shape == (28, 28) and image.dtype == np.float32
    assert image.min() == 0 and image.max() == 1


@pytest.mark.parametrize("digit", [1, 7, 0])
def test_dark_ink_on_white_paper_becomes_light_ink_on_black(digit):
    image = to_mnist(draw(digit))
    assert np.median(image) == 0  # the paper, black
    assert np.mean(image > 0.5) > 0.05  # the strokes, light


@pytest.mark.parametrize("digit", [1, 7, 0])
def test_the_larger_side_is_scaled_to_20_pixels(digit):
    assert max(ink_box(to_mnist(draw(digit)))) == 20


def test_the_aspect_ratio_is_kept():
    height, width = ink_box(to_mnist(draw(1)))  # a stroke 150 tall and about 35 wide
    assert height == 20 and 3 <= width <= 7


@pytest.mark.parametrize("digit", [1, 7, 0])
def test_the_centre_of_mass_is_at_the_centre_to_half_a_pixel(digit):
    centre = np.array(ndimage.center_of_mass(to_mnist(draw(digit))))
    assert np.all(np.abs(centre - 14) <= 0.5 + 1e-5), centre  # where MNIST puts it, to a whole-pixel shift


def test_a_light_digit_on_a_dark_background_is_not_inverted():
    dark_on_light = draw(7)
    light_on_dark = ImageOps.invert(dark_on_light)
    np.testing.assert_allclose(to_mnist(light_on_dark), to_mnist(dark_on_light), atol=1e-6)


def test_a_transparent_background_counts_as_white_paper():
    drawing = draw(7)
    transparent = Image.new("RGBA", drawing.size, (0, 0, 0, 0))  # transparent black, as drawing apps save it
    transparent.putalpha(ImageOps.invert(drawing))  # opaque black where the ink is
    np.testing.assert_allclose(to_mnist(transparent), to_mnist(drawing), atol=1e-6)


def test_a_16_bit_grey_picture_reads_as_its_8_bit_copy():
    drawing = draw(0, ink=60, paper=200)  # greys, which clipping at 255 would flatten into one
    sixteen_bit = Image.fromarray(np.asarray(drawing).astype(np.uint16) * 257)  # 255 -> 65535
    assert sixteen_bit.mode == "I;16"
    np.testing.assert_allclose(to_mnist(sixteen_bit), to_mnist(drawing), atol=1e-5)


def test_real_mnist_digits_enlarged_on_paper_come_back_as_themselves(real_digits):
    images, _ = real_digits
    correlations = []
    for original in images[:20, :, :, 0]:
        enlarged = Image.fromarray(np.uint8(255 - 255 * original)).resize((280, 280), Image.Resampling.BICUBIC)
        paper = Image.new("L", (600, 450), 255)
        paper.paste(enlarged, (40, 130))
        correlations.append(np.corrcoef(to_mnist(paper).ravel(), original.ravel())[0, 1])
    assert np.mean(correlations) > 0.9 and min(correlations) > 0.6, correlations


def test_a_blank_picture_is_refused():
    with pytest.raises(ValueError, match="blank"):
        to_mnist(Image.new("L", (100, 100), 255))


# ---- python predict.py, end to end ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory, real_digits):
    """A scratch directory as run.py leaves it (a briefly trained model in model/saved_model) with three drawn
    digits, in PNG and JPEG, and a file that is not a picture."""
    import tensorflow as tf
    from model import DigitNet
    from conftest import train_with
    from ensemble import export_saved_model

    images, labels = real_digits
    tf.random.set_seed(0)
    model = DigitNet(seed=0)
    train_with(model, (images[:400], labels[:400], images[400:], labels[400:]), max_n_epochs=1, patience=1,
               batch_size=32, learning_rate=3e-3)
    workdir = tmp_path_factory.mktemp("predict")
    export_saved_model([model], str(workdir / "model" / "saved_model"))
    draw(1).save(workdir / "one.png")
    draw(7).convert("RGB").save(workdir / "seven.jpg", quality=90)
    draw(0).save(workdir / "zero.png")
    (workdir / "notes.txt").write_text("not a picture\n")
    return workdir


@pytest.fixture(scope="module")
def finished(workdir):
    """python predict.py --show on the three pictures and, among them, the file that is not a picture."""
    return predict(["--show", "one.png", "seven.jpg", "notes.txt", "zero.png"], cwd=workdir)


def test_prints_each_pictures_digit_and_top_3_probabilities(finished):
    lines = finished.stdout.splitlines()
    assert [PREDICTION.match(line)["path"] for line in lines] == ["one.png", "seven.jpg", "zero.png"], lines
    for line in lines:
        match = PREDICTION.match(line)
        top3 = [pair.split() for pair in match["top3"].split(", ")]
        digits, probabilities = [d for d, _ in top3], [float(p) for _, p in top3]
        assert digits[0] == match["digit"] and len(set(digits)) == 3
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.02


def test_a_file_that_is_not_a_picture_gets_one_error_line_and_exit_code_2(finished):
    errors = [line for line in finished.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: notes.txt: not a picture Pillow can read"]
    assert finished.returncode == 2


def test_show_saves_what_the_network_sees_beside_the_picture(finished, workdir):
    for name in ["one.png", "seven.jpg", "zero.png"]:
        with Image.open(workdir / name.replace(Path(name).suffix, ".mnist.png")) as preview:
            assert preview.format == "PNG" and preview.size == (28, 28) and preview.mode == "L"
            pixels = np.asarray(preview)
        with Image.open(workdir / name) as picture:
            np.testing.assert_array_equal(pixels, np.round(255 * to_mnist(picture)))


def test_exit_code_is_0_when_every_picture_is_read(workdir, monkeypatch, capsys):
    import predict
    monkeypatch.chdir(workdir)  # in this process, to spare another start of TensorFlow
    assert predict.main(["one.png", "zero.png"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_a_missing_file_is_named_in_its_error(workdir):
    result = predict(["nowhere.png"], cwd=workdir)
    assert result.returncode == 2
    assert "error: nowhere.png: No such file or directory" in result.stderr
    assert result.stdout == ""


def test_without_a_model_says_run_python_run_py_first(tmp_path):
    draw(7).save(tmp_path / "seven.png")
    result = predict(["seven.png"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "run python run.py first" in result.stderr
