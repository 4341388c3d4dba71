"""How well does `python run.py` do on digits it never saw? Stratified K-fold over train.csv, each fold scored once.

    python benchmarks/holdout.py                          # folds 1-3 of 5, each one whole run.py (~3-6 min here)
    python benchmarks/holdout.py --run_folds 5            # all five
    python benchmarks/holdout.py --first_fold 4 --run_folds 2    # folds 4 and 5: digits no recipe was chosen on
    python benchmarks/holdout.py --tag ensemble3 -- --ensemble 3    # run.py's flags after --, to run.py unchanged
    python benchmarks/holdout.py --rows 600 --run_folds 1 -- --max_n_epochs 1   # a smoke run; numbers mean nothing

train.csv is dealt into n_folds folds of the same size and mix of digits (5: 8,400 each). For each fold run,
the other folds are written as a Kaggle-shaped train.csv and the fold's digits, without their labels, as a
Kaggle-shaped test.csv, into a scratch directory, and `python run.py --train THAT --test THAT [flags]` runs
there as a user runs it: whatever run.py trains by default, this trains, and its model/, tf_logs/, resources/
and submission.csv land in the scratch directory, not in the repo. Its early stopping and choice of epoch use
its own validation split, carved from the training part. The finished model's submission.csv is then scored
once against the fold's labels: digits that took no part in training, early stopping or any choice.

Beside each fold's held-out accuracy stands run.py's own "validation accuracy (best epoch, E of N)": the best
of the epochs on the digits that chose it, so optimistic (with -- --percent_data_for_training 100 there is
none). Each fold's run trains on 80% of what run.py trains on when given all of train.csv (by default 90% of
33,600 digits against 90% of 42,000), so the held-out figure, if anything, understates that model a little.

Every flag not listed below, and everything after `--`, goes to run.py unchanged (python run.py --help lists
them); holdout.py sets --train and --test itself. Prints a markdown table, the mean and sample standard
deviation of the held-out accuracy, and writes benchmarks/results/holdout.json (holdout_TAG.json with --tag;
with --rows, *_quick.json). benchmarks/results/ is not tracked by git: the runs the docs cite are kept in
docs/results/, where no command writes.
"""
# ---- settings: each is also a flag, e.g. --run_folds 5 ----
n_folds = 5              # train.csv is dealt into this many folds (5: 8,400 digits each)
run_folds = 3            # how many of them to run; each is one whole run.py
first_fold = 1           # the first of them to run (folds 4 and 5 took no part in choosing the recipes:
                         # docs/recipe.md)
fold_seed = 0            # the shuffle within each digit class before dealing (run.py's own --seed passes through)
rows = 0                 # only the first rows of train.csv (0: all 42,000): for a smoke run
train = ""               # the train.csv to deal into folds; default: where run.py would find it
tag = ""                 # the JSON is benchmarks/results/holdout_TAG.json: keeps several recipes side by side
out = ""                 # the JSON's path instead (relative to the repo)
# ------------------------------------------------------------------------------
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import data  # noqa: E402  (the repo's modules are importable only from here on)
import files  # noqa: E402
import flags  # noqa: E402

# run.py's line for the network it keeps, e.g. "validation accuracy (best epoch, 9 of 14): 99.71%"
VALIDATION_LINE = re.compile(r"^(validation accuracy[^:]*): (\d+(?:\.\d+)?)%$", re.MULTILINE)
BEST_EPOCH = re.compile(r"best epoch, (\d+) of (\d+)")
SET_BY_HOLDOUT = ("--train", "--test")  # run.py's flags that holdout.py sets for each fold


def parse_settings(argv):
    """-> (holdout.py's settings, the flags for run.py): ours by name, everything else and all after `--` theirs."""
    parser = flags.settings_parser(globals())
    parser.allow_abbrev = False  # else run.py's --t... flags could be taken for a prefix of ours
    ours, theirs = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    settings, unknown = parser.parse_known_args(ours)
    run_py_args = unknown + theirs
    if settings.n_folds < 2:
        parser.error(f"--n_folds {settings.n_folds}: must be at least 2")
    if not 1 <= settings.run_folds <= settings.n_folds:
        parser.error(f"--run_folds {settings.run_folds}: must be in 1..--n_folds ({settings.n_folds})")
    if not 1 <= settings.first_fold <= settings.n_folds - settings.run_folds + 1:
        parser.error(f"--first_fold {settings.first_fold}: must be in 1..{settings.n_folds - settings.run_folds + 1}, "
                     f"so that --run_folds {settings.run_folds} folds are left of --n_folds {settings.n_folds}")
    if settings.rows and settings.rows < settings.n_folds:
        parser.error(f"--rows {settings.rows}: must be at least --n_folds ({settings.n_folds})")
    for arg in run_py_args:
        if arg.split("=")[0] in SET_BY_HOLDOUT:
            parser.error(f"{arg}: holdout.py gives run.py each fold's --train and --test itself "
                         "(--train before -- names the train.csv to deal into folds)")
    return settings, run_py_args


def stratified_folds(labels, n_folds, seed):
    """-> n_folds arrays of row indices (each sorted): disjoint, together every row once.

    The rows of each digit class are shuffled (seeded), the classes laid end to end, and the whole dealt like
    cards: fold k takes positions k, k + K, k + 2K, ... A class fills a run of consecutive positions, so each
    fold holds its count / K of it, rounded up or down; the folds' sizes likewise differ by one at most.
    (scikit-learn's StratifiedKFold allocates the same way; this spares the project a dependency for 3 lines.)"""
    rng = np.random.default_rng(seed)
    dealt = np.concatenate([rng.permutation(np.flatnonzero(labels == digit)) for digit in np.unique(labels)])
    return [np.sort(dealt[k::n_folds]) for k in range(n_folds)]


def write_fold_csvs(images, labels, fold_rows, directory):
    """The digits outside the fold as a Kaggle train.csv (label,pixel0,...) and the fold's as a Kaggle test.csv
    (pixel0,..., no label), pixels back to 0-255, into directory. -> (train path, test path)."""
    pixels = np.rint(images.reshape(len(images), -1) * 255).astype(np.uint8)  # exact: load_train divided by 255
    columns = [f"pixel{i}" for i in range(pixels.shape[1])]
    in_fold = np.zeros(len(labels), bool)
    in_fold[fold_rows] = True
    train_table = pd.DataFrame(pixels[~in_fold], columns=columns)
    train_table.insert(0, "label", labels[~in_fold])
    train_path, test_path = Path(directory) / "train.csv", Path(directory) / "test.csv"
    train_table.to_csv(train_path, index=False)
    pd.DataFrame(pixels[in_fold], columns=columns).to_csv(test_path, index=False)
    return train_path, test_path


def run_fold(fold, images, labels, fold_rows, run_py_args):
    """Write the fold's files, run run.py on them in a scratch directory, score its submission. -> the fold's
    results; RuntimeError if run.py failed or wrote no submission of the fold's length."""
    with tempfile.TemporaryDirectory(prefix=f"holdout-fold{fold}-") as directory:
        train_path, test_path = write_fold_csvs(images, labels, fold_rows, directory)
        command = [sys.executable, str(REPO / "run.py"), "--train", str(train_path), "--test", str(test_path),
                   *run_py_args]
        started = time.time()
        returncode, output, peak_rss_kb = run_streaming(command, directory, prefix=f"  fold {fold} | ")
        wall_seconds = time.time() - started
        if returncode != 0:
            raise RuntimeError(f"fold {fold}: run.py exited with {returncode} (its output is above)")
        predictions = read_submission(Path(directory) / "submission.csv", len(fold_rows))
    wrong = np.flatnonzero(predictions != labels[fold_rows])
    validation = VALIDATION_LINE.search(output)
    best_epoch = BEST_EPOCH.search(validation.group(1)) if validation else None
    return dict(
        fold=fold, digits=len(fold_rows), accuracy=(len(fold_rows) - len(wrong)) / len(fold_rows), errors=len(wrong),
        validation_accuracy=float(validation.group(2)) / 100 if validation else None,
        validation_line=validation.group(0) if validation else None,
        best_epoch=[int(best_epoch.group(1)), int(best_epoch.group(2))] if best_epoch else None,
        wall_seconds=wall_seconds, peak_rss_mb=peak_rss_kb / 1024,
        # train.csv's rows (0-based, the header not counted) the model got wrong: [row, true, predicted]
        wrong=[[int(fold_rows[i]), int(labels[fold_rows[i]]), int(predictions[i])] for i in wrong])


def run_streaming(command, cwd, prefix):
    """Run command in cwd, echoing its output line by line as it comes. -> (exit code, its output, its peak
    resident memory in KiB, from os.wait4: that child's own, not the maximum over every child so far)."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}  # its lines as they are printed, not at its end
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=environment)
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            print(prefix + line, end="", flush=True)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    finally:
        if process.returncode is None:  # interrupted: do not leave it running
            process.kill()
            process.wait()
    return process.returncode, "".join(lines), usage.ru_maxrss  # Linux reports ru_maxrss in KiB


def read_submission(path, n_digits):
    """run.py's submission.csv -> its labels, in ImageId order; RuntimeError unless it has ImageId 1..n_digits."""
    if not path.exists():
        raise RuntimeError(f"{path.name}: run.py wrote no submission")
    table = pd.read_csv(path)
    if list(table.columns) != ["ImageId", "Label"] or not np.array_equal(table["ImageId"], np.arange(1, n_digits + 1)):
        raise RuntimeError(f"{path.name}: expected ImageId,Label for ImageId 1..{n_digits}")
    return table["Label"].to_numpy()


def summary(folds):
    """-> mean and sample standard deviation (ddof=1; None for one fold) of the held-out accuracy, and of
    run.py's best-epoch validation accuracy where every fold printed one."""
    def mean_and_std(values):
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None

    accuracy_mean, accuracy_std = mean_and_std([fold["accuracy"] for fold in folds])
    validations = [fold["validation_accuracy"] for fold in folds]
    validation_mean, validation_std = mean_and_std(validations) if None not in validations else (None, None)
    return dict(accuracy_mean=accuracy_mean, accuracy_std=accuracy_std, validation_accuracy_mean=validation_mean,
                validation_accuracy_std=validation_std, errors_total=sum(fold["errors"] for fold in folds),
                digits_total=sum(fold["digits"] for fold in folds),
                wall_seconds_total=sum(fold["wall_seconds"] for fold in folds),
                peak_rss_mb_max=max(fold["peak_rss_mb"] for fold in folds))


def percent(fraction, std=None):
    if fraction is None:
        return "-"
    return f"{100 * fraction:.2f}%" + (f" ± {100 * std:.2f}" if std is not None else "")


def print_table(folds, totals, run_py_args):
    print(f"\nheld out: each fold's digits scored once by the model `python run.py {' '.join(run_py_args)}` "
          "trained without them; validation: run.py's best epoch on the digits that chose it\n")
    print("| fold | digits | held-out accuracy | errors | validation (best epoch) | epoch | run.py wall (s) "
          "| peak RSS (MB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for fold in folds:
        epoch = "{} of {}".format(*fold["best_epoch"]) if fold["best_epoch"] else "-"
        print(f"| {fold['fold']} | {fold['digits']:,} | {percent(fold['accuracy'])} | {fold['errors']} | "
              f"{percent(fold['validation_accuracy'])} | {epoch} | {fold['wall_seconds']:.0f} | "
              f"{fold['peak_rss_mb']:.0f} |")
    print(f"| mean ± std | {totals['digits_total']:,} | {percent(totals['accuracy_mean'], totals['accuracy_std'])} | "
          f"{totals['errors_total']} | "
          f"{percent(totals['validation_accuracy_mean'], totals['validation_accuracy_std'])} | | "
          f"{totals['wall_seconds_total']:.0f} (total) | {totals['peak_rss_mb_max']:.0f} (max) |")
    print(f"\nheld-out accuracy: mean {percent(totals['accuracy_mean'])}, sample standard deviation "
          f"{percent(totals['accuracy_std'])} over {len(folds)} fold(s); {totals['wall_seconds_total']:.0f} s in all")


def write_json(path, value):
    """As JSON, atomically; a list of numbers on one line, [16, 4, 8], not one number a line."""
    text = json.dumps(value, indent=1)  # only json.dumps puts "[" before a newline
    text = re.sub(r"\[\n[\d\s,.-]*\]", lambda numbers: "[" + " ".join(numbers.group()[1:-1].split()) + "]", text)
    files.write_text(path, text + "\n")


def main(argv=None):
    settings, run_py_args = parse_settings(sys.argv[1:] if argv is None else argv)
    load_at_start = os.getloadavg()[0]  # a figure taken on a busy machine should say so
    try:
        train_path = data.find_csv("train", settings.train)
        images, labels = data.load_train(train_path, max_rows=settings.rows or None)
    except data.DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    all_folds = stratified_folds(labels, settings.n_folds, settings.fold_seed)
    chosen = range(settings.first_fold, settings.first_fold + settings.run_folds)
    print(f"{len(labels):,} digits of {train_path} dealt into {settings.n_folds} folds; running "
          f"{', '.join(map(str, chosen))}: python run.py {' '.join(run_py_args)}", flush=True)
    if settings.rows:
        print(f"a smoke run on {len(labels):,} rows (--rows): its numbers mean nothing", flush=True)
    folds = []
    for fold in chosen:
        try:
            folds.append(run_fold(fold, images, labels, all_folds[fold - 1], run_py_args))
        except RuntimeError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:  # run.py, in the same process group, stops too (and says where)
            print(f"stopped in fold {fold}; no JSON written", file=sys.stderr)
            return 130
        print(f"fold {fold}: held-out accuracy {percent(folds[-1]['accuracy'])} ({folds[-1]['errors']} errors of "
              f"{folds[-1]['digits']:,}) in {folds[-1]['wall_seconds']:.0f} s", flush=True)
    totals = summary(folds)
    print_table(folds, totals, run_py_args)

    name = "holdout" + (f"_{settings.tag}" if settings.tag else "") + ("_quick" if settings.rows else "")
    path = REPO / (settings.out or f"benchmarks/results/{name}.json")
    write_json(path, dict(
        settings=dict(n_folds=settings.n_folds, run_folds=settings.run_folds, first_fold=settings.first_fold,
                      fold_seed=settings.fold_seed,
                      rows=len(labels), train=str(train_path), run_py_args=run_py_args, tag=settings.tag),
        machine=dict(cores=len(os.sched_getaffinity(0)), load_average_at_start=load_at_start,
                     python=sys.version.split()[0]),
        **totals, folds=folds))
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
