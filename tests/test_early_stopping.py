"""Early stopping and the choice of epoch, as train.train makes them: the validation accuracy of each epoch is
scripted (train.evaluate replaced), so each test says exactly which epoch must be kept and when the run must stop.
One step an epoch on 64 real digits, so that the weights after each epoch can be recorded by after_step."""
import numpy as np
import pytest
import tensorflow as tf

import train
from model import DigitNet

N_TRAIN = 64


@pytest.fixture
def split(real_digits):
    images, labels = real_digits
    return images[:N_TRAIN], labels[:N_TRAIN], images[N_TRAIN:N_TRAIN + 32], labels[N_TRAIN:N_TRAIN + 32]


def train_scripted(monkeypatch, split, scores, schedule="constant", patience=100, checkpoint_dir=None, **fields):
    """train.train on `split` with one step an epoch, the validation (loss, accuracy) of epoch k being scores[k-1]
    (and these other train.Recipe fields) -> (the history, the network, its weights after each epoch:
    {epoch: [arrays]})."""
    epochs = iter(scores)
    monkeypatch.setattr(train, "evaluate", lambda model, images, labels: next(epochs))
    network, after_epoch = DigitNet(seed=1), {}

    def record(step, seconds):
        after_epoch[step] = [variable.numpy().copy() for variable in network.variables]

    recipe = train.Recipe(max_n_epochs=len(scores), patience=patience, batch_size=N_TRAIN, learning_rate=1e-3,
                          schedule=schedule, **fields)
    options = train.RunOptions(after_step=record, checkpoint_dir=checkpoint_dir, verbose=False)
    history = train.train(network, split, recipe, 0, options)
    return history, network, after_epoch


def weights_equal(network, weights):
    return all(np.array_equal(variable.numpy(), kept) for variable, kept in zip(network.variables, weights))


def test_the_epoch_with_the_highest_validation_accuracy_is_kept(monkeypatch, split):
    scores = [(0.5, 0.80), (0.4, 0.90), (0.3, 0.85), (0.2, 0.70)]
    history, network, after_epoch = train_scripted(monkeypatch, split, scores)
    assert len(history) == 4
    assert weights_equal(network, after_epoch[2]) and not weights_equal(network, after_epoch[4])


def saved_weights(directory):
    """The network in the checkpoint in directory, as report.py and a reused ensemble member read it."""
    network = DigitNet(seed=2)
    tf.train.Checkpoint(model=network).read(tf.train.latest_checkpoint(str(directory))).expect_partial()
    return [variable.numpy() for variable in network.variables]


def test_the_best_checkpoint_holds_the_epoch_that_is_kept(monkeypatch, split, tmp_path):
    scores = [(0.5, 0.80), (0.4, 0.90), (0.3, 0.85)]
    _, network, after_epoch = train_scripted(monkeypatch, split, scores, checkpoint_dir=str(tmp_path))
    assert weights_equal(network, after_epoch[2])
    assert all(np.array_equal(saved, kept) for saved, kept in zip(saved_weights(tmp_path / "best"), after_epoch[2]))


def test_with_a_moving_average_the_best_checkpoint_holds_the_averaged_weights_that_are_kept(monkeypatch, split,
                                                                                               tmp_path):
    scores = [(0.5, 0.80), (0.4, 0.90), (0.3, 0.85)]
    _, network, after_epoch = train_scripted(monkeypatch, split, scores, checkpoint_dir=str(tmp_path), ema_decay=0.5)
    assert not weights_equal(network, after_epoch[2])  # what is kept is the average, not the epoch's weights ...
    assert weights_equal(network, saved_weights(tmp_path / "best"))  # ... and what report.py and run.py read back


def test_a_tie_in_validation_accuracy_goes_to_the_lower_validation_loss(monkeypatch, split):
    scores = [(0.5, 0.90), (0.3, 0.90), (0.4, 0.90)]
    _, network, after_epoch = train_scripted(monkeypatch, split, scores)
    assert weights_equal(network, after_epoch[2])


def test_a_tie_in_accuracy_and_loss_goes_to_the_earlier_epoch(monkeypatch, split):
    scores = [(0.3, 0.90), (0.3, 0.90)]
    _, network, after_epoch = train_scripted(monkeypatch, split, scores)
    assert weights_equal(network, after_epoch[1])


def test_training_stops_after_exactly_patience_epochs_without_a_better_accuracy(monkeypatch, split):
    scores = [(0.5, 0.80), (0.4, 0.90), (0.4, 0.90), (0.3, 0.89), (0.4, 0.90), (0.1, 0.99), (0.1, 0.99)]
    history, network, after_epoch = train_scripted(monkeypatch, split, scores, patience=3)
    assert [record["epoch"] for record in history] == [1, 2, 3, 4, 5]
    assert weights_equal(network, after_epoch[2])


def test_a_one_cycle_schedule_is_never_stopped_or_chosen_from_before_it_anneals(monkeypatch, split):
    # twenty epochs of one step: the learning rate reaches a tenth of its peak in epoch 18. Epoch 1 scores best of
    # all, but its weights are the schedule's start, not its end: it neither starts patience nor is kept.
    scores = [(0.1, 0.99)] + [(0.5, 0.50)] * 16 + [(0.3, 0.80), (0.4, 0.70), (0.4, 0.70)]
    history, network, after_epoch = train_scripted(monkeypatch, split, scores, schedule="one_cycle", patience=1)
    peak = max(record["learning_rate"] for record in history)
    assert history[16]["learning_rate"] > peak / 10 >= history[17]["learning_rate"]
    assert [record["epoch"] for record in history] == list(range(1, 20))
    assert weights_equal(network, after_epoch[18])


def test_without_a_validation_split_every_epoch_runs_and_the_last_is_kept(split):
    train_images, train_labels, _, _ = split
    network, after_epoch = DigitNet(seed=1), {}

    def record(step, seconds):
        after_epoch[step] = [variable.numpy().copy() for variable in network.variables]

    recipe = train.Recipe(max_n_epochs=3, patience=1, batch_size=N_TRAIN, learning_rate=1e-3)
    no_validation = (train_images, train_labels, train_images[:0], train_labels[:0])
    history = train.train(network, no_validation, recipe, 0, train.RunOptions(after_step=record, verbose=False))
    assert len(history) == 3 and weights_equal(network, after_epoch[3])
