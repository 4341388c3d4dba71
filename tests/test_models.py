"""The registered networks (recipes.MODELS) and the training extras their recipes use: sizes and costs counted
from the architectures by hand, a step of training on real digits, and the plateau schedule, class weights,
weight penalty and outlier exposure's loss against Keras' own."""
import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

import letters
import train
from conftest import train_with
from model import DigitNet, count_parameters
from recipes import MODELS, build_model, describe_models, training_recipe
from tools import one_cycle_learning_rate
from train import (OPTIMIZERS, Plateau, balanced_class_weights, cross_entropy, kernel_penalty, named_variables,
                   uniform_cross_entropy)

# Trainable parameters, layer by layer: kernel (+ bias), or kernel + batch norm's scale and offset.
PARAMETERS = {
    "digitnet": 5 * 5 * 32 + 2 * 32 + 3 * 3 * 32 * 64 + 2 * 64 + 3 * 3 * 64 * 128 + 2 * 128
                + 1152 * 128 + 2 * 128 + 128 * 10 + 10,
    "mlp": 784 * 512 + 512 + 512 * 256 + 256 + 256 * 10 + 10,
    "mlp_dropout": 784 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10,
    "cnn_small": 3 * 3 * 32 + 32 + 3 * 3 * 32 * 64 + 64 + 5 * 5 * 64 * 128 + 128 + 128 * 10 + 10,
    "cnn_keras_example": 3 * 3 * 32 + 32 + 3 * 3 * 32 * 64 + 64 + 12 * 12 * 64 * 128 + 128 + 128 * 10 + 10,
    "cnn_bn_deep": 3 * 3 * 32 + 2 * 32 + 3 * 3 * 32 * 32 + 2 * 32 + 3 * 3 * 32 * 64 + 2 * 64 + 3 * 3 * 64 * 64 + 2 * 64
                   + 7 * 7 * 64 * 512 + 2 * 512 + 512 * 10 + 10,
    "cnn_tuned": 2 + 7 * 7 * 256 + 256 + 2 * 256 + 7 * 7 * 256 * 256 + 256 + 2 * 256 + 5 * 5 * 256 * 32 + 32 + 2 * 32
                 + 3 * 3 * 32 * 64 + 64 + 64 * 10 + 10,
}
# Forward FLOPs per image: 2 x multiply-adds, output height x width x channels x kernel area x input channels.
FLOPS = {
    "digitnet": 2 * (28 * 28 * 32 * 25 + 14 * 14 * 64 * 9 * 32 + 7 * 7 * 128 * 9 * 64 + 1152 * 128 + 128 * 10),
    "mlp": 2 * (784 * 512 + 512 * 256 + 256 * 10),
    "mlp_dropout": 2 * (784 * 512 + 512 * 512 + 512 * 10),
    "cnn_small": 2 * (26 * 26 * 32 * 9 + 11 * 11 * 64 * 9 * 32 + 1600 * 128 + 128 * 10),
    "cnn_keras_example": 2 * (26 * 26 * 32 * 9 + 24 * 24 * 64 * 9 * 32 + 9216 * 128 + 128 * 10),
    "cnn_bn_deep": 2 * (28 * 28 * 32 * 9 + 28 * 28 * 32 * 9 * 32 + 14 * 14 * 64 * 9 * 32 + 14 * 14 * 64 * 9 * 64
                        + 3136 * 512 + 512 * 10),
    "cnn_tuned": 2 * (28 * 28 * 256 * 49 + 14 * 14 * 256 * 49 * 256 + 7 * 7 * 32 * 25 * 256 + 288 * 64 + 64 * 10),
}
NEW_MODELS = [name for name in MODELS if name != "digitnet"]  # DigitNet is 28x28 only


@pytest.fixture(scope="module")
def digits(real_digits):
    images, labels = real_digits
    return images[:256], labels[:256]


# ---------------------------------------------------------------------------------------------------------
# the registry


def test_the_registry_holds_the_write_ups_models_and_digitnet_first():
    assert list(MODELS) == ["digitnet", "mlp", "mlp_dropout", "cnn_small", "cnn_keras_example", "cnn_bn_deep",
                            "cnn_tuned"]
    assert isinstance(build_model("digitnet"), DigitNet)


@pytest.mark.parametrize("name", MODELS)
def test_every_recipe_names_an_optimiser_and_schedule_train_knows(name):
    recipe = training_recipe(name)
    assert isinstance(recipe, train.Recipe)
    assert recipe.optimizer in train.OPTIMIZERS and recipe.schedule in train.SCHEDULES


def test_training_recipe_lays_overrides_over_the_recipe_and_its_augmentation():
    recipe = training_recipe("cnn_bn_deep", batch_size=64, max_rotation_degrees=0.0)
    assert recipe.batch_size == 64 and recipe.optimizer == "adam"
    assert recipe.augmentation == dict(max_rotation_degrees=0.0, max_shift_fraction=0.08, max_zoom_fraction=0.08,
                                       max_shear=0.3)
    assert MODELS["cnn_bn_deep"].recipe.augmentation["max_rotation_degrees"] == 8.0  # the registry is untouched


def test_training_recipe_with_every_augmentation_range_zero_has_no_augmentation():
    assert training_recipe("digitnet", max_rotation_degrees=0, max_shift_fraction=0, max_zoom_fraction=0,
                           elastic_alpha=0).augmentation is None


def test_build_model_keeps_the_networks_own_dropout_unless_given_one():
    assert build_model("cnn_small").dropout_rate == 0.5
    assert build_model("cnn_small", dropout_rate=0.1).dropout_rate == 0.1


def test_an_unknown_model_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown model 'lenet'; choose from digitnet, mlp, "):
        build_model("lenet")


# ---------------------------------------------------------------------------------------------------------
# every network


@pytest.mark.parametrize("name", MODELS)
def test_maps_real_digits_to_ten_logits_each_in_both_modes(name, digits):
    images = digits[0][:8]
    model = build_model(name)
    inference = model(images).numpy()
    np.testing.assert_array_equal(model(images).numpy(), inference)  # inference: a function of the pixels alone
    training = model(images, training=True, rng=tf.random.Generator.from_seed(0)).numpy()
    for logits in (inference, training):
        assert logits.shape == (8, 10) and np.all(np.isfinite(logits))
        # each digit's own logits, read from its pixels: no two digits alike, no class the same for every digit
        assert len(np.unique(logits.round(4), axis=0)) == 8 and np.all(logits.std(axis=0) > 1e-3)
    # training mode differs where the network has dropout or batch norm (its non-trainable moving statistics)
    if model.dropout_rate or len(model.variables) > len(model.trainable_variables):
        assert not np.allclose(training, inference, atol=1e-3)
    else:
        np.testing.assert_allclose(training, inference, rtol=1e-5, atol=1e-5)


def moving_statistics(model):
    return [variable.numpy().copy() for variable in model.variables if not variable.trainable]


def after_a_few_training_steps(name, digits):
    """The network after three forward passes in training mode, so that batch norm's moving statistics are no
    longer their starting zeros and ones."""
    model = build_model(name, seed=0)
    for start in (0, 32, 64):
        model(digits[0][start:start + 32], training=True, rng=tf.random.Generator.from_seed(start))
    return model


@pytest.mark.parametrize("name", MODELS)
def test_training_mode_moves_every_batch_norm_layers_moving_statistics(name, digits):
    """A batch norm layer left in inference mode in training never learns its statistics: at inference it would
    normalise by the zeros and ones it started with."""
    model = build_model(name, seed=0)
    before = moving_statistics(model)
    model(digits[0][:32], training=True, rng=tf.random.Generator.from_seed(0))
    for index, (old, new) in enumerate(zip(before, moving_statistics(model))):
        assert not np.allclose(old, new), f"moving statistic {index} did not move"


@pytest.mark.parametrize("name", MODELS)
def test_in_inference_a_digit_gets_the_same_logits_alone_as_in_a_batch(name, digits):
    """Inference normalises by the moving statistics, never by the batch's own: a network whose batch norm is left
    in training mode reads a digit differently in other company."""
    model, images = after_a_few_training_steps(name, digits), digits[0][100:108]
    in_a_batch = model(images).numpy()
    for index in (0, 5):
        np.testing.assert_allclose(model(images[index:index + 1]).numpy()[0], in_a_batch[index], rtol=1e-4,
                                   atol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_inference_leaves_batch_norms_moving_statistics_as_they_were(name, digits):
    model = after_a_few_training_steps(name, digits)
    before = moving_statistics(model)
    model(digits[0][100:116])
    train.predict_probabilities(model, digits[0][100:116])  # as evaluation and prediction call it, traced
    for expected, actual in zip(before, moving_statistics(model)):
        np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("name", NEW_MODELS)
def test_takes_a_larger_square_input_when_built_for_it(name, digits):
    canvases = np.pad(digits[0][:4], [(0, 0), (10, 10), (10, 10), (0, 0)])  # 48x48
    assert build_model(name, input_size=48)(canvases).shape == (4, 10)


@pytest.mark.parametrize("name", MODELS)
def test_parameter_count_is_the_architectures(name):
    assert count_parameters(build_model(name)) == PARAMETERS[name]


def test_networks_of_neighbouring_seeds_start_from_unrelated_weights():
    """Ensemble members are seeded seed, seed + 1, ...: they must not draw the same numbers (Generator.from_seed
    did, four numbers apart)."""
    first, second = (np.concatenate([v.numpy().ravel() for v in DigitNet(seed=seed).trainable_variables])
                     for seed in (42, 43))
    assert np.isin(first, second).mean() < 0.01  # zeros (biases, offsets) and ones (scales) are shared: < 0.1%


def test_describe_models_gives_each_model_its_parameters_and_forward_flops():
    assert describe_models() == [(name, PARAMETERS[name], FLOPS[name]) for name in MODELS]


# ---------------------------------------------------------------------------------------------------------
# TensorBoard's graph: named like the diagram


def scopes_in_order(op_names, within=""):
    """The distinct name scopes directly under `within` (or op names, for ops right there), in the order their
    first op was made: the order the graph runs them in."""
    seen = []
    for name in op_names:
        if name.startswith(within):
            head = name[len(within):].split("/")[0]
            if head not in seen:
                seen.append(head)
    return seen


def test_the_traced_network_reads_like_its_diagram():
    """DigitNet's diagram, row by row (conv -> maxpool, BN, ReLU; dense, BN, ReLU -> dropout -> dense 10), is how
    TensorBoard's graph groups its ops."""
    network, rng = DigitNet(), tf.random.Generator.from_seed(0)
    graph = train.graph_function(lambda images: network(images, training=True, rng=rng)).get_concrete_function(
        tf.TensorSpec([2, 28, 28, 1])).graph
    names = [op.name for op in graph.get_operations()]
    # nothing loose between the input and the output
    assert scopes_in_order(names) == ["images", "block1", "block2", "block3", "dense", "dropout", "logits",
                                      "Identity", "NoOp"]
    for block in ("block1", "block2", "block3"):
        assert scopes_in_order(names, f"{block}/") == ["conv", "maxpool", "batch_norm", "Relu"], block
    assert scopes_in_order(names, "dense/") == ["flatten", "matmul", "batch_norm", "Relu"]


def test_tensorboard_graph_of_the_training_step_names_each_stage(digits, tmp_path):
    """The step's graph that train writes for TensorBoard groups the batch, the augmentation, the network (by its
    blocks), the loss, the gradients and the optimiser's update, in that order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    images, labels = digits
    split = images[:64], labels[:64], images[64:96], labels[64:96]
    recipe = training_recipe("digitnet", max_n_epochs=1, batch_size=32)
    train.Training(DigitNet(), split, recipe, 0, train.RunOptions(log_dir=str(tmp_path), verbose=False))
    names = [node.name for node in EventAccumulator(str(tmp_path / "train")).Reload().Graph().node]
    stages = [scope for scope in scopes_in_order(names) if scope in {
        "batch", "augmentation", "network", "loss", "gradient_tape", "optimizer"}]
    assert stages == ["batch", "augmentation", "network", "loss", "gradient_tape", "optimizer"]
    assert scopes_in_order(names, "network/")[:6] == ["block1", "block2", "block3", "dense", "dropout", "logits"]
    assert scopes_in_order(names, "network/block1/") == ["conv", "maxpool", "batch_norm", "Relu"]


def test_checkpoints_name_each_variable_by_its_attribute_whatever_the_name_scopes(tmp_path):
    network = DigitNet()
    path = tf.train.Checkpoint(model=network).write(str(tmp_path / "checkpoint"))
    keys = {name for name, _ in tf.train.list_variables(path) if name.startswith("model/")}
    assert keys == {f"model/{name}/.ATTRIBUTES/VARIABLE_VALUE" for name, _ in named_variables(network)}


@pytest.mark.parametrize("name", MODELS)
def test_one_step_of_the_recipes_optimiser_lowers_the_loss_on_real_digits(name, digits):
    images, labels = digits[0][:128], digits[1][:128]
    model = build_model(name, seed=0)
    recipe = training_recipe(name)
    optimizer = OPTIMIZERS[recipe.optimizer](model.trainable_variables, learning_rate=recipe.learning_rate)

    def loss():  # in training mode, with the same dropout masks each time
        return cross_entropy(model(images, training=True, rng=tf.random.Generator.from_seed(1)), labels)

    with tf.GradientTape() as tape:
        before = loss()
    optimizer.apply_gradients(tape.gradient(before, model.trainable_variables))
    assert float(loss()) < float(before)


# ---------------------------------------------------------------------------------------------------------
# the plateau schedule


def test_plateau_cuts_the_learning_rate_after_patience_flat_epochs():
    plateau, learning_rate, rates = Plateau(patience=4, factor=0.1), 1.0, []
    for loss in [1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]:
        learning_rate = plateau(loss, learning_rate)
        rates.append(learning_rate)
    assert rates == pytest.approx([1, 1, 1, 1, 1, 0.1, 0.1])  # the 4th flat epoch (the 6th) cuts it


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside Keras' callback, not ours
def test_plateau_matches_keras_reduce_lr_on_plateau():
    losses = [1.0, 0.8, 0.80005, 0.81, 0.79, 0.79, 0.85, 0.9, 0.7, 0.7, 0.7, 0.7, 0.7, 0.69995, 0.6]
    reference = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    reference.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss="mse")
    callback = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.1, patience=2, min_delta=1e-4)
    callback.set_model(reference)
    callback.on_train_begin()
    plateau, learning_rate = Plateau(patience=2, factor=0.1), 1.0
    for epoch, loss in enumerate(losses):
        callback.on_epoch_end(epoch, {"val_loss": loss})
        learning_rate = plateau(loss, learning_rate)
        assert learning_rate == pytest.approx(float(reference.optimizer.learning_rate), rel=1e-6), epoch
    assert learning_rate == pytest.approx(1e-4)  # four cuts: the sequence did exercise it


def test_train_with_the_plateau_schedule_cuts_the_learning_rate_when_validation_loss_stalls(digits):
    images, labels = digits
    history = train_with(build_model("mlp"), (images[:64], labels[:64], images[64:96], labels[64:96]),
                         max_n_epochs=3, patience=10, batch_size=64, learning_rate=1e-8, optimizer="adam",
                         schedule="plateau", plateau_patience=1, plateau_factor=0.1)
    # steps of 1e-8 leave the validation loss flat: epoch 2 is the first flat one, so epoch 3 runs at a tenth
    assert [record["learning_rate"] for record in history] == pytest.approx([1e-8, 1e-8, 1e-9])


def test_train_with_the_plateau_schedule_watches_the_validation_loss_not_the_training_loss(digits, monkeypatch):
    images, labels = digits
    scores = iter([(1.0, 0.5), (0.9, 0.6), (0.8, 0.7)])  # the validation loss falls every epoch
    monkeypatch.setattr(train, "evaluate", lambda model, images, labels: next(scores))
    history = train_with(build_model("mlp"), (images[:64], labels[:64], images[64:96], labels[64:96]),
                         max_n_epochs=3, patience=10, batch_size=64, learning_rate=1e-8, optimizer="adam",
                         schedule="plateau", plateau_patience=1, plateau_factor=0.1)
    # steps of 1e-8 leave the training loss flat, and it is not what the schedule watches: no cut
    assert [record["learning_rate"] for record in history] == pytest.approx([1e-8, 1e-8, 1e-8])


# ---------------------------------------------------------------------------------------------------------
# class weights and the weight penalty


def test_balanced_class_weights_give_every_class_the_same_total_weight(digits):
    labels = digits[1]
    totals = balanced_class_weights(labels) * np.bincount(labels, minlength=10)
    np.testing.assert_allclose(totals, len(labels) / 10, rtol=1e-6)


def test_class_weights_scale_each_digits_loss_like_keras_class_weight(digits):
    images, labels = digits
    logits = build_model("mlp")(images)
    weights = balanced_class_weights(labels)
    ours = cross_entropy(logits, labels, class_weights=tf.constant(weights))
    keras_loss = keras.losses.CategoricalCrossentropy(from_logits=True)(
        tf.one_hot(labels, 10), logits, sample_weight=weights[labels])
    assert float(ours) == pytest.approx(float(keras_loss), rel=1e-5)
    assert abs(float(ours) - float(cross_entropy(logits, labels))) > 1e-3  # the weights made a difference


def test_kernel_penalty_is_keras_l1l2_summed_over_kernels_leaving_biases_and_batch_norm_free():
    model = build_model("cnn_bn_deep")
    kernels = [variable for name, variable in named_variables(model) if "/" not in name or name.endswith("/kernel")]
    assert len(kernels) == 6  # conv1..conv4, fc1, fc2/kernel
    expected = sum(float(keras.regularizers.L1L2(l1=1e-5, l2=1e-4)(kernel)) for kernel in kernels)
    assert float(kernel_penalty(model.trainable_variables, 1e-5, 1e-4)) == pytest.approx(expected, rel=1e-5)


def one_step_training_loss(digits, **extras):
    """train_loss of a one-epoch, one-batch run: the loss of the untouched mlp, as train computes it."""
    images, labels = digits
    history = train_with(build_model("mlp", seed=3), (images[:128], labels[:128], images[128:160], labels[128:160]),
                         max_n_epochs=1, patience=1, batch_size=128, learning_rate=1e-3, schedule="constant", **extras)
    return history[0]["train_loss"]


def test_train_adds_the_weight_penalty_to_its_loss(digits):
    penalty = float(kernel_penalty(build_model("mlp", seed=3).trainable_variables, 1e-3, 1e-2))
    assert penalty > 0.1
    plain, penalised = one_step_training_loss(digits), one_step_training_loss(digits, weight_penalty=(1e-3, 1e-2))
    assert penalised - plain == pytest.approx(penalty, rel=1e-4)


def test_uniform_cross_entropy_matches_keras_categorical_crossentropy_against_equal_targets(digits):
    images, _ = digits
    logits = build_model("mlp", seed=3)(images)
    expected = keras.losses.CategoricalCrossentropy(from_logits=True, reduction=None)(np.full([256, 10], 0.1), logits)
    np.testing.assert_allclose(uniform_cross_entropy(logits).numpy(), expected.numpy(), rtol=1e-5)


def test_train_with_outlier_exposure_adds_the_weighted_uniform_loss_of_the_batch_s_letters(digits, monkeypatch):
    letter = letters.letter_pictures()[0][:1]  # the only letter there is: every one of the batch's 16 is this A
    monkeypatch.setattr(letters, "letter_pictures", lambda: (letter, np.array(["A"])))
    expected = 0.5 * float(uniform_cross_entropy(build_model("mlp", seed=3)(letter))[0])
    exposed = one_step_training_loss(digits, outlier_exposure=0.5)
    assert exposed - one_step_training_loss(digits) == pytest.approx(expected, rel=1e-4)


def test_train_with_balanced_class_weights_weighs_each_digits_loss(digits):
    images, labels = digits[0][:128], digits[1][:128]
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, build_model("mlp", seed=3)(images)).numpy()
    expected = np.mean(balanced_class_weights(labels)[labels] * losses)
    assert one_step_training_loss(digits, class_weights="balanced") == pytest.approx(expected, rel=1e-5)
    assert abs(expected - np.mean(losses)) > 1e-3


def test_a_schedule_of_a_fraction_of_an_epoch_ends_partway_through_its_last_epoch(digits):
    images, labels = digits  # 256 digits in batches of 64: 4 steps an epoch
    steps = []
    recipe = train.Recipe(max_n_epochs=1.5, patience=2, batch_size=64, learning_rate=3e-3, schedule="one_cycle")
    training = train.Training(build_model("mlp", seed=3), (images, labels, images[:0], labels[:0]), recipe, 0,
                              train.RunOptions(verbose=False, after_step=lambda step, seconds: steps.append(step)))
    history = training.run()
    assert steps == [1, 2, 3, 4, 5, 6] and [record["epoch"] for record in history] == [1, 2]
    # the one-cycle schedule spans the 6 steps: the last step's rate is its step 5 of 6
    assert float(training.optimizer.learning_rate) == pytest.approx(float(one_cycle_learning_rate(5, 6, 3e-3)))


def test_train_with_ema_keeps_the_moving_average_of_the_weights_not_the_weights(digits):
    images, labels = digits
    split = (images[:256], labels[:256], images[256:320], labels[256:320])
    recipe = train.Recipe(max_n_epochs=1, patience=1, batch_size=64, learning_rate=3e-3, ema_decay=0.5)
    training = train.Training(build_model("mlp", seed=3), split, recipe, 0, train.RunOptions(verbose=False))
    training.run()
    assert int(training.ema.updates) == 4  # one update a step
    for kept, average in zip(training.model.trainable_variables, training.ema.averages):
        np.testing.assert_array_equal(kept.numpy(), average.numpy())
    plain = build_model("mlp", seed=3)
    train.train(plain, split, dataclasses.replace(recipe, ema_decay=0.0), 0, train.RunOptions(verbose=False))
    assert not np.allclose(plain.trainable_variables[0].numpy(), training.model.trainable_variables[0].numpy())
