"""The original write-ups' experiments, rebuilt on this project's networks, their recipes (recipes.MODELS) and its
training loop.

    python experiments.py compare --seeds 3    # every network: validation accuracy over seeds, size, speed
    python experiments.py compare --models mlp,cnn_small   # only these
    python experiments.py shift                # digits at random places on a 48x48 canvas: MLP against CNN
    python experiments.py batch_size           # accuracy and wall time against batch size
    python experiments.py sanity               # K random validation digits beside the chance of all K right
    python experiments.py NAME --quick         # a smoke run of a few minutes: 2,000 rows, at most 2 epochs, 1 seed

Each trains its networks by their own recipes (recipes.MODELS), prints a table and writes resources/NAME.png
(compare also its table, resources/compare.md); a --quick smoke run writes NAME_quick.png and compare_quick.md.
Only train.csv is read (split into training and validation as run.py splits it); test.csv has no labels.
"""
# ---- settings: each is also a flag, e.g. --seeds 5 ----
seeds = 3                        # compare: how many times each network is trained (seeds seed, seed+1, ...)
rows = 0                         # use only the first this many rows of train.csv; 0: all
max_n_epochs = 0                 # cap every recipe's epochs at this; 0: each recipe's own
models = ""                      # compare: the networks, comma-separated; "": every one
model = "cnn_small"              # batch_size, sanity: the network
digits = 16                      # sanity: how many validation digits to draw
percent_data_for_training = 90   # of the rows, to train on; the rest is the validation split
seed = 42                        # the split, and the first seed of each network
quick = False                    # a few minutes: 2,000 rows, at most 2 epochs, 1 seed; a smoke run, not a result
# ------------------------------------------------------------------------------
QUICK = dict(rows=2000, max_n_epochs=2, seeds=1)
import logging
import math
import os
import sys
import time

from devices import compute_dtype, import_tensorflow

import_tensorflow()
logging.getLogger("tensorflow").setLevel(logging.ERROR)  # every fit traces its own step function, by design
import matplotlib

matplotlib.use("Agg")  # no display needed, nothing blocks
import matplotlib.pyplot as plt
import numpy as np

import data
import files
import flags
from recipes import MODELS, build_model, describe_models, training_recipe
from train import RunOptions, best_epoch, predict_probabilities, train

RESOURCES_DIR = "resources"


# ---------------------------------------------------------------------------------------------------------
# shared by the experiments


def fit(name, split, settings, seed, input_size=None, **overrides):
    """Train MODELS[name] by its recipe (epochs capped at settings.max_n_epochs) -> (model, history)."""
    architecture = {} if input_size is None else dict(input_size=input_size)
    model = build_model(name, seed=seed, **architecture)
    if settings.max_n_epochs:
        overrides.setdefault("max_n_epochs", min(settings.max_n_epochs, MODELS[name].recipe.max_n_epochs))
    history = train(model, split, training_recipe(name, **overrides), seed,
                    RunOptions(compute_dtype=compute_dtype(mixed_precision=True), verbose=False))  # as run.py
    best = best_epoch(history)
    print(f"  {name} (seed {seed}): validation {100 * best['val_accuracy']:.2f}% at epoch {best['epoch']} "
          f"of {len(history)}, {seconds_per_epoch(history):.1f}s per epoch", flush=True)
    return model, history


def seconds_per_epoch(history):
    """The last epoch's time: the first also traces the step function (seconds, for a big network)."""
    return history[-1]["seconds"]


def markdown_table(header, rows):
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(str(cell) for cell in line) + " |" for line in lines)


def output_path(filename, settings):
    """Where an experiment writes filename: a --quick smoke run's numbers mean nothing, so it writes
    NAME_quick.EXT, never over a full run's."""
    stem, extension = os.path.splitext(filename)
    return os.path.join(RESOURCES_DIR, f"{stem}_quick{extension}" if settings.quick else filename)


def save_figure(figure, path):
    figure.tight_layout()
    path = files.save_figure(figure, path, dpi=100)
    plt.close(figure)
    print(f"figure: {path}")


# ---------------------------------------------------------------------------------------------------------
# compare: every network, several seeds


def compare(split, settings):
    """Each network trained settings.seeds times (seeds seed, seed+1, ...) on the same split: the mean and
    standard deviation of its best validation accuracy, beside its size, cost and speed."""
    results = []
    for name, parameters, flops in describe_models():
        if name not in settings.models:
            continue
        accuracies, seconds = [], []
        for offset in range(settings.seeds):
            _, history = fit(name, split, settings, settings.seed + offset)
            accuracies.append(100 * best_epoch(history)["val_accuracy"])
            seconds.append(seconds_per_epoch(history))
        spread = np.std(accuracies, ddof=1) if len(accuracies) > 1 else 0.0
        results.append((name, np.mean(accuracies), spread, parameters, flops, np.mean(seconds)))

    table = markdown_table(
        ["model", f"validation accuracy % (mean of {settings.seeds})", "std", "parameters", "MFLOPs/image",
         "s/epoch"],
        [[name, f"{mean:.2f}", f"{spread:.2f}" if settings.seeds > 1 else "-", f"{parameters:,}",
          f"{flops / 1e6:,.1f}", f"{seconds:.1f}"] for name, mean, spread, parameters, flops, seconds in results])
    print(table)
    path = files.write_text(output_path("compare.md", settings), table + "\n")
    print(f"table: {path}")

    names, means, spreads = [row[0] for row in results], [row[1] for row in results], [row[2] for row in results]
    figure, axis = plt.subplots(figsize=(9, 4.5))
    bars = axis.bar(names, means, yerr=spreads, capsize=4, color="tab:blue")
    for bar, (_, _, _, parameters, _, _) in zip(bars, results):
        axis.annotate(f"{parameters / 1e6:.2f}M", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                      ha="center", va="bottom", fontsize=8, xytext=(0, 3), textcoords="offset points")
    axis.set_ylim(max(0, min(means) - 5), 100)
    axis.set_ylabel("validation accuracy % (mean ± std over seeds)")
    capped = f", at most {settings.max_n_epochs} epochs" if settings.max_n_epochs else ""
    axis.set_title(f"{settings.seeds} seed(s) each, {len(split[1])} training digits{capped} (labels: parameters)")
    axis.tick_params(axis="x", rotation=20)
    save_figure(figure, output_path("compare.png", settings))


# ---------------------------------------------------------------------------------------------------------
# shift: a fully connected network learns each position separately; a convolution shares it

CANVAS = 48


def place(images, offsets, size=CANVAS):
    """Each 28x28 digit pasted into a blank size x size canvas, its top-left corner at offsets[i] = (row, col)."""
    canvases = np.zeros([len(images), size, size, 1], np.float32)
    for canvas, image, (row, col) in zip(canvases, images, offsets):
        canvas[row:row + 28, col:col + 28] = image
    return canvases


def shift(split, settings):
    """The MLP and the small CNN, trained and validated on digits centred on a 48x48 canvas, then on digits
    placed at random on it (20 pixels of play each way): how far does each one's accuracy fall?"""
    train_images, train_labels, val_images, val_labels = split
    rng = np.random.default_rng(settings.seed)
    centre = (CANVAS - 28) // 2

    def centred(images):
        return place(images, np.full([len(images), 2], centre))

    def scattered(images):
        return place(images, rng.integers(0, CANVAS - 28 + 1, size=[len(images), 2]))

    placements = {"centred": (centred(train_images), centred(val_images)),
                  "random offsets": (scattered(train_images), scattered(val_images))}
    accuracies = {}
    for name in ("mlp", "cnn_small"):
        for placement, (train_canvases, val_canvases) in placements.items():
            _, history = fit(name, (train_canvases, train_labels, val_canvases, val_labels), settings, settings.seed,
                             input_size=CANVAS)
            accuracies[name, placement] = 100 * best_epoch(history)["val_accuracy"]

    rows = [[name, f"{accuracies[name, 'centred']:.2f}", f"{accuracies[name, 'random offsets']:.2f}",
             f"{accuracies[name, 'centred'] - accuracies[name, 'random offsets']:.2f}"]
            for name in ("mlp", "cnn_small")]
    print(markdown_table(["model (48x48 input)", "centred %", "random offsets %", "fall (points)"], rows))

    figure, (examples, axis) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw=dict(width_ratios=[1, 1.4]))
    examples.imshow(np.hstack(list(placements["random offsets"][1][:4, :, :, 0])), cmap="gray_r")
    examples.set_title("validation digits at random offsets")
    examples.axis("off")
    positions = np.arange(2)
    for i, placement in enumerate(placements):
        axis.bar(positions + 0.4 * i - 0.2, [accuracies[name, placement] for name in ("mlp", "cnn_small")], 0.4,
                 label=placement)
    axis.set_xticks(positions, ["mlp", "cnn_small"])
    axis.set_ylim(max(0, min(accuracies.values()) - 10), 100)
    axis.set_ylabel("validation accuracy %")
    axis.legend()
    save_figure(figure, output_path("shift.png", settings))


# ---------------------------------------------------------------------------------------------------------
# batch size: bigger batches take fewer, cheaper-per-digit steps

BATCH_SIZES = [32, 128, 512, 2048, 10000]


def batch_size(split, settings):
    """settings.model trained at each batch size with its recipe otherwise unchanged (the same learning rate
    and epochs, so a bigger batch means fewer steps): accuracy and wall time, tracing included."""
    n_train = len(split[1])
    results = []
    for size in BATCH_SIZES:
        started = time.time()
        _, history = fit(settings.model, split, settings, settings.seed, batch_size=size)
        results.append((size, min(size, n_train), 100 * best_epoch(history)["val_accuracy"], time.time() - started,
                        len(history)))
    print(markdown_table(["batch size", "digits per step", "validation accuracy %", "wall time s", "epochs"],
                         [[size, used, f"{accuracy:.2f}", f"{seconds:.1f}", epochs]
                          for size, used, accuracy, seconds, epochs in results]))

    figure, (accuracy_axis, time_axis) = plt.subplots(1, 2, figsize=(10, 4))
    sizes = [used for _, used, _, _, _ in results]
    accuracy_axis.plot(sizes, [accuracy for _, _, accuracy, _, _ in results], "o-")
    accuracy_axis.set_ylabel("validation accuracy %")
    time_axis.plot(sizes, [seconds for _, _, _, seconds, _ in results], "o-", color="tab:orange")
    time_axis.set_ylabel("wall time, s")
    for axis in (accuracy_axis, time_axis):
        axis.set_xscale("log")
        axis.set_xlabel("digits per step")
    figure.suptitle(f"{settings.model} on {n_train} training digits, the same epochs and learning rate throughout")
    save_figure(figure, output_path("batch_size.png", settings))


# ---------------------------------------------------------------------------------------------------------
# sanity: a handful of right answers says little about a good model

N_DRAWS = 10000


def sanity(split, settings):
    """K random validation digits and the model's answers, beside acc^K: the chance that a model right on a
    fraction acc of digits (independently) gets all K right. Checked by drawing K digits N_DRAWS times."""
    _, _, val_images, val_labels = split
    model, _ = fit(settings.model, split, settings, settings.seed)
    predictions = predict_probabilities(model, val_images).argmax(1)
    correct = predictions == val_labels
    accuracy = float(np.mean(correct))
    rng = np.random.default_rng(settings.seed)
    drawn = rng.choice(len(val_labels), size=min(settings.digits, len(val_labels)), replace=False)
    k, n_right = len(drawn), int(correct[drawn].sum())
    print(f"validation accuracy {100 * accuracy:.2f}% on {len(val_labels)} digits; {k} drawn at random, {n_right} "
          f"of them right. All {k} right has probability acc^{k} = {100 * accuracy ** k:.1f}%")

    sizes = sorted({1, 10, k, 100, 1000})
    observed = {size: np.mean(rng.choice(correct, size=[N_DRAWS, size]).all(axis=1)) for size in sizes}
    print(markdown_table(["K", "acc^K %", f"all K right in {N_DRAWS:,} draws %"],
                         [[size, f"{100 * accuracy ** size:.2f}", f"{100 * observed[size]:.2f}"] for size in sizes]))

    columns = math.ceil(math.sqrt(k))
    rows = math.ceil(k / columns)
    figure = plt.figure(figsize=(4 + 1.3 * columns, 1.4 * rows + 1))
    grid = figure.add_gridspec(rows, columns + 3)
    for i, index in enumerate(drawn):
        axis = figure.add_subplot(grid[i // columns, i % columns])
        axis.imshow(val_images[index, :, :, 0], cmap="gray_r", vmin=0, vmax=1)
        right = correct[index]
        axis.set_title(f"{predictions[index]}" + ("" if right else f" (is {val_labels[index]})"), fontsize=9,
                       color="green" if right else "red")
        axis.axis("off")
    curve = figure.add_subplot(grid[:, columns:])
    everything = np.arange(1, 1001)
    curve.plot(everything, 100 * accuracy ** everything, label=f"acc^K, acc = {100 * accuracy:.2f}%")
    curve.plot(sizes, [100 * observed[size] for size in sizes], "o", label=f"all right in {N_DRAWS:,} draws")
    curve.set_xscale("log")
    curve.set_xlabel("K digits")
    curve.set_ylabel("probability all K are right, %")
    curve.set_title(f"these {k}: {n_right} right; all {k} right {100 * accuracy ** k:.0f}% of the time", fontsize=9)
    curve.legend(fontsize=8)
    save_figure(figure, output_path("sanity.png", settings))


# ---------------------------------------------------------------------------------------------------------

EXPERIMENTS = {"compare": compare, "shift": shift, "batch_size": batch_size, "sanity": sanity}


def parse_settings(argv):
    """The experiment's name, then every setting above as --name; --quick changes the defaults of those in
    QUICK, not what is given."""
    parser = flags.settings_parser(globals())
    parser.add_argument("name", choices=EXPERIMENTS, help="the experiment")
    if parser.parse_known_args(argv)[0].quick:
        parser.set_defaults(**QUICK)
    settings = parser.parse_args(argv)
    settings.models = settings.models.split(",") if settings.models else list(MODELS)
    for name in [*settings.models, settings.model]:
        if name not in MODELS:
            parser.error(f"unknown network {name!r}; the networks are {', '.join(MODELS)}")
    return settings


def main(argv=None):
    settings = parse_settings(sys.argv[1:] if argv is None else argv)
    started = time.time()
    path = data.find_csv("train")
    images, labels = data.load_train(path, max_rows=settings.rows or None)
    split = data.split_train_validation(images, labels, settings.percent_data_for_training, settings.seed)
    if settings.quick:
        print(f"quick: a smoke run on the first {len(labels)} rows of {path}, at most {settings.max_n_epochs} "
              f"epochs, {settings.seeds} seed(s); its numbers mean nothing (written as {RESOURCES_DIR}/*_quick.*)")
    print(f"{settings.name}: {len(split[1])} training and {len(split[3])} validation digits from {path}")
    EXPERIMENTS[settings.name](split, settings)
    print(f"{time.time() - started:.0f}s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
