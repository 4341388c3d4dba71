"""Devices and precision. Several devices (run.py --devices): tf.distribute.MirroredStrategy over two logical
CPUs computes what one device computes on the same global batch; TensorFlow fixes its devices when it starts, so
the two-device cases run in fresh interpreters (tests/two_devices.py, and run.py itself). Mixed precision
(run.py's default): the layers compute in float16 or bfloat16 where the hardware has units for them, and train as
float32 does."""
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import data
import devices
import train
from conftest import run_py, train_with, write_rows
from recipes import build_model

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


def test_two_replicas_give_a_step_with_letters_the_loss_one_device_gives(one_and_two_devices):
    one, two = one_and_two_devices["step losses with letters"]  # the letters all on the second replica
    assert two[0] == pytest.approx(one[0], rel=1e-5)


def test_two_replicas_go_on_training_as_one_device_does(one_and_two_devices):
    one, two = one_and_two_devices["step losses"]
    # Adam moves a weight by about the learning rate whatever its gradient's size, so float rounding that flips
    # a near-zero gradient's sign shows in later losses: agreement to 1e-3, not 1e-5, after the first step.
    assert two[1:] == pytest.approx(one[1:], rel=1e-3)
    assert one[-1] < one[0] - 0.5  # and the steps did train


def test_a_model_built_outside_the_strategys_scope_is_refused(one_and_two_devices):
    assert "strategy.scope()" in one_and_two_devices["outside the scope"]


def test_run_py_trains_on_two_logical_cpus_and_its_saved_model_serves_on_one(tmp_path):
    write_rows("train", 300, tmp_path / "train.csv")
    write_rows("test", 40, tmp_path / "test.csv")
    finished = run_py(["--devices", "CPU:0,CPU:1", "--max_n_epochs", "2"], tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert "devices: 2 replicas" in finished.stdout
    submitted = np.loadtxt(tmp_path / "submission.csv", delimiter=",", skiprows=1, dtype=int)
    serve = tf.saved_model.load(str(tmp_path / "model" / "saved_model")).signatures["serving_default"]
    test_images = data.load_test(tmp_path / "test.csv")
    probabilities = serve(images=tf.constant(test_images))["probabilities"].numpy()
    np.testing.assert_array_equal(submitted[:, 1], probabilities.argmax(1))


@contextlib.contextmanager
def reserved_ports(n):
    """n free TCP ports, each held by a socket bound to it until the block ends -> the port numbers.

    A port found free and let go could be taken by any process before a worker binds it. Held bound, the kernel
    gives it to no one else: bind() refuses it, port 0 and outgoing connections skip it. The sockets set
    SO_REUSEPORT, so a gRPC server that sets it too can bind the port alongside them: TensorFlow's does when
    TF_GRPC_REUSE_PORT=1 (by default it does not, and then cannot start). They never listen, so every connection
    reaches the worker; holding them while it runs costs nothing."""
    with contextlib.ExitStack() as holders:
        ports = []
        for _ in range(n):
            holder = holders.enter_context(socket.socket())
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            holder.bind(("0.0.0.0", 0))  # the wildcard TensorFlow binds: no other bind of the port can coexist
            ports.append(holder.getsockname()[1])
        yield ports


def start_worker(cluster, index, workdir):
    """run.py as worker `index` of `cluster` (TF_CONFIG), in workdir with its own data; its output goes to
    workdir/stdout.txt and stderr.txt, files rather than pipes that a busy worker could fill and wait on."""
    workdir.mkdir()
    write_rows("train", 300, workdir / "train.csv")
    write_rows("test", 40, workdir / "test.csv")
    tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
    with open(workdir / "stdout.txt", "w") as stdout, open(workdir / "stderr.txt", "w") as stderr:
        return subprocess.Popen([sys.executable, str(REPO / "run.py"), "--max_n_epochs", "1"], cwd=workdir,
                                env={**os.environ, "TF_CONFIG": tf_config, "TF_GRPC_REUSE_PORT": "1"},
                                stdout=stdout, stderr=stderr)


def wait_for_all(processes, timeout):
    """Each process's exit code, all within one timeout; none is left running (one that died leaves the
    other waiting for it)."""
    deadline = time.monotonic() + timeout
    try:
        return [process.wait(timeout=max(0.0, deadline - time.monotonic())) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_two_workers_described_by_tf_config_train_one_model_together(tmp_path):
    workdirs = [tmp_path / f"worker-{index}" for index in range(2)]
    with reserved_ports(2) as ports:
        cluster = {"worker": [f"localhost:{port}" for port in ports]}
        codes = wait_for_all([start_worker(cluster, index, workdirs[index]) for index in range(2)], timeout=600)
    for code, workdir in zip(codes, workdirs):
        assert code == 0, (workdir / "stderr.txt").read_text()[-3000:]
        assert "devices: 2 replicas" in (workdir / "stdout.txt").read_text()
    # each worker took half of every batch, and both ended with the same network
    first, second = [(workdir / "submission.csv").read_text() for workdir in workdirs]
    assert first == second


def test_a_device_that_is_not_there_is_refused_in_one_line(tmp_path):
    write_rows("train", 100, tmp_path / "train.csv")
    write_rows("test", 10, tmp_path / "test.csv")
    finished = run_py(["--devices", "GPU:3"], tmp_path)
    assert finished.returncode == 2
    error_lines = [line for line in finished.stderr.splitlines() if line.startswith("error:")]
    assert error_lines == [error_lines[0]] and "GPU:3" in error_lines[0] and "CPU:0" in error_lines[0]
    assert not (tmp_path / "submission.csv").exists()


# ---- mixed precision ----

@pytest.mark.parametrize("compute_dtype", [tf.float16, tf.bfloat16])
def test_the_layers_compute_in_the_dtype_of_the_images_they_are_given(real_digits, compute_dtype):
    model = build_model("digitnet", seed=1)
    images = tf.constant(real_digits[0][:32])
    half = model(tf.cast(images, compute_dtype), training=False)
    assert half.dtype == compute_dtype
    np.testing.assert_allclose(tf.cast(half, tf.float32), model(images, training=False), atol=0.1)


def full_batch_training(real_digits, compute_dtype, n_steps=3):
    """n_steps steps of train.train, each on all 270 training digits of the first 300 -> (each step's loss, the
    model)."""
    images, labels = real_digits
    split = data.split_train_validation(images[:300], labels[:300], 90, 42)
    model = build_model("digitnet", dropout_rate=0.0, seed=1)
    history = train_with(model, split, seed=3, options=train.RunOptions(compute_dtype=compute_dtype, verbose=False),
                         max_n_epochs=n_steps, patience=n_steps, batch_size=len(split[1]), learning_rate=1e-3,
                         schedule="constant")
    return [record["train_loss"] for record in history], model


@pytest.fixture(scope="module")
def float32_losses(real_digits):
    return full_batch_training(real_digits, "float32")[0]


@pytest.mark.parametrize("compute_dtype", ["float16", "bfloat16"])
def test_mixed_precision_trains_float32_weights_to_nearly_the_float32_losses(real_digits, float32_losses,
                                                                              compute_dtype):
    losses, model = full_batch_training(real_digits, compute_dtype)
    assert all(variable.dtype == tf.float32 for variable in model.variables)
    assert losses == pytest.approx(float32_losses, rel=5e-3)
    assert losses[-1] < losses[0] - 0.5


@pytest.mark.parametrize("units, dtype", [(True, "bfloat16"), (False, "float32")])
def test_mixed_precision_on_a_cpu_computes_in_bfloat16_only_where_it_has_bfloat16_units(monkeypatch, units, dtype):
    monkeypatch.setattr(devices, "has_bfloat16_units", lambda: units)
    assert devices.compute_dtype(mixed_precision=True) == dtype


def test_without_mixed_precision_the_layers_compute_in_float32(monkeypatch):
    monkeypatch.setattr(devices, "has_bfloat16_units", lambda: True)
    assert devices.compute_dtype(mixed_precision=False) == "float32"


@pytest.mark.parametrize("flag", ["--mixed_precision", "--no-mixed_precision"])
def test_run_py_says_when_its_layers_compute_in_bfloat16(tmp_path, flag):
    write_rows("train", 200, tmp_path / "train.csv")
    write_rows("test", 10, tmp_path / "test.csv")
    finished = run_py([flag, "--max_n_epochs", "1"], tmp_path)
    assert finished.returncode == 0, finished.stderr
    in_bfloat16 = flag == "--mixed_precision" and devices.has_bfloat16_units()  # (no GPU here)
    said = "mixed precision: the layers compute in bfloat16, the weights stay float32" in finished.stdout
    assert said == in_bfloat16
    assert (tmp_path / "submission.csv").exists()
