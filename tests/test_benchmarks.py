"""The benchmarks' smoke runs: each script's --quick mode runs as a user runs it, prints its table and writes
its JSON. Only the shape of what they report is checked, never how fast anything was."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_quick(script, tmp_path, *args):
    """Run benchmarks/{script}.py --quick in a scratch directory (so the shipped data is used and nothing is
    written into the repo) -> (stdout, the JSON it wrote)."""
    out = tmp_path / f"{script}.json"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{script}.py"), "--quick", "--out", str(out),
                             *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
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
    # A 0% threshold is reached at the first check, so both a reached and an (almost surely) unreached one show.
    stdout, results = run_quick("time_to_accuracy", tmp_path, "--thresholds", "0,99.5")
    header = next(line for line in stdout.splitlines() if line.split()[:2] == ["seed", "to"])
    assert header.split() == ["seed", "to", "0.0%", "(s)", "step", "to", "99.5%", "(s)", "step", "best", "checked"]
    assert any(line.split()[0] == "median" for line in stdout.splitlines() if line.strip())

    assert set(results) == {"settings", "machine", "thresholds_percent", "median_seconds", "runs"}
    assert results["thresholds_percent"] == ["0.0", "99.5"] and set(results["median_seconds"]) == {"0.0", "99.5"}
    assert [each["seed"] for each in results["runs"]] == [42, 43]  # quick: 2 seeds
    for each in results["runs"]:
        assert set(each) == {"seed", "best_checked_accuracy", "reached"}
        first = each["reached"]["0.0"]
        assert set(first) == {"seconds", "step", "accuracy"} and first["step"] == 1 and first["seconds"] > 0
    assert results["median_seconds"]["0.0"] > 0
