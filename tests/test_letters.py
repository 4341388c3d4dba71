"""letters.py: the pictures of what is no digit that outlier exposure teaches, made the way MNIST's digits are."""
import collections

import numpy as np
import pytest
from skimage import measure

import letters


@pytest.fixture(scope="module")
def pictures():
    return letters.letter_pictures()


def test_letters_are_28x28_light_ink_on_black_in_0_1(pictures):
    images, shown = pictures
    assert images.shape == (len(shown), 28, 28, 1) and images.dtype == np.float32
    assert images.min() == 0 and images.max() == 1
    assert np.all(images[:, [0, -1], :] == 0) and np.all(images[:, :, [0, -1]] == 0)  # a black margin


def test_each_letter_fills_a_20_pixel_box_centred_by_its_centre_of_mass_as_mnist_s_digits(pictures):
    images, _ = pictures
    for image in images[::25, ..., 0]:
        rows, columns = np.nonzero(image > 0.05)
        assert max(rows.max() - rows.min(), columns.max() - columns.min()) + 1 in (20, 21, 22)  # Lanczos' halo
        assert np.allclose(measure.centroid(image), (14, 14), atol=1.0)


def test_no_digit_and_no_letter_shaped_like_one_is_taught_as_no_digit(pictures):
    _, shown = pictures
    assert not set(shown) & set("0123456789OoQDIlijJTZzSsBbGgq")


def test_every_character_is_drawn_in_every_font_thin_and_thick(pictures):
    _, shown = pictures
    assert set(collections.Counter(shown).values()) == {2 * len(letters.FONTS)}
    assert set(shown) == set(letters.CHARACTERS)


def test_a_thick_letter_holds_more_ink_than_the_same_letter_thin(pictures):
    images, _ = pictures
    thin, thick = images[0::2].sum(axis=(1, 2, 3)), images[1::2].sum(axis=(1, 2, 3))
    assert np.mean(thick > thin) > 0.95
