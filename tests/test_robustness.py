"""What real runs meet: interruption, resumption, reproducibility, a diverging loss, a checkpoint that does not fit."""
import os
import pty
import re
import select
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
# Small batches make an epoch a few hundred short steps (338 here), so a signal sent once the second epoch has
# begun lands in the middle of it.
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


def read_until(terminal, pattern, deadline):
    """What the run writes to its terminal, read until it matches the regular expression `pattern` (or, with
    pattern None, until the run closes it) -> the text; the run's ending first, or the deadline, fails the test."""
    text = ""
    while pattern is None or not re.search(pattern, text):
        if not select.select([terminal], [], [], max(0.0, deadline - time.monotonic()))[0]:
            pytest.fail(f"no {pattern!r} from run.py within the time allowed; it wrote: ...{text[-500:]!r}")
        try:
            chunk = os.read(terminal, 4096)
        except OSError:  # EIO: every copy of the terminal's other end is closed, the run has ended
            chunk = b""
        if not chunk:
            assert pattern is None, f"run.py ended before writing {pattern!r}; it wrote: ...{text[-500:]!r}"
            return text
        text += chunk.decode(errors="replace")
    return text


def interrupt_in_the_second_epoch(directory, signal_number):
    """Start the short run on a terminal, as a user runs it, and send the signal as soon as the progress bar shows
    a step of the second epoch done -> (exit code, stderr).

    An event rather than a pause: the bar is drawn only after the step, so the signal cannot come before the end of
    the first epoch (its evaluation, saving and stop check) is behind the run, however slow the machine. Where it
    then lands is whatever the run reports (`where_it_stopped`): in practice early in the second epoch's 338 steps,
    and the tests hold at an epoch's end too."""
    # the epoch line, then the bar's "k/338  loss" redrawn after a step of the next epoch
    return interrupted_once(directory, r"epoch +1/2[^\n]*\n.*\d+/\d+ +loss", signal_number)


def interrupted_once(directory, pattern, signal_number, timeout=600):
    """Start the short run on a terminal, as a user runs it, and send the signal as soon as it writes what matches
    `pattern` -> (exit code, stderr). stderr goes to a file, so the run never waits on a full pipe.

    The run starts with Ctrl-C's usual meaning, as from a terminal, however the tests were started: a script that
    starts them in the background has them ignore SIGINT, and what they start would inherit that."""
    deadline = time.monotonic() + timeout
    terminal, run_side = pty.openpty()
    with open(directory / "stderr.txt", "w") as stderr:
        process = subprocess.Popen([sys.executable, str(REPO / "run.py"), *SHORT_RUN], cwd=directory,
                                   stdout=run_side, stderr=stderr,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(run_side)
    try:
        read_until(terminal, pattern, deadline)
        process.send_signal(signal_number)
        read_until(terminal, None, deadline)  # keep reading, so the run never waits on a full terminal
        code = process.wait(timeout=max(0.0, deadline - time.monotonic()))
    finally:
        os.close(terminal)
        if process.poll() is None:
            process.kill()
            process.wait()
    return code, (directory / "stderr.txt").read_text()


def where_it_stopped(stderr):
    """The run's own report of where a signal stopped it -> (epochs done, steps done of the next one)."""
    mid_epoch = re.search(r"^stopped: .* at epoch (\d+), step (\d+) of \d+", stderr, re.MULTILINE)
    if mid_epoch:
        return int(mid_epoch[1]) - 1, int(mid_epoch[2])
    epoch_end = re.search(r"^stopped: .* at the end of epoch (\d+)", stderr, re.MULTILINE)
    assert epoch_end, f"no 'stopped: ... at ...' line in: ...{stderr[-1000:]}"
    return int(epoch_end[1]), 0


def test_ctrl_c_mid_epoch_saves_and_resume_ends_with_the_same_weights(uninterrupted, tmp_path):
    directory = workdir(tmp_path)
    code, stderr = interrupt_in_the_second_epoch(directory, signal.SIGINT)
    assert code == 130, stderr
    assert "stopped: interrupted by Ctrl-C at " in stderr and "Traceback" not in stderr
    assert "--resume" in stderr.splitlines()[-1]
    epochs_done, steps_done = where_it_stopped(stderr)
    assert (epochs_done, steps_done) >= (1, 1)  # not before the step the bar showed
    resumed = run(SHORT_RUN + ["--resume"], directory)
    assert f"resuming after epoch {epochs_done}, step {steps_done}," in resumed
    assert not any(f"epoch {epoch:3d}/2" in resumed for epoch in range(1, epochs_done + 1))
    expected, actual = model_weights(uninterrupted), model_weights(directory)
    assert expected.keys() == actual.keys()
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


def test_sigterm_stops_cleanly_with_a_checkpoint_to_resume_from(tmp_path):
    directory = workdir(tmp_path)
    code, stderr = interrupt_in_the_second_epoch(directory, signal.SIGTERM)
    assert code == 130, stderr
    assert "stopped: stopped by SIGTERM at " in stderr and "Traceback" not in stderr
    assert where_it_stopped(stderr) >= (1, 1)
    assert tf.train.latest_checkpoint(str(directory / "model" / "latest"))


def test_ctrl_c_while_the_digit_gate_trains_keeps_the_classifier_and_resume_only_trains_the_gate(tmp_path):
    directory = workdir(tmp_path)
    code, stderr = interrupted_once(directory, r"digit gate: training", signal.SIGINT)
    assert code == 130, stderr
    assert "stopped: interrupted by Ctrl-C while training the digit gate" in stderr and "Traceback" not in stderr
    assert "--resume" in stderr.splitlines()[-1]
    assert not (directory / "model" / "saved_model").exists() and not (directory / "submission.csv").exists()
    resumed = run(SHORT_RUN + ["--resume"], directory)
    assert "epoch   1/2" not in resumed and "epoch   2/2" not in resumed, resumed  # the classifier was done
    assert "digit gate: " in resumed and (directory / "model" / "saved_model" / "saved_model.pb").exists()
    assert len((directory / "submission.csv").read_text().splitlines()) == 31


def test_sigterm_while_the_digit_gate_trains_stops_cleanly_and_keeps_the_classifier(tmp_path):
    directory = workdir(tmp_path)
    code, stderr = interrupted_once(directory, r"digit gate: training", signal.SIGTERM)
    assert code == 130, stderr
    assert "stopped: stopped by SIGTERM while training the digit gate" in stderr and "Traceback" not in stderr
    assert tf.train.latest_checkpoint(str(directory / "model" / "latest"))
    assert not (directory / "model" / "saved_model").exists() and not (directory / "submission.csv").exists()


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
    from model import DigitNet
    from recipes import build_model
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
