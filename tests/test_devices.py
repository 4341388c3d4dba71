"""Several devices (run.py --devices): tf.distribute.MirroredStrategy over two logical CPUs computes what one
device computes on the same global batch. TensorFlow fixes its devices when it starts, so the two-device cases
run in fresh interpreters: tests/two_devices.py, and run.py itself."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from conftest import write_rows

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def one_and_two_devices():
    """What tests/two_devices.py computed on one device and on two (see there)."""
    finished = subprocess.run([sys.executable, str(REPO / "tests" / "two_devices.py")], capture_output=True,
                              text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    return json.loads(finished.stdout)


@pytest.mark.parametrize("kind", ["conv", "dense"])
def test_batch_norm_on_two_replicas_normalises_by_the_whole_batch_as_one_device_does(one_and_two_devices, kind):
    for name, (one, two) in one_and_two_devices["batch norm"][kind].items():
        np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-5, err_msg=name)


def test_two_replicas_give_the_first_step_the_loss_one_device_gives(one_and_two_devices):
    one, two = one_and_two_devices["step losses"]
    # Unsynchronised batch norm (each replica its own statistics) is off by 3e-3 here.
    assert two[0] == pytest.approx(one[0], rel=1e-5)


def test_two_replicas_go_on_training_as_one_device_does(one_and_two_devices):
    one, two = one_and_two_devices["step losses"]
    # Adam moves a weight by about the learning rate whatever its gradient's size, so float rounding that flips
    # a near-zero gradient's sign shows in later losses: agreement to 1e-3, not 1e-5, after the first step.
    assert two[1:] == pytest.approx(one[1:], rel=1e-3)
    assert one[-1] < one[0] - 0.5  # and the steps did train


def test_a_model_built_outside_the_strategys_scope_is_refused(one_and_two_devices):
    assert "strategy.scope()" in one_and_two_devices["outside the scope"]


def run_py(args, cwd):
    return subprocess.run([sys.executable, str(REPO / "run.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_run_py_trains_on_two_logical_cpus_and_its_saved_model_serves_on_one(tmp_path):
    write_rows("train", 300, tmp_path / "train.csv")
    write_rows("test", 40, tmp_path / "test.csv")
    finished = run_py(["--devices", "CPU:0,CPU:1", "--max_n_epochs", "2"], tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert "devices: 2 replicas" in finished.stdout
    submitted = np.loadtxt(tmp_path / "submission.csv", delimiter=",", skiprows=1, dtype=int)
    serve = tf.saved_model.load(str(tmp_path / "model" / "saved_model")).signatures["serving_default"]
    import data
    test_images = data.load_test(tmp_path / "test.csv")
    probabilities = serve(images=tf.constant(test_images))["probabilities"].numpy()
    np.testing.assert_array_equal(submitted[:, 1], probabilities.argmax(1))


def test_a_device_that_is_not_there_is_refused_in_one_line(tmp_path):
    write_rows("train", 100, tmp_path / "train.csv")
    write_rows("test", 10, tmp_path / "test.csv")
    finished = run_py(["--devices", "GPU:3"], tmp_path)
    assert finished.returncode == 2
    error_lines = [line for line in finished.stderr.splitlines() if line.startswith("error:")]
    assert error_lines == [error_lines[0]] and "GPU:3" in error_lines[0] and "CPU:0" in error_lines[0]
    assert not (tmp_path / "submission.csv").exists()
