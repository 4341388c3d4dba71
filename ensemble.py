"""Trained networks as one predictor: their averaged probabilities, with test-time augmentation, and the
SavedModel that serves that average to predict.py and serve.py without this project's code."""
import numpy as np
import tensorflow as tf

import files
from train import predict_probabilities

TTA_SHIFTS = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]  # (rows, columns): the digit and its one-pixel shifts


def ensemble_probabilities(models, images, tta=False):
    """The mean softmax output over the models and, with tta, over the digit shifted by a pixel each way."""
    shifts = TTA_SHIFTS if tta else TTA_SHIFTS[:1]
    return np.mean([predict_probabilities(model, np.roll(images, shift, axis=(1, 2)))
                    for model in models for shift in shifts], axis=0)


def export_saved_model(models, path, tta=False):
    """A SavedModel whose `serving_default` maps images [N, 28, 28, 1] in [0, 1] to class probabilities, those
    of ensemble_probabilities(models, images, tta), loadable with tf.saved_model.load alone. Swapped in whole
    (files.replace_directory): until the new one is complete, `path` is the old one."""
    module = tf.Module()
    module.models = list(models)
    shifts = TTA_SHIFTS if tta else TTA_SHIFTS[:1]

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32, name="images")])
    def serve(images):
        outputs = [tf.nn.softmax(m(tf.roll(images, shift, axis=[1, 2]), training=False))
                   for m in module.models for shift in shifts]
        return {"probabilities": tf.add_n(outputs) / len(outputs)}

    module.serve = serve
    files.replace_directory(lambda new: tf.saved_model.save(module, new, signatures=serve), path)
