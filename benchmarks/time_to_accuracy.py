"""How many seconds of training does the default recipe need to get 99.0% and 99.5% of unseen digits right?

    python benchmarks/time_to_accuracy.py            # schedules of 1 to 8 epochs, 2 seeds each (~10 min)
    python benchmarks/time_to_accuracy.py --quick    # a smoke run in seconds; its numbers mean nothing

airbench's measure: a run is the whole default recipe (network, augmentation, one-cycle schedule, mixed
precision where the hardware has it) compressed into E epochs, with nothing chosen along the way: there is no
validation split, so the last step's weights are kept, and the run is scored once, at its end, with run.py's
test-time augmentation (airbench scores with its own), on the share of train.csv it never saw (the split
`python run.py --seed S --percent_data_for_training 90` makes). Its time is train.train's own count of seconds spent in
training steps (after the data is loaded, the first step's tracing included, no evaluation). The time to a
threshold is the shortest schedule whose mean held-out accuracy over the seeds reaches it, with that schedule's
median training seconds. Prints a table and writes benchmarks/results/time_to_accuracy.json (not tracked by
git; the measurements the docs cite are kept in docs/results/).
"""
# ---- settings: each is also a flag, e.g. --seeds 3 ----
epochs = "1,1.25,1.5,2,4,5,6,8"  # the schedules to run, each the default recipe compressed into this many
                                 # epochs (1.5: the schedule ends halfway through the second, as airbench's 9.9
                                 # epochs do); together they bracket where the default thresholds are first
                                 # reached (docs/performance.md)
seeds = 2                # runs of each schedule, with seeds seed, seed + 1, ...
seed = 42                # the first seed: of the split (as python run.py --seed makes it), weights and data order
percent_data_for_training = 90  # of the rows, to train on; the rest is the held-out digits scored at the end
thresholds = "99.0,99.5" # held-out accuracies, in percent
rows = 0                 # train.csv rows to use (0: all 42,000)
out = ""                 # the JSON's path (relative to the repo); default: benchmarks/results/time_to_accuracy.json,
                         # or time_to_accuracy_quick.json with --quick: a smoke run never overwrites one
quick = False            # a smoke run: 300 rows, a schedule of 1 epoch, 2 seeds
# ------------------------------------------------------------------------------
import json
import math
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import flags  # noqa: E402  (the repo's modules are importable only from here on)

parser = flags.settings_parser(globals())
globals().update(vars(parser.parse_args()))
if quick:
    rows, epochs, seeds = 300, "1", 2
    print("quick: a smoke run on 300 rows; its numbers mean nothing", flush=True)
try:
    SCHEDULES = [float(n) for n in epochs.split(",")]
except ValueError:
    SCHEDULES = []
if not SCHEDULES or not all(0 < n < math.inf for n in SCHEDULES):
    parser.error(f"--epochs {epochs}: each schedule must be a positive number of epochs, e.g. --epochs 1,1.5,2")

from devices import compute_dtype, import_tensorflow  # noqa: E402

tf = import_tensorflow()
import data  # noqa: E402
import ensemble  # noqa: E402
import files  # noqa: E402
import train  # noqa: E402
from recipes import build_model, training_recipe  # noqa: E402

THRESHOLDS = [float(percent) for percent in thresholds.split(",")]
load_at_start = os.getloadavg()[0]
train_path = data.find_csv("train")
images, labels = data.load_train(train_path, max_rows=rows or None)
DTYPE = compute_dtype(mixed_precision=True)  # run.py's default


def one_run(n_epochs, run_seed):
    """The default recipe in n_epochs epochs -> {"epochs", "seed", "training_seconds", "held_out_accuracy"}."""
    train_images, train_labels, held_out_images, held_out_labels = data.split_train_validation(
        images, labels, percent_data_for_training, run_seed)
    tf.random.set_seed(run_seed)
    net = build_model("digitnet", seed=run_seed)
    seconds = []  # train.train's count after each step: the last is the run's
    train.train(net, (train_images, train_labels, held_out_images[:0], held_out_labels[:0]),
                training_recipe("digitnet", max_n_epochs=n_epochs, patience=math.ceil(n_epochs)), run_seed,
                train.RunOptions(after_step=lambda step, training_seconds: seconds.append(training_seconds),
                                 compute_dtype=DTYPE, verbose=False))
    probabilities = ensemble.ensemble_probabilities([net], held_out_images, tta=True)
    accuracy = float((probabilities.argmax(axis=1) == held_out_labels).mean())
    print(f"{n_epochs:g} epochs, seed {run_seed}: {100 * accuracy:.2f}% of {len(held_out_labels)} unseen digits "
          f"after {seconds[-1]:.1f} s of training", flush=True)
    return dict(epochs=n_epochs, seed=run_seed, training_seconds=seconds[-1], held_out_accuracy=accuracy)


runs = [one_run(n_epochs, run_seed) for n_epochs in SCHEDULES for run_seed in range(seed, seed + seeds)]
schedules = []
for n_epochs in SCHEDULES:
    these = [run for run in runs if run["epochs"] == n_epochs]
    schedules.append(dict(epochs=n_epochs,
                          median_training_seconds=statistics.median(r["training_seconds"] for r in these),
                          mean_held_out_accuracy=statistics.mean(r["held_out_accuracy"] for r in these),
                          held_out_accuracies=[r["held_out_accuracy"] for r in these]))
reached = {f"{percent:.1f}": next((s for s in schedules if 100 * s["mean_held_out_accuracy"] >= percent), None)
           for percent in THRESHOLDS}

print(f"\nthe default recipe compressed into E epochs, {seeds} seed(s) each; held out: the "
      f"{100 - percent_data_for_training}% of {len(images)} rows of {train_path} that took no part in training")
print(f"{'epochs':>6} {'training (s)':>13} {'held-out accuracy':>18}   each seed")
for s in schedules:
    print(f"{s['epochs']:>6g} {s['median_training_seconds']:>13.1f} {100 * s['mean_held_out_accuracy']:>17.2f}%   "
          + " ".join(f"{100 * a:.2f}%" for a in s["held_out_accuracies"]))
for key, schedule in reached.items():
    reached_in = schedule and f"{schedule['median_training_seconds']:.1f} s of training ({schedule['epochs']:g} epochs)"
    print(f"time to {key}%: " + (reached_in or f"not reached in {SCHEDULES[-1]:g} epochs"))

results = dict(
    settings=dict(epochs=SCHEDULES, seeds=seeds, seed=seed, rows=len(images), quick=quick,
                  percent_data_for_training=percent_data_for_training, compute_dtype=DTYPE, tta=True),
    machine=dict(cores=len(os.sched_getaffinity(0)), load_average_at_start=load_at_start, tensorflow=tf.__version__),
    time_to_threshold={key: schedule and dict(seconds=schedule["median_training_seconds"], epochs=schedule["epochs"])
                       for key, schedule in reached.items()},
    schedules=schedules,
    runs=runs,
)
path = REPO / (out or f"benchmarks/results/time_to_accuracy{'_quick' if quick else ''}.json")
files.write_text(path, json.dumps(results, indent=2) + "\n")
print(f"written: {path}")
