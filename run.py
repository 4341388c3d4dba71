"""Train a convolutional network from scratch on Kaggle's Digit Recognizer data and write submission.csv.

    python run.py                          # defaults below
    python run.py --max_n_epochs 3 --show_incorrect
    python run.py --help                   # every setting with its default
"""
# ---- configuration: every name here is also a flag, e.g. --batch_size 256 ----
max_n_epochs = 15                # the learning-rate schedule spans this many; early stopping may end sooner
patience = 5                     # epochs without validation improvement before stopping
batch_size = 128
learning_rate = 3e-3             # peak of the one-cycle schedule
dropout_rate = 0.25              # on the dense layer
label_smoothing = 0.1
max_rotation_degrees = 10.0      # augmentation: a random rotation, shift and zoom per training image
max_shift_fraction = 0.1
max_zoom_fraction = 0.1
percent_data_for_training = 90   # the rest of train.csv is the validation split
seed = 42
SHOW_INCORRECT = False           # save resources/misclassified_digits.png
train = ""                       # train.csv path; default: ./train.csv(.gz), else the shipped copy
test = ""                        # test.csv path; likewise
# ------------------------------------------------------------------------------
CONFIG_NAMES = [name for name in list(globals()) if not name.startswith("_")]
import argparse
import os
import sys
import time
from datetime import datetime

INF = float("inf")
VALID_RANGES = {  # name: (lowest, highest, what the error message says)
    "max_n_epochs": (1, INF, "at least 1"), "patience": (1, INF, "at least 1"),
    "batch_size": (1, INF, "at least 1"), "learning_rate": (1e-12, INF, "positive"),
    "dropout_rate": (0, 0.999, "in [0, 1)"), "label_smoothing": (0, 1, "in [0, 1]"),
    "max_rotation_degrees": (0, 180, "in [0, 180]"), "max_shift_fraction": (0, 1, "in [0, 1]"),
    "max_zoom_fraction": (0, 0.9, "in [0, 0.9]"), "percent_data_for_training": (1, 100, "in [1, 100]"),
}
MODEL_DIR, LOG_DIR, RESOURCES_DIR, SUBMISSION = "model", "tf_logs", "resources", "submission.csv"


def parse_flags(argv):
    """Every configuration name above becomes --name (booleans become switches, --show_incorrect)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = globals()
    for name in CONFIG_NAMES:
        default = defaults[name]
        flag = "--" + name.lower()
        if isinstance(default, bool):
            parser.add_argument(flag, dest=name, action="store_true", help=f"(default: off)")
        else:
            parser.add_argument(flag, dest=name, type=type(default), default=default, metavar=type(default).__name__.upper(),
                                help=f"(default: {default})")
    args = parser.parse_args(argv)
    for name, (low, high, meaning) in VALID_RANGES.items():
        if not low <= getattr(args, name) <= high:
            parser.error(f"--{name.lower()} {getattr(args, name)}: must be {meaning}")
    return args


def main(argv=None):
    config = parse_flags(sys.argv[1:] if argv is None else argv)
    started = time.time()
    import data
    try:
        train_path, test_path = data.find_csv("train", config.train), data.find_csv("test", config.test)
        images, labels = data.load_train(train_path)
        test_images = data.load_test(test_path)
    except data.DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # TensorFlow is imported only now, so that --help, bad flags and bad files answer at once and plainly.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up notices out of the log
    import tensorflow as tf
    import report
    from model import DigitNet
    from train import predict_probabilities, train as train_model
    train_images, train_labels, val_images, val_labels = data.split_train_validation(
        images, labels, config.percent_data_for_training, config.seed)
    print(f"data: {len(train_labels)} training and {len(val_labels)} validation digits from {train_path}, "
          f"{len(test_images)} test digits from {test_path}")

    tf.random.set_seed(config.seed)
    model = DigitNet(dropout_rate=config.dropout_rate, seed=config.seed)
    run_name = datetime.now().strftime("%Y%m%d-%H%M%S")
    augmentation = dict(max_rotation_degrees=config.max_rotation_degrees,
                        max_shift_fraction=config.max_shift_fraction, max_zoom_fraction=config.max_zoom_fraction)
    history = train_model(model, train_images, train_labels, val_images, val_labels,
                          max_n_epochs=config.max_n_epochs, patience=config.patience, batch_size=config.batch_size,
                          learning_rate=config.learning_rate, seed=config.seed,
                          label_smoothing=config.label_smoothing, augmentation=augmentation,
                          checkpoint_dir=MODEL_DIR, log_dir=f"{LOG_DIR}/{run_name}")

    export_saved_model(model, f"{MODEL_DIR}/saved_model")
    test_predictions = predict_probabilities(model, test_images).argmax(1)
    data.write_submission(SUBMISSION, test_predictions)

    best = max(history, key=lambda record: (record["val_accuracy"], -record["val_loss"]))
    if len(val_labels):
        val_probabilities = predict_probabilities(model, val_images)
        mistakes = report.log_misclassified(val_images, val_labels, val_probabilities, f"{LOG_DIR}/{run_name}/validation")
        if config.SHOW_INCORRECT:
            path = report.plot_misclassified(val_images, val_labels, val_probabilities,
                                             f"{RESOURCES_DIR}/misclassified_digits.png")
            print(f"misclassified validation digits ({mistakes}): {path}")
    print(f"best validation accuracy {100 * best['val_accuracy']:.2f}% (epoch {best['epoch']}), "
          f"{time.time() - started:.0f}s in all")
    print(f"checkpoints: {MODEL_DIR}/best, {MODEL_DIR}/latest; SavedModel: {MODEL_DIR}/saved_model")
    print(f"TensorBoard logs: {LOG_DIR}/{run_name} (tensorboard --logdir {LOG_DIR}); submission: {SUBMISSION}")
    return 0


def export_saved_model(model, path):
    """A SavedModel whose `serving_default` maps images [N, 28, 28, 1] in [0, 1] to class probabilities,
    loadable with tf.saved_model.load alone. Written beside the old one, then swapped in."""
    import shutil
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32, name="images")])
    def serve(images):
        return {"probabilities": tf.nn.softmax(model(images, training=False))}

    model.serve = serve
    temporary = path + ".tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    tf.saved_model.save(model, temporary, signatures=serve)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(temporary, path)


if __name__ == "__main__":
    sys.exit(main())
