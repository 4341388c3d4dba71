"""A photo of handwriting -> its digits as MNIST's: 28x28 pictures, each digit cropped, scaled to 20 pixels and
centred by its centre of mass. predict.py and serve.py read photos through it; letters.py makes its letters
into pictures the same way (to_mnist).

    mnist_digits(image, classify)  -> float32 [n, 28, 28]: its digits, left to right
    to_mnist(ink)                  -> one digit's ink as MNIST's 28x28

Photos as people take them: dim or lit by a lamp to one side, on ruled or squared paper, with specks, a small
number in a large photo, any ink colour, JPEG. In three steps, each a section below: the file -> pixels (decoded,
turned upright, shrunk), pixels -> ink (the paper's shade divided out, its lines removed), ink -> digits (connected
pieces grouped, split or joined where the model reads them more surely, each made into MNIST's 28x28). Why each
threshold is what it is, and how well the whole reads photos: docs/photos.md.

The cleaning is scikit-image's: it has every step in one place (median filtering and resizing with
antialiasing for the paper's shade, grey opening with line-shaped footprints for the paper's lines, connected
components with their boxes and areas for the digits) in functions named after what they do, and it is built on
scipy.ndimage, which the project already uses. Pillow decodes the file and scales each digit to its 20 pixels.
"""
import itertools
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from skimage import filters, measure, morphology, util

DIGIT_BOX = 20  # MNIST's digits were scaled to fit 20x20, then centred in 28x28 by their centre of mass
SIDE = 28
MAX_PIXELS = 50_000_000  # bigger pictures are refused before they are decoded (phone cameras take 12-50 million)
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow's own decompression-bomb check, for whatever it opens
WORKING_SIDE = 1024  # photos are shrunk to this many pixels on their longer side before they are cleaned
PAPER_WINDOW = 0.3  # the paper's shade: first a median over a square this fraction of the picture wide ...
PAPER_SMOOTHING = 0.04  # ... then the paper alone, averaged with a Gaussian this wide (its standard deviation)
INK_FLOOR = 0.12  # ink is at least 12 % darker (or lighter) than the paper around it ...
INK_NOISE_FACTOR = 5  # ... and 5 times the paper's grain ...
INK_OF_PEAK = 0.35  # ... and 35 % of the darkest ink's contrast
LINE_LENGTH = 0.1  # a paper line is ink that runs straight along more than 10 % of the picture ...
LINE_SPAN = 0.7  # ... in rows (or columns) that hold such ink across 70 % of it ...
LINE_THICKNESS = 0.015  # ... and are at most 1.5 % of the picture (5 pixels at least) thick
MIN_DIGIT_HEIGHT = 0.015  # a digit is at least 1.5 % of the picture's longer side tall (at least 8 pixels)
SPECK_HEIGHT = 0.3  # ink less than 30 % as tall as the tallest piece ...
SPECK_AREA = 0.1  # ... and with less than 10 % of the largest piece's area is a speck; and pieces that are
                  # each less than SPECK_HEIGHT as tall as the digit they would form are specks, lined up
MAX_INK_COVER = 0.3  # ink over more than 30 % of the picture is noise or shading, not a written number
SPLIT_ASPECT = 0.9  # a piece of ink this much wider than tall may be digits that touch ...
DIGIT_ASPECT = 0.7  # ... about as many as digits this much wider than tall would fill
SURE_SPLIT = 0.94  # ... and is, only if each piece it cuts into is read this surely: near where the default
                   # network reads real digits (label smoothing keeps even its surest readings below 0.99), since
                   # it reads half a 0 as a 6 or a 7 almost as surely
JOIN_GAP = 0.15  # pieces this close (a share of the tallest's height) may be one digit's broken stroke
MAX_DIGITS = 20  # more pieces in a row than this are text or noise


class NoDigit(Exception):
    """The picture was read, and holds no digit: the reason is the message."""


class PictureTooLarge(ValueError):
    """More than MAX_PIXELS pixels: refused before it is decoded (a decompression bomb, or just too big)."""


# ---- the file -> pixels ------------------------------------------------------------------------------------

def open_picture(source):
    """An image file (a path or a binary file object) -> a Pillow image (its first frame), its size checked
    before it is decoded. Raises ValueError with a one-line reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PictureTooLarge(f"picture too large: more than {MAX_PIXELS // 10**6} million pixels") from None
    except UnidentifiedImageError:
        raise ValueError("not a picture Pillow can read") from None
    except OSError as error:  # missing, a directory, unreadable
        raise ValueError(error.strerror or str(error)) from None
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise PictureTooLarge(f"picture too large: {width}x{height} pixels, more than {MAX_PIXELS // 10**6} "
                              "million")
    return image


def working_pixels(image):
    """A Pillow image -> float32 [height, width, channels] in [0, 1], turned upright and on a white page if it
    was transparent, shrunk to at most WORKING_SIDE pixels on its longer side. Raises ValueError if the
    file turns out to be truncated or corrupt."""
    try:
        image.draft(None, (WORKING_SIDE, WORKING_SIDE))  # JPEG decodes at 1/2, 1/4 or 1/8 size: less memory
        image = ImageOps.exif_transpose(image)  # phone photos are often stored sideways with a note to turn them
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            # Drawing apps leave the paper transparent (often transparent black): lay the drawing on white.
            image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
        if image.mode.startswith("I"):  # 16-bit greys (scanners): convert("L") would clip them, not scale
            image = Image.fromarray(np.asarray(image, dtype=np.float32) / 65535)
        elif image.mode != "F":
            image = image.convert("L" if image.mode in ("1", "L") else "RGB")
        image.thumbnail((WORKING_SIDE, WORKING_SIDE), Image.Resampling.LANCZOS)
        pixels = np.asarray(image, dtype=np.float32)
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt data met while decoding
        raise ValueError(f"cannot decode the picture: {error}") from None
    if image.mode != "F":
        pixels = pixels / 255
    if pixels.ndim == 3 and np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0],
                                                                                                pixels[..., 2]):
        pixels = pixels[..., 0]  # greys stored as colour (a page's canvas): one channel says it all, at a third
    return pixels.reshape(*pixels.shape[:2], -1)


# ---- pixels -> ink -----------------------------------------------------------------------------------------

def ink_strength(pixels):
    """float32 [h, w, channels] -> (ink, grain): ink float32 [h, w], 0 on the paper and towards 1 on the
    strokes, and the paper's grain (the noise's standard deviation on that scale).

    The paper's shade under the strokes (paper_shades) is divided out: under a lamp or in dim light the paper
    and the ink are lit alike, so their ratio holds still. Dark ink on light paper, or light ink on dark if
    clearly more of the picture stands out that way; of the colour channels, the one where the ink stands out
    most (blue ink is dark in red)."""
    height, width, channels = pixels.shape
    small = np.stack([_resized(pixels[..., c], _fit((width, height), 64), Image.Resampling.BOX)
                      for c in range(channels)], -1)
    # Each guess at the paper's shade leaves out what stands out towards its kind of ink, and keeps the rest:
    # against the guess that keeps them, the strokes of the other kind stand out all the more.
    under_dark, under_light = (_enlarged(shade, (width, height)) for shade in paper_shades(small))
    darker = np.sum(_contrast(pixels, under_light, False) > 0.3)
    lighter = np.sum(_contrast(pixels, under_dark, True) > 0.3)
    light_ink = lighter > max(2 * darker, 1e-4 * height * width)  # clearly so: blank paper is read as dark ink
    shade = under_light if light_ink else under_dark
    ink = _contrast(pixels, shade, light_ink)
    sample = ink[::3, ::3]  # plenty for a median, at a ninth of the cost
    grain = 1.4826 * float(np.median(np.abs(sample - np.median(sample))))  # robust: the ink is a minority
    return np.clip(ink, 0, 1).astype(np.float32), grain


def _contrast(pixels, paper, light_ink):
    """How far each pixel stands out from the paper towards the ink, as a share of the most it could: the
    paper's own shade for dark ink, the way up to white for light (at least half: nothing much is lighter
    than white paper). The largest over the colour channels."""
    if light_ink:
        return ((pixels - paper) / np.maximum(1 - paper, 0.5)).max(axis=-1)
    return ((paper - pixels) / np.maximum(paper, 0.02)).max(axis=-1)


def paper_shades(small):
    """The paper's shade under dark ink and under light ink, each [h, w, channels] like small (a copy at most 64
    pixels across: light changes slowly). A first guess, the median over a square PAPER_WINDOW of the picture
    wide, is not swayed by the strokes but flattens a lamp's bright spot; so the shade is a Gaussian average of
    the paper alone: of what does not stand out towards that kind of ink from the first guess."""
    square = np.ones((max(3, round(PAPER_WINDOW * max(small.shape)) | 1),) * 2, np.uint8)
    first_guess = np.stack([filters.rank.median(util.img_as_ubyte(np.clip(small[..., c], 0, 1)), square)
                            for c in range(small.shape[2])], -1) / np.float32(255)
    sigma = max(1.0, PAPER_SMOOTHING * max(small.shape))

    def under(light_ink):
        paper = (_contrast(small, first_guess, light_ink) < 0.1).astype(np.float32)
        weight = filters.gaussian(paper, sigma=sigma)[..., None]
        shade = filters.gaussian(small * paper[..., None], sigma=sigma, channel_axis=-1) / np.maximum(weight, 1e-3)
        return np.where(weight > 0.05, shade, first_guess)  # amid a big blot there is no paper to average
    return under(False), under(True)


def _enlarged(small, size):
    return np.stack([_resized(small[..., c], size, Image.Resampling.BILINEAR) for c in range(small.shape[2])], -1)


def _fit(size, side):
    """(width, height) scaled down (never up) to fit side x side."""
    shrink = min(1.0, side / max(size))
    return tuple(max(1, round(length * shrink)) for length in size)


def _resized(channel, size, resample):
    """One float channel [h, w] resampled by Pillow to size (width, height) -> float32."""
    return np.asarray(Image.fromarray(np.asarray(channel, np.float32)).resize(size, resample))


def remove_paper_lines(ink):
    """ink without ruled or squared paper's lines: horizontal ones, then (on the transpose) vertical ones."""
    return _remove_horizontal_lines(_remove_horizontal_lines(ink).T).T


def _remove_horizontal_lines(ink):
    """A paper line is ink that runs straight on for LINE_LENGTH of the width, in a band of rows at most
    LINE_THICKNESS of the height thick where such ink spans LINE_SPAN of the width; a digit's stroke is
    shorter, or thicker (a 1 as tall as the picture). The line's own shade (what a grey opening along it
    leaves) is taken away, and where a stroke crossed the line, the gap this leaves is closed across it."""
    length = max(9, round(LINE_LENGTH * ink.shape[1]) | 1)  # odd: skimage pads even footprints, losing speed
    # A run of `length` needs as many pixels of ink in its row: the opening is taken of such rows alone (rows
    # apart, as the footprint is one row tall), at a fraction of the cost where few are (a drawing's).
    inked_rows = np.flatnonzero((ink > INK_FLOOR).sum(axis=1) >= length)
    if not len(inked_rows):
        return ink
    along = np.zeros_like(ink)
    along[inked_rows] = morphology.opening(ink[inked_rows], np.ones((1, length), bool))
    running = along > INK_FLOOR
    # A line tilted by a pixel or two across the picture still fills its band of rows (2 more on each side).
    band = morphology.dilation(running, np.ones((5, 1), bool))
    rows = np.flatnonzero(band.mean(axis=1) > LINE_SPAN)
    bands = {}  # first row -> the line's thickness (the band less the rows the dilation added)
    for run in np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1):
        thickness = len(run) - min(2, run[0]) - min(2, len(ink) - 1 - run[-1]) if len(run) else 0
        if 0 < thickness <= max(5, LINE_THICKNESS * len(ink)):
            bands[run[0]] = len(run), thickness
    if not bands:
        return ink
    line_rows = np.zeros(len(ink), bool)
    for first, (rows_in_band, _) in bands.items():
        line_rows[first:first + rows_in_band] = True
    lines = running & line_rows[:, None]
    cleaned = np.where(lines, np.clip(ink - along, 0, None), ink)
    # The gap is as wide as the band: a stroke running along the line there is taken away with it.
    across = np.ones((2 * max(rows_in_band for rows_in_band, _ in bands.values()) + 1, 1), bool)
    closed = morphology.closing(cleaned, across)
    near_lines = morphology.dilation(lines, np.ones((3, 1), bool))
    return np.where(near_lines, closed, cleaned).astype(np.float32)


# ---- ink -> digits -----------------------------------------------------------------------------------------

def ink_pieces(ink, grain):
    """The ink's connected pieces, grouped into digits by their shapes alone -> (labels [h, w], groups: lists
    of skimage regions, left to right). Specks are dropped. Raises NoDigit when nothing is digit-like."""
    floor = max(INK_FLOOR, INK_NOISE_FACTOR * grain)
    standing_out = ink[ink > floor]
    if standing_out.size == 0:
        raise NoDigit("no ink stands out from the paper")
    threshold = max(floor, INK_OF_PEAK * float(np.percentile(standing_out, 95)))  # 95th: the ink's own shade
    strokes = ink > threshold
    if strokes.mean() > MAX_INK_COVER:
        raise NoDigit("ink all over the picture, like noise or a shadow")
    labels = measure.label(strokes, connectivity=2)
    regions = measure.regionprops(labels)
    tallest = max(region.bbox[2] - region.bbox[0] for region in regions)
    if tallest < max(8, MIN_DIGIT_HEIGHT * max(ink.shape)):
        raise NoDigit("only specks, nothing as tall as a digit")
    largest = max(region.area for region in regions)
    kept = [region for region in regions
            if region.bbox[2] - region.bbox[0] >= SPECK_HEIGHT * tallest or region.area >= SPECK_AREA * largest]
    # However broken, a digit is strokes: one of its pieces spans a good part of its height. Dust whose columns
    # line up makes a tall group of dots, each of them a speck beside the group it forms.
    groups = [group for group in group_into_digits(kept)
              if max(region.bbox[2] - region.bbox[0] for region in group) >= SPECK_HEIGHT * _extent(group, 0)]
    if not groups:
        raise NoDigit("only specks, scattered: no stroke as tall as a digit")
    if len(groups) > MAX_DIGITS:
        raise NoDigit(f"{len(groups)} pieces of ink in a row: more like text or noise than a number")
    return labels, groups


def digit_ink(ink, labels, group):
    """One digit's ink, cropped to it -> (float32 [h, w], 0 off the digit; its stroke mask [h, w]). The soft
    edges of its strokes belong to it too (MNIST's digits have them), another piece's do not."""
    (top, bottom), (left, right) = _span(group, 0), _span(group, 1)
    top, bottom, left, right = max(top - 2, 0), bottom + 2, max(left - 2, 0), right + 2
    mask = np.isin(labels[top:bottom, left:right], [region.label for region in group])
    others = (labels[top:bottom, left:right] > 0) & ~mask
    return ink[top:bottom, left:right] * (morphology.dilation(mask, morphology.disk(2)) & ~others), mask


def segment(ink, labels, groups, classify):
    """Where the shapes alone leave a doubt, the model decides, by which way it reads the more surely (the
    geometric mean of its top probabilities): neighbours less than JOIN_GAP of a digit's height apart (a stroke
    broken in two) are read together and apart; a piece more than SPLIT_ASPECT times wider than tall (digits
    that touch, or one wide digit) is cut into 2 or more only where each piece is read at least SURE_SPLIT
    surely, and else read whole. -> the digits' ink crops, left to right."""
    def sureness(crops, of_them=lambda top: np.exp(np.mean(np.log(top + 1e-9)))):
        if any(not np.any(crop > 0) for crop in crops):
            return -1.0
        probabilities = classify(np.stack([to_mnist(crop) for crop in crops]))["probabilities"]
        return float(of_them(np.max(probabilities, axis=1)))

    tallest = max(_extent(group, 0) for group in groups)
    i = 0
    while i + 1 < len(groups):
        joined = groups[i] + groups[i + 1]
        if (_gap(groups[i], groups[i + 1]) <= JOIN_GAP * tallest and sureness([digit_ink(ink, labels, joined)[0]])
                > sureness([digit_ink(ink, labels, group)[0] for group in groups[i:i + 2]])):
            groups[i:i + 2] = [joined]
        else:
            i += 1
    crops = []
    for group in groups:
        whole, mask = digit_ink(ink, labels, group)
        cuts = [[whole[:, start:stop] for start, stop in way] for way in ways_to_split(mask)]
        # A piece is cut only into digits the model is sure of, each of them ("41" read whole as a 4 is as sure
        # as either): cut into a 1 and a stroke it is unsure of, a letter N would pass for a number.
        sure_cuts = [cut for cut in cuts if sureness(cut, np.min) >= SURE_SPLIT]
        crops += max(sure_cuts, key=sureness) if sure_cuts else [whole]
    return crops


def group_into_digits(regions):
    """Pieces of ink whose columns overlap by half the narrower one's width (the bar of a 5 and its body, a
    stroke broken in two) are one digit; a piece less than half as tall as the tallest is no digit on its
    own either: it joins the nearest digit, if one is near -> lists of regions, the digits from left to right."""
    groups = _join_overlapping([[region] for region in regions])
    tallest = max(_extent(group, 0) for group in groups)
    digits = [group for group in groups if _extent(group, 0) >= 0.5 * tallest]
    for group in groups:
        if _extent(group, 0) < 0.5 * tallest:
            nearest = min(digits, key=lambda digit: _gap(group, digit))
            if _gap(group, nearest) <= 0.3 * tallest:
                nearest += group
    return sorted(digits, key=lambda group: _span(group, 1)[0])


def _join_overlapping(groups):
    while True:
        for i, j in itertools.combinations(range(len(groups)), 2):
            (left_i, right_i), (left_j, right_j) = _span(groups[i], 1), _span(groups[j], 1)
            overlap = min(right_i, right_j) - max(left_i, left_j)
            if overlap >= 0.5 * min(right_i - left_i, right_j - left_j):
                groups[i] = groups[i] + groups.pop(j)
                break
        else:
            return groups


def _span(group, axis):
    """(first, last + 1) row (axis 0) or column (axis 1) of a group of regions."""
    return min(region.bbox[axis] for region in group), max(region.bbox[axis + 2] for region in group)


def _extent(group, axis):
    first, stop = _span(group, axis)
    return stop - first


def _gap(group, other):
    """Columns between two groups (0 if they overlap)."""
    (left, right), (other_left, other_right) = _span(group, 1), _span(other, 1)
    return max(0, max(left, other_left) - min(right, other_right))


def ways_to_split(strokes):
    """A digit's stroke mask [h, w] -> ways to cut it into touching digits, each a list of (start, stop) column
    ranges: none if it is at most SPLIT_ASPECT times wider than tall; else into about as many digits as
    DIGIT_ASPECT times as wide as tall would fit (one fewer and one more too), cut where the fewest stroke
    pixels are, near where such digits would meet."""
    height, width = strokes.shape
    if width <= SPLIT_ASPECT * height:
        return []
    column_ink = strokes.sum(axis=0)
    likely = round(width / (DIGIT_ASPECT * height))
    ways = []
    for count in sorted({max(2, likely - 1), max(2, likely), max(2, likely + 1)}):
        pitch = width / count
        cuts = [round(k * pitch - 0.3 * pitch) + int(np.argmin(column_ink[round(k * pitch - 0.3 * pitch):
                                                                          round(k * pitch + 0.3 * pitch)]))
                for k in range(1, count)]
        edges = [0, *cuts, width]
        ways.append(list(zip(edges[:-1], edges[1:])))
    return ways


def to_mnist(ink):
    """One digit's ink, float [h, w] (0 off the digit) -> float32 [28, 28] in [0, 1], made the way MNIST's
    digits were: cropped to the ink, its larger side scaled to 20 pixels (antialiased, keeping the aspect
    ratio) and placed in 28x28 with its centre of mass at the centre."""
    ink = np.clip(ink / np.percentile(ink[ink > 0], 99), 0, 1).astype(np.float32)  # the digit's ink -> 1
    rows, columns = np.nonzero(ink > 0.5)
    ink = ink[rows.min():rows.max() + 1, columns.min():columns.max() + 1]
    scale = DIGIT_BOX / max(ink.shape)
    height, width = (max(1, round(side * scale)) for side in ink.shape)
    digit = np.asarray(Image.fromarray(ink).resize((width, height), Image.Resampling.LANCZOS))
    digit = np.clip(digit, 0, None)  # Lanczos rings slightly below 0 beside sharp edges
    digit /= digit.max()  # a thin stroke fades when shrunk: MNIST's strokes reach full white

    centre_y, centre_x = measure.centroid(digit)
    # Whole-pixel shifts, as MNIST's (its centres of mass spread evenly over +-0.5 pixel around pixel 14, 14),
    # but never with ink off the edge.
    top = int(np.clip(round(SIDE / 2 - centre_y), 0, SIDE - height))
    left = int(np.clip(round(SIDE / 2 - centre_x), 0, SIDE - width))
    canvas = np.zeros([SIDE, SIDE], np.float32)
    canvas[top:top + height, left:left + width] = digit
    return canvas


def mnist_digits(image, classify):
    """A Pillow image -> float32 [n, 28, 28]: each digit written in it, left to right, as MNIST's. The one
    preprocessing predict.py and serve.py share; classify (float32 [n, 28, 28] -> {"probabilities": [n, 10],
    ...}) settles how the ink splits into digits. Raises NoDigit (why not) or ValueError (undecodable)."""
    ink, grain = ink_strength(working_pixels(image))
    ink = remove_paper_lines(ink)
    labels, groups = ink_pieces(ink, grain)
    return np.stack([to_mnist(crop) for crop in segment(ink, labels, groups, classify)])
