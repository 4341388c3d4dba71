"""Pictures of what the model got wrong, for resources/ and for TensorBoard."""
import os

import numpy as np


def misclassified(labels, probabilities):
    """Indices of wrong predictions, most confident first."""
    predictions = probabilities.argmax(1)
    wrong = np.flatnonzero(predictions != labels)
    return wrong[np.argsort(-probabilities[wrong, predictions[wrong]])]


def plot_digit_grid(images, titles, path, columns=8):
    """Save a grid of 28x28 digits, each titled, as a PNG (written to a temporary name, then renamed)."""
    import matplotlib
    matplotlib.use("Agg")  # no display needed, nothing blocks
    import matplotlib.pyplot as plt

    rows = max(1, -(-len(images) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.9 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, title in zip(axes.flat, images, titles):
        axis.imshow(image.reshape(28, 28), cmap="gray_r", vmin=0, vmax=1)
        axis.set_title(title, fontsize=8)
    figure.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary = path + ".tmp.png"
    figure.savefig(temporary, dpi=80)
    plt.close(figure)
    os.replace(temporary, path)
    return path


def plot_misclassified(images, labels, probabilities, path, limit=64):
    """The SHOW_INCORRECT picture: misclassified digits titled 'true 4, predicted 9 (0.87)'."""
    wrong = misclassified(labels, probabilities)[:limit]
    predictions = probabilities.argmax(1)
    titles = [f"true {labels[i]}, pred {predictions[i]}\n({probabilities[i, predictions[i]]:.2f})" for i in wrong]
    return plot_digit_grid(images[wrong], titles, path)


def log_misclassified(images, labels, probabilities, log_dir, limit=24):
    """Log the most confidently misclassified digits to TensorBoard; returns how many were wrong."""
    import tensorflow as tf

    wrong = misclassified(labels, probabilities)
    if len(wrong):
        with tf.summary.create_file_writer(log_dir).as_default():
            tf.summary.image("misclassified digits (most confident first)", images[wrong[:limit]], step=0,
                             max_outputs=limit)
    return len(wrong)
