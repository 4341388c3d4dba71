"""The benchmarks' smoke runs: each script's --quick mode runs as a user runs it, prints its table and writes
its JSON. Only the shape of what they report is checked, never how fast anything was. Also holdout.py's folds."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import data
from benchmarks import hardest, holdout
from conftest import write_rows
from test_predict import more_digits, tiny_saved_model  # noqa: F401  (fixtures, shared)

REPO = Path(__file__).resolve().parents[1]


def run_quick(script, tmp_path, *args):
    """Run benchmarks/{script}.py --quick in a scratch directory (so the shipped data is used and nothing is
    written into the repo) -> (stdout, the JSON it wrote)."""
    out = tmp_path / f"{script}.json"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{script}.py"), "--quick", "--out", str(out),
                             *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "a smoke run" in result.stdout and "its numbers mean nothing" in result.stdout  # said, not implied
    return result.stdout, json.loads(out.read_text())


def test_speed_quick_prints_its_table_and_writes_its_json(tmp_path):
    stdout, results = run_quick("speed", tmp_path)
    header = next(line for line in stdout.splitlines() if line.startswith("contender"))
    assert header.split() == ["contender", "architecture", "images/s", "vs", "Keras", "GFLOP/s", "%", "of", "peak"]
    assert "FLOP/cycle" in next(line for line in stdout.splitlines() if line.startswith("peak = "))
    assert "inference: 300 test digits" in stdout and "peak resident memory" in stdout

    assert set(results) == {"settings", "machine", "training", "peak", "inference", "peak_memory_mb"}
    rows = {row["name"]: row for row in results["training"]}
    assert list(rows) == ["ours", "Keras fit", "ours, mnist_cnn", "Keras fit, mnist_cnn",
                          "ours, augmentation on (the default recipe)", "ours, mixed precision (bfloat16)"]
    for row in rows.values():
        assert set(row) == {"name", "architecture", "images_per_second", "images_per_second_each_round",
                            "ratio_vs_keras", "train_flops_per_image", "gflops_per_second", "percent_of_peak"}
        assert row["images_per_second"] > 0 and len(row["images_per_second_each_round"]) == 1
    # Ours is compared with Keras on each architecture; the Keras rows and the augmented step stand alone.
    assert rows["ours"]["ratio_vs_keras"] > 0 and rows["ours, mnist_cnn"]["ratio_vs_keras"] > 0
    assert rows["Keras fit"]["ratio_vs_keras"] is None
    # 3 x the forward multiply-adds x 2, layer by layer: DigitNet's three convs and two dense layers, ...
    digitnet = 28 * 28 * 32 * 5 * 5 * 1 + 14 * 14 * 64 * 3 * 3 * 32 + 7 * 7 * 128 * 3 * 3 * 64 + 1152 * 128 + 128 * 10
    # ... and mnist_cnn's two unpadded convs and two dense layers, the same in ours and in Keras'.
    mnist_cnn = 26 * 26 * 32 * 3 * 3 * 1 + 24 * 24 * 64 * 3 * 3 * 32 + 9216 * 128 + 128 * 10
    assert rows["ours"]["train_flops_per_image"] == rows["Keras fit"]["train_flops_per_image"] == 6 * digitnet
    assert rows["ours, mnist_cnn"]["train_flops_per_image"] == rows["Keras fit, mnist_cnn"]["train_flops_per_image"] \
        == 6 * mnist_cnn
    assert results["peak"]["gflops_per_second"] > 0 and "FLOP/cycle" in results["peak"]["assumption"]
    assert results["inference"]["digits"] == 300 and len(results["inference"]["seconds_each_call"]) == 2
    assert results["peak_memory_mb"] > 0


def test_time_to_accuracy_quick_prints_its_table_and_writes_its_json(tmp_path):
    # A 0% threshold is reached by any schedule, so both a reached and an (almost surely) unreached one show.
    stdout, results = run_quick("time_to_accuracy", tmp_path, "--thresholds", "0,99.5")
    header = next(line for line in stdout.splitlines() if line.split()[:1] == ["epochs"])
    assert header.split() == ["epochs", "training", "(s)", "held-out", "accuracy", "each", "seed"]
    assert "time to 0.0%: " in stdout and "time to 99.5%: not reached in 1 epochs" in stdout

    assert set(results) == {"settings", "machine", "time_to_threshold", "schedules", "runs"}
    assert [(run["epochs"], run["seed"]) for run in results["runs"]] == [(1, 42), (1, 43)]  # quick: 2 seeds
    for run in results["runs"]:
        assert run["training_seconds"] > 0 and 0 <= run["held_out_accuracy"] <= 1
    (schedule,) = results["schedules"]
    assert schedule["held_out_accuracies"] == [run["held_out_accuracy"] for run in results["runs"]]
    assert results["time_to_threshold"] == {"0.0": dict(seconds=schedule["median_training_seconds"], epochs=1),
                                            "99.5": None}


def test_serve_load_quick_prints_its_table_and_writes_its_json(tmp_path, tiny_saved_model):  # noqa: F811
    stdout, results = run_quick("serve_load", tmp_path, "--model", str(tiny_saved_model))
    table = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert [cell.strip() for cell in table[0].strip("|").split("|")] == [
        "phase", "requests", "errors", "requests/s", "p50 (s)", "p95 (s)", "p99 (s)", "server RSS (MB)"]
    assert [row.split("|")[1].strip() for row in table[1:8]] == ["start (after warm-up)", "valid", "explain", "photos",
                                                                  "abuse", "mix", "soak"]
    assert set(results) == {"settings", "load_average_at_start", "cores", "phases", "peak_rss_mb", "targets"}
    phases = results["phases"]
    assert phases["valid"]["requests"] == 4 * 3 and phases["photos"]["requests"] == 2  # quick: 4 clients x 3
    assert phases["explain"]["requests"] == 4 * 3 and phases["explain"]["errors"] == 0  # 2 of the 4 to /explain
    assert all(phases[phase]["rss_mb"] > 100 for phase in phases)  # TensorFlow alone takes more
    # Every bad request of every kind got its documented answer, and the server stayed up.
    kinds = phases["abuse"]["kinds"]
    assert sum(kind["sent"] for kind in kinds.values()) == 40 + 1 + 2 and phases["abuse"]["server_up"]
    assert all(kind["as_documented"] == kind["sent"] for kind in kinds.values()), kinds
    assert results["targets"] == {}  # a smoke run judges none


@pytest.mark.parametrize("epochs", ["0", "1,-2", "two"])
def test_time_to_accuracy_refuses_a_schedule_that_is_no_positive_number_of_epochs(tmp_path, epochs):
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "time_to_accuracy.py"), "--epochs", epochs],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (f"time_to_accuracy.py: error: --epochs {epochs}: each schedule "
                                                      "must be a positive number of epochs, e.g. --epochs 1,1.5,2")
    assert list(tmp_path.iterdir()) == []


# ---- benchmarks/holdout.py: the folds, the files run.py is given, and one whole fold as a user runs it ----


def test_holdout_folds_are_disjoint_and_cover_every_digit_once(real_digits):
    _, labels = real_digits
    folds = holdout.stratified_folds(labels, 5, seed=0)
    assert len(folds) == 5
    assert np.array_equal(np.sort(np.concatenate(folds)), np.arange(len(labels)))


def test_holdout_folds_each_hold_every_digit_in_the_same_proportion(real_digits):
    _, labels = real_digits
    folds = holdout.stratified_folds(labels, 5, seed=0)
    counts = np.array([np.bincount(labels[fold], minlength=10) for fold in folds])  # [fold, digit]
    assert (counts.max(axis=0) - counts.min(axis=0) <= 1).all(), counts
    assert max(map(len, folds)) - min(map(len, folds)) <= 1


def test_holdout_folds_are_shuffled_by_the_fold_seed(real_digits):
    _, labels = real_digits
    first, again, other = (holdout.stratified_folds(labels, 5, seed) for seed in (0, 0, 1))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not any(np.array_equal(a, b) for a, b in zip(first, other))


def test_holdout_test_file_is_the_folds_digits_without_their_labels(real_digits, tmp_path):
    images, labels = real_digits
    fold = holdout.stratified_folds(labels, 5, seed=0)[1]
    _, test_path = holdout.write_fold_csvs(images, labels, fold, tmp_path)
    assert test_path.read_text().split("\n", 1)[0] == ",".join(f"pixel{i}" for i in range(28 * 28))
    np.testing.assert_array_equal(data.load_test(test_path), images[fold])  # as run.py will read it


def test_holdout_train_file_is_every_other_digit_with_its_label(real_digits, tmp_path):
    images, labels = real_digits
    fold = holdout.stratified_folds(labels, 5, seed=0)[1]
    train_path, _ = holdout.write_fold_csvs(images, labels, fold, tmp_path)
    rest = np.setdiff1d(np.arange(len(labels)), fold)
    train_images, train_labels = data.load_train(train_path)
    np.testing.assert_array_equal(train_images, images[rest])
    np.testing.assert_array_equal(train_labels, labels[rest])


def test_holdout_passes_unknown_flags_and_all_after_the_separator_to_run_py():
    settings, run_py_args = holdout.parse_settings(["--ensemble", "3", "--run_folds", "1", "--", "--rows", "9"])
    assert settings.run_folds == 1 and settings.rows == 0  # --rows after -- is run.py's, not ours
    assert run_py_args == ["--ensemble", "3", "--rows", "9"]


def test_holdout_refuses_more_folds_than_are_left_after_the_first(capsys):
    with pytest.raises(SystemExit) as stop:
        holdout.parse_settings(["--first_fold", "4", "--run_folds", "3"])
    assert stop.value.code == 2 and "--first_fold 4" in capsys.readouterr().err


def test_holdout_refuses_to_pass_run_py_a_test_file_of_its_own(capsys):
    with pytest.raises(SystemExit) as stop:
        holdout.parse_settings(["--", "--test", "mine.csv"])
    assert stop.value.code == 2 and "--test" in capsys.readouterr().err


def repo_outputs():
    """(path, size, mtime) of everything in the repo's run outputs: resources/, model/, tf_logs/, submission.csv."""
    paths = [REPO / "submission.csv", *[path for name in ("resources", "model", "tf_logs")
                                        for path in (REPO / name).rglob("*")]]
    return {(str(path), path.stat().st_size, path.stat().st_mtime_ns) for path in paths if path.is_file()}


def test_holdout_smoke_run_prints_its_table_writes_its_json_and_leaves_the_repo_alone(tmp_path):
    before, out = repo_outputs(), tmp_path / "holdout.json"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "holdout.py"), "--rows", "600", "--first_fold",
                             "2", "--run_folds", "1", "--out", str(out), "--", "--max_n_epochs", "1",
                             "--percent_data_for_training", "90"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "a smoke run on 600 rows (--rows): its numbers mean nothing" in result.stdout
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert [cell.strip() for cell in table[0].strip("|").split("|")] == [
        "fold", "digits", "held-out accuracy", "errors", "validation (best epoch)", "epoch", "run.py wall (s)",
        "peak RSS (MB)"]
    assert table[1].split("|")[1:3] == [" 2 ", " 120 "] and table[2].startswith("| mean ± std |")

    results = json.loads(out.read_text())
    assert results["settings"]["run_py_args"] == ["--max_n_epochs", "1", "--percent_data_for_training", "90"]
    assert results["settings"]["rows"] == 600
    [fold] = results["folds"]
    assert fold["digits"] == 120 and fold["errors"] == len(fold["wrong"])  # 600 rows / 5 folds
    assert fold["accuracy"] == (120 - fold["errors"]) / 120 and results["accuracy_std"] is None
    assert fold["best_epoch"] == [1, 1] and 0 <= fold["validation_accuracy"] <= 1
    assert fold["wall_seconds"] > 0 and fold["peak_rss_mb"] > 100  # TensorFlow alone takes more
    # run.py ran in a scratch directory of its own: nothing landed in the repo, nor where holdout.py was run
    assert repo_outputs() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["holdout.json"]


# ---- benchmarks/hardest.py: the digits every run of holdout.py got wrong ----


def holdout_json(directory, name, labels, wrong_by_fold, rows=None, n_folds=5, fold_seed=0, said=1):
    """A holdout.py JSON of one run: for each fold, the rows it got wrong, [row, label, predicted]; the
    prediction is the digit `said` up from the label."""
    path = directory / f"holdout_{name}.json"
    folds = [dict(fold=fold, wrong=[[row, int(labels[row]), (int(labels[row]) + said) % 10] for row in wrong])
             for fold, wrong in wrong_by_fold.items()]
    settings = dict(n_folds=n_folds, fold_seed=fold_seed, rows=len(labels) if rows is None else rows)
    path.write_text(json.dumps(dict(settings=settings, folds=folds)))
    return path


def test_hardest_reads_the_holdout_runs_kept_as_evidence_by_default():
    assert hardest.results == "docs/results/holdout_*.json"
    assert len(list(REPO.glob(hardest.results))) >= 5  # enough runs for its --min_runs


def test_hardest_counts_the_digits_every_run_at_least_half_and_any_run_got_wrong(real_digits, tmp_path):
    _, labels = real_digits
    paths = [holdout_json(tmp_path, "a", labels, {1: [3, 5, 8, 13]}),
             holdout_json(tmp_path, "b", labels, {1: [3, 5, 21]}),
             holdout_json(tmp_path, "c", labels, {1: [3, 8]}),
             holdout_json(tmp_path, "d", labels, {1: [3, 5, 34]})]
    runs, left_out = hardest.read_runs(paths, labels, n_folds=5, fold_seed=0)
    [counts] = hardest.hardest_digits(runs, min_runs=4).values()
    assert left_out == [] and counts["runs"] == 4 and counts["errors"] == [4, 3, 2, 3]
    assert counts["every_run"] == [3] and counts["at_least_half"] == [3, 5, 8]
    assert counts["any_run"] == [3, 5, 8, 13, 21, 34]
    assert counts["said"] == {3: ((labels[3] + 1) % 10, 4)}


def test_hardest_skips_folds_that_fewer_than_min_runs_scored(real_digits, tmp_path):
    _, labels = real_digits
    paths = [holdout_json(tmp_path, "a", labels, {1: [3], 2: [4]}), holdout_json(tmp_path, "b", labels, {1: [3]})]
    runs, _ = hardest.read_runs(paths, labels, n_folds=5, fold_seed=0)
    assert list(hardest.hardest_digits(runs, min_runs=2)) == [1]


def test_hardest_leaves_out_runs_dealt_from_other_rows_or_folds(real_digits, tmp_path):
    _, labels = real_digits
    paths = [holdout_json(tmp_path, "all", labels, {1: [3]}),
             holdout_json(tmp_path, "smoke", labels, {1: [3]}, rows=100),
             holdout_json(tmp_path, "three", labels, {1: [3]}, n_folds=3)]
    runs, left_out = hardest.read_runs(paths, labels, n_folds=5, fold_seed=0)
    assert [name for name, _ in runs[1]] == ["holdout_all"]
    assert [line.split(":")[0] for line in left_out] == ["left out holdout_smoke.json", "left out holdout_three.json"]


def test_hardest_refuses_runs_whose_digits_carry_another_train_csvs_labels(real_digits, tmp_path):
    _, labels = real_digits
    path = holdout_json(tmp_path, "other", labels, {1: [3]})
    path.write_text(path.read_text().replace(f"[3, {labels[3]}, ", f"[3, {(labels[3] + 5) % 10}, "))
    with pytest.raises(data.DataError, match=f"holdout_other.json: row 3 is a {(labels[3] + 5) % 10} there"):
        hardest.read_runs([path], labels, n_folds=5, fold_seed=0)


@pytest.mark.parametrize("text", ["{not json", '{"folds": []}', "[1, 2]"])
def test_hardest_refuses_a_file_that_is_no_holdout_result(real_digits, tmp_path, text):
    _, labels = real_digits
    path = tmp_path / "holdout_broken.json"
    path.write_text(text)
    with pytest.raises(data.DataError, match="holdout_broken.json: not a holdout.py result"):
        hardest.read_runs([path], labels, n_folds=5, fold_seed=0)


def test_hardest_prints_its_table_and_draws_the_digits_every_run_got_wrong(real_digits, tmp_path):
    _, labels = real_digits
    train_csv = write_rows("train", len(labels), tmp_path / "train.csv")
    # Row 3 is wrong in every run, but the runs do not all say the same digit there.
    for name, wrong, said in [("a", [3, 5], 1), ("b", [3, 5, 8], 1), ("c", [3], 2)]:
        holdout_json(tmp_path, name, labels, {2: wrong}, said=said)
    picture = tmp_path / "hardest.png"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "hardest.py"), "--results",
                             str(tmp_path / "holdout_*.json"), "--train", str(train_csv), "--min_runs", "3",
                             "--picture", str(picture)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| 2 | 3 | 1-3 | 1 | 0 | 2 | 3 |" in result.stdout.splitlines()
    assert "1 digits were wrong in every run" in result.stdout and picture.read_bytes()[:4] == b"\x89PNG"
