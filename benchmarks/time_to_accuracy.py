"""How long does the default recipe train before it first reaches 99.0% and 99.5% validation accuracy?

    python benchmarks/time_to_accuracy.py            # 3 seeds of the whole recipe (up to ~10 minutes a seed)
    python benchmarks/time_to_accuracy.py --quick    # a smoke run in seconds; its numbers mean nothing

Each seed trains as `python run.py --seed S` does (the same split, network, recipe and step, through
train.train), checking validation accuracy every `eval_every` steps from train.train's after_step hook.
The time is train.train's own count of seconds spent in training steps: after the data is loaded, without
the evaluations, with the first step's tracing (every run pays it). A run stops once it has reached every
threshold. Prints a table and writes benchmarks/results/time_to_accuracy.json. A seed that never reaches a
threshold counts as infinitely slow in the median, so the median is "not reached" when most seeds miss it.
"""
# ---- settings: each is also a flag, e.g. --seeds 5 ----
seeds = 3                # how many runs, with seeds seed, seed + 1, ...
seed = 42                # the first seed: of the split (as python run.py --seed makes it), weights and data order
percent_data_for_training = 90  # of the rows, to train on; the rest is the validation split checked
thresholds = "99.0,99.5" # validation accuracies, in percent
eval_every = 20          # steps between validation checks: a time is late by at most this many steps
rows = 0                 # train.csv rows to use (0: all 42,000)
out = ""                 # the JSON's path (relative to the repo); default: benchmarks/results/time_to_accuracy.json,
                         # or time_to_accuracy_quick.json with --quick: a smoke run never overwrites one
quick = False            # a smoke run: 300 rows, 1 epoch, a check every step, 2 seeds
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

globals().update(vars(flags.settings_parser(globals()).parse_args()))

from devices import import_tensorflow  # noqa: E402

tf = import_tensorflow()
import data  # noqa: E402
import train  # noqa: E402
from model import build_model, training_recipe  # noqa: E402

THRESHOLDS = {f"{float(percent):.1f}": float(percent) for percent in thresholds.split(",")}  # "99.0": 99.0
recipe = training_recipe("digitnet")  # what python run.py trains
max_n_epochs = recipe.max_n_epochs
if quick:
    rows, max_n_epochs, eval_every, seeds = 300, 1, 1, 2
load_at_start = os.getloadavg()[0]
train_path = data.find_csv("train")
images, labels = data.load_train(train_path, max_rows=rows or None)


def time_to_thresholds(seed):
    """One run of the recipe -> {"seed", "best_checked_accuracy", "reached": {threshold: {"seconds", "step",
    "accuracy"} at the first check at or above it, or None}}."""
    train_images, train_labels, val_images, val_labels = data.split_train_validation(
        images, labels, percent_data_for_training, seed)
    tf.random.set_seed(seed)
    net = build_model("digitnet", seed=seed)
    reached, best = dict.fromkeys(THRESHOLDS), 0.0

    def check(step, training_seconds):
        nonlocal best
        if step % eval_every:
            return
        # Evaluation is in inference mode: it reads the network and changes nothing, so the run is the same.
        _, accuracy = train.evaluate(net, val_images, val_labels)
        best = max(best, accuracy)
        for key, percent in THRESHOLDS.items():
            if reached[key] is None and 100 * accuracy >= percent:
                reached[key] = dict(seconds=training_seconds, step=step, accuracy=accuracy)
                print(f"seed {seed}: {key}% after {training_seconds:.1f} s of training (step {step})", flush=True)
        return None not in reached.values()  # True: nothing left to measure, so training ends here

    train.train(net, (train_images, train_labels, val_images, val_labels),
                training_recipe("digitnet", max_n_epochs=max_n_epochs), seed,
                train.RunOptions(after_step=check, verbose=False))
    return dict(seed=seed, best_checked_accuracy=best, reached=reached)


runs = [time_to_thresholds(run_seed) for run_seed in range(seed, seed + seeds)]


def median_seconds(key):
    median = statistics.median(r["reached"][key]["seconds"] if r["reached"][key] else math.inf for r in runs)
    return None if math.isinf(median) else median


medians = {key: median_seconds(key) for key in THRESHOLDS}

print(f"\ntraining seconds to first reach each validation accuracy (checked every {eval_every} steps of "
      f"{recipe.batch_size}; {len(images)} rows of {train_path}, {percent_data_for_training}% for training)")
print(f"{'seed':>6} " + " ".join(f"{f'to {key}% (s)':>14} {'step':>6}" for key in THRESHOLDS) +
      f" {'best checked':>13}")
for r in runs:
    cells = [(f"{found['seconds']:.1f}", str(found["step"])) if found else ("not reached", "-")
             for found in r["reached"].values()]
    print(f"{r['seed']:>6} " + " ".join(f"{s:>14} {step:>6}" for s, step in cells) +
          f" {100 * r['best_checked_accuracy']:12.2f}%")
print(f"{'median':>6} " + " ".join(f"{f'{m:.1f}' if m is not None else 'not reached':>14} {'':>6}"
                                   for m in medians.values()))

results = dict(
    settings=dict(seeds=seeds, eval_every=eval_every, rows=len(images), max_n_epochs=max_n_epochs, quick=quick,
                  batch_size=recipe.batch_size, learning_rate=recipe.learning_rate, patience=recipe.patience),
    machine=dict(cores=len(os.sched_getaffinity(0)), load_average_at_start=load_at_start, tensorflow=tf.__version__),
    thresholds_percent=list(medians),
    median_seconds=medians,
    runs=runs,
)
path = REPO / (out or f"benchmarks/results/time_to_accuracy{'_quick' if quick else ''}.json")
path.parent.mkdir(parents=True, exist_ok=True)
path.write_text(json.dumps(results, indent=2) + "\n")
print(f"written: {path}")
