"""Recognise your own handwritten digits with the model run.py exported.

    python predict.py my_seven.png photo_of_a_three.jpg
    python predict.py --show my_seven.png    # also saves my_seven.mnist.png: what the network sees

Each picture should hold one digit, dark on light paper or light on dark. Needs only model/saved_model,
not this project's other code.
"""
import argparse
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

SAVED_MODEL = "model/saved_model"
DIGIT_BOX = 20  # MNIST's digits were scaled to fit 20x20, then centred in 28x28 by their centre of mass
SIDE = 28
INK_THRESHOLD = 0.5  # of the way from the paper's shade to the darkest ink: what counts as the digit when cropping


def to_mnist(image: Image.Image) -> np.ndarray:
    """A picture of one digit -> float32 [28, 28] in [0, 1], light ink on a 0 background, made the way MNIST's
    digits were: cropped to the ink, its larger side scaled to 20 pixels (antialiased, keeping the aspect
    ratio) and placed in 28x28 with its centre of mass at the centre. Raises ValueError on a blank picture."""
    image = ImageOps.exif_transpose(image)  # phone photos are often stored sideways with a note to turn them
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        # Drawing apps leave the paper transparent (often transparent black): lay the drawing on white.
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
    if image.mode.startswith("I"):  # 16-bit greys (scanners): Pillow's convert("L") would clip them, not scale
        gray = np.asarray(image, dtype=np.float32) / 65535
    else:
        gray = np.asarray(image.convert("L"), dtype=np.float32) / 255
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    paper = np.median(border)
    if paper > 0.5:  # dark ink on light paper: MNIST's ink is light on black
        gray, paper = 1 - gray, 1 - paper
    if gray.max() - paper < 1e-3:
        raise ValueError("blank picture, no digit in it")
    ink = np.clip((gray - paper) / (gray.max() - paper), 0, 1)  # the paper's shade -> 0, the darkest ink -> 1

    rows, columns = np.nonzero(ink > INK_THRESHOLD)
    ink = ink[rows.min():rows.max() + 1, columns.min():columns.max() + 1]
    scale = DIGIT_BOX / max(ink.shape)
    height, width = (max(1, round(side * scale)) for side in ink.shape)
    digit = np.asarray(Image.fromarray(ink).resize((width, height), Image.Resampling.LANCZOS))
    digit = np.clip(digit, 0, None)  # Lanczos rings slightly below 0 beside sharp edges
    digit /= digit.max()  # a thin stroke fades when shrunk: MNIST's strokes reach full white

    centre_y, centre_x = ndimage.center_of_mass(digit)
    # Whole-pixel shifts, as MNIST's (its centres of mass spread evenly over +-0.5 pixel around pixel 14, 14),
    # but never with ink off the edge.
    top = int(np.clip(round(SIDE / 2 - centre_y), 0, SIDE - height))
    left = int(np.clip(round(SIDE / 2 - centre_x), 0, SIDE - width))
    canvas = np.zeros([SIDE, SIDE], np.float32)
    canvas[top:top + height, left:left + width] = digit
    return canvas


def save_preview(digit, path):
    """The 28x28 input as an 8-bit grey PNG (written to a temporary name, then renamed)."""
    temporary = f"{path}.tmp.png"
    Image.fromarray(np.round(digit * 255).astype(np.uint8)).save(temporary)
    os.replace(temporary, path)


def read_digit(path):
    """to_mnist of the picture in the file; raises ValueError with a one-line reason."""
    try:
        with Image.open(path) as image:
            return to_mnist(image)
    except UnidentifiedImageError:
        raise ValueError("not a picture Pillow can read") from None
    except OSError as error:  # missing, a directory, unreadable, truncated
        raise ValueError(error.strerror or str(error)) from None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG or any picture Pillow reads")
    parser.add_argument("--show", action="store_true", help="save each preprocessed digit as <name>.mnist.png")
    args = parser.parse_args(argv)
    if not os.path.exists(f"{SAVED_MODEL}/saved_model.pb"):
        print(f"error: no model in {SAVED_MODEL}; run python run.py first", file=sys.stderr)
        return 2

    paths, digits = [], []
    for path in args.images:
        try:
            digit = read_digit(path)
        except ValueError as error:
            print(f"error: {path}: {error}", file=sys.stderr)
            continue
        paths.append(path)
        digits.append(digit)
        if args.show:
            save_preview(digit, Path(path).with_name(Path(path).stem + ".mnist.png"))
    if digits:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up notices are not for users
        import tensorflow as tf
        serve = tf.saved_model.load(SAVED_MODEL).signatures["serving_default"]
        probabilities = serve(images=tf.constant(np.stack(digits)[..., None]))["probabilities"].numpy()
        for path, p in zip(paths, probabilities):
            top3 = np.argsort(-p)[:3]
            print(f"{path}: {top3[0]}  ({', '.join(f'{digit} {p[digit]:.2f}' for digit in top3)})")
    return 2 if len(digits) < len(args.images) else 0  # some file failed


if __name__ == "__main__":
    sys.exit(main())
