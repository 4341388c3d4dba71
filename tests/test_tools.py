"""tools.py against the libraries' own: batch norm against tf.nn and Keras, the resampler against scipy,
the optimisers against Keras step by step. Real digits wherever an image is needed."""
import gzip
import math
from pathlib import Path

import keras
import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf

from tools import (Adadelta, Adam, LossScaleOptimizer, Nadam, affine_transform, batch_norm_variables,
                   batch_normalize, data_augmentation, dropout, one_cycle_learning_rate, random_augmentation_matrices)

TRAIN_CSV = Path(__file__).resolve().parents[1] / "digit-recognizer" / "train.csv.gz"


@pytest.fixture(scope="module")
def digits():
    """The first 100 digits of the shipped train.csv as float32 [100, 28, 28, 1] in [0, 1]."""
    with gzip.open(TRAIN_CSV, "rt") as file:
        rows = np.loadtxt(file, delimiter=",", skiprows=1, max_rows=100, dtype=np.float32)
    return (rows[:, 1:] / 255).reshape(-1, 28, 28, 1)


# ---------------------------------------------------------------------------------------------------------
# batch norm: a conv map (digits through a fixed random 3x3 conv, 8 channels) and a dense input (784 pixels)


@pytest.fixture(scope="module", params=["conv", "dense"])
def activations(request, digits):
    if request.param == "conv":
        kernel = np.random.default_rng(0).normal(size=[3, 3, 1, 8]).astype(np.float32)
        return tf.nn.conv2d(digits, kernel, strides=1, padding="SAME").numpy()
    return digits.reshape(len(digits), -1)


def bn_pair(input_shape):
    """Our batch-norm variables and a Keras BatchNormalization with the same (non-trivial) scale and offset."""
    n_channels = input_shape[-1]
    rng = np.random.default_rng(1)
    scale = rng.uniform(0.5, 2.0, n_channels).astype(np.float32)
    offset = rng.normal(size=n_channels).astype(np.float32)
    ours = batch_norm_variables(n_channels)
    ours["scale"].assign(scale)
    ours["offset"].assign(offset)
    layer = keras.layers.BatchNormalization(momentum=0.99, epsilon=1e-3)
    layer.build(input_shape)
    layer.gamma.assign(scale)
    layer.beta.assign(offset)
    return ours, layer


def train_both(ours, layer, activations, n_batches=4):
    """Several training calls, one per quarter of the batch, on both."""
    for batch in np.array_split(activations, n_batches):
        batch_normalize(batch, ours, training=True)
        layer(batch, training=True)


def test_batch_norm_variables_start_as_identity_with_only_scale_and_offset_trainable():
    bn = batch_norm_variables(3)
    assert {name: v.numpy().tolist() for name, v in bn.items()} == {
        "scale": [1, 1, 1], "offset": [0, 0, 0], "moving_mean": [0, 0, 0], "moving_variance": [1, 1, 1]}
    assert {name for name, v in bn.items() if v.trainable} == {"scale", "offset"}
    assert all(v.dtype == tf.float32 for v in bn.values())


def test_batch_normalize_training_matches_tf_nn_batch_normalization_of_the_batch_moments(activations):
    bn, _ = bn_pair(activations.shape)
    mean, variance = tf.nn.moments(activations, axes=list(range(activations.ndim - 1)))
    expected = tf.nn.batch_normalization(activations, mean, variance, bn["offset"], bn["scale"], 1e-3)
    np.testing.assert_allclose(batch_normalize(activations, bn, training=True), expected, atol=1e-5, rtol=0)


def test_batch_normalize_training_matches_keras(activations):
    bn, layer = bn_pair(activations.shape)
    np.testing.assert_allclose(batch_normalize(activations, bn, training=True), layer(activations, training=True),
                               atol=1e-5, rtol=0)


def test_batch_normalize_moving_statistics_match_keras_after_several_training_calls(activations):
    bn, layer = bn_pair(activations.shape)
    train_both(bn, layer, activations)
    assert not np.allclose(bn["moving_mean"], 0)  # they did move
    np.testing.assert_allclose(bn["moving_mean"], layer.moving_mean, atol=1e-5, rtol=0)
    np.testing.assert_allclose(bn["moving_variance"], layer.moving_variance, atol=1e-5, rtol=0)


def test_batch_normalize_inference_matches_tf_nn_batch_normalization_of_the_moving_statistics(activations):
    bn, layer = bn_pair(activations.shape)
    train_both(bn, layer, activations)
    expected = tf.nn.batch_normalization(activations, bn["moving_mean"], bn["moving_variance"], bn["offset"],
                                         bn["scale"], 1e-3)
    np.testing.assert_allclose(batch_normalize(activations, bn, training=False), expected, atol=1e-5, rtol=0)


def test_batch_normalize_inference_matches_keras(activations):
    bn, layer = bn_pair(activations.shape)
    train_both(bn, layer, activations)
    np.testing.assert_allclose(batch_normalize(activations, bn, training=False), layer(activations, training=False),
                               atol=1e-5, rtol=0)


def test_batch_normalize_inference_leaves_the_moving_statistics_alone(activations):
    bn, _ = bn_pair(activations.shape)
    batch_normalize(activations, bn, training=False)
    assert np.all(bn["moving_mean"].numpy() == 0) and np.all(bn["moving_variance"].numpy() == 1)


# ---------------------------------------------------------------------------------------------------------
# dropout: statistics over a million units; the tolerances are 10+ standard deviations of the estimate


RATE = 0.3
ONES = tf.ones([1000, 1000])


def test_dropout_drops_the_given_fraction_of_units():
    dropped = np.mean(dropout(ONES, RATE, tf.random.Generator.from_seed(0), training=True).numpy() == 0)
    assert abs(dropped - RATE) < 5e-3  # std of the estimate: sqrt(0.3 * 0.7 / 1e6) = 4.6e-4


def test_dropout_preserves_the_mean():
    mean = np.mean(dropout(ONES, RATE, tf.random.Generator.from_seed(0), training=True).numpy())
    assert abs(mean - 1.0) < 7e-3  # std of the estimate: sqrt(0.3 / 0.7 / 1e6) = 6.5e-4


def test_dropout_scales_the_kept_units_by_one_over_keep_probability():
    x = tf.random.Generator.from_seed(1).uniform([100, 100], 1.0, 2.0)  # no zeros, so zero means dropped
    y = dropout(x, RATE, tf.random.Generator.from_seed(0), training=True).numpy()
    kept = y != 0
    np.testing.assert_allclose(y[kept], x.numpy()[kept] / (1 - RATE), rtol=1e-6)


def test_dropout_with_rate_zero_is_the_identity(digits):
    np.testing.assert_array_equal(dropout(digits, 0.0, tf.random.Generator.from_seed(0), training=True), digits)


def test_dropout_is_the_identity_at_inference_and_needs_no_generator(digits):
    np.testing.assert_array_equal(dropout(digits, 0.5, None, training=False), digits)  # model.py passes None


# ---------------------------------------------------------------------------------------------------------
# affine_transform against scipy.ndimage.affine_transform(order=1) on real digits.
#
# Tolerance 2e-5: we interpolate in float32, scipy in float64. The source coordinates (up to ~30 px) carry a
# float32 rounding error of a few 1e-6 px, and a pixel value in [0, 1] changes by at most 1 per px, so the
# values can differ by a few 1e-6 (measured: 3e-6). A wrong convention (row/col swapped, a half-pixel shift,
# the inverse matrix) is off by ~0.1 or more.


def rotation_zoom_shift(degrees, zoom, shift, centre=(13.5, 13.5)):
    """Output->input matrix: rotate by `degrees`, enlarge by `zoom` about `centre`, then move by -shift."""
    angle = math.radians(degrees)
    linear = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]) / zoom
    matrix = np.eye(3)
    matrix[:2, :2] = linear
    matrix[:2, 2] = np.array(centre) + np.array(shift) - linear @ np.array(centre)
    return matrix


MATRIX = rotation_zoom_shift(20.0, 1.1, (2.5, -3.25))  # asymmetric, so a row/col swap would show


def scipy_affine(images, matrix, mode):
    return np.stack([scipy.ndimage.affine_transform(image[..., 0].astype(np.float64), matrix, order=1, mode=mode,
                                                    cval=0.0) for image in images])[..., None]


def test_affine_transform_matches_scipy_constant_mode_on_real_digits(digits):
    images = digits[:16]
    ours = affine_transform(images, np.repeat(MATRIX[None], len(images), 0)).numpy()
    # Where the source point lies within one pixel outside the image, scipy's 'constant' gives 0 while we
    # fade the edge pixel to 0 (see the next test); compare everywhere else.
    rows, cols = np.meshgrid(np.arange(28), np.arange(28), indexing="ij")
    source = np.einsum("ij,jrc->irc", MATRIX, np.stack([rows, cols, np.ones_like(rows)]))[:2]
    edge_band = np.any(((source > -1) & (source < 0)) | ((source > 27) & (source < 28)), axis=0)
    assert 0 < edge_band.sum() < 100
    difference = np.abs(ours - scipy_affine(images, MATRIX, "constant"))[:, ~edge_band]
    assert difference.max() < 2e-5


def test_affine_transform_matches_scipy_grid_constant_mode_everywhere_including_the_edge(digits):
    images = digits[:16]
    shift_to_edge = rotation_zoom_shift(0.0, 1.0, (0.5, 8.3))  # pushes the digits over the left edge
    for matrix in (MATRIX, shift_to_edge):
        ours = affine_transform(images, np.repeat(matrix[None], len(images), 0)).numpy()
        assert np.abs(ours - scipy_affine(images, matrix, "grid-constant")).max() < 2e-5


def test_affine_transform_uses_each_images_own_matrix(digits):
    images = digits[:2]
    matrices = np.stack([MATRIX, rotation_zoom_shift(-30.0, 0.9, (-1.0, 2.0))])
    ours = affine_transform(images, matrices).numpy()
    for image, matrix, out in zip(images, matrices, ours):
        assert np.abs(out - scipy_affine(image[None], matrix, "grid-constant")[0]).max() < 2e-5


def test_affine_transform_with_the_identity_returns_the_image(digits):
    ours = affine_transform(digits, np.repeat(np.eye(3)[None], len(digits), 0))
    np.testing.assert_allclose(ours, digits, atol=1e-7, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# random augmentation


def decompose(matrices):
    """Angle (degrees), zoom, shear and shift of output->input matrices input = A (out - c) + c + shift,
    A = R(angle) @ [[1, 0], [shear, 1]] / zoom, c = (13.5, 13.5)."""
    linear = matrices[:, :2, :2]
    zoom = 1 / np.sqrt(np.linalg.det(linear))           # det(R) = det(shear) = 1
    angle = np.arctan2(-linear[:, 0, 1], linear[:, 1, 1])  # the second column of R @ shear is R's
    rotation_t = np.stack([np.stack([np.cos(angle), np.sin(angle)], -1),
                           np.stack([-np.sin(angle), np.cos(angle)], -1)], 1)
    shear = (rotation_t @ linear * zoom[:, None, None])[:, 1, 0]
    centre = np.array([13.5, 13.5])
    shift = np.einsum("nij,j->ni", matrices[:, :2, :2], centre) + matrices[:, :2, 2] - centre
    return np.degrees(angle), zoom, shear, shift


def test_random_augmentation_matrices_sample_each_parameter_uniformly_within_its_range():
    matrices = random_augmentation_matrices(tf.random.Generator.from_seed(0), 2000, 28, 28, max_rotation_degrees=15.0,
                                            max_shift_fraction=0.1, max_zoom_fraction=0.2, max_shear=0.3).numpy()
    angle, zoom, shear, shift = decompose(matrices.astype(np.float64))
    for values, low, high in [(angle, -15, 15), (zoom, 0.8, 1.2), (shear, -0.3, 0.3), (shift, -2.8, 2.8)]:
        assert low - 1e-4 <= values.min() < low + 0.05 * (high - low)      # reaches both ends ...
        assert high - 0.05 * (high - low) < values.max() <= high + 1e-4    # ... and no further
        assert abs(np.mean(values) - (low + high) / 2) < 0.05 * (high - low)


def test_data_augmentation_gives_each_image_its_own_transform_and_keeps_shape(digits):
    twins = np.repeat(digits[:1], 2, axis=0)
    out = data_augmentation(twins, tf.random.Generator.from_seed(0))
    assert out.shape == twins.shape and out.dtype == tf.float32
    assert np.abs(out[0] - out[1]).max() > 0.1


def test_data_augmentation_with_zero_ranges_is_the_identity(digits):
    out = data_augmentation(digits, tf.random.Generator.from_seed(0), max_rotation_degrees=0.0,
                            max_shift_fraction=0.0, max_zoom_fraction=0.0, max_shear=0.0)
    np.testing.assert_allclose(out, digits, atol=1e-6, rtol=0)


def test_data_augmentation_in_a_graph_with_an_unknown_batch_size_keeps_the_static_image_shape(digits):
    rng = tf.random.Generator.from_seed(0)
    static_shapes = []

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32)])
    def augment(images):
        out = data_augmentation(images, rng)
        static_shapes.append(out.shape.as_list())  # what model code sees when it reshapes
        return out

    out = augment(digits[:5])
    assert static_shapes == [[None, 28, 28, 1]]
    assert out.shape == (5, 28, 28, 1) and np.abs(out - digits[:5]).max() > 0.1


# ---------------------------------------------------------------------------------------------------------
# optimisers: 20 steps of one fixed gradient sequence, ours and Keras' on identical variables, compared after
# every step. Ours runs inside tf.function, as in train.py.

OPTIMIZERS = {  # name: (ours, Keras', keyword arguments for both)
    "adam": (Adam, keras.optimizers.Adam, dict(learning_rate=0.01)),
    "adadelta": (Adadelta, keras.optimizers.Adadelta, dict(learning_rate=1.0)),
    "nadam": (Nadam, keras.optimizers.Nadam, dict(learning_rate=0.01)),
}
N_STEPS = 20
SHAPES = [(3, 4), (5,)]


def fixed_problem(seed=0):
    rng = np.random.default_rng(seed)
    initial = [rng.normal(size=shape).astype(np.float32) for shape in SHAPES]
    gradients = [[rng.normal(size=shape).astype(np.float32) for shape in SHAPES] for _ in range(N_STEPS)]
    return initial, gradients


def graph_step(optimizer):
    return tf.function(lambda gradients: optimizer.apply_gradients(gradients))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_matches_keras_step_by_step(name):
    ours_class, keras_class, kwargs = OPTIMIZERS[name]
    initial, gradients = fixed_problem()
    ours_vars = [tf.Variable(value) for value in initial]
    keras_vars = [keras.Variable(value) for value in initial]
    ours, reference = ours_class(ours_vars, **kwargs), keras_class(**kwargs)
    step = graph_step(ours)
    for g in gradients:
        step([tf.constant(x) for x in g])
        reference.apply_gradients(zip([tf.constant(x) for x in g], keras_vars))
        for mine, theirs in zip(ours_vars, keras_vars):
            np.testing.assert_allclose(mine.numpy(), np.asarray(theirs), atol=1e-6, rtol=1e-6)
    assert not np.allclose(ours_vars[0].numpy(), initial[0], atol=1e-2)  # the steps were not negligible
    assert int(ours.iterations.numpy()) == N_STEPS == int(reference.iterations.numpy())


def test_adam_follows_a_learning_rate_assigned_every_step_like_keras():
    initial, gradients = fixed_problem()
    ours_vars = [tf.Variable(value) for value in initial]
    keras_vars = [keras.Variable(value) for value in initial]
    ours, reference = Adam(ours_vars), keras.optimizers.Adam()
    step = graph_step(ours)
    for i, g in enumerate(gradients):
        learning_rate = float(one_cycle_learning_rate(i, N_STEPS, 0.05))
        ours.learning_rate.assign(learning_rate)
        reference.learning_rate.assign(learning_rate)
        step([tf.constant(x) for x in g])
        reference.apply_gradients(zip([tf.constant(x) for x in g], keras_vars))
        for mine, theirs in zip(ours_vars, keras_vars):
            np.testing.assert_allclose(mine.numpy(), np.asarray(theirs), atol=1e-6, rtol=1e-6)


def test_loss_scaling_matches_keras_loss_scale_optimizer_step_by_step():
    initial, gradients = fixed_problem()
    overflowing_steps = {2, 3, 11}  # a gradient that is inf or nan, as float16 gives when the scale is too big
    ours_vars = [tf.Variable(value) for value in initial]
    keras_vars = [keras.Variable(value) for value in initial]
    ours = LossScaleOptimizer(Adam(ours_vars, learning_rate=0.01), initial_scale=8.0, growth_steps=4)
    reference = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(learning_rate=0.01), initial_scale=8.0,
                                                    dynamic_growth_steps=4)
    step = graph_step(ours)
    scales = []
    for i, g in enumerate(gradients):
        scaled = [x * float(ours.scale.numpy()) for x in g]  # what the gradients of scale_loss(loss) would be
        if i in overflowing_steps:
            scaled[0][1, 2] = np.inf if i % 2 else np.nan
        step([tf.constant(x) for x in scaled])
        reference.apply_gradients(zip([tf.constant(x) for x in scaled], keras_vars))
        scales.append(float(ours.scale.numpy()))
        assert scales[-1] == float(np.asarray(reference.dynamic_scale))
        for mine, theirs in zip(ours_vars, keras_vars):
            np.testing.assert_allclose(mine.numpy(), np.asarray(theirs), atol=1e-6, rtol=1e-6)
    # halved at each overflow, doubled after every 4 finite steps in a row
    assert scales == [8, 8, 4, 2, 2, 2, 2, 4, 4, 4, 4, 2, 2, 2, 2, 4, 4, 4, 4, 8]
    assert int(ours.iterations.numpy()) == N_STEPS - len(overflowing_steps)  # the overflowing steps were skipped


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_state_survives_a_checkpoint_round_trip(name, tmp_path):
    ours_class, _, kwargs = OPTIMIZERS[name]
    initial, gradients = fixed_problem()
    half = N_STEPS // 2
    straight_vars = [tf.Variable(value) for value in initial]
    straight = ours_class(straight_vars, **kwargs)
    for g in gradients:
        straight.apply_gradients(g)

    first_vars = [tf.Variable(value) for value in initial]
    first = ours_class(first_vars, **kwargs)
    for g in gradients[:half]:
        first.apply_gradients(g)
    path = tf.train.Checkpoint(optimizer=first, variables=first_vars).write(str(tmp_path / "ckpt"))
    resumed_vars = [tf.Variable(tf.zeros_like(value)) for value in initial]
    resumed = ours_class(resumed_vars, **kwargs)
    tf.train.Checkpoint(optimizer=resumed, variables=resumed_vars).read(path).assert_consumed()
    for g in gradients[half:]:
        resumed.apply_gradients(g)
    for a, b in zip(straight_vars, resumed_vars):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-7, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# one-cycle learning rate

TOTAL, PEAK = 1000, 3e-3
SCHEDULE = np.array([float(one_cycle_learning_rate(step, TOTAL, PEAK)) for step in range(TOTAL + 1)])
WARMUP = 250  # warmup_fraction 0.25 of 1000


def test_one_cycle_starts_at_a_25th_of_the_peak():
    assert SCHEDULE[0] == pytest.approx(PEAK / 25, rel=1e-6)


def test_one_cycle_reaches_the_peak_at_the_end_of_warm_up_and_never_exceeds_it():
    assert SCHEDULE[WARMUP] == pytest.approx(PEAK, rel=1e-6)
    assert SCHEDULE.max() <= PEAK * (1 + 1e-6)


def test_one_cycle_ends_at_the_final_fraction_of_the_peak():
    assert SCHEDULE[TOTAL] == pytest.approx(PEAK * 1e-3, rel=1e-5)


def test_one_cycle_rises_during_warm_up_and_falls_after():
    assert np.all(np.diff(SCHEDULE[:WARMUP + 1]) > 0)
    assert np.all(np.diff(SCHEDULE[WARMUP:]) < 0)


def test_one_cycle_is_linear_in_warm_up_and_cosine_after():
    steps = np.arange(TOTAL + 1)
    start, final = PEAK / 25, PEAK * 1e-3
    expected = np.where(steps < WARMUP, start + (PEAK - start) * steps / WARMUP,
                        final + (PEAK - final) * (1 + np.cos(np.pi * (steps - WARMUP) / (TOTAL - WARMUP))) / 2)
    np.testing.assert_allclose(SCHEDULE, expected, rtol=1e-5, atol=1e-6 * PEAK)  # float32 near the end


def test_one_cycle_gives_the_same_on_a_float32_tensor_in_a_graph():
    schedule = tf.function(lambda step: one_cycle_learning_rate(step, TOTAL, PEAK))
    in_graph = [float(schedule(tf.constant(step, tf.float32))) for step in (0, 100, WARMUP, 700, TOTAL)]
    np.testing.assert_allclose(in_graph, SCHEDULE[[0, 100, WARMUP, 700, TOTAL]], rtol=1e-6)
