"""The training loop around the from-scratch ops (train.Training): what each step trains on, the order of the rows,
the running means an epoch reports, and a run interrupted and resumed. A few dozen real digits and a step or a
few each: a loop bug that a whole training would survive (and still reach its accuracy) fails one of these."""
import os
import signal

import numpy as np
import pytest
import tensorflow as tf

import train
from model import DigitNet
from recipes import build_model
from tools import TRAINING_DRAWS, Adam, data_augmentation, random_generator

AUGMENTATION = dict(max_rotation_degrees=10.0, max_shift_fraction=0.1, max_zoom_fraction=0.1)


@pytest.fixture
def split(real_digits):
    images, labels = real_digits
    return images[:64], labels[:64], images[64:96], labels[64:96]


class Recording(tf.Module):
    """A network that keeps the last pictures it was given, in training and in inference (fixed batch sizes, so
    that the records are ordinary variables the loop can copy and checkpoint with the network's own)."""

    def __init__(self, network, n_training, n_inference):
        super().__init__()
        self.network = network
        self.trained_on = tf.Variable(tf.zeros([n_training, 28, 28, 1]), trainable=False)
        self.evaluated_on = tf.Variable(tf.zeros([n_inference, 28, 28, 1]), trainable=False)

    def __call__(self, images, training=False, rng=None):
        (self.trained_on if training else self.evaluated_on).assign(images)
        return self.network(images, training=training, rng=rng)


def training_run(network, split, seed=0, options=None, **fields):
    """A train.Training on split by a Recipe of these fields (one epoch of one batch of every row, at a constant
    rate, unless told otherwise), whose step also records each batch's rows -> (the Training, [rows of each
    step]). Call .run() on it."""
    recipe = train.Recipe(**{"max_n_epochs": 1, "patience": 100, "batch_size": len(split[0]),
                             "learning_rate": 1e-3, **fields})
    training = train.Training(network, split, recipe, seed, options or train.RunOptions(verbose=False))
    batches, step = [], training.step

    def recorded_step(batch_indices):
        batches.append(np.asarray(batch_indices))
        return step(batch_indices)

    training.step = recorded_step
    return training, batches


# ---- what a step trains on --------------------------------------------------------------------------------

def test_each_training_batch_is_augmented_by_the_recipe_from_the_runs_random_stream(split):
    images = split[0]
    network = Recording(DigitNet(seed=1), n_training=len(images), n_inference=len(split[2]))
    training, batches = training_run(network, split, seed=3, augmentation=AUGMENTATION)
    training.run()
    (rows,) = batches
    trained_on = network.trained_on.numpy()
    assert not np.allclose(trained_on, images[rows], atol=0.1)  # not the rows as they are ...
    # ... but those rows augmented by the recipe's ranges, with the first draws of the run's training stream
    expected = data_augmentation(tf.constant(images[rows]), random_generator(3, TRAINING_DRAWS), **AUGMENTATION)
    np.testing.assert_allclose(trained_on, expected.numpy(), atol=1e-5)


def test_without_augmentation_the_batch_is_the_rows_as_they_are(split):
    images = split[0]
    network = Recording(DigitNet(seed=1), n_training=len(images), n_inference=len(split[2]))
    training, batches = training_run(network, split)
    training.run()
    np.testing.assert_array_equal(network.trained_on.numpy(), images[batches[0]])


def test_evaluation_sees_the_validation_digits_as_they_are_never_augmented(split):
    network = Recording(DigitNet(seed=1), n_training=len(split[0]), n_inference=len(split[2]))
    training_run(network, split, augmentation=AUGMENTATION)[0].run()
    np.testing.assert_array_equal(network.evaluated_on.numpy(), split[2])
    train.predict_probabilities(network, split[2])  # and so does a prediction after training
    np.testing.assert_array_equal(network.evaluated_on.numpy(), split[2])


def test_each_step_is_one_optimiser_step_on_the_gradient_of_its_batchs_loss(split):
    """Replayed by hand on a copy of the network: each batch's rows (as the loop took them), the recipe's loss on
    them in training mode with dropout drawn from the run's stream, its gradient, one Adam step. A step whose
    gradients were dropped, scaled or taken on another loss or batch parts from the replay."""
    network, after_step = DigitNet(seed=1), []
    options = train.RunOptions(verbose=False, after_step=lambda step, seconds: after_step.append(
        [variable.numpy().copy() for variable in network.variables]))
    training, batches = training_run(network, split, max_n_epochs=2, batch_size=16, label_smoothing=0.1,
                                     options=options)
    training.run()
    images, labels = split[0], split[1]
    replay = DigitNet(seed=1)
    adam, rng = Adam(replay.trainable_variables, learning_rate=1e-3), random_generator(0, TRAINING_DRAWS)
    for rows, expected in zip(batches, after_step):
        with tf.GradientTape() as tape:
            loss = train.cross_entropy(replay(images[rows], training=True, rng=rng), labels[rows], 0.1)
        adam.apply_gradients(tape.gradient(loss, replay.trainable_variables))
        for variable, value in zip(replay.variables, expected):
            np.testing.assert_allclose(variable.numpy(), value, rtol=1e-4, atol=1e-5)
    assert len(after_step) == 8


def test_every_step_moves_the_weights(split):
    """The optimiser applies every batch's gradients: no step is left out, the first and last of an epoch included."""
    network = build_model("mlp", seed=1)
    weights_after = []

    def record(step, seconds):
        weights_after.append(np.concatenate([v.numpy().ravel() for v in network.trainable_variables]))

    initial = np.concatenate([v.numpy().ravel() for v in network.trainable_variables])
    training, _ = training_run(network, split, max_n_epochs=2, batch_size=16,
                               options=train.RunOptions(after_step=record, verbose=False))
    training.run()
    assert len(weights_after) == 8
    for before, after in zip([initial] + weights_after, weights_after):
        assert not np.array_equal(before, after)


# ---- the order of the rows --------------------------------------------------------------------------------

def epoch_orders(split, seed, epochs=3, batch_size=16):
    """The rows each epoch trained on, in the order it took them, of a run of `epochs` epochs."""
    training, batches = training_run(build_model("mlp", seed=1), split, seed, max_n_epochs=epochs,
                                     batch_size=batch_size)
    training.run()
    steps = len(batches) // epochs
    return [np.concatenate(batches[epoch * steps:(epoch + 1) * steps]) for epoch in range(epochs)]


def test_every_epoch_takes_every_row_once_in_a_new_order(split):
    orders = epoch_orders(split, seed=0)
    for order in orders:
        assert sorted(order) == list(range(len(split[0])))
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    assert not np.array_equal(orders[0], np.arange(len(split[0])))  # shuffled, not the file's order


def test_the_order_of_the_rows_is_reproducible_from_the_seed(split):
    orders = epoch_orders(split, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(orders, epoch_orders(split, seed=0)))
    assert not any(np.array_equal(a, b) for a, b in zip(orders, epoch_orders(split, seed=1)))


# ---- what an epoch reports --------------------------------------------------------------------------------

def test_an_epochs_training_loss_and_accuracy_are_means_over_its_digits_whatever_the_batch_sizes(split):
    """64 digits in batches of 24: two of 24 and a last one of 16, which must weigh two thirds of the others."""
    training, batches = training_run(build_model("mlp", seed=1), split, batch_size=24)
    step, per_step = training.step, []

    def step_and_record(batch_indices):
        loss, correct = step(batch_indices)
        per_step.append((len(batch_indices), float(loss), float(correct)))
        return loss, correct

    training.step = step_and_record
    (record,) = training.run()
    sizes, losses, correct = np.array(per_step).T
    assert list(sizes) == [24, 24, 16]
    assert record["train_loss"] == pytest.approx(np.sum(sizes * losses) / 64, rel=1e-6)
    assert record["train_accuracy"] == pytest.approx(np.sum(correct) / 64, rel=1e-6)


# ---- interrupted and resumed ------------------------------------------------------------------------------

def weights_of(network):
    return [variable.numpy().copy() for variable in network.variables]


def interruptible_run(split, checkpoint_dir, scores, schedule, resume=False, stop_after_step=None):
    """DigitNet trained 2 epochs of 4 steps by a recipe that keeps every kind of state a run has (the random stream
    of augmentation and dropout, Adam's moments, the schedule's step or plateau count, a moving average of the
    weights, the best epoch's weights), saving in checkpoint_dir; its epochs' validation (loss, accuracy) are the
    next of `scores` (an iterator that goes on across an interruption). With stop_after_step, Ctrl-C comes during
    that step, as a user presses it: the run finishes the step, saves and stops. -> (the network, the steps it
    took, numbered over the whole run)."""
    network, steps = DigitNet(seed=1), []

    def after_step(step, seconds):
        steps.append(step)
        if step == stop_after_step:
            os.kill(os.getpid(), signal.SIGINT)  # the run's own handler takes it

    recipe = train.Recipe(max_n_epochs=2, patience=100, batch_size=16, learning_rate=3e-3, schedule=schedule,
                          plateau_patience=1, augmentation=AUGMENTATION, ema_decay=0.5)
    options = train.RunOptions(checkpoint_dir=str(checkpoint_dir), resume=resume, after_step=after_step,
                               verbose=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "evaluate", lambda model, images, labels: next(scores))
        train.train(network, split, recipe, 0, options)
    return network, steps


# The first epoch is the better: the run keeps its weights to the end, so its 'best' state must survive a resume;
# and the plateau schedule cuts the rate after the second (plateau_patience 1), if it remembers the first.
SCORES = [(0.3, 0.9), (0.5, 0.8)]


def run_state(checkpoint_dir, network):
    """Everything a run holds at its end: the weights it kept, and every variable of its last checkpoint (the
    weights it trained, the optimiser's, the random stream's, the average's, the best epoch's) but the
    bookkeeping of its progress (which holds timings)."""
    reader = tf.train.load_checkpoint(str(checkpoint_dir / "latest"))
    saved = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
             if not name.startswith(("progress", "save_counter", "_CHECKPOINTABLE_OBJECT_GRAPH"))}
    return {**saved, **{f"kept/{index}": value for index, value in enumerate(weights_of(network))}}


@pytest.fixture(scope="module")
def uninterrupted(real_digits, tmp_path_factory):
    """schedule -> run_state of a run of it never interrupted (each run once)."""
    images, labels = real_digits
    split, states = (images[:64], labels[:64], images[64:96], labels[64:96]), {}

    def state(schedule):
        if schedule not in states:
            directory = tmp_path_factory.mktemp(schedule)
            states[schedule] = run_state(directory, interruptible_run(split, directory, iter(SCORES), schedule)[0])
        return states[schedule]
    return state


# mid-epoch, at the end of epoch 1, early in epoch 2; and the plateau schedule's count across epochs
@pytest.mark.parametrize("stop_after_step, schedule", [(2, "one_cycle"), (4, "one_cycle"), (5, "one_cycle"),
                                                       (4, "plateau")])
def test_a_run_interrupted_then_resumed_ends_as_one_never_interrupted(split, tmp_path, uninterrupted,
                                                                       stop_after_step, schedule):
    scores = iter(SCORES)
    with pytest.raises(train.TrainingInterrupted, match="interrupted by Ctrl-C"):
        interruptible_run(split, tmp_path, scores, schedule, stop_after_step=stop_after_step)
    resumed, steps = interruptible_run(split, tmp_path, scores, schedule, resume=True)
    assert steps == list(range(stop_after_step + 1, 9))  # it went on where it stopped: no step skipped or repeated
    state, uninterrupted = run_state(tmp_path, resumed), uninterrupted(schedule)
    assert state.keys() == uninterrupted.keys() and len(state) > 40
    for name, expected in uninterrupted.items():
        np.testing.assert_array_equal(state[name], expected, err_msg=name)


def test_resuming_a_finished_run_trains_nothing_more_and_warns_of_nothing(split, tmp_path, caplog):
    """As run.py --resume does after a full disk stopped its export: the run is done, its outputs are not."""
    import gc
    import logging
    scores = iter(SCORES)
    interruptible_run(split, tmp_path, scores, "one_cycle")
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        resumed, steps = interruptible_run(split, tmp_path, scores, "one_cycle", resume=True)
        del resumed
        gc.collect()  # TensorFlow warns of a checkpoint's unrestored values when its restore is collected
    assert steps == [] and caplog.records == []
