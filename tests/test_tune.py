"""tune.py: the search space builds networks that learn, the study resumes and prunes, the results are written."""
import contextlib
import json
import math
import threading
import time
import warnings
from datetime import datetime, timedelta

import optuna
import pytest
import tensorflow as tf
from optuna.trial import TrialState

import data
import train
import tune
from model import DigitNet, count_parameters
from recipes import load_params, training_recipe, tuned_network, tuned_recipe

# The smallest network and a recipe that learns, as the flat names a trial draws (what enqueue_trial takes).
SMALL = {"conv_layers": 2, "filters_1": 32, "kernel_size_1": 3, "filters_2": 32, "kernel_size_2": 3,
         "dense_layers": 1, "units_1": 64, "dropout_rate": 0.0, "optimizer": "adam", "learning_rate_adam": 3e-3,
         "batch_size": 32}
TINY_RUN = ["--rows", "200", "--max_n_epochs", "1"]


def corner(extreme, optimizer):
    """The params of a corner of the search space: every dimension at its min (or max) for this optimiser."""
    conv_layers, dense_layers = extreme(tune.CONV_LAYERS), extreme(tune.DENSE_LAYERS)
    values = {"conv_layers": conv_layers, "dense_layers": dense_layers, "optimizer": optimizer,
              f"learning_rate_{optimizer}": extreme(tune.LEARNING_RATES[optimizer]),
              "dropout_rate": extreme(tune.DROPOUT_RATES), "batch_size": extreme(tune.BATCH_SIZES)}
    for i in range(1, conv_layers + 1):
        values.update({f"filters_{i}": extreme(tune.FILTERS), f"kernel_size_{i}": extreme(tune.KERNEL_SIZES)})
    for i in range(1, dense_layers + 1):
        values[f"units_{i}"] = extreme(tune.UNITS)
    return tune.suggest_params(optuna.trial.FixedTrial(values))


def split(real_digits, n_rows):
    images, labels = real_digits
    return data.split_train_validation(images[:n_rows], labels[:n_rows], 90, 42)


def settings(storage, study, **given):
    """tune.py's settings as its flags make them, with these given: --storage STORAGE --study STUDY --NAME VALUE."""
    flags = [f"--{name}={value}" for name, value in dict(storage=storage, study=study, **given).items()]
    return tune.parse_flags(flags)


@contextlib.contextmanager
def smallest_networks():
    """The search space cut down to its cheapest networks, the first trial one of them: the tests that use it
    are about the study."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tune, "DEFAULT_TRIAL", SMALL)
        patch.setattr(tune, "FILTERS", (32,))
        patch.setattr(tune, "KERNEL_SIZES", (3,))
        patch.setattr(tune, "UNITS", (64, 128))
        patch.setattr(tune, "BATCH_SIZES", (32, 64))
        yield


# ---- the search space ----

@pytest.mark.parametrize("optimizer", list(tune.LEARNING_RATES))
@pytest.mark.parametrize("extreme", [min, max])
def test_the_smallest_and_the_largest_corner_build_networks_that_learn(real_digits, extreme, optimizer):
    params = corner(extreme, optimizer)
    images, labels = real_digits[0][:8], real_digits[1][:8]
    network = tuned_network(params, seed=0)

    def loss():  # in training mode, with the same dropout mask each time, so that only the weights differ
        return train.cross_entropy(network(images, training=True, rng=tf.random.Generator.from_seed(1)), labels)

    assert network(images).shape == (8, 10)
    before = float(loss())
    recipe = tuned_recipe(params, training_recipe("digitnet"))
    stepper = train.OPTIMIZERS[recipe.optimizer](network.trainable_variables, learning_rate=recipe.learning_rate)
    with tf.GradientTape() as tape:
        batch_loss = loss()
    stepper.apply_gradients(tape.gradient(batch_loss, network.trainable_variables))
    assert float(loss()) < before


def test_a_new_study_first_trains_the_default_network_and_recipe(tmp_path, real_digits):
    storage = f"sqlite:///{tmp_path}/tuning.db"
    config = settings(storage, "new", prune_after=5, trials=1, max_n_epochs=1, patience=1)
    tune.search(tune.open_study(config), split(real_digits, 300), config)
    (first,) = optuna.load_study(study_name="new", storage=storage).trials
    params = first.user_attrs["params"]
    assert count_parameters(tuned_network(params, seed=0)) == count_parameters(DigitNet())
    assert tune.layers(params) == ("5x5/32 3x3/64 3x3/128", "128")
    assert params["dropout_rate"] == DigitNet().dropout_rate
    assert tuned_recipe(params, training_recipe("digitnet")) == training_recipe("digitnet")
    assert len(tune.open_study(config).trials) == 1  # reopened: not queued again


# ---- the study: resumed, pruned, stopped in time ----

@pytest.fixture(scope="module")
def two_sessions(tmp_path_factory):
    """tune.py run twice in a scratch directory, as a user resumes it: 2 trials, then 1 more.
    -> (the directory, the study's trials after the first run, after the second)."""
    workdir = tmp_path_factory.mktemp("tune")
    storage = f"sqlite:///{workdir}/model/tuning.db"  # where the default sqlite:///model/tuning.db puts it

    def trials():
        return optuna.load_study(study_name=tune.study, storage=storage).trials

    with contextlib.chdir(workdir), smallest_networks():
        assert tune.main(TINY_RUN + ["--trials", "2"]) == 0
        first = trials()
        assert tune.main(TINY_RUN + ["--trials", "1"]) == 0
    return workdir, first, trials()


def test_a_resumed_search_keeps_the_finished_trials_and_adds_new_ones(two_sessions):
    _, first, second = two_sessions
    assert [t.state for t in first] == [TrialState.COMPLETE] * 2
    assert len(second) == 3
    for before, after in zip(first, second):
        assert (after.number, after.params, after.value) == (before.number, before.params, before.value)
    assert second[2].params not in [t.params for t in first]  # the sampler does not start over


def test_a_study_run_with_other_settings_is_refused(two_sessions, capsys):
    workdir, _, _ = two_sessions
    with contextlib.chdir(workdir):
        assert tune.main(["--rows", "200", "--max_n_epochs", "2"]) == 2
    error = capsys.readouterr().err
    assert "was run with" in error and "--study" in error and len(error.strip().splitlines()) == 1


# SMALL in batches of 8: on 450 digits, 57 steps an epoch, enough for the good network to be well above chance
# after its first (40-44% on this machine; in batches of 32 on 270 digits it still answered one digit for all,
# as the diverging one does, and the pruner could not tell them apart).
LEARNS_IN_ONE_EPOCH = {**SMALL, "batch_size": 8}


@pytest.fixture(scope="module")
def pruned_study(tmp_path_factory, real_digits):
    """Three fixed trials of two epochs: a good network, the same one at a learning rate that makes it diverge,
    and the good one again. Pruning starts after one finished trial."""
    with smallest_networks(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(tune, "DEFAULT_TRIAL", LEARNS_IN_ONE_EPOCH)  # a new study's first trial
        patch.setattr(tune, "BATCH_SIZES", (8, 32))
        config = settings(f"sqlite:///{tmp_path_factory.mktemp('prune')}/tuning.db", "pruning", prune_after=1,
                          trials=3, max_n_epochs=2, patience=2)
        study = tune.open_study(config)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Fixed parameter .* out of range")  # on purpose: far above the space
            for params in [{**LEARNS_IN_ONE_EPOCH, "learning_rate_adam": 100.0}, LEARNS_IN_ONE_EPOCH]:
                study.enqueue_trial(params)
            tune.search(study, split(real_digits, 500), config)
    return study.trials


def test_a_hopeless_trial_is_pruned_after_its_first_epoch(pruned_study):
    good, hopeless, _ = pruned_study
    assert good.state == TrialState.COMPLETE and list(good.intermediate_values) == [1, 2]
    assert hopeless.state == TrialState.PRUNED and list(hopeless.intermediate_values) == [1]
    assert hopeless.intermediate_values[1] < good.intermediate_values[1]


def test_a_pruned_trial_leaves_the_next_one_unaffected(pruned_study):
    good, _, again = pruned_study
    assert again.state == TrialState.COMPLETE
    assert again.intermediate_values == good.intermediate_values


def test_a_trial_still_training_at_the_deadline_is_stopped_there(tmp_path, real_digits):
    with smallest_networks():  # a new study's first trial is SMALL
        config = settings(f"sqlite:///{tmp_path}/tuning.db", "deadline", prune_after=0, max_n_epochs=2, patience=2)
        study = tune.open_study(config)
    deadline = time.time()  # already passed: the trial should stop after its first step
    study.optimize(lambda trial: tune.run_trial(trial, split(real_digits, 300), config, deadline), n_trials=1)
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED and trial.user_attrs["stopped"] == "out of time"
    assert trial.intermediate_values == {}


# ---- best_params.json ----

def test_load_params_reads_back_what_write_params_wrote(tmp_path):
    params = corner(max, "adadelta")
    tune.write_params(tmp_path / "best_params.json", params)
    assert load_params(tmp_path / "best_params.json") == params


@pytest.mark.parametrize("edit, says", [
    (dict(optimizer="sgd"), 'optimizer is "sgd"; expected one of adam, nadam, adadelta'),
    (dict(learning_rate=-0.1), "learning_rate is -0.1; expected a positive number"),
    (dict(filters=[32, "64"]), 'filters is [32, "64"]; expected a list of 1-4 positive whole numbers'),
    (dict(filters=[32] * 5, kernel_sizes=[3] * 5), "filters is [32, 32, 32, 32, 32]; expected a list of 1-4"),
    (dict(kernel_sizes=[3]), "kernel_sizes has 1 sizes for 2 conv layers"),
    (dict(dropout_rate=1.0), "dropout_rate is 1.0; expected a number in [0, 1)"),
    (dict(batch_size=32.5), "batch_size is 32.5; expected a positive whole number"),
    (dict(units=None), "units is null; expected a list of positive whole numbers"),
    (dict(unit=[64]), "unknown key 'unit'"),
])
def test_load_params_refuses_a_bad_file_in_one_line_naming_file_and_key(tmp_path, edit, says):
    path = tmp_path / "best_params.json"
    path.write_text(json.dumps({**corner(min, "adam"), **edit}))
    with pytest.raises(data.DataError) as error:
        load_params(path)
    assert str(error.value).startswith(f"{path}: {says}") and "\n" not in str(error.value)


@pytest.mark.parametrize("text", ["", "{'filters': [32]}", "[32, 64]"])
def test_load_params_refuses_a_file_that_is_not_a_json_object(tmp_path, text):
    path = tmp_path / "best_params.json"
    path.write_text(text)
    with pytest.raises(data.DataError, match="best_params.json"):
        load_params(path)


def test_a_missing_key_is_named(tmp_path):
    params = corner(min, "nadam")
    del params["batch_size"]
    (tmp_path / "best_params.json").write_text(json.dumps(params))
    with pytest.raises(data.DataError, match="batch_size is missing"):
        load_params(tmp_path / "best_params.json")


# ---- the results ----

def test_the_results_are_written_as_tables_pictures_and_the_best_params(two_sessions):
    workdir, _, trials = two_sessions
    best = max(trials, key=lambda t: t.value)
    table = (workdir / "resources" / "tuning.md").read_text()
    assert "## The best 3" in table and "## The worst 3" in table
    assert f"| {best.number} | {100 * best.value:.2f}% |" in table
    assert "The default, DigitNet with run.py's recipe, is trial 0:" in table
    for picture in ["tuning_history.png", "tuning_accuracies.png"]:
        assert (workdir / "resources" / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_params(workdir / "model" / "best_params.json") == best.user_attrs["params"]


def test_a_quick_run_says_it_is_a_smoke_run_and_writes_only_its_own_quick_files(tmp_path, capsys):
    with contextlib.chdir(tmp_path), smallest_networks():
        assert tune.main(["--quick", *TINY_RUN, "--trials", "1"]) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("quick: ")]
    assert len(said) == 1 and said[0].endswith("a smoke run of the search; its numbers mean nothing")
    assert sorted(path.name for path in (tmp_path / "resources").iterdir()) == [
        "tuning_accuracies_quick.png", "tuning_history_quick.png", "tuning_quick.md"]
    assert sorted(path.name for path in (tmp_path / "model").iterdir()) == ["best_params_quick.json", "tuning.db"]



# ---- a search: its target of finished trials, shared by its workers ----

def made_up_trials(study, *states):
    """Trials of these states added to the study, as workers leave them (no training: these tests are about the
    count)."""
    for state in states:
        value = 0.5 if state == TrialState.COMPLETE else None
        study.add_trial(optuna.trial.create_trial(state=state, value=value, params={}, distributions={}))


def test_a_new_search_aims_at_trials_more_finished_trials_than_the_study_has(tmp_path):
    config = settings(f"sqlite:///{tmp_path}/tuning.db", "aim", trials=3)
    study = tune.open_study(config)  # a new study: the default trial waits, first
    made_up_trials(study, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    assert tune.join_search(study, config) == (2 + 3, False)


def test_a_search_short_of_its_target_is_joined_whatever_trials_a_worker_is_given(tmp_path):
    study = tune.open_study(settings(f"sqlite:///{tmp_path}/tuning.db", "join", trials=3))
    tune.join_search(study, settings(f"sqlite:///{tmp_path}/tuning.db", "join", trials=3))
    made_up_trials(study, TrialState.COMPLETE, TrialState.FAIL)
    target, joined = tune.join_search(study, settings(f"sqlite:///{tmp_path}/tuning.db", "join", trials=10))
    assert joined and target == 3
    made_up_trials(study, TrialState.COMPLETE, TrialState.PRUNED)  # its target reached: the next search is new
    assert tune.join_search(study, settings(f"sqlite:///{tmp_path}/tuning.db", "join", trials=10))[0] == 13


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the trial running elsewhere: asked here
def test_a_worker_waits_for_a_trial_running_elsewhere_that_would_make_up_the_target(tmp_path):
    config = settings(f"sqlite:///{tmp_path}/tuning.db", "wait", trials=2)
    study = optuna.create_study(storage=tune.open_storage(config), study_name="wait", direction="maximize")
    target, _ = tune.join_search(study, config)
    made_up_trials(study, TrialState.COMPLETE)
    elsewhere = study.ask()
    elsewhere.set_user_attr("worker", "elsewhere:1")  # as run_trial names it
    assert tune.search_done(study, target, time.time() + 0.5, grace_period=60, poll_seconds=0.1)  # waited to the deadline
    finishing = threading.Timer(0.5, lambda: study.tell(elsewhere, 0.5))
    finishing.start()
    started = time.time()
    assert tune.search_done(study, target, math.inf, grace_period=60, poll_seconds=0.1)
    assert time.time() - started >= 0.5
    finishing.join()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the trial running elsewhere: asked here
def test_a_worker_goes_on_while_the_trials_running_cannot_make_up_the_target(tmp_path):
    config = settings(f"sqlite:///{tmp_path}/tuning.db", "go on", trials=3)
    study = optuna.create_study(storage=tune.open_storage(config), study_name="go on", direction="maximize")
    target, _ = tune.join_search(study, config)
    made_up_trials(study, TrialState.COMPLETE, TrialState.FAIL)
    study.ask().set_user_attr("worker", "elsewhere:1")
    assert not tune.search_done(study, target, time.time() + 5, grace_period=60, poll_seconds=0.1)  # a wait ends True


def test_a_trial_whose_worker_died_before_its_heartbeat_began_is_not_waited_for(tmp_path):
    config = settings(f"sqlite:///{tmp_path}/tuning.db", "no heartbeat", trials=2)
    study = optuna.create_study(storage=tune.open_storage(config), study_name="no heartbeat", direction="maximize")
    target, _ = tune.join_search(study, config)
    made_up_trials(study, TrialState.COMPLETE)
    # Running for ever, taken a minute and a half ago: no heartbeat will go stale, no worker was named.
    study.add_trial(optuna.trial.FrozenTrial(
        number=0, trial_id=0, state=TrialState.RUNNING, value=None, params={}, distributions={}, user_attrs={},
        system_attrs={}, intermediate_values={}, datetime_start=datetime.now() - timedelta(seconds=90),
        datetime_complete=None))
    assert not tune.search_done(study, target, time.time() + 5, grace_period=60, poll_seconds=0.1)  # a wait ends True


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_trial_taken_when_the_trials_before_it_make_up_the_target_is_failed_unrun(tmp_path, monkeypatch):
    config = settings(f"sqlite:///{tmp_path}/tuning.db", "one too many", trials=2)
    study = optuna.create_study(storage=tune.open_storage(config), study_name="one too many", direction="maximize")
    tune.join_search(study, config)
    made_up_trials(study, TrialState.COMPLETE)
    study.ask().set_user_attr("worker", "elsewhere:1")  # taken just after this worker found the search 1 short
    answers = iter([False, True])
    monkeypatch.setattr(tune, "search_done", lambda *_: next(answers))
    tune.search(study, None, config)  # no digits: it trains nothing
    last = study.trials[-1]
    assert last.state == TrialState.FAIL and "params" not in last.user_attrs
    assert len(study.trials) == 3


def test_trials_0_writes_the_results_of_the_study_as_it_stands_and_runs_no_trial(two_sessions, capsys):
    workdir, _, trials = two_sessions
    (workdir / "resources" / "tuning.md").unlink()
    with contextlib.chdir(workdir):
        assert tune.main(TINY_RUN + ["--trials", "0"]) == 0
    assert "--trials 0: no trials" in capsys.readouterr().out
    assert len(optuna.load_study(study_name=tune.study, storage=f"sqlite:///{workdir}/model/tuning.db").trials) \
        == len(trials)
    assert f"{len(trials)} trials: " in (workdir / "resources" / "tuning.md").read_text()
