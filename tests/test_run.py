"""run.py end to end, as a user runs it: a subprocess on a few hundred real rows."""
import csv
import json
import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import run_py

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One short training run in a scratch directory; the tests below read what it left."""
    from conftest import write_rows
    workdir = tmp_path_factory.mktemp("run")
    write_rows("train", 400, workdir / "train.csv")
    write_rows("test", 150, workdir / "test.csv")
    result = run_py(["--max_n_epochs", "1", "--batch_size", "32", "--show_incorrect"], cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    (workdir / "stderr.txt").write_text(result.stderr)
    return workdir, result.stdout


def test_by_default_a_tenth_of_the_digits_is_a_validation_split_that_chooses_the_epoch(finished_run):
    _, stdout = finished_run
    assert "data: 359 training and 41 validation digits" in stdout
    assert "kept the best epoch, 1 of 1: the highest validation accuracy" in stdout


def test_with_every_digit_in_training_the_whole_schedule_runs_and_the_last_epoch_is_kept(tmp_path):
    write_rows_for_run(tmp_path)
    result = run_py(["--max_n_epochs", "2", "--percent_data_for_training", "100"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "data: 300 training and 0 validation digits" in result.stdout
    assert "epoch   2/2" in result.stdout
    kept = [line for line in result.stdout.splitlines() if line.startswith("kept")]
    assert kept == ["kept the last epoch, 2: there is no validation split to choose by"]
    assert "no validation split" in result.stdout and not (tmp_path / "resources").exists()


def test_a_run_on_a_cpu_prints_nothing_to_stderr(finished_run):
    workdir, _ = finished_run
    assert (workdir / "stderr.txt").read_text() == ""  # TensorFlow's start-up lines ("E0000 ... cuInit") are hidden


def test_tensorflow_diagnostics_show_when_asked_for(tmp_path):
    code = "import devices; tf = devices.import_tensorflow(); print(tf.constant(1).numpy())"
    asked = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"})
    quiet = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                           env={key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"})
    assert asked.stdout == quiet.stdout == "1\n"
    assert quiet.stderr == "" and asked.stderr != ""


def test_prints_one_line_per_epoch_and_a_summary(finished_run):
    _, stdout = finished_run
    assert "epoch   1/1" in stdout
    assert "validation accuracy (best epoch, 1 of 1) with test-time augmentation:" in stdout
    assert "submission: submission.csv" in stdout


def test_submission_has_an_image_id_and_a_label_per_test_row(finished_run):
    workdir, _ = finished_run
    with open(workdir / "submission.csv") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["ImageId", "Label"]
    assert [int(image_id) for image_id, _ in rows[1:]] == list(range(1, 151))
    assert all(label in "0123456789" and len(label) == 1 for _, label in rows[1:])


def test_best_checkpoint_restores_into_a_fresh_network(finished_run):
    import tensorflow as tf
    from model import DigitNet
    workdir, _ = finished_run
    model = DigitNet(seed=123)
    before = model.conv1.numpy().copy()
    path = tf.train.latest_checkpoint(str(workdir / "model" / "best"))
    tf.train.Checkpoint(model=model).read(path).expect_partial().assert_existing_objects_matched()
    assert not np.allclose(before, model.conv1.numpy())


def test_saved_model_predicts_probabilities_without_project_code(finished_run, real_digits):
    workdir, _ = finished_run
    code = ("import sys, numpy as np, tensorflow as tf\n"
            "serve = tf.saved_model.load(sys.argv[1]).signatures['serving_default']\n"
            "p = serve(images=tf.zeros([3, 28, 28, 1]))['probabilities'].numpy()\n"
            "assert p.shape == (3, 10) and np.allclose(p.sum(1), 1, atol=1e-5), p\n")
    # A clean interpreter in another directory: the project's modules are not importable there.
    result = subprocess.run([sys.executable, "-c", code, str(workdir / "model" / "saved_model")],
                            cwd=workdir.parent, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def test_the_saved_model_also_says_how_likely_each_picture_is_a_digit_at_all(finished_run, real_digits):
    """The digit gate, trained after the classifier on the run's training digits (model.DigitGate)."""
    import tensorflow as tf
    workdir, stdout = finished_run
    gate_line = r"^digit gate: 359 digits \(\d+ of them also remade as a photo's\) against \d+ pictures of no digit"
    assert re.search(gate_line, stdout, re.MULTILINE), stdout
    serve = tf.saved_model.load(str(workdir / "model" / "saved_model")).signatures["serving_default"]
    said = serve(images=tf.constant(real_digits[0][:5]))["digit_probability"].numpy()
    assert said.shape == (5,) and np.all((said >= 0) & (said <= 1))


def test_tensorboard_event_files_hold_scalars_histograms_graph_and_images(finished_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    workdir, _ = finished_run
    (run_dir,) = glob.glob(str(workdir / "tf_logs" / "*"))
    train = EventAccumulator(os.path.join(run_dir, "train"), size_guidance={"tensors": 0}).Reload()
    validation = EventAccumulator(os.path.join(run_dir, "validation"), size_guidance={"tensors": 0}).Reload()
    train_tags, validation_tags = set(train.Tags()["tensors"]), set(validation.Tags()["tensors"])
    assert {"loss", "accuracy", "learning_rate"} <= train_tags
    assert any("conv1" in tag for tag in train_tags)  # the weight histograms
    assert train.Graph() is not None
    assert {"loss", "accuracy"} <= validation_tags
    assert any("misclassified" in tag for tag in validation_tags)


def test_show_incorrect_lists_every_misclassified_validation_digit(finished_run):
    import re
    _, stdout = finished_run
    n_validation = int(re.search(r"(\d+) validation digits", stdout).group(1))
    line = re.search(r"validation accuracy \(best epoch, 1 of 1\) with test-time augmentation: ([\d.]+)%", stdout)
    accuracy = float(line.group(1))
    listed = re.findall(r"validation digit \d+: true (\d), predicted (\d)", stdout)
    assert len(listed) == round(n_validation * (1 - accuracy / 100))
    assert all(true != predicted for true, predicted in listed)


def test_the_run_writes_the_evaluation_report(finished_run):
    workdir, _ = finished_run
    for name in ["report.md", "report.json", "confusion_matrix.png", "most_confident_mistakes.png"]:
        assert (workdir / "resources" / name).stat().st_size > 0


def test_show_incorrect_draws_the_misclassified_validation_digits(finished_run):
    workdir, stdout = finished_run
    assert (workdir / "resources" / "misclassified_digits.png").stat().st_size > 0
    assert "drawn in resources/misclassified_digits.png" in stdout


def test_without_show_incorrect_no_misclassified_digits_are_listed_or_drawn(tmp_path):
    write_rows_for_run(tmp_path)
    result = run_py(["--max_n_epochs", "1"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not re.search(r"validation digit \d+:", result.stdout)
    assert (tmp_path / "resources" / "report.md").exists()
    assert not (tmp_path / "resources" / "misclassified_digits.png").exists()


def test_help_lists_every_setting_with_its_default(tmp_path):
    result = run_py(["--help"], cwd=tmp_path)
    assert result.returncode == 0
    for flag in ["--max_n_epochs", "--patience", "--batch_size", "--dropout_rate", "--percent_data_for_training",
                 "--show_incorrect", "--seed", "--learning_rate"]:
        assert flag in result.stdout
    assert "--max_n_epochs INT    the learning-rate schedule spans this many" in result.stdout
    text = " ".join(result.stdout.split())  # as argparse wraps it
    assert "stopping may end sooner (default: the network's own)" in text
    assert "the rest is the validation split, which picks the epoch, stops early and feeds the report (100: no " \
           "split, the last epoch is kept) (default: 90)" in text


@pytest.mark.parametrize("args, message", [
    (["--no_such_flag"], "unrecognized arguments: --no_such_flag"),
    (["--batch_size", "many"], "--batch_size: invalid int value: 'many'"),
    (["--dropout_rate", "1.5"], "--dropout_rate 1.5: must be in [0, 1)"),
    (["--percent_data_for_training", "0"], "--percent_data_for_training 0: must be in [1, 100]"),
    (["--devices", "GPU:0,gpu1"], "--devices GPU:0,gpu1: 'gpu1' is not a device name like GPU:0 or CPU:0"),
])
def test_bad_flags_are_refused_with_exit_code_2(tmp_path, args, message):
    result = run_py(args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--percent_data_for_training", "100", "--show_incorrect"],
     "--show_incorrect needs a validation split, and --percent_data_for_training 100 leaves none"),
    (["--percent_data_for_training", "100", "--patience", "3"],
     "--patience needs a validation split, and --percent_data_for_training 100 leaves none"),
    (["--resume"], "--resume: no interrupted run to go on from in model/latest; run without --resume"),
    (["--resume", "--ensemble", "2"], "--resume: no interrupted run to go on from in model/ensemble/member-1/latest"),
    (["--model", "cnn_small", "--elastic_sigma", "3"], "--elastic_sigma 3.0: there is no elastic distortion to smooth"),
    (["--elastic_alpha", "0", "--elastic_sigma", "3"], "--elastic_sigma 3.0: there is no elastic distortion to smooth"),
])
def test_a_flag_that_cannot_apply_is_refused_in_one_line(tmp_path, args, message):
    write_rows_for_run(tmp_path)
    (tmp_path / "submission.csv").write_text("ImageId,Label\n1,7\n")
    result = run_py(args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert (tmp_path / "submission.csv").read_text() == "ImageId,Label\n1,7\n"


def test_bad_data_file_exits_2_and_leaves_the_old_submission(tmp_path):
    (tmp_path / "submission.csv").write_text("ImageId,Label\n1,7\n")
    (tmp_path / "train.csv").write_text("label,pixel0\n1,0\n")
    result = run_py([], cwd=tmp_path)
    assert result.returncode == 2
    assert "train.csv" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert (tmp_path / "submission.csv").read_text() == "ImageId,Label\n1,7\n"


def test_missing_data_file_names_it_and_says_where_to_get_it(tmp_path):
    result = run_py(["--test", "nowhere/test.csv"], cwd=tmp_path)
    assert result.returncode == 2
    assert "nowhere/test.csv" in result.stderr and "kaggle.com" in result.stderr


def test_ensemble_keeps_each_member_and_a_rerun_reuses_them(tmp_path):
    from conftest import write_rows
    write_rows("train", 300, tmp_path / "train.csv")
    write_rows("test", 50, tmp_path / "test.csv")
    first = run_py(["--ensemble", "2", "--max_n_epochs", "1", "--batch_size", "32"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("epoch   1/1") == 2
    assert "validation accuracy of the 2-member ensemble" in first.stdout
    for member in (1, 2):
        assert (tmp_path / "model" / "ensemble" / f"member-{member}" / "finished.json").exists()
    # two networks, not one twice: the members end with different weights throughout
    first_member, second_member = (checkpoint_weights(tmp_path / "model" / "ensemble" / f"member-{member}" / "best")
                                   for member in (1, 2))
    assert first_member.keys() == second_member.keys()
    for name in first_member:
        assert not np.allclose(first_member[name], second_member[name]), name
    assert_the_outputs_are_the_ensembles(tmp_path, n_members=2)
    for member in (1, 2):  # a finished member is read back from its best checkpoint, all that it needs
        shutil.rmtree(tmp_path / "model" / "ensemble" / f"member-{member}" / "latest")
    again = run_py(["--ensemble", "2", "--max_n_epochs", "1", "--batch_size", "32"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "epoch   1/1" not in again.stdout and again.stdout.count("reusing the finished member") == 2
    assert (tmp_path / "submission.csv").read_text().count("\n") == 51
    assert_the_outputs_are_the_ensembles(tmp_path, n_members=2)


def assert_the_outputs_are_the_ensembles(workdir, n_members):
    """The SavedModel serves, and submission.csv answers, the average of every member's best checkpoint over the
    test digits and their one-pixel shifts (run.py's default, --tta)."""
    import tensorflow as tf

    import data
    import ensemble
    from recipes import build_model
    members = [build_model("digitnet") for _ in range(n_members)]
    for number, member in enumerate(members, start=1):
        best = tf.train.latest_checkpoint(str(workdir / "model" / "ensemble" / f"member-{number}" / "best"))
        tf.train.Checkpoint(model=member).read(best).expect_partial().assert_existing_objects_matched()
    test_images = data.load_test(workdir / "test.csv")
    expected = ensemble.ensemble_probabilities(members, test_images, tta=True)
    serve = tf.saved_model.load(str(workdir / "model" / "saved_model")).signatures["serving_default"]
    np.testing.assert_allclose(serve(images=tf.constant(test_images))["probabilities"].numpy(), expected, atol=1e-5)
    submitted = np.loadtxt(workdir / "submission.csv", delimiter=",", skiprows=1, dtype=int)
    np.testing.assert_array_equal(submitted[:, 1], expected.argmax(axis=1))


def checkpoint_weights(directory):
    """The network's variables in the checkpoint in directory, by name."""
    import tensorflow as tf
    reader = tf.train.load_checkpoint(str(directory))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map() if name.startswith("model/")}


MEMBERS_AS_THEY_START = """
import runpy, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import train
started = {}

def record(network, split, recipe, seed, options):  # each member as train.train receives it; none is trained
    started[str(seed)] = np.concatenate([v.numpy().ravel() for v in network.trainable_variables])
    if len(started) == 3:
        np.savez("started.npz", **started)
        sys.exit(0)
    return []

train.train = record
sys.argv = ["run.py", *sys.argv[2:]]
runpy.run_path(sys.path[0] + "/run.py", run_name="__main__")  # as python run.py runs it
"""


def test_ensemble_members_start_from_different_weights_and_seeds(tmp_path):
    write_rows_for_run(tmp_path)
    result = subprocess.run([sys.executable, "-c", MEMBERS_AS_THEY_START, str(REPO), "--ensemble", "3", "--seed", "7"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    started = np.load(tmp_path / "started.npz")
    assert sorted(started.files) == ["7", "8", "9"]
    for first, second in [("7", "8"), ("8", "9"), ("7", "9")]:
        assert np.isin(started[first], started[second]).mean() < 0.01  # only the zeros and ones of biases and BN


def test_the_ensembles_probabilities_are_the_mean_of_its_members(real_digits):
    import ensemble
    from model import DigitNet
    from recipes import build_model
    from train import predict_probabilities
    images = real_digits[0][:50]
    members = [DigitNet(seed=1), DigitNet(seed=2), build_model("cnn_small", seed=3)]
    expected = np.mean([predict_probabilities(member, images) for member in members], axis=0)
    np.testing.assert_allclose(ensemble.ensemble_probabilities(members, images), expected, atol=1e-6)


def test_a_member_trained_with_other_settings_is_trained_again(tmp_path):
    from conftest import write_rows
    write_rows("train", 300, tmp_path / "train.csv")
    write_rows("test", 50, tmp_path / "test.csv")
    assert run_py(["--ensemble", "2", "--max_n_epochs", "1"], cwd=tmp_path).returncode == 0
    changed = run_py(["--ensemble", "2", "--max_n_epochs", "1", "--dropout_rate", "0.5"], cwd=tmp_path)
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout.count("epoch   1/1") == 2 and "reusing" not in changed.stdout


def test_test_time_augmentation_averages_the_digit_and_its_one_pixel_shifts(real_digits):
    import ensemble
    from model import DigitNet
    from train import predict_probabilities
    images, _ = real_digits
    model = DigitNet(seed=1)
    shifted = [np.roll(images, shift, axis=(1, 2)) for shift in [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]]
    expected = np.mean([predict_probabilities(model, view) for view in shifted], axis=0)
    np.testing.assert_allclose(ensemble.ensemble_probabilities([model], images, tta=True), expected, atol=1e-6)
    assert not np.allclose(ensemble.ensemble_probabilities([model], images, tta=False), expected, atol=1e-4)


@pytest.mark.parametrize("tta", [False, True])
def test_the_saved_model_serves_what_ensemble_probabilities_gives_with_or_without_tta(real_digits, tmp_path, tta):
    import tensorflow as tf

    import ensemble
    from model import DigitNet
    images, labels = real_digits
    members = [DigitNet(seed=1), DigitNet(seed=2)]
    ensemble.export_saved_model(members, str(tmp_path / "saved_model"), images, labels, tta)
    serve = tf.saved_model.load(str(tmp_path / "saved_model")).signatures["serving_default"]
    served = serve(images=tf.constant(images))["probabilities"].numpy()
    np.testing.assert_allclose(served, ensemble.ensemble_probabilities(members, images, tta), atol=1e-6)
    assert not np.allclose(served, ensemble.ensemble_probabilities(members, images, not tta), atol=1e-4)


EDITED_WHILE_TRAINING = """
import sys
from pathlib import Path
import numpy as np, tensorflow as tf
sys.path.insert(0, sys.argv[1])
import data, ensemble, recipes, train
images, labels = data.load_train(sys.argv[2], max_rows=300)
network = recipes.build_model("digitnet", seed=1)
source = Path(sys.argv[1]) / "model.py"
source.write_text("import os  # a reader's edit: every line below moves down one\\n" + source.read_text())
train.train(network, (images, labels, images[:0], labels[:0]), recipes.training_recipe("digitnet", max_n_epochs=1),
            seed=0, options=train.RunOptions(verbose=False))
np.testing.assert_allclose(train.predict_probabilities(network, images),
                           tf.nn.softmax(network(images, training=False)), atol=1e-5)
ensemble.export_saved_model([network], sys.argv[3], images, labels, tta=True)
"""


def test_a_run_whose_source_is_edited_while_it_trains_still_evaluates_and_exports(tmp_path):
    """The functions a run traces after its start (the step, the evaluation, the export) run the code it started
    with: a reader editing model.py meanwhile must not lose the run."""
    project = tmp_path / "project"
    project.mkdir()
    for module in REPO.glob("*.py"):
        (project / module.name).write_bytes(module.read_bytes())
    result = subprocess.run([sys.executable, "-c", EDITED_WHILE_TRAINING, str(project),
                             str(REPO / "digit-recognizer" / "train.csv.gz"), str(tmp_path / "saved_model")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "saved_model" / "saved_model.pb").exists()


def test_list_models_prints_every_network_with_its_size(tmp_path):
    from recipes import MODELS
    result = run_py(["--list_models"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in MODELS:
        assert f"\n{name} " in result.stdout
    assert "242,410" in result.stdout  # digitnet's parameters


def test_an_unknown_model_is_refused_with_the_choices(tmp_path):
    result = run_py(["--model", "resnet"], cwd=tmp_path)
    assert result.returncode == 2
    assert "--model resnet: choose from digitnet, mlp" in result.stderr


def test_model_flag_trains_that_network_with_its_recipe(tmp_path):
    import tensorflow as tf
    from recipes import build_model
    write_rows_for_run(tmp_path)
    result = run_py(["--model", "mlp", "--max_n_epochs", "1"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    mlp = build_model("mlp")
    tf.train.Checkpoint(model=mlp).read(tf.train.latest_checkpoint(str(tmp_path / "model" / "best"))) \
        .expect_partial().assert_existing_objects_matched()


def test_params_file_trains_the_tuned_network(tmp_path):
    import json
    import tensorflow as tf
    from recipes import load_params, tuned_network
    write_rows_for_run(tmp_path)
    params = {"filters": [32, 64], "kernel_sizes": [3, 5], "units": [64], "dropout_rate": 0.1, "optimizer": "nadam",
              "learning_rate": 0.002, "batch_size": 64}
    (tmp_path / "best_params.json").write_text(json.dumps(params))
    result = run_py(["--params", "best_params.json", "--max_n_epochs", "1"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    tuned = tuned_network(load_params(tmp_path / "best_params.json"), seed=0)
    tf.train.Checkpoint(model=tuned).read(tf.train.latest_checkpoint(str(tmp_path / "model" / "best"))) \
        .expect_partial().assert_existing_objects_matched()


def test_a_bad_params_file_exits_2_naming_it(tmp_path):
    (tmp_path / "best_params.json").write_text('{"filters": [32]}')
    result = run_py(["--params", "best_params.json"], cwd=tmp_path)
    assert result.returncode == 2
    assert "best_params.json" in result.stderr.strip().splitlines()[-1]


def write_rows_for_run(directory):
    from conftest import write_rows
    write_rows("train", 300, directory / "train.csv")
    write_rows("test", 50, directory / "test.csv")


def test_a_flag_given_at_the_default_networks_value_is_honoured_for_another_network(tmp_path):
    from recipes import MODELS
    write_rows_for_run(tmp_path)
    digitnet_rate, mlp_rate = MODELS["digitnet"].recipe.learning_rate, MODELS["mlp"].recipe.learning_rate
    assert digitnet_rate != mlp_rate  # else this would prove nothing
    result = run_py(["--model", "mlp", "--learning_rate", str(digitnet_rate), "--max_n_epochs", "1"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    settings = json.loads((tmp_path / "model" / "settings.json").read_text())
    assert (settings["model"], settings["learning_rate"], settings["max_n_epochs"]) == ("mlp", digitnet_rate, 1)
    assert settings["batch_size"] == MODELS["mlp"].recipe.batch_size  # what was not given is the network's own


def test_a_boolean_setting_can_be_turned_off(tmp_path):
    import flags
    parser = flags.settings_parser({"__file__": str(REPO / "run.py"), "tta": True})
    assert parser.parse_args([]).tta is True and parser.parse_args(["--no-tta"]).tta is False
