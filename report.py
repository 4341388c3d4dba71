"""What the model learned, as numbers and pictures: the validation metrics, the confusion matrix, the training
curves, right and wrong digits, the first layer's kernels, feature maps and dense weights.

run.py calls write_report() after training. To rebuild the report from the saved model alone:

    python report.py    # reads model/best, writes resources/report.md, report.json and the PNGs
"""
import os
import sys

import numpy as np
from matplotlib.figure import Figure  # drawn by Agg straight to files: no display, no pyplot state
from matplotlib.ticker import MaxNLocator

import files

N_CLASSES = 10
MODEL_DIR, RESOURCES_DIR = "model", "resources"


def misclassified(labels, probabilities):
    """Indices of wrong predictions, most confident first."""
    predictions = probabilities.argmax(1)
    wrong = np.flatnonzero(predictions != labels)
    return wrong[np.argsort(-probabilities[wrong, predictions[wrong]])]


def plot_digit_grid(images, titles, path, columns=8):
    """Save a grid of 28x28 digits, each titled, as a PNG."""
    rows = max(1, -(-len(images) // columns))
    figure = Figure(figsize=(1.6 * columns, 1.9 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, title in zip(axes.flat, images, titles):
        axis.imshow(image.reshape(28, 28), cmap="gray_r", vmin=0, vmax=1)
        axis.set_title(title, fontsize=8)
    figure.tight_layout()
    return files.save_figure(figure, path)


def plot_predictions(images, labels, probabilities, indices, path):
    """The digits at `indices`, titled 'true 4, pred 9 (0.87)'."""
    predictions = probabilities.argmax(1)
    titles = [f"true {labels[i]}, pred {predictions[i]}\n({probabilities[i, predictions[i]]:.2f})" for i in indices]
    return plot_digit_grid(images[indices], titles, path)


def plot_misclassified(images, labels, probabilities, path, limit=64):
    """run.py --show_incorrect's picture: misclassified digits, most confident first."""
    return plot_predictions(images, labels, probabilities, misclassified(labels, probabilities)[:limit], path)


def log_misclassified(images, labels, probabilities, log_dir, limit=24):
    """Log the most confidently misclassified digits to TensorBoard; returns how many were wrong."""
    import tensorflow as tf

    wrong = misclassified(labels, probabilities)
    if len(wrong):
        with files.writing(log_dir, "the TensorBoard logs"), tf.summary.create_file_writer(log_dir).as_default():
            tf.summary.image("misclassified digits (most confident first)", images[wrong[:limit]], step=0,
                             max_outputs=limit)
    return len(wrong)


# ---- the metrics -------------------------------------------------------------------------------------------

def classification_metrics(labels, predictions):
    """Accuracy, per-digit precision, recall, F1 and support, their macro averages (the unweighted mean over the
    ten digits) and the confusion matrix (rows: true digit, columns: predicted). A digit never predicted has
    precision 0, as in scikit-learn."""
    confusion = np.bincount(labels * N_CLASSES + predictions, minlength=N_CLASSES ** 2).reshape(N_CLASSES, N_CLASSES)
    correct = np.diag(confusion)
    support, predicted = confusion.sum(1), confusion.sum(0)
    precision = np.divide(correct, predicted, out=np.zeros(N_CLASSES), where=predicted > 0)
    recall = np.divide(correct, support, out=np.zeros(N_CLASSES), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(N_CLASSES), where=precision + recall > 0)
    return {
        "accuracy": float(correct.sum() / len(labels)),
        "n_digits": len(labels),
        "per_class": [dict(digit=digit, precision=float(precision[digit]), recall=float(recall[digit]),
                           f1=float(f1[digit]), support=int(support[digit])) for digit in range(N_CLASSES)],
        "macro_avg": dict(precision=float(precision.mean()), recall=float(recall.mean()), f1=float(f1.mean()),
                          support=len(labels)),
        "confusion_matrix": confusion.tolist(),
    }


def metrics_markdown(metrics):
    rows = [f"| {row['digit']} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | {row['support']} |"
            for row in metrics["per_class"]]
    macro = metrics["macro_avg"]
    return "\n".join([
        "# Validation report",
        "",
        f"Accuracy {100 * metrics['accuracy']:.2f}% on {metrics['n_digits']} validation digits.",
        "",
        "| digit | precision | recall | F1 | support |",
        "| ---: | ---: | ---: | ---: | ---: |",
        *rows,
        f"| macro avg | {macro['precision']:.4f} | {macro['recall']:.4f} | {macro['f1']:.4f} | {macro['support']} |",
        "",
    ])


# ---- the pictures ------------------------------------------------------------------------------------------

def plot_confusion_matrix(confusion, path):
    """Counts in the cells; the diagonal (right) in green and the mistakes in red, each on its own scale so that a
    handful of mistakes still shows beside hundreds of right answers."""
    confusion = np.asarray(confusion)
    diagonal = np.eye(N_CLASSES, dtype=bool)
    figure = Figure(figsize=(7, 6))
    axis = figure.subplots()
    right_scale, wrong_scale = max(1, confusion.max()), max(1, confusion[~diagonal].max())
    axis.imshow(np.ma.masked_where(diagonal, confusion), cmap="Reds", vmin=0, vmax=wrong_scale)
    axis.imshow(np.ma.masked_where(~diagonal, confusion), cmap="Greens", vmin=0, vmax=right_scale)
    for (true, predicted), count in np.ndenumerate(confusion):
        if count:  # zeros left blank, so that the mistakes stand out
            scale = right_scale if true == predicted else wrong_scale
            axis.text(predicted, true, count, ha="center", va="center", fontsize=8,
                      color="white" if count > 0.6 * scale else "black")
    axis.set(xticks=range(N_CLASSES), yticks=range(N_CLASSES), xlabel="predicted digit", ylabel="true digit",
             title="confusion matrix, validation")
    figure.tight_layout()
    return files.save_figure(figure, path)


def plot_training_history(history, path):
    epochs = [record["epoch"] for record in history]
    figure = Figure(figsize=(15, 4))
    loss_axis, accuracy_axis, rate_axis = figure.subplots(1, 3)
    for axis, key in [(loss_axis, "loss"), (accuracy_axis, "accuracy")]:
        axis.plot(epochs, [record[f"train_{key}"] for record in history], "o-", label="train")
        axis.plot(epochs, [record[f"val_{key}"] for record in history], "o-", label="validation")
        axis.set(xlabel="epoch", title=key)
        axis.legend()
    # Training digits are augmented, dropped out and label-smoothed: the two losses are not measured alike.
    loss_axis.set_title("loss (train: augmented, label-smoothed)")
    rate_axis.plot(epochs, [record["learning_rate"] for record in history], "o-")
    rate_axis.set(xlabel="epoch", title="learning rate at the end of the epoch")
    for axis in (loss_axis, accuracy_axis, rate_axis):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    figure.tight_layout()
    return files.save_figure(figure, path)


def plot_class_distribution(train_labels, val_labels, path):
    """Each digit's share of each split, side by side: the stratified split should make them equal."""
    digits = np.arange(N_CLASSES)
    figure = Figure(figsize=(8, 4))
    axis = figure.subplots()
    for offset, (name, labels) in zip([-0.2, 0.2], [("train", train_labels), ("validation", val_labels)]):
        shares = 100 * np.bincount(labels, minlength=N_CLASSES) / len(labels)
        axis.bar(digits + offset, shares, width=0.4, label=f"{name} ({len(labels)} digits)")
    axis.set(xticks=digits, xlabel="digit", ylabel="% of the split", title="class distribution")
    axis.legend()
    figure.tight_layout()
    return files.save_figure(figure, path)


def plot_confident_mistakes(images, labels, probabilities, path, limit=8, pairs_per_row=2):
    """The most confidently wrong digits, each beside its ten class probabilities (true digit green, predicted
    red): is the network sure, or torn between two digits?"""
    wrong = misclassified(labels, probabilities)
    shown = wrong[:limit]
    rows = max(1, -(-len(shown) // pairs_per_row))
    figure = Figure(figsize=(5 * pairs_per_row, 1.8 * rows))
    axes = figure.subplots(rows, 2 * pairs_per_row, squeeze=False, width_ratios=[1, 2] * pairs_per_row)
    for axis in axes.flat:
        axis.axis("off")
    for slot, i in enumerate(shown):
        row, pair = divmod(slot, pairs_per_row)
        digit_axis, bar_axis = axes[row, 2 * pair], axes[row, 2 * pair + 1]
        prediction = probabilities[i].argmax()
        digit_axis.imshow(images[i].reshape(28, 28), cmap="gray_r", vmin=0, vmax=1)
        digit_axis.set_title(f"true {labels[i]}, pred {prediction}", fontsize=8)
        colours = ["tab:gray"] * N_CLASSES
        colours[labels[i]], colours[prediction] = "tab:green", "tab:red"
        bar_axis.axis("on")
        bar_axis.bar(range(N_CLASSES), probabilities[i], color=colours)
        bar_axis.set(xticks=range(N_CLASSES), ylim=(0, 1))
        bar_axis.tick_params(labelsize=7)
    figure.suptitle(f"the {len(shown)} most confident mistakes (of {len(wrong)})")
    figure.tight_layout()
    return files.save_figure(figure, path)


def plot_conv1_kernels(kernels, path, columns=8):
    """The first layer's kernels [k, k, 1, out], blue negative, red positive, on one symmetric scale."""
    kernels = np.asarray(kernels)
    limit = np.abs(kernels).max()
    rows = -(-kernels.shape[-1] // columns)
    figure = Figure(figsize=(1.2 * columns, 1.2 * rows + 0.5))
    axes = figure.subplots(rows, columns, squeeze=False)
    for channel, axis in enumerate(axes.flat):
        axis.axis("off")
        if channel < kernels.shape[-1]:
            axis.imshow(kernels[:, :, 0, channel], cmap="RdBu_r", vmin=-limit, vmax=limit)
            axis.set_title(channel, fontsize=7)
    figure.suptitle(f"conv1: {kernels.shape[-1]} kernels {kernels.shape[0]}x{kernels.shape[1]}")
    figure.tight_layout()
    return files.save_figure(figure, path)


def feature_maps(model, image):
    """One digit [28, 28, 1] through a DigitNet in inference mode -> each conv block's output, numpy [h, w,
    channels]: 14x14x32, 7x7x64, 3x3x128, what the next block reads. The network's own blocks
    (DigitNet.blocks) compute them, so the picture is what the network computes."""
    return [block[0].numpy() for block in model.blocks(image[None], training=False)[:3]]


def plot_feature_maps(image, title, maps, path, n_maps=12):
    """The digit, then for each conv block its n_maps most active channels, on one scale per block."""
    figure = Figure(figsize=(1.3 * (n_maps + 1), 1.5 * len(maps)))
    axes = figure.subplots(len(maps), n_maps + 1, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    axes[0, 0].imshow(image.reshape(28, 28), cmap="gray_r", vmin=0, vmax=1)
    axes[0, 0].set_title(title, fontsize=8)
    for block, (row, activations) in enumerate(zip(axes, maps), start=1):
        # Many channels are silent for any one digit; the busiest show what the block responds to.
        busiest = np.argsort(-activations.mean((0, 1)))[:n_maps]
        for axis, channel in zip(row[1:], busiest):
            axis.imshow(activations[:, :, channel], cmap="magma", vmin=0, vmax=max(activations.max(), 1e-6))
            axis.set_title(f"#{channel}", fontsize=7)
        row[1].axis("on")  # for its label; no ticks
        row[1].set(xticks=[], yticks=[], ylabel=f"block{block}\n{activations.shape[0]}x{activations.shape[1]}")
    figure.suptitle("each conv block's maps (conv, maxpool, batch norm, ReLU), busiest channels first")
    figure.tight_layout()
    return files.save_figure(figure, path)


def plot_dense_weights(dense1, dense2, path):
    """Each dense layer's weight matrix as an image (one row per unit), blue negative, red positive."""
    figure = Figure(figsize=(12, 6))
    axes = figure.subplots(2, 1, height_ratios=[3, 1])
    for axis, (name, weights, unit) in zip(axes, [("dense1", dense1, "unit"), ("dense2", dense2, "digit")]):
        weights = np.asarray(weights).T  # units down, inputs across: wide rather than tall
        limit = np.percentile(np.abs(weights), 99)  # on the full range a few large weights wash out the rest
        shown = axis.imshow(weights, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
        axis.set(title=f"{name}: {weights.shape[1]} inputs -> {weights.shape[0]} units", xlabel="input", ylabel=unit)
        figure.colorbar(shown, ax=axis)
    figure.tight_layout()
    return files.save_figure(figure, path)


def log_pictures(paths, log_dir):
    """Each PNG as a TensorBoard image named after its file."""
    import tensorflow as tf

    with files.writing(log_dir, "the TensorBoard logs"):
        writer = tf.summary.create_file_writer(log_dir)
        with writer.as_default():
            for path in paths:
                picture = tf.image.decode_png(tf.io.read_file(path), channels=3)
                tf.summary.image(os.path.splitext(os.path.basename(path))[0], picture[None], step=0)
        writer.close()


# ---- the report --------------------------------------------------------------------------------------------

def write_report(model, history, train_labels, val_images, val_labels, resources_dir=RESOURCES_DIR, log_dir=None):
    """Evaluate `model` on the validation split and write, into resources_dir, report.md and report.json (the
    metrics and the training history) and the pictures; each picture also goes to TensorBoard under log_dir if
    given. history: train.train's list of per-epoch dicts, or None (then no training_history.png).
    -> the metrics (classification_metrics')."""
    from model import DigitNet
    from train import predict_probabilities

    probabilities = predict_probabilities(model, val_images)
    predictions = probabilities.argmax(1)
    metrics = classification_metrics(val_labels, predictions)
    table = metrics_markdown(metrics)
    print(table)
    files.write_text(f"{resources_dir}/report.md", table)
    files.write_json(f"{resources_dir}/report.json", {**metrics, "history": history})

    right = np.flatnonzero(predictions == val_labels)
    example = right[0] if len(right) else 0  # a digit the network gets right shows its maps at their best
    pictures = [
        plot_confusion_matrix(metrics["confusion_matrix"], f"{resources_dir}/confusion_matrix.png"),
        plot_class_distribution(train_labels, val_labels, f"{resources_dir}/class_distribution.png"),
        plot_predictions(val_images, val_labels, probabilities, right[:64], f"{resources_dir}/correct_digits.png"),
        plot_confident_mistakes(val_images, val_labels, probabilities, f"{resources_dir}/most_confident_mistakes.png"),
    ]
    if isinstance(model, DigitNet):  # the pictures of its insides know DigitNet's layers
        pictures += [
            plot_conv1_kernels(model.conv1.numpy(), f"{resources_dir}/conv1_kernels.png"),
            plot_feature_maps(val_images[example], f"true {val_labels[example]}, pred {predictions[example]}",
                              feature_maps(model, val_images[example]), f"{resources_dir}/feature_maps.png"),
            plot_dense_weights(model.dense1.numpy(), model.dense2.numpy(), f"{resources_dir}/dense_weights.png"),
        ]
    else:
        print(f"note: kernels, feature maps and dense weights are drawn for DigitNet only, not {type(model).__name__}")
    if history:
        pictures.append(plot_training_history(history, f"{resources_dir}/training_history.png"))
    else:
        print("note: no training history, so no training_history.png")
    if log_dir:
        log_pictures(pictures, log_dir)
    print(f"report: {resources_dir}/report.md, report.json and {len(pictures)} pictures in {resources_dir}/")
    return metrics


def main(argv=None):
    """Rebuild the report from model/best, on the validation split that run.py recorded in model/settings.json,
    and the training history kept in the previous resources/report.json."""
    import flags
    flags.settings_parser(globals()).parse_args(sys.argv[1:] if argv is None else argv)  # --help, and no more
    settings = files.read_json(f"{MODEL_DIR}/settings.json")
    if settings is None or not os.path.exists(f"{MODEL_DIR}/best/checkpoint"):
        print(f"error: no trained model in {MODEL_DIR}/best/; run python run.py first", file=sys.stderr)
        return 2
    if settings["percent_data_for_training"] == 100:
        print(f"error: the model in {MODEL_DIR}/ trained on every digit (--percent_data_for_training 100), so there "
              "are none left to report on; train one with a validation split: python run.py", file=sys.stderr)
        return 2
    import data
    try:
        images, labels = data.load_train(data.find_csv("train"))
    except data.DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _, train_labels, val_images, val_labels = data.split_train_validation(
        images, labels, settings["percent_data_for_training"], settings["seed"])
    from devices import import_tensorflow
    tf = import_tensorflow()
    import recipes

    model = (recipes.tuned_network(settings["params"], 0) if settings["params"]
             else recipes.build_model(settings["model"], settings["dropout_rate"]))
    tf.train.Checkpoint(model=model).read(tf.train.latest_checkpoint(f"{MODEL_DIR}/best")).expect_partial() \
        .assert_existing_objects_matched()
    history = (files.read_json(f"{RESOURCES_DIR}/report.json") or {}).get("history")
    try:
        write_report(model, history, train_labels, val_images, val_labels, RESOURCES_DIR)
    except files.DiskFull as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
