"""Read your own handwriting, one digit or a whole number, with the model run.py exported.

    python predict.py my_seven.png photo_of_2026.jpg
    python predict.py --show photo.jpg     # also saves photo.mnist.png: the 28x28 picture(s) the network saw

One line per picture:
    seven.jpg: 7  (7 0.91, 5 0.01, 2 0.01)               one digit, and the three likeliest
    year.jpg: 2026  (2 0.99, 0 0.97, 2 0.98, 6 0.95)     a number written in a row, each digit read in turn
    scribble.png: ?  (no digit: the model is unsure, at best 4 0.41)
    letter_h.png: ?  (no digit: unlike the digits the model learnt (novelty above 1.7), at best 4 0.89 novelty 2.27)
    letter_k.png: ?  (no digit: not a digit to the digit gate (below 0.3), at best 4 0.87 gate 0.02)
A digit of a number that the model is unsure of, that is unlike the digits it learnt, or that the digit gate
(a small network run.py trains beside the classifier, on digits against letters, scribbles, blobs and noise)
says is no digit (unless it takes most of the number's digits for digits), shows as ? (and "4? 0.41" in the brackets).

Photos as people take them: dim or lit by a lamp to one side, on ruled or squared paper, with specks, a small
number in a large photo, any ink colour, JPEG; photo.py cleans them into MNIST's 28x28 digits. Needs
model/saved_model, not the training code.
"""
import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

import files
from photo import SIDE, NoDigit, mnist_digits, open_picture

SAVED_MODEL = "model/saved_model"
# A digit is answered only if the model's likeliest digit has at least MIN_CONFIDENCE probability and the
# picture's novelty is at most MAX_NOVELTY; else "?". Novelty (the SavedModel's, ensemble.novelty_statistics):
# how far what the network's blocks make of the picture is from what they made of the training digits of the
# digit it is read as (Mahalanobis distances per feature, about 1 over the training digits). A network trained
# on digits alone reads an A as a 4 as surely as a real 4, but the A's features are not those of the 4s it
# learnt. Both calibrated by benchmarks/photos.py on photos of held-out train.csv digits (of another seed
# than those it reports on): MAX_NOVELTY is the lowest limit that still answers 99% of them; no letter takes part.
# A network taught letters as no digit (run.py --outlier_exposure) is unsure of them instead, and of more
# digits too: calibrated the same way (99% of the digits answered), it reads with --min_confidence 0.4.
# The digit gate (model.DigitGate, the SavedModel's digit_probability) refuses a piece whose probability of being
# a digit at all is below MIN_DIGIT_PROBABILITY, unless most pieces of its picture are above (digits_to_the_gate).
# The gate may only take answers away, so its limit is set by the digits first: the highest at which it refuses at
# most 1 in 1,000 of the unseen digits the model answers right, in photos and as train.csv holds them (the half
# of the validation digits, and photos of seeds, that benchmarks/photos.py does not report on), whatever that
# leaves of the letters refused.
# The calibration and its figures: docs/photos.md.
MIN_CONFIDENCE = 0.5
MAX_NOVELTY = 1.7
MIN_DIGIT_PROBABILITY = 0.08


@dataclass
class Reading:
    digits: str  # as printed: "7", "2026", "2?26", or "?"
    details: str  # what the brackets hold
    pictures: np.ndarray  # float32 [n, 28, 28]: what the network saw, digit by digit, left to right
    probabilities: np.ndarray  # float32 [n, 10]
    novelty: np.ndarray  # float32 [n]: how unlike the training digits each is (MAX_NOVELTY)
    sure: np.ndarray  # bool [n]: answered (likely enough, not novel, a digit to the gate), not "?"
    digit_probability: np.ndarray  # float32 [n]: the digit gate's, that each is a digit at all


# ---- digits -> the answer ----------------------------------------------------------------------------------

def read(source, classify, min_confidence=MIN_CONFIDENCE, max_novelty=MAX_NOVELTY,
         min_digit_probability=MIN_DIGIT_PROBABILITY):
    """An image file (path or binary file object) -> Reading. classify: float32 [n, 28, 28] ->
    {"probabilities": [n, 10], "novelty": [n], "digit_probability": [n]} (load_classifier; without
    digit_probability, the gate passes every piece). Raises ValueError with a one-line reason if the file is not
    a picture it can read. In two steps that serve.py also takes apart: the cleaning (photo.mnist_digits, which
    asks classify how the ink splits) and the answer (judged, on what classify says of the digits)."""
    image = open_picture(source)
    try:
        pictures = mnist_digits(image, classify)
    except NoDigit as reason:
        return no_digit(reason)
    finally:
        if not hasattr(source, "read"):  # a file object stays the caller's to close
            image.close()
    return judged(pictures, classify(pictures), min_confidence, max_novelty, min_digit_probability)


def no_digit(reason):
    """The Reading of a picture that holds no digit (photo.NoDigit's reason)."""
    return Reading("?", f"no digit: {reason}", np.zeros([0, SIDE, SIDE], np.float32), np.zeros([0, 10]),
                   np.zeros([0]), np.zeros([0], bool), np.zeros([0]))


def judged(pictures, said, min_confidence=MIN_CONFIDENCE, max_novelty=MAX_NOVELTY,
           min_digit_probability=MIN_DIGIT_PROBABILITY):
    """The digits' pictures and what classify said of them -> Reading: each answered if likely enough, not
    novel and a digit to the gate, else "?"."""
    probabilities, novelty = (np.asarray(said[name], np.float32) for name in ("probabilities", "novelty"))
    digit_probability = np.asarray(said.get("digit_probability", np.ones(len(pictures))), np.float32)
    best = probabilities.argmax(axis=1)
    likely, familiar = probabilities.max(axis=1) >= min_confidence, novelty <= max_novelty
    sure = likely & familiar & digits_to_the_gate(digit_probability, min_digit_probability)
    if not sure.any():
        reason = why_no_digit(best, probabilities, novelty, digit_probability, likely & familiar, likely, max_novelty,
                              min_digit_probability)
        return Reading("?", "no digit: " + reason, pictures, probabilities, novelty, sure, digit_probability)
    digits = "".join(str(d) if ok else "?" for d, ok in zip(best, sure))
    if len(pictures) == 1:
        top3 = np.argsort(-probabilities[0])[:3]
        details = ", ".join(f"{d} {probabilities[0][d]:.2f}" for d in top3)
    else:
        details = ", ".join(f"{d}{'' if ok else '?'} {p[d]:.2f}" for d, ok, p in zip(best, sure, probabilities))
    return Reading(digits, details, pictures, probabilities, novelty, sure, digit_probability)


def digits_to_the_gate(digit_probability, min_digit_probability=MIN_DIGIT_PROBABILITY):
    """The digit gate's verdict on the pieces of one picture (float32 [n], each one's digit probability) -> bool [n]:
    a piece passes if its own probability is at least min_digit_probability, or if most of the picture's pieces
    (more than half) do:

        passes_i = g_i >= t  or  #{j : g_j >= t} > n / 2

    A written number is digits: one piece the gate doubts among pieces it takes for digits is more likely a digit
    cut or cleaned oddly than a letter. A single piece, or two of which one is doubted, is judged by its own
    probability alone; pictures of letters, whose pieces the gate doubts for the most part, are refused as before."""
    digit_probability = np.asarray(digit_probability)
    passes = digit_probability >= min_digit_probability
    return passes | (passes.sum() > len(passes) / 2)


def why_no_digit(best, probabilities, novelty, digit_probability, likely_and_familiar, likely, max_novelty,
                 min_digit_probability):
    """Why none of the pieces is answered: the model is unsure of them, or (when it is sure of some) they are
    unlike the digits it learnt, or (when some are neither) the digit gate says they are no digit."""
    if not likely.any():
        return "the model is unsure, at best " + ", ".join(f"{d} {p[d]:.2f}" for d, p in zip(best, probabilities))
    if not likely_and_familiar.any():
        return (f"unlike the digits the model learnt (novelty above {max_novelty:g}), at best " +
                ", ".join(f"{d} {p[d]:.2f} novelty {n:.2f}" for d, p, n in zip(best, probabilities, novelty)))
    return (f"not a digit to the digit gate (below {min_digit_probability:g}), at best " +
            ", ".join(f"{d} {p[d]:.2f} gate {g:.2f}" for d, p, g in zip(best, probabilities, digit_probability)))


def load_classifier(path=SAVED_MODEL):
    """The exported SavedModel -> a function float32 [n, 28, 28] -> {"probabilities": [n, 10], "novelty": [n],
    "digit_probability": [n]} (numpy). A model exported before novelty or the digit gate was (it lacks that
    output) is read with novelty 0 or digit probability 1, and says so once: it refuses no letter that what it
    has passes."""
    from devices import import_tensorflow
    tf = import_tensorflow()  # without its start-up notices, which are not for users
    serve = tf.saved_model.load(path).signatures["serving_default"]
    for output, what in (("novelty", "novelty score"), ("digit_probability", "digit gate")):
        if output not in serve.structured_outputs:
            print(f"note: {path} has no {what} (exported by an older run.py): letters may be read as digits; "
                  "python run.py exports one", file=sys.stderr)

    def classify(pictures):
        said = {name: value.numpy() for name, value in serve(images=tf.constant(pictures[..., None], tf.float32))
                .items()}
        return {"novelty": np.zeros(len(pictures), np.float32),
                "digit_probability": np.ones(len(pictures), np.float32), **said}
    return classify


class NoExplainer(Exception):
    """The SavedModel has no `explain` signature: run.py exported it before there was one."""


def load_explainer(path=SAVED_MODEL):
    """The exported SavedModel's look inside its network (ensemble.explain_functions; of an ensemble, the first
    member) -> (look_inside, layers):
    look_inside: a function float32 [n, 28, 28] -> {
        "input": [n, 28, 28], the pictures as the network reads them;
        "probabilities": [n, 10], that network's;
        "saliency": [n, 28, 28], the gradient of its likeliest digit's logit with respect to each pixel;
        "layer_0", "layer_1", ...: [n, h, w, channels] or [n, units], each block's output, layer_i that of
                                   layers[i]}  (numpy; every value has the pictures as its first axis);
    layers: what is the same for every picture, once, in the order the network applies its blocks:
        [{"name": "block1", "kernel": [kh, kw, in, channels], "bias": [channels]}  (for a layer a convolution
          makes, the SavedModel's kernels), ..., {"name": "dense"}]  (numpy).
    Raises NoExplainer, with one line saying so, for a model exported without `explain`."""
    from devices import import_tensorflow
    tf = import_tensorflow()
    signatures = tf.saved_model.load(path).signatures
    if "explain" not in signatures:
        raise NoExplainer(f"{path} cannot show its layers (exported by an older run.py); python run.py exports them")
    explain = signatures["explain"]
    kernels = {name: value.numpy() for name, value in signatures["kernels"]().items()}

    def look_inside(pictures):
        said = explain(images=tf.constant(pictures[..., None], tf.float32))
        return {name: value.numpy() for name, value in said.items() if name != "layer_names"}

    # the signature answers the names only beside a picture's layers: a blank one's
    names = explain(images=tf.zeros([1, SIDE, SIDE, 1]))["layer_names"].numpy()
    layers = [{"name": name.decode()} for name in names]
    for i, layer in enumerate(layers):
        if f"kernel_{i}" in kernels:
            layer.update(kernel=kernels[f"kernel_{i}"], bias=kernels[f"bias_{i}"])
    return look_inside, layers


def save_preview(pictures, path):
    """The 28x28 inputs side by side, as an 8-bit grey PNG, written atomically."""
    strip = np.concatenate(list(pictures), axis=1)
    with files.atomic_open(path, "wb") as file:
        Image.fromarray(np.round(strip * 255).astype(np.uint8)).save(file, format="PNG")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG or any picture Pillow reads")
    parser.add_argument("--show", action="store_true",
                        help="save what the network saw as <name>.mnist.png (the digits side by side)")
    parser.add_argument("--min_confidence", type=float, default=MIN_CONFIDENCE,
                        help=f"answer ? below this probability (default {MIN_CONFIDENCE}; 0: never for this)")
    parser.add_argument("--max_novelty", type=float, default=MAX_NOVELTY,
                        help=f"answer ? above this novelty, unlike the training digits (default {MAX_NOVELTY}; "
                             "inf: never for this)")
    parser.add_argument("--min_digit_probability", type=float, default=MIN_DIGIT_PROBABILITY,
                        help="answer ? below this probability, from the digit gate, that a piece is a digit at all "
                             f"(default {MIN_DIGIT_PROBABILITY}; 0: never for this)")
    args = parser.parse_args(argv)
    if not os.path.exists(f"{SAVED_MODEL}/saved_model.pb"):
        print(f"error: no model in {SAVED_MODEL}; run python run.py first", file=sys.stderr)
        return 2
    loaded = []

    def classify(pictures):  # TensorFlow starts only once a picture needs it: errors alone come quickly
        if not loaded:
            loaded.append(load_classifier())
        return loaded[0](pictures)

    failed = 0
    for path in args.images:
        try:
            reading = read(path, classify, args.min_confidence, args.max_novelty, args.min_digit_probability)
        except ValueError as error:
            print(f"error: {path}: {error}", file=sys.stderr)
            failed += 1
            continue
        print(f"{path}: {reading.digits}  ({reading.details})", flush=True)
        if args.show and len(reading.pictures):
            try:
                save_preview(reading.pictures, Path(path).with_name(Path(path).stem + ".mnist.png"))
            except files.DiskFull as error:
                print(f"error: {error}", file=sys.stderr)
                failed += 1
    return 2 if failed else 0  # some file failed


if __name__ == "__main__":
    sys.exit(main())
