"""Pictures of what is no digit, for outlier exposure: letters and symbols in the fonts matplotlib ships, each
made into a 28x28 picture the way a photo's digit is made into one (photo.to_mnist).

    letter_pictures()   -> float32 [N, 28, 28, 1] in [0, 1], and the character each shows

A network trained on digits alone has to call an A a digit (a 4, surely); shown letters as what is no digit
(train.Recipe.outlier_exposure), it learns to be unsure of them, and predict.py answers "?". Letters a digit
can look like (O, I, S, Z, B, G, q ...) are left out: they must stay free to be read as digits.
"""
import functools
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

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
