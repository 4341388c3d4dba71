"""The SavedModel's look inside its network (ensemble.explain_functions), as predict.load_explainer reads it: each
block's output is what the network's own layers compute from the block before, in inference mode; the
probabilities are the network's; the saliency is the gradient of the answer's logit and lies on the ink; the
kernels are the network's; a model exported before there was a look inside says so in one line."""
import numpy as np
import pytest
import tensorflow as tf

import predict
from conftest import train_with
from ensemble import export_saved_model
from model import conv_bn_relu, conv_pool_bn_relu, conv_relu, dense, flatten, max_pool
from recipes import MODELS, build_model, tuned_network
from tools import batch_normalize

N_TRAIN = 400  # the tiny training's digits: real_digits' first rows; the next 100 it never saw


def digitnet_rows(m):
    """DigitNet's diagram, row by row: each block from the one before, then the last row (logits)."""
    return [lambda x: conv_pool_bn_relu(x, m.conv1, m.bn1, False),
            lambda x: conv_pool_bn_relu(x, m.conv2, m.bn2, False),
            lambda x: conv_pool_bn_relu(x, m.conv3, m.bn3, False),
            lambda x: tf.nn.relu(batch_normalize(flatten(x) @ m.dense1, m.bn4, False))], \
        lambda x: x @ m.dense2 + m.bias2


def cnn_small_rows(m):
    return [lambda x: max_pool(conv_relu(x, m.conv1)),
            lambda x: max_pool(conv_relu(x, m.conv2)),
            lambda x: tf.nn.relu(dense(flatten(x), m.fc1))], \
        lambda x: dense(x, m.fc2)


def cnn_bn_deep_rows(m):
    return [lambda x: conv_bn_relu(x, m.conv1, m.bn1, False),
            lambda x: max_pool(conv_bn_relu(x, m.conv2, m.bn2, False)),
            lambda x: conv_bn_relu(x, m.conv3, m.bn3, False),
            lambda x: max_pool(conv_bn_relu(x, m.conv4, m.bn4, False)),
            lambda x: tf.nn.relu(batch_normalize(flatten(x) @ m.fc1, m.bn5, False))], \
        lambda x: dense(x, m.fc2)


def mlp_rows(m):
    return [lambda x: tf.nn.relu(dense(flatten(x), m.fc1)),
            lambda x: tf.nn.relu(dense(x, m.fc2))], \
        lambda x: dense(x, m.fc3)


# each network's diagram, and its blocks' names and shapes for one picture
NETWORKS = {
    "digitnet": (digitnet_rows, {"block1": (14, 14, 32), "block2": (7, 7, 64), "block3": (3, 3, 128), "dense": (128,)}),
    "cnn_small": (cnn_small_rows, {"block1": (13, 13, 32), "block2": (5, 5, 64), "dense": (128,)}),
    "cnn_bn_deep": (cnn_bn_deep_rows, {"block1": (28, 28, 32), "block2": (14, 14, 32), "block3": (14, 14, 64),
                                       "block4": (7, 7, 64), "dense": (512,)}),
    "mlp_dropout": (mlp_rows, {"dense1": (512,), "dense2": (512,)}),
}


@pytest.fixture(scope="module", params=NETWORKS)
def explained(request, real_digits, tmp_path_factory):
    """(name, the network trained briefly on N_TRAIN real digits, its exported explainer's layers, its look inside
    100 digits it never saw, those digits [100, 28, 28, 1])."""
    name = request.param
    images, labels = real_digits
    tf.random.set_seed(0)
    network = build_model(name, seed=0)
    split = images[:N_TRAIN], labels[:N_TRAIN], images[N_TRAIN:], labels[N_TRAIN:]
    train_with(network, split, max_n_epochs=2 if name == "digitnet" else 1, patience=2, batch_size=32,
               learning_rate=3e-3)
    path = tmp_path_factory.mktemp(name) / "saved_model"
    export_saved_model([network], str(path), *split[:2])
    look_inside, layers = predict.load_explainer(str(path))
    unseen = images[N_TRAIN:N_TRAIN + 100]
    return name, network, layers, look_inside(unseen[..., 0]), unseen


def block_outputs(said, layers):
    """look_inside's answer -> each of layers' outputs, in their order."""
    return [said[f"layer_{i}"] for i in range(len(layers))]


def test_the_input_is_the_picture_the_network_reads(explained):
    _, _, _, said, unseen = explained
    np.testing.assert_array_equal(said["input"], unseen[..., 0])


def test_every_block_is_named_and_shaped_as_the_networks_diagram_in_its_order(explained):
    name, network, layers, said, _ = explained
    expected = NETWORKS[name][1]
    assert [layer["name"] for layer in layers] == list(expected) == list(network.block_names)
    assert [values.shape[1:] for values in block_outputs(said, layers)] == list(expected.values())


def test_each_picture_is_a_row_of_every_value_looked_inside_and_nothing_else_is(explained):
    """What is the same for every picture comes once, in the layers: serve.BatchedModel hands out rows."""
    _, _, layers, said, _ = explained
    assert sorted(said) == sorted(["input", "probabilities", "saliency", *(f"layer_{i}" for i in range(len(layers)))])
    assert all(len(values) == 100 for values in said.values())


def test_each_block_is_the_networks_own_layers_applied_to_the_block_before_in_inference_mode(explained):
    name, network, layers, said, unseen = explained
    rows, _ = NETWORKS[name][0](network)
    before = unseen
    for row, layer, values in zip(rows, layers, block_outputs(said, layers)):
        np.testing.assert_allclose(values, row(before), atol=1e-4, rtol=1e-4, err_msg=layer["name"])
        before = values


def test_the_last_block_through_the_last_row_gives_the_networks_own_probabilities(explained):
    name, network, layers, said, unseen = explained
    _, last_row = NETWORKS[name][0](network)
    np.testing.assert_allclose(said["probabilities"], tf.nn.softmax(last_row(block_outputs(said, layers)[-1])),
                               atol=1e-5)
    np.testing.assert_allclose(said["probabilities"], tf.nn.softmax(network(unseen, training=False)), atol=1e-5)


def test_the_saliency_is_the_gradient_of_the_likeliest_digits_logit_with_respect_to_each_pixel(explained):
    _, network, _, said, unseen = explained
    images = tf.constant(unseen)
    with tf.GradientTape() as tape:
        tape.watch(images)
        logits = network(images, training=False)
        answer = tf.reduce_sum(logits * tf.one_hot(tf.argmax(logits, axis=1), 10))
    gradient = tape.gradient(answer, images)[..., 0].numpy()
    assert said["saliency"].shape == (100, 28, 28)
    np.testing.assert_allclose(said["saliency"], gradient, atol=1e-5 * np.abs(gradient).max())


def test_a_small_step_along_the_saliency_makes_the_network_surer_of_its_answer_and_against_it_less(explained):
    """Its sign, checked without a gradient: positive where more ink would raise the answer's logit."""
    _, network, _, said, unseen = explained
    answer = said["probabilities"].argmax(axis=1)

    def answers_logit(images):
        return network(np.float32(images), training=False).numpy()[np.arange(len(images)), answer]

    step = 1e-3 * said["saliency"][..., None] / np.abs(said["saliency"]).max(axis=(1, 2))[:, None, None, None]
    assert np.all(answers_logit(unseen + step) > answers_logit(unseen) - 1e-6)
    assert np.mean(answers_logit(unseen + step) > answers_logit(unseen)) > 0.9
    assert np.mean(answers_logit(unseen - step) < answers_logit(unseen)) > 0.9


def test_the_saliency_lies_on_the_ink_more_than_on_the_paper(explained):
    """Per pixel, the ink's (above half-bright) saliency outweighs the blank paper's in nine digits of ten, and
    by a fifth at least for the median digit: the network looks at the strokes (and at the paper beside them,
    where more ink would change the answer)."""
    _, _, _, said, unseen = explained
    magnitude, pictures = np.abs(said["saliency"]), unseen[..., 0]
    ratios = np.array([magnitude[i][pictures[i] > 0.5].mean() / magnitude[i][pictures[i] == 0].mean()
                       for i in range(len(pictures))])
    assert np.mean(ratios > 1) >= 0.9 and np.median(ratios) >= 1.2, np.percentile(ratios, [10, 50, 90])


def test_each_layer_a_convolution_makes_carries_the_networks_own_kernel_and_bias(explained):
    """The kernels the rows above apply, in order; zeros for a bias where batch norm's offset is one. A dense
    layer has none."""
    _, network, layers, _, _ = explained
    for layer, (block, (kernel, bias)) in zip(layers, network.conv_layers().items()):
        assert layer["name"] == block
        np.testing.assert_array_equal(layer["kernel"], kernel.numpy())
        np.testing.assert_array_equal(layer["bias"], np.zeros(kernel.shape[-1]) if bias is None else bias.numpy())
    n_conv = len(network.conv_layers())
    assert all("kernel" in layer for layer in layers[:n_conv])
    assert not any("kernel" in layer for layer in layers[n_conv:])


@pytest.mark.parametrize("name", [*MODELS, "tuned"])
def test_every_network_of_the_zoo_shows_each_of_its_blocks_and_its_probabilities(name, real_digits, tmp_path):
    """However many blocks it has: untrained, as built (the tuned network with three conv blocks and two dense
    layers), the export holds what the network's blocks compute in inference mode, and its own probabilities."""
    images, labels = real_digits
    network = tuned_network(dict(filters=[8, 16, 8], kernel_sizes=[5, 3, 3], units=[32, 16], dropout_rate=0.3),
                            seed=0) if name == "tuned" else build_model(name, seed=0)
    export_saved_model([network], str(tmp_path / "saved_model"), images[:100], labels[:100])
    look_inside, layers = predict.load_explainer(str(tmp_path / "saved_model"))
    said = look_inside(images[:4, :, :, 0])
    assert [layer["name"] for layer in layers] == list(network.block_names)
    for layer, values, block in zip(layers, block_outputs(said, layers), network.blocks(images[:4], training=False),
                                    strict=True):
        np.testing.assert_allclose(values, block, atol=1e-4, rtol=1e-4, err_msg=layer["name"])
    np.testing.assert_allclose(said["probabilities"], tf.nn.softmax(network(images[:4])), atol=1e-5)
    assert said["saliency"].shape == (4, 28, 28) and np.abs(said["saliency"]).max() > 0


def test_an_ensemble_is_explained_by_its_first_member(real_digits, tmp_path):
    images, labels = real_digits
    first, second = build_model("cnn_small", seed=1), build_model("cnn_small", seed=2)
    export_saved_model([first, second], str(tmp_path / "saved_model"), images[:N_TRAIN], labels[:N_TRAIN])
    look_inside, _ = predict.load_explainer(str(tmp_path / "saved_model"))
    said = look_inside(images[:8, :, :, 0])
    np.testing.assert_allclose(said["probabilities"], tf.nn.softmax(first(images[:8])), atol=1e-5)
    np.testing.assert_allclose(said["layer_0"], first.blocks(images[:8])[0], atol=1e-5)


def test_a_model_exported_without_a_look_inside_says_so_in_one_line(tmp_path):
    """A SavedModel as run.py exported it before: serving_default alone."""
    module = tf.Module()
    module.serve = tf.function(lambda images: {"probabilities": tf.fill([tf.shape(images)[0], 10], 0.1)},
                               input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32, name="images")])
    tf.saved_model.save(module, str(tmp_path / "old"), signatures=module.serve)
    with pytest.raises(predict.NoExplainer) as raised:
        predict.load_explainer(str(tmp_path / "old"))
    message = str(raised.value)
    assert "\n" not in message and str(tmp_path / "old") in message and "python run.py" in message
