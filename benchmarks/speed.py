"""How fast is the project's training step, against Keras' model.fit on the same network, batch and digits?

    python benchmarks/speed.py             # the full measurement (a few minutes; run it on a quiet machine)
    python benchmarks/speed.py --quick     # a smoke run in seconds; its numbers mean nothing

Prints a table and writes it to benchmarks/results/speed.json (not tracked by git; the measurements the docs
cite are kept in docs/results/): training images/s of each contender (the median over `rounds` rounds in which
the contenders take turns, so that a busy neighbour slows them alike), ours / Keras as a ratio, achieved
GFLOP/s against the CPU's peak, inference over test.csv, peak memory.
"""
# ---- settings: each is also a flag, e.g. --steps 50 ----
steps = 100              # timed training steps per contender per round
warmup_steps = 10        # untimed steps before them: tracing, oneDNN's first-call set-up
rounds = 3               # rounds of (ours, Keras, ...) in turn; each contender's median is reported
test_rows = 0            # test.csv digits to predict (0: all 28,000)
inference_repeats = 3    # the first call traces the network; the median of the others is reported
flops_per_cycle = 0      # FP32 FLOPs per cycle per core for the peak; 0: guessed from /proc/cpuinfo
out = ""                 # the JSON's path (relative to the repo); default: benchmarks/results/speed.json,
                         # or speed_quick.json with --quick so that a smoke run never overwrites a measurement
quick = False            # a smoke run: 3 steps after 2 of warm-up, 1 round, 300 test digits twice
# ------------------------------------------------------------------------------
import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import flags  # noqa: E402  (the repo's modules are importable only from here on)

globals().update(vars(flags.settings_parser(globals()).parse_args()))
if quick:
    steps, warmup_steps, rounds, test_rows, inference_repeats = 3, 2, 1, 300, 2
    print("quick: a smoke run of a few steps; its numbers mean nothing", flush=True)
load_at_start = os.getloadavg()[0]  # recorded: a figure taken on a busy machine should say so

from devices import import_tensorflow  # noqa: E402

tf = import_tensorflow()
import numpy as np  # noqa: E402
import keras  # noqa: E402

import data  # noqa: E402
import model  # noqa: E402
import recipes  # noqa: E402
import train  # noqa: E402

DEFAULT = recipes.MODELS["digitnet"].recipe  # what python run.py trains
batch_size = DEFAULT.batch_size

# ---- the digits: the first rows of train.csv, just enough for warm-up + timed steps, and test.csv ----
images, labels = data.load_train(data.find_csv("train"), max_rows=(warmup_steps + steps) * batch_size)
one_hot = np.eye(10, dtype=np.float32)[labels]
test_images = data.load_test(data.find_csv("test"), max_rows=test_rows or None)

# ---- the contenders ----
# Ours is train.train itself on these rows for one epoch, timed by its after_step hook, which sums the
# seconds spent in each step (the tf.function call and reading its loss back) and nothing else.
# The comparison with Keras is without augmentation on both sides (Keras' random-transform layers are a
# different computation); the default recipe's step, with augmentation, is timed too, on its own.
DIGITNET_RECIPE = dataclasses.replace(DEFAULT, augmentation=None)


def time_ours(net, recipe, compute_dtype="float32"):
    """Seconds taken by `steps` steps of train.train's own step, after `warmup_steps` untimed ones."""
    cumulative = []
    recipe = dataclasses.replace(recipe, max_n_epochs=1, patience=1, batch_size=batch_size)
    options = train.RunOptions(verbose=False, compute_dtype=compute_dtype,
                               after_step=lambda step, training_seconds: cumulative.append(training_seconds))
    train.train(net, (images, labels, images[:0], labels[:0]), recipe, 0, options)
    return cumulative[-1] - cumulative[warmup_steps - 1]


def time_keras(net):
    """Seconds taken by `steps` steps of net.fit, after `warmup_steps` untimed ones: from the end of one batch
    to the end of another, so Keras' own per-step work (data pipeline, callbacks) counts, as it does in use."""
    ends = []
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: ends.append(time.perf_counter()))
    net.fit(images, one_hot, batch_size=batch_size, epochs=1, shuffle=True, verbose=0, callbacks=[record])
    return ends[-1] - ends[warmup_steps - 1]


def keras_digitnet():
    """model.DigitNet's architecture in keras.layers: no bias before batch norm (Keras' momentum and epsilon
    are ours), the same recipe but a constant learning rate."""
    layers = keras.layers

    def block(filters, size):
        return [layers.Conv2D(filters, size, padding="same", use_bias=False), layers.MaxPooling2D(),
                layers.BatchNormalization(), layers.ReLU()]

    net = keras.Sequential([keras.Input((28, 28, 1)), *block(32, 5), *block(64, 3), *block(128, 3), layers.Flatten(),
                            layers.Dense(128, use_bias=False), layers.BatchNormalization(), layers.ReLU(),
                            layers.Dropout(ours.dropout_rate), layers.Dense(model.N_CLASSES)])
    net.compile(keras.optimizers.Adam(DEFAULT.learning_rate),
                keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=DEFAULT.label_smoothing),
                metrics=["accuracy"])
    return net


def keras_mnist_cnn():
    """Keras' classic examples/mnist_cnn.py: 32c3-64c3-maxpool-dropout-128-dropout-10, Adadelta at 1.0."""
    layers = keras.layers
    net = keras.Sequential([keras.Input((28, 28, 1)), layers.Conv2D(32, 3, activation="relu"),
                            layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(), layers.Dropout(0.25),
                            layers.Flatten(), layers.Dense(128, activation="relu"), layers.Dropout(0.5),
                            layers.Dense(model.N_CLASSES, activation="softmax")])
    net.compile(keras.optimizers.Adadelta(1.0), "categorical_crossentropy", metrics=["accuracy"])
    return net


ours = recipes.build_model("digitnet")
ours_classic = recipes.build_model("cnn_keras_example")  # trained as published: Adadelta at 1.0
keras_twin, keras_classic = keras_digitnet(), keras_mnist_cnn()
# name: (architecture, the Keras twin it is compared with, the network, the timed run)
contenders = {
    "ours": ("DigitNet", "Keras fit", ours, lambda: time_ours(ours, DIGITNET_RECIPE)),
    "Keras fit": ("DigitNet", None, keras_twin, lambda: time_keras(keras_twin)),
    "ours, mnist_cnn": ("mnist_cnn", "Keras fit, mnist_cnn", ours_classic,
                        lambda: time_ours(ours_classic, recipes.training_recipe("cnn_keras_example"))),
    "Keras fit, mnist_cnn": ("mnist_cnn", None, keras_classic, lambda: time_keras(keras_classic)),
    "ours, augmentation on (the default recipe)": (
        "DigitNet", None, ours, lambda: time_ours(ours, DEFAULT)),
    # run.py --mixed_precision on a CPU; the % of peak is still of the FP32 peak
    "ours, mixed precision (bfloat16)": (
        "DigitNet", None, ours, lambda: time_ours(ours, DIGITNET_RECIPE, "bfloat16")),
}

# ---- training throughput: the contenders in turn, round after round ----
seconds = {name: [] for name in contenders}
for round_index in range(rounds):
    for name, (*_, timed_run) in contenders.items():
        seconds[name].append(timed_run())
    print(f"round {round_index + 1}/{rounds}, images/s: " +
          ", ".join(f"{name} {steps * batch_size / s[-1]:.0f}" for name, s in seconds.items()), flush=True)


# ---- the CPU's peak: cores x clock x FP32 FLOPs per cycle per core ----
def cpu_info():
    """The first processor's fields in /proc/cpuinfo, and the highest clock any reports."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = dict(line.split(":", 1) for line in text.split("\n\n")[0].splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    megahertz = [float(line.split(":")[1]) for line in text.splitlines() if line.startswith("cpu MHz")]
    return fields, max(megahertz, default=0.0) / 1000


def guess_flops_per_cycle(fields):
    """FP32 FLOPs per cycle per core: FMA units x lanes x 2 (an FMA is a multiply and an add)."""
    flags, amd = fields.get("flags", "").split(), fields.get("vendor_id") == "AuthenticAMD"
    family = int(fields.get("cpu family", 0))
    if amd and family >= 26 and "avx512f" in flags:
        return 64, "AMD Zen 5: 2 FMA units x 512 bits (16 FP32 lanes) x 2"
    if amd and "avx512f" in flags:
        return 32, "AMD Zen 4: 2 FMA units x 256 bits (AVX-512 taken in two halves) x 2"
    if "avx512f" in flags:
        return 64, "AVX-512: 2 FMA units x 16 FP32 lanes x 2 (Intel server parts; some have 1 unit)"
    if "fma" in flags:
        return 32, "AVX2: 2 FMA units x 8 FP32 lanes x 2"
    return 8, "SSE: 4 FP32 lanes x 2 (no FMA flag)"


fields, gigahertz = cpu_info()
cores = len(os.sched_getaffinity(0))
per_cycle, per_cycle_why = guess_flops_per_cycle(fields)
if flops_per_cycle:
    per_cycle, per_cycle_why = flops_per_cycle, "given by --flops_per_cycle"
peak_gflops = cores * gigahertz * per_cycle
peak_assumption = (f"peak = {cores} cores x {gigahertz:.2f} GHz (cpu MHz in /proc/cpuinfo; under a hypervisor "
                   f"the nominal clock, not boost) x {per_cycle} FLOP/cycle ({per_cycle_why}) "
                   f"= {peak_gflops:.0f} GFLOP/s")

# ---- inference: train.predict_probabilities over test.csv, as run.py calls it ----
inference_seconds = []
for _ in range(inference_repeats):
    started = time.perf_counter()
    train.predict_probabilities(ours, test_images)
    inference_seconds.append(time.perf_counter() - started)
inference_median = statistics.median(inference_seconds[1:] or inference_seconds)

# ---- the table ----
training = []
for name, (architecture, twin, net, _) in contenders.items():
    # Training FLOPs per image: 3 x forward, the usual convention (the backward pass costs about two forwards).
    flops = 3 * recipes.count_flops(net)
    rates = [steps * batch_size / s for s in seconds[name]]
    images_per_second = statistics.median(rates)
    # The ratio is the median of the rounds' own ratios: a contender is compared with its twin of the same round.
    ratio = statistics.median(a / b for a, b in zip(seconds[twin], seconds[name])) if twin else None
    training.append(dict(name=name, architecture=architecture, images_per_second=images_per_second,
                         images_per_second_each_round=rates, ratio_vs_keras=ratio,
                         train_flops_per_image=flops, gflops_per_second=images_per_second * flops / 1e9,
                         percent_of_peak=100 * images_per_second * flops / 1e9 / peak_gflops if peak_gflops else None))
peak_memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

print(f"\ntraining: batch {batch_size}, {steps} timed steps after {warmup_steps} of warm-up, median of {rounds} "
      f"round(s); real train.csv digits; ours and Keras fit compared without augmentation")
print(f"{'contender':44} {'architecture':12} {'images/s':>9} {'vs Keras':>9} {'GFLOP/s':>8} {'% of peak':>9}")
for row in training:
    ratio = f"{row['ratio_vs_keras']:.2f}x" if row["ratio_vs_keras"] else "-"
    percent = f"{row['percent_of_peak']:.1f}" if row["percent_of_peak"] is not None else "-"
    print(f"{row['name']:44} {row['architecture']:12} {row['images_per_second']:9.0f} {ratio:>9} "
          f"{row['gflops_per_second']:8.1f} {percent:>9}")
flops_by_architecture = {row["architecture"]: row["train_flops_per_image"] for row in training}
print("FLOPs per training image (3 x forward): " +
      ", ".join(f"{architecture} {flops / 1e6:.1f} M" for architecture, flops in flops_by_architecture.items()))
print(peak_assumption)
print(f"inference: {len(test_images)} test digits in {inference_median:.2f} s "
      f"({len(test_images) / inference_median:.0f} images/s, median of {max(inference_repeats - 1, 1)} call(s)); "
      f"the first call, tracing the network too: {inference_seconds[0]:.2f} s")
print(f"peak resident memory of this process: {peak_memory_mb:.0f} MB (both networks, both Keras models, the data)")

results = dict(
    settings=dict(steps=steps, warmup_steps=warmup_steps, rounds=rounds, batch_size=batch_size, quick=quick,
                  keras_compared_without_augmentation=True, keras_jit_compile=bool(keras_twin.jit_compile)),
    machine=dict(cpu=fields.get("model name", platform.processor()), cpu_family=fields.get("cpu family"),
                 cores=cores, gigahertz=gigahertz, load_average_at_start=load_at_start,
                 tensorflow=tf.__version__, keras=keras.__version__),
    training=training,
    peak=dict(gflops_per_second=peak_gflops, flops_per_cycle_per_core=per_cycle, assumption=peak_assumption),
    inference=dict(digits=len(test_images), seconds=inference_median, first_call_seconds=inference_seconds[0],
                   seconds_each_call=inference_seconds, images_per_second=len(test_images) / inference_median),
    peak_memory_mb=peak_memory_mb,
)
path = REPO / (out or f"benchmarks/results/speed{'_quick' if quick else ''}.json")
path.parent.mkdir(parents=True, exist_ok=True)
path.write_text(json.dumps(results, indent=2) + "\n")
print(f"written: {path}")
