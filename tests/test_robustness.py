"""What real runs meet: interruption, resumption, reproducibility, a diverging loss, a checkpoint that does not fit."""
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from conftest import run_py, write_rows

REPO = Path(__file__).resolve().parents[1]
# Small batches make an epoch a few hundred short steps, so a signal lands in the middle of one.
SHORT_RUN = ["--deterministic", "--max_n_epochs", "2", "--batch_size", "8"]


def start(args, cwd):
    return subprocess.Popen([sys.executable, str(REPO / "run.py"), *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run(args, cwd):
    result = run_py(args, cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def workdir(path):
    write_rows("train", 3000, path / "train.csv")
    write_rows("test", 30, path / "test.csv")
    return path


def model_weights(directory, which="latest"):
    """Every model variable in the checkpoint, by name."""
    reader = tf.train.load_checkpoint(str(directory / "model" / which))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map() if name.startswith("model/")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    directory = workdir(tmp_path_factory.mktemp("uninterrupted"))
    run(SHORT_RUN, directory)
    return directory


def interrupt_mid_epoch(directory, signal_number):
    """Start the short run, send the signal once the second epoch is under way; -> (exit code, stdout, stderr)."""
    process = start(SHORT_RUN, directory)
    for line in process.stdout:
        if line.startswith("epoch   1/2"):
            time.sleep(1.0)  # past the end-of-epoch evaluation and saving, inside the second epoch's steps
            process.send_signal(signal_number)
            break
    stdout, stderr = process.communicate(timeout=600)
    return process.returncode, stdout, stderr


def test_ctrl_c_mid_epoch_saves_and_resume_ends_with_the_same_weights(uninterrupted, tmp_path):
    directory = workdir(tmp_path)
    code, _, stderr = interrupt_mid_epoch(directory, signal.SIGINT)
    assert code == 130, stderr
    assert "stopped: interrupted by Ctrl-C at epoch 2, step" in stderr
    assert "--resume" in stderr.splitlines()[-1]
    resumed = run(SHORT_RUN + ["--resume"], directory)
    assert "resuming after epoch 1, step" in resumed and "epoch   1/2" not in resumed
    expected, actual = model_weights(uninterrupted), model_weights(directory)
    assert expected.keys() == actual.keys()
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


def test_sigterm_stops_cleanly_with_a_checkpoint_to_resume_from(tmp_path):
    directory = workdir(tmp_path)
    code, _, stderr = interrupt_mid_epoch(directory, signal.SIGTERM)
    assert code == 130, stderr
    assert "stopped: stopped by SIGTERM at epoch 2" in stderr and "Traceback" not in stderr
    assert tf.train.latest_checkpoint(str(directory / "model" / "latest"))


def test_deterministic_runs_are_bit_identical(uninterrupted, tmp_path):
    directory = workdir(tmp_path)
    run(SHORT_RUN, directory)
    expected, actual = model_weights(uninterrupted), model_weights(directory)
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


def test_resume_with_other_settings_is_refused(tmp_path):
    directory = workdir(tmp_path)
    run(["--max_n_epochs", "1", "--batch_size", "8"], directory)
    process = start(["--max_n_epochs", "1", "--batch_size", "16", "--resume"], directory)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 2
    assert "trained with other settings (batch_size)" in stderr.strip().splitlines()[-1]


def train_briefly(model, images, labels, checkpoint_dir, max_n_epochs=1, resume=False):
    import train
    from conftest import train_with
    options = train.RunOptions(checkpoint_dir=str(checkpoint_dir), resume=resume, verbose=False)
    return train_with(model, (images[:200], labels[:200], images[200:], labels[200:]), options=options,
                      max_n_epochs=max_n_epochs, patience=5, batch_size=32, learning_rate=1e-3)


def test_a_loss_that_is_not_finite_stops_the_run_and_keeps_the_last_good_checkpoint(real_digits, tmp_path):
    import train
    from model import DigitNet
    images, labels = real_digits
    train_briefly(DigitNet(), images, labels, tmp_path)
    good = tf.train.latest_checkpoint(str(tmp_path / "latest"))
    poisoned = images.copy()
    poisoned[:] = np.nan
    with pytest.raises(train.TrainingDiverged, match=r"became nan at epoch 2, step 1; .*latest; try a lower"):
        train_briefly(DigitNet(), poisoned, labels, tmp_path, max_n_epochs=2, resume=True)
    assert tf.train.latest_checkpoint(str(tmp_path / "latest")) == good
    reader = tf.train.load_checkpoint(good)
    assert all(np.isfinite(reader.get_tensor(name)).all() for name in reader.get_variable_to_shape_map()
               if name.startswith("model/") and reader.get_variable_to_dtype_map()[name].is_floating)


def test_resuming_into_another_architecture_is_refused_in_one_line(real_digits, tmp_path):
    import train
    from model import DigitNet, build_model
    images, labels = real_digits
    train_briefly(DigitNet(), images, labels, tmp_path)
    with pytest.raises(train.CheckpointMismatch, match="does not fit this network") as refused:
        train_briefly(build_model("cnn_small"), images, labels, tmp_path, max_n_epochs=2, resume=True)
    assert "\n" not in str(refused.value)


def test_a_corrupt_checkpoint_is_refused_in_one_line(real_digits, tmp_path):
    import train
    from model import DigitNet
    images, labels = real_digits
    train_briefly(DigitNet(), images, labels, tmp_path)
    for data_file in (tmp_path / "latest").glob("*.data-*"):
        data_file.write_bytes(b"not a checkpoint")
    with pytest.raises(train.CheckpointMismatch, match="does not fit this network"):
        train_briefly(DigitNet(), images, labels, tmp_path, max_n_epochs=2, resume=True)
