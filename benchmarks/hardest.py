"""Which unseen digits does every network get wrong? The floor under holdout.py's figures and under an ensemble.

    python benchmarks/hardest.py                  # every run kept as evidence, docs/results/holdout_*.json
    python benchmarks/hardest.py --results "benchmarks/results/holdout_*.json"   # your own runs

Reads what holdout.py wrote: for each fold a run scored, the train.csv rows it got wrong, [row, label,
predicted]. For each fold that --min_runs runs or more scored, it counts the digits every run got wrong, the
digits at least half of them got wrong (about what averaging those runs gets wrong), and the digits any got
wrong; prints that as a table, and saves the digits every run got wrong as a picture, each titled with
train.csv's label and what the runs said instead, so that anyone can judge whether a person would have read
them as labelled.
Where every run said the same wrong digit ("all said one"), no average of them can be right: that digit
outscores the label in each run's probabilities, so in their mean too. An average of those runs makes at least
that many errors on the fold, and likely near "in at least half"; networks like them, likely about as many.

Only runs dealt from the same train.csv (holdout.py's --n_folds, --fold_seed and all of its rows) are
comparable, so the rest (a --rows smoke run, say) are left out, with a line saying so.
"""
# ---- settings: each is also a flag, e.g. --results "benchmarks/results/holdout_*.json" ----
results = "docs/results/holdout_*.json"  # holdout.py's JSONs to read: a glob, relative to the repo
n_folds = 5              # holdout.py's --n_folds of the runs to read
fold_seed = 0            # holdout.py's --fold_seed of the runs to read
min_runs = 5             # only folds that at least this many runs scored: of two runs, "wrong in every run" is
                         # most of what one gets wrong
train = ""               # the train.csv they were dealt from; default: where run.py would find it
picture = "resources/hardest_digits.png"  # where the digits every run got wrong are drawn (relative to the repo)
# ------------------------------------------------------------------------------
import collections
import glob
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import data  # noqa: E402  (the repo's modules are importable only from here on)
import flags  # noqa: E402
import report  # noqa: E402


def read_runs(paths, labels, n_folds, fold_seed):
    """holdout.py's JSONs -> ({fold: [(name, {row: predicted})]} of the runs dealt as asked, the lines saying
    which files were left out). DataError (naming the file and row) for a run whose wrong digits carry other
    labels than train.csv's (its rows are another train.csv's), or for a file that is no holdout.py result."""
    runs, left_out = collections.defaultdict(list), []
    for path in paths:
        try:
            result = json.loads(Path(path).read_text())
            deal, result_folds = result["settings"], result["folds"]
            dealt = deal["n_folds"], deal["fold_seed"], deal["rows"]
        except (ValueError, KeyError, TypeError) as error:
            raise data.DataError(f"{path}: not a holdout.py result ({type(error).__name__}: {error})") from None
        if dealt != (n_folds, fold_seed, len(labels)):
            left_out.append(f"left out {Path(path).name}: dealt into {deal['n_folds']} folds by seed "
                            f"{deal['fold_seed']} from {deal['rows']:,} rows, not {n_folds} by {fold_seed} from "
                            f"{len(labels):,}")
            continue
        for fold in result_folds:
            for row, label, _ in fold["wrong"]:
                if not 0 <= row < len(labels) or labels[row] != label:
                    raise data.DataError(f"{path}: row {row} is a {label} there but not in train.csv: "
                                         "these results were dealt from another train.csv")
            runs[fold["fold"]].append((Path(path).stem, {row: predicted for row, _, predicted in fold["wrong"]}))
    return dict(runs), left_out


def hardest_digits(runs, min_runs):
    """{fold: [(name, {row: predicted})]} -> {fold: counts} for each fold of min_runs runs or more: the number of
    runs, their errors, and the rows that every run, at least half, or any got wrong; with, for each row every
    run got wrong, the class the runs said most often and how many said it."""
    folds = {}
    for fold, fold_runs in sorted(runs.items()):
        if len(fold_runs) < min_runs:
            continue
        times_wrong = collections.Counter(row for _, wrong in fold_runs for row in wrong)
        every_run = sorted(row for row, count in times_wrong.items() if count == len(fold_runs))
        folds[fold] = dict(
            runs=len(fold_runs), errors=[len(wrong) for _, wrong in fold_runs],
            every_run=every_run,
            at_least_half=sorted(row for row, count in times_wrong.items() if 2 * count >= len(fold_runs)),
            any_run=sorted(times_wrong),
            said={row: collections.Counter(wrong[row] for _, wrong in fold_runs).most_common(1)[0]
                  for row in every_run})
    return folds


def print_table(folds):
    print("| fold | runs | errors of a run | wrong in every run | all said one | in at least half | in any |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for fold, counts in folds.items():
        all_said_one = sum(times == counts["runs"] for _, times in counts["said"].values())
        print(f"| {fold} | {counts['runs']} | {min(counts['errors'])}-{max(counts['errors'])} | "
              f"{len(counts['every_run'])} | {all_said_one} | {len(counts['at_least_half'])} | "
              f"{len(counts['any_run'])} |")


def main(argv=None):
    settings = flags.settings_parser(globals()).parse_args(sys.argv[1:] if argv is None else argv)
    paths = sorted(glob.glob(str(REPO / settings.results)))  # an absolute --results stays as it is
    try:
        images, labels = data.load_train(data.find_csv("train", settings.train))
        runs, left_out = read_runs(paths, labels, settings.n_folds, settings.fold_seed)
    except data.DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for line in left_out:
        print(line)
    folds = hardest_digits(runs, settings.min_runs)
    if not folds:
        print(f"error: {settings.results}: no fold was scored by --min_runs {settings.min_runs} runs or more "
              f"({len(paths)} files read)", file=sys.stderr)
        return 2
    print_table(folds)
    rows = [row for counts in folds.values() for row in counts["every_run"]]
    titles = [f"fold {fold}, row {row}\nlabel {labels[row]}, said {said} ({times} of {counts['runs']})"
              for fold, counts in folds.items() for row, (said, times) in counts["said"].items()]
    path = report.plot_digit_grid(images[rows], titles, REPO / settings.picture, columns=10)
    print(f"\n{len(rows)} digits were wrong in every run that scored their fold; drawn in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
