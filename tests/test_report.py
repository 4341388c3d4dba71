"""report.py: the evaluation report on the validation split, its pictures, and `python report.py`."""
import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import report

REPO = Path(__file__).resolve().parents[1]
PICTURES = ["confusion_matrix", "training_history", "class_distribution", "correct_digits", "most_confident_mistakes", "conv1_kernels", "feature_maps", "dense_weights"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_report(cwd):
    return subprocess.run([sys.executable, str(REPO / "report.py")], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A network trained for two epochs on a few hundred real rows, split as run.py splits them, into model/,
    then write_report on it; -> what the tests need to look at."""
    import tensorflow as tf
    import data
    import files
    import train
    from conftest import train_with, write_rows
    from model import DigitNet

    workdir = tmp_path_factory.mktemp("report")
    images, labels = data.load_train(write_rows("train", 400, workdir / "train.csv"))
    train_images, train_labels, val_images, val_labels = data.split_train_validation(
        images, labels, 90, 42)
    tf.random.set_seed(0)
    model = DigitNet(seed=0)
    options = train.RunOptions(checkpoint_dir=str(workdir / "model"), log_dir=str(workdir / "tf_logs"), verbose=False)
    history = train_with(model, (train_images, train_labels, val_images, val_labels), options=options,
                         max_n_epochs=2, patience=2, batch_size=32, learning_rate=3e-3)
    # what report.py reads of the settings that run.py records beside its checkpoints
    files.write_json(workdir / "model" / "settings.json", dict(model="digitnet", params="", dropout_rate=0.25,
                                                                  percent_data_for_training=90, seed=42))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        metrics = report.write_report(model, history, train_labels, val_images, val_labels,
                                      str(workdir / "resources"), log_dir=str(workdir / "tf_logs" / "report"))
    return SimpleNamespace(workdir=workdir, resources=workdir / "resources", model=model, history=history,
                           val_images=val_images, val_labels=val_labels, metrics=metrics, printed=printed.getvalue())


def saved_metrics(resources):
    return json.loads((resources / "report.json").read_text())


@pytest.mark.parametrize("name", PICTURES)
def test_each_picture_is_a_png_of_sensible_size(written, name):
    path = written.resources / f"{name}.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        assert 400 <= picture.width <= 2000 and 250 <= picture.height <= 2000, picture.size
        assert len(picture.convert("RGB").getcolors(maxcolors=picture.width * picture.height)) > 20  # not blank


def test_metrics_agree_with_those_recomputed_from_the_models_predictions(written):
    from train import predict_probabilities
    labels = written.val_labels
    predictions = predict_probabilities(written.model, written.val_images).argmax(1)
    saved = saved_metrics(written.resources)
    assert saved["accuracy"] == pytest.approx(np.mean(predictions == labels))
    for digit, row in enumerate(saved["per_class"]):
        hits = np.sum((predictions == digit) & (labels == digit))
        precision = hits / np.sum(predictions == digit) if np.any(predictions == digit) else 0.0
        recall = hits / np.sum(labels == digit)
        f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
        assert row == pytest.approx(dict(digit=digit, precision=precision, recall=recall, f1=f1,
                                         support=np.sum(labels == digit)))
    for key in ["precision", "recall", "f1"]:
        assert saved["macro_avg"][key] == pytest.approx(np.mean([row[key] for row in saved["per_class"]]))
    assert saved["macro_avg"]["support"] == len(labels)


def test_confusion_matrix_counts_true_digit_by_row_and_prediction_by_column(written):
    from train import predict_probabilities
    predictions = predict_probabilities(written.model, written.val_images).argmax(1)
    expected = np.zeros([10, 10], int)
    for true, predicted in zip(written.val_labels, predictions):
        expected[true, predicted] += 1
    assert saved_metrics(written.resources)["confusion_matrix"] == expected.tolist()


def test_a_digit_never_predicted_has_precision_0_not_nan():
    metrics = report.classification_metrics(np.array([0, 0, 1]), np.array([0, 0, 0]))
    assert metrics["per_class"][1] == dict(digit=1, precision=0.0, recall=0.0, f1=0.0, support=1)
    assert metrics["per_class"][0]["precision"] == pytest.approx(2 / 3) and metrics["accuracy"] == pytest.approx(2 / 3)


def test_returns_the_metrics_it_saves(written):
    saved = saved_metrics(written.resources)
    assert written.metrics == {key: value for key, value in saved.items() if key != "history"}


def test_report_json_keeps_the_training_history(written):
    assert saved_metrics(written.resources)["history"] == written.history


def test_report_md_is_a_table_with_a_row_per_digit_and_the_macro_average(written):
    rows = [line for line in (written.resources / "report.md").read_text().splitlines() if line.startswith("|")]
    assert rows[0] == "| digit | precision | recall | F1 | support |"
    assert [row.split("|")[1].strip() for row in rows[2:]] == [*"0123456789", "macro avg"]
    assert all(row.count("|") == 6 for row in rows)


def test_prints_the_table_it_saves(written):
    assert (written.resources / "report.md").read_text() in written.printed


def digitnet_whose_batch_norm_scales_have_both_signs():
    """A DigitNet whose batch norms have scales of both signs and moving statistics away from 0 and 1: with a
    negative scale, pooling before or after batch norm and ReLU gives different maps."""
    import tensorflow as tf
    from model import DigitNet
    model, rng = DigitNet(seed=1), np.random.default_rng(1)
    for bn in (model.bn1, model.bn2, model.bn3, model.bn4):
        n = bn["scale"].shape[0]
        bn["scale"].assign(tf.constant(rng.choice([-1.0, 1.0], n) * rng.uniform(0.5, 1.5, n), tf.float32))
        bn["moving_mean"].assign(tf.constant(rng.normal(0, 0.1, n), tf.float32))
        bn["moving_variance"].assign(tf.constant(rng.uniform(0.5, 2.0, n), tf.float32))
    return model


@pytest.mark.parametrize("network", ["trained", "scales of both signs"])
def test_feature_maps_are_what_the_networks_blocks_compute(written, network):
    """The picture's maps are the network's: each is a conv block's output (conv, 2x2 max pool, batch norm, ReLU,
    as model.conv_pool_bn_relu computes it) of the map before, and the rest of the forward pass from the last map
    gives the network's own logits."""
    import tensorflow as tf
    from model import conv_pool_bn_relu, flatten
    from tools import batch_normalize
    model = written.model if network == "trained" else digitnet_whose_batch_norm_scales_have_both_signs()
    image = written.val_images[0]
    maps = report.feature_maps(model, image)
    assert [m.shape for m in maps] == [(14, 14, 32), (7, 7, 64), (3, 3, 128)]
    inputs = [image, *maps[:-1]]
    for block, (kernel, bn) in enumerate([(model.conv1, model.bn1), (model.conv2, model.bn2),
                                          (model.conv3, model.bn3)]):
        expected = conv_pool_bn_relu(inputs[block][None], kernel, bn, training=False)[0]
        np.testing.assert_allclose(maps[block], expected, atol=1e-5, err_msg=f"block {block + 1}")
    x = flatten(maps[-1][None])
    x = tf.nn.relu(batch_normalize(x @ model.dense1, model.bn4, training=False))
    np.testing.assert_allclose(x @ model.dense2 + model.bias2, model(image[None], training=False), atol=1e-4)


def test_tensorboard_holds_each_picture(written):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(written.workdir / "tf_logs" / "report"), size_guidance={"tensors": 0}).Reload()
    assert set(events.Tags()["tensors"]) == set(PICTURES)
    width, height, png = events.Tensors("confusion_matrix")[0].tensor_proto.string_val  # tf.summary.image's layout
    assert png.startswith(PNG_SIGNATURE) and int(width) >= 400


def test_report_py_rebuilds_the_report_from_the_best_checkpoint(written, tmp_path, monkeypatch):
    shutil.copytree(written.workdir / "model", tmp_path / "model")
    shutil.copy(written.workdir / "train.csv", tmp_path / "train.csv")  # run.py's validation split comes from it
    (tmp_path / "resources").mkdir()
    shutil.copy(written.resources / "report.json", tmp_path / "resources")  # the training history
    monkeypatch.chdir(tmp_path)  # in this process, to spare another start of TensorFlow
    assert report.main([]) == 0
    rebuilt = saved_metrics(tmp_path / "resources")
    assert rebuilt["history"] == written.history
    assert rebuilt["confusion_matrix"] == written.metrics["confusion_matrix"]
    assert rebuilt["accuracy"] == pytest.approx(written.metrics["accuracy"])
    assert sorted(path.stem for path in (tmp_path / "resources").glob("*.png")) == sorted(PICTURES)


def test_python_report_py_without_a_model_exits_2_saying_run_python_run_py_first(tmp_path):
    result = run_report(tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "run python run.py first" in result.stderr
