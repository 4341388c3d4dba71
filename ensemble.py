"""Trained networks as one predictor: their averaged probabilities, with test-time augmentation, and the
SavedModel that serves that average to predict.py and serve.py without this project's code, with a look inside
the first network (its `explain` and `kernels` signatures)."""
import numpy as np
import tensorflow as tf

import files
from train import graph_function, predict_probabilities

NOVELTY_RIDGE = 1e-3  # added to the features' covariance, as a share of their mean variance
TTA_SHIFTS = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]  # (rows, columns): the digit and its one-pixel shifts


def ensemble_probabilities(models, images, tta=False):
    """The mean softmax output over the models and, with tta, over the digit shifted by a pixel each way."""
    shifts = TTA_SHIFTS if tta else TTA_SHIFTS[:1]
    return np.mean([predict_probabilities(model, np.roll(images, shift, axis=(1, 2)))
                    for model in models for shift in shifts], axis=0)


def features_of(model):
    """What the model's layers make of images (model.features: a list of [N, D] per layer), or, for a network
    that does not say, [its logits]: a function (images, training) -> list of [N, D]."""
    return getattr(model, "features", None) or (lambda images, training: [model(images, training=training)])


def novelty_statistics(models, images, labels, batch_size=1000):
    """The training digits -> for each layer of each model (features_of): (the mean of each digit's features
    there, float32 [10, D]; a whitening matrix W, float32 [D, D], W W^T the inverse of their covariance
    around their own digit's mean, shared by the digits), as in Lee et al. 2018's Mahalanobis detector.

    A picture's novelty is then, at each layer, its Mahalanobis distance to the mean of the digit it is read
    as, squared and per feature, mean(((f - mean[digit]) W)^2), averaged over the layers, and its root. Over
    the training digits each layer's averages 1 (a little less, for the ridge): a pure number, whichever
    network, layer or width, so the layers weigh alike. A ridge of NOVELTY_RIDGE of the mean variance keeps
    each covariance invertible (a unit that never fires on a digit).
    The features are summed batch by batch, in float64: per digit, the count n_d and the sum of f; over all N
    digits, the sum of f f^T; then covariance = (sum f f^T - sum_d n_d mean_d mean_d^T) / N. Memory holds D x D
    numbers a layer, not every training digit's features (hundreds of megabytes for train.csv's 42,000 digits)."""
    one_hot = np.eye(10)[labels]
    counts = one_hot.sum(axis=0)[:, None]
    statistics = []
    for model in models:
        features = graph_function(features_of(model))
        sums = None  # a layer's [sum of f by digit [10, D], sum of f f^T [D, D]]
        for start in range(0, len(images), batch_size):
            layers = [np.asarray(layer, np.float64)
                      for layer in features(tf.constant(images[start:start + batch_size]), training=False)]
            digits = one_hot[start:start + batch_size]
            these = [[digits.T @ f, f.T @ f] for f in layers]
            sums = these if sums is None else [[a + c, b + d] for (a, b), (c, d) in zip(sums, these)]
        for by_digit, outer in sums:
            means = by_digit / counts
            covariance = (outer - means.T @ (counts * means)) / len(labels)
            covariance += NOVELTY_RIDGE * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
            statistics.append((means.astype(np.float32),
                               np.linalg.cholesky(np.linalg.inv(covariance)).astype(np.float32)))
    return statistics


def export_saved_model(models, path, train_images, train_labels, tta=False, gate=None):
    """A SavedModel whose `serving_default` maps images [N, 28, 28, 1] in [0, 1] to class probabilities, those
    of ensemble_probabilities(models, images, tta), and to each picture's novelty (novelty_statistics: how
    unlike the training digits, train_images and train_labels, of the digit it is read as; of the picture as
    it is, unshifted), and, given a trained model.DigitGate, to its digit_probability (that it is a digit at
    all), loadable with tf.saved_model.load alone. Swapped in whole (files.replace_directory): until the new one
    is complete, `path` is the old one."""
    module = tf.Module()
    module.models = list(models)
    module.gate = gate
    statistics = novelty_statistics(module.models, train_images, train_labels)
    module.class_means = [tf.Variable(means, trainable=False) for means, _ in statistics]
    module.whitening = [tf.Variable(whitening, trainable=False) for _, whitening in statistics]
    shifts = TTA_SHIFTS if tta else TTA_SHIFTS[:1]

    def serve(images):
        outputs = [tf.nn.softmax(m(tf.roll(images, shift, axis=[1, 2]), training=False))
                   for m in module.models for shift in shifts]
        probabilities = tf.add_n(outputs) / len(outputs)
        digit = tf.argmax(probabilities, axis=1)
        layers = [layer for m in module.models for layer in features_of(m)(images, training=False)]
        squared = [tf.reduce_mean(tf.square((layer - tf.gather(means, digit)) @ whitening), axis=1)
                   for layer, means, whitening in zip(layers, module.class_means, module.whitening)]
        outputs = {"probabilities": probabilities, "novelty": tf.sqrt(tf.add_n(squared) / len(squared))}
        if module.gate is not None:
            outputs["digit_probability"] = tf.sigmoid(module.gate(images, training=False))
        return outputs

    module.serve = graph_function(serve, input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32, name="images")])
    module.explain, module.kernels = explain_functions(module.models[0])
    signatures = {"serving_default": module.serve, "explain": module.explain, "kernels": module.kernels}
    files.replace_directory(lambda new: tf.saved_model.save(module, new, signatures=signatures), path)


def explain_functions(model):
    """The SavedModel's look inside one network (of an ensemble, the first member alone; of the picture as it is,
    with no test-time shifts): two traced functions for its signatures.

    explain(images [N, 28, 28, 1]) -> {"input": [N, 28, 28], the picture the network reads; "layer_0" ...
    "layer_<k-1>": each of model.blocks' outputs in inference mode, in the order the network applies them
    ([N, h, w, channels] for a conv block, [N, units] for a dense layer); "layer_names": string [k], their
    model.block_names; "probabilities": [N, 10], the network's softmax; "saliency": [N, 28, 28]}.
    kernels() -> {"kernel_<i>": [h, w, in, out], "bias_<i>": [out]} for each layer_<i> that a convolution makes
    (model.conv_layers; a bias of zeros where the network has none): channel c of layer_<i> is made from
    kernel_<i>[..., c] convolved with the maps before it (then its block's pooling, batch norm and ReLU).

    The saliency is the gradient of the likeliest digit's logit (its score before the softmax) with respect to
    each input pixel (Simonyan et al. 2014), signed: positive where more ink would raise the answer's score,
    negative where less ink would. Chosen over Grad-CAM on the last convolution because it works for every
    network of the zoo (the MLP has no convolution), it is as sharp as the picture (DigitNet's last conv map is
    3x3: Grad-CAM would paint nine blurred squares over the digit), and it costs one backward pass."""
    names = list(model.block_names)
    conv_layers = model.conv_layers()

    def explain(images):
        with tf.GradientTape() as tape:
            tape.watch(images)
            logits = model(images, training=False)
            best = tf.gather(logits, tf.argmax(logits, axis=1), axis=1, batch_dims=1)
        saliency = tape.gradient(best, images)
        layers = model.blocks(images, training=False)
        return {"input": images[..., 0], **{f"layer_{i}": layer for i, layer in enumerate(layers)},
                "layer_names": tf.constant(names), "probabilities": tf.nn.softmax(logits),
                "saliency": saliency[..., 0]}

    def kernels():
        made = {}
        for i, name in enumerate(names):
            if name in conv_layers:
                kernel, bias = conv_layers[name]
                made[f"kernel_{i}"] = tf.identity(kernel)
                made[f"bias_{i}"] = tf.zeros(kernel.shape[-1:]) if bias is None else tf.identity(bias)
        return made

    return (graph_function(explain, input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32, name="images")]),
            graph_function(kernels, input_signature=[]))
