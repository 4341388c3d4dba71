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
model = "digitnet"               # the network (python run.py --list-models), trained with its own recipe
params = ""                      # a tune.py best_params.json: train the network and recipe it describes
ensemble = 1                     # train this many networks (seeds seed, seed+1, ...) and average their outputs
tta = False                      # test-time augmentation: also average over the digit shifted by one pixel
resume = False                   # go on from model/latest where an interrupted run stopped (same settings)
deterministic = False            # TensorFlow's deterministic ops: two runs give bit-identical weights
devices = ""                     # "": every GPU there is (else the CPU); or a list, "GPU:0,GPU:1" (see README)
mixed_precision = False          # layers compute in float16 (bfloat16 without a GPU); weights stay float32
SHOW_INCORRECT = False           # also list every misclassified validation digit (the report pictures them)
train = ""                       # train.csv path; default: ./train.csv(.gz), else the shipped copy
test = ""                        # test.csv path; likewise
# ------------------------------------------------------------------------------
CONFIG_NAMES = [name for name in list(globals()) if not name.startswith("_")]
DEFAULTS = {name: globals()[name] for name in CONFIG_NAMES}
import json
import os
import re
import sys
import time
from datetime import datetime

from flags import settings_parser

INF = float("inf")
VALID_RANGES = {  # name: (lowest, highest, what the error message says)
    "max_n_epochs": (1, INF, "at least 1"), "patience": (1, INF, "at least 1"),
    "batch_size": (1, INF, "at least 1"), "learning_rate": (1e-12, INF, "positive"),
    "dropout_rate": (0, 0.999, "in [0, 1)"), "label_smoothing": (0, 1, "in [0, 1]"),
    "max_rotation_degrees": (0, 180, "in [0, 180]"), "max_shift_fraction": (0, 1, "in [0, 1]"),
    "max_zoom_fraction": (0, 0.9, "in [0, 0.9]"), "percent_data_for_training": (1, 100, "in [1, 100]"),
    "ensemble": (1, INF, "at least 1"),
}
# The settings above that make up a training recipe: for --model NAME, those left at their default give way to
# that network's own recipe (model.MODELS; digitnet's is exactly these defaults).
RECIPE_SETTINGS = ["max_n_epochs", "patience", "batch_size", "learning_rate", "dropout_rate", "label_smoothing",
                   "max_rotation_degrees", "max_shift_fraction", "max_zoom_fraction"]
MODEL_DIR, LOG_DIR, RESOURCES_DIR, SUBMISSION = "model", "tf_logs", "resources", "submission.csv"


def parse_flags(argv):
    """Every configuration name above becomes --name (booleans become switches, --show_incorrect)."""
    parser = settings_parser(DEFAULTS, __doc__)
    parser.add_argument("--list-models", action="store_true", help="list the networks with their size and cost")
    args = parser.parse_args(argv)
    for name, (low, high, meaning) in VALID_RANGES.items():
        if not low <= getattr(args, name) <= high:
            parser.error(f"--{name.lower()} {getattr(args, name)}: must be {meaning}")
    for name in filter(None, args.devices.split(",")):
        if not re.fullmatch(r"(CPU|GPU):\d+", name.strip().upper()):
            parser.error(f"--devices {args.devices}: {name.strip()!r} is not a device name like GPU:0 or CPU:0")
    if args.params and args.model != DEFAULTS["model"]:
        parser.error("--params and --model: choose one (a params file names its own network)")
    return args


def main(argv=None):
    config = parse_flags(sys.argv[1:] if argv is None else argv)
    started = time.time()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up notices out of the log
    if config.list_models:
        from model import describe_models
        print(f"{'model':<20}{'parameters':>12}{'FLOPs/image':>16}")
        for name, parameters, flops in describe_models():
            print(f"{name:<20}{parameters:>12,}{flops:>16,}")
        return 0
    if config.model != DEFAULTS["model"]:  # knowing the names takes TensorFlow, so only when one is given
        from model import MODELS
        if config.model not in MODELS:
            print(f"error: --model {config.model}: choose from {', '.join(MODELS)}", file=sys.stderr)
            return 2
    import data
    try:
        train_path, test_path = data.find_csv("train", config.train), data.find_csv("test", config.test)
        images, labels = data.load_train(train_path)
        test_images = data.load_test(test_path)
        if config.params:
            import tune
            config.params = tune.load_params(config.params)  # the file's contents, checked
    except data.DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # TensorFlow is imported only now, so that --help, bad flags and bad files answer at once and plainly.
    import numpy as np
    import report
    from train import CheckpointMismatch, TrainingDiverged, TrainingInterrupted
    train_images, train_labels, val_images, val_labels = data.split_train_validation(
        images, labels, config.percent_data_for_training, config.seed)
    print(f"data: {len(train_labels)} training and {len(val_labels)} validation digits from {train_path}, "
          f"{len(test_images)} test digits from {test_path}")

    try:
        strategy = distribution_strategy(config.devices)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import tensorflow as tf
    if strategy.num_replicas_in_sync > 1:
        print(f"devices: {strategy.num_replicas_in_sync} replicas, each batch split between them")
    compute_dtype = "float32"
    if config.mixed_precision:  # float16 needs a GPU's tensor cores to pay; recent CPUs have bfloat16 units
        compute_dtype = "float16" if tf.config.list_physical_devices("GPU") else "bfloat16"
        print(f"mixed precision: the layers compute in {compute_dtype}, the weights stay float32")
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    run_name = datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        members, history = train_members(config, strategy, compute_dtype, run_name, train_images, train_labels,
                                         val_images, val_labels)
    except TrainingInterrupted as stop:
        again = " ".join(["python", "run.py", *[arg for arg in sys.argv[1:] if arg != "--resume"], "--resume"])
        print(f"stopped: {stop}\nto go on where it stopped: {again}", file=sys.stderr)
        return 130
    except (TrainingDiverged, CheckpointMismatch) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, CheckpointMismatch) else 1

    export_saved_model(members, f"{MODEL_DIR}/saved_model")
    test_predictions = ensemble_probabilities(members, test_images, config.tta).argmax(1)
    data.write_submission(SUBMISSION, test_predictions)

    if len(val_labels):
        val_probabilities = ensemble_probabilities(members, val_images, config.tta)
        val_accuracy = float(np.mean(val_probabilities.argmax(1) == val_labels))
        what = "validation accuracy" if config.ensemble == 1 else f"validation accuracy of the {config.ensemble}-member ensemble"
        if config.ensemble == 1:
            best = max(history, key=lambda record: (record["val_accuracy"], -record["val_loss"]))
            what += f" (best epoch, {best['epoch']} of {len(history)})"
        print(f"{what}{' with test-time augmentation' if config.tta else ''}: {100 * val_accuracy:.2f}%")
        report.log_misclassified(val_images, val_labels, val_probabilities, f"{LOG_DIR}/{run_name}/validation")
        # The report looks inside one network: with an ensemble, the first member on its own.
        report.write_report(members[0], history if config.ensemble == 1 else None, train_labels, val_images,
                            val_labels, RESOURCES_DIR, log_dir=f"{LOG_DIR}/{run_name}/report")
        if config.SHOW_INCORRECT:
            predictions = val_probabilities.argmax(1)
            print(f"misclassified validation digits (pictured in {RESOURCES_DIR}/misclassified_digits.png):")
            for index in report.misclassified(val_labels, val_probabilities):
                print(f"  validation digit {index}: true {val_labels[index]}, predicted {predictions[index]} "
                      f"(probability {val_probabilities[index, predictions[index]]:.2f})")
    print(f"{time.time() - started:.0f}s in all")
    checkpoints = f"{MODEL_DIR}/best, {MODEL_DIR}/latest" if config.ensemble == 1 else f"{MODEL_DIR}/ensemble/member-*/"
    print(f"checkpoints: {checkpoints}; SavedModel: {MODEL_DIR}/saved_model")
    print(f"TensorBoard logs: {LOG_DIR}/{run_name} (tensorboard --logdir {LOG_DIR}); submission: {SUBMISSION}")
    return 0


def distribution_strategy(devices):
    """How training spreads over devices (--devices): tf.distribute.MirroredStrategy over the named devices, or
    over every GPU when none is named, keeps a copy of the network on each and splits each batch between them;
    with one device, or none but the CPU, TensorFlow's default. Naming several CPUs ("CPU:0,CPU:1") splits the
    processor into that many logical devices: how the tests try several devices on a machine without GPUs.
    -> the strategy; ValueError for a device that is not there."""
    import tensorflow as tf

    if "TF_CONFIG" in os.environ:  # one run.py on each machine, as TF_CONFIG describes (see README)
        return tf.distribute.MultiWorkerMirroredStrategy()
    names = [name.strip().upper() for name in devices.split(",") if name.strip()]
    if not names:
        names = [f"GPU:{index}" for index in range(len(tf.config.list_physical_devices("GPU")))]
    n_cpus = sum(name.startswith("CPU:") for name in names)
    if n_cpus > 1:  # must come before TensorFlow sets up its devices, so before anything runs
        tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                                   [tf.config.LogicalDeviceConfiguration()] * n_cpus)
    available = [device.name.removeprefix("/device:") for device in tf.config.list_logical_devices()]
    for name in names:
        if name not in available:
            raise ValueError(f"--devices {devices}: there is no {name} here; the devices are {', '.join(available)}")
    if len(names) > 1:
        return tf.distribute.MirroredStrategy(names)
    return tf.distribute.OneDeviceStrategy(names[0]) if names else tf.distribute.get_strategy()


def train_members(config, strategy, compute_dtype, run_name, train_images, train_labels, val_images, val_labels):
    """Train the network, or each member of the ensemble. -> (the networks, the last trained one's history)."""
    members, history = [], None
    for member in range(1, config.ensemble + 1):
        # Members differ in seed (initial weights, data order, augmentation, dropout) and share the split,
        # so the validation digits are held out from every one of them.
        member_dir = MODEL_DIR if config.ensemble == 1 else f"{MODEL_DIR}/ensemble/member-{member}"
        member_log_dir = f"{LOG_DIR}/{run_name}" + ("" if config.ensemble == 1 else f"/member-{member}")
        if config.ensemble > 1:
            print(f"ensemble member {member}/{config.ensemble}")
        model, member_history = train_or_reuse_member(config, strategy, compute_dtype, config.seed + member - 1,
                                                      member_dir, member_log_dir, train_images, train_labels,
                                                      val_images, val_labels)
        members.append(model)
        history = member_history or history
    return members, history


def train_or_reuse_member(config, strategy, compute_dtype, member_seed, member_dir, log_dir, train_images,
                          train_labels, val_images, val_labels):
    """Train one network, or, for an ensemble member finished by an earlier run with the same settings,
    restore it from its best checkpoint. -> (model, history or None when reused)."""
    import tensorflow as tf
    from train import CheckpointMismatch, train as train_model

    settings = {name: getattr(config, name) for name in CONFIG_NAMES
                if name not in ("ensemble", "tta", "resume", "deterministic", "devices", "SHOW_INCORRECT")}
    settings.update(member_seed=member_seed, n_train=len(train_labels), train_labels_sum=int(train_labels.sum()))
    finished_marker = f"{member_dir}/finished.json"
    tf.random.set_seed(member_seed)
    with strategy.scope():  # the network's variables: a copy on each device
        model, recipe = network_and_recipe(config, member_seed)
    if config.ensemble > 1 and read_json(finished_marker) == settings:
        tf.train.Checkpoint(model=model).read(tf.train.latest_checkpoint(f"{member_dir}/best")).expect_partial()
        print(f"  reusing the finished member in {member_dir}")
        return model, None
    settings_file = f"{member_dir}/settings.json"
    if config.resume and read_json(settings_file) not in (None, settings):
        changed = [name for name, value in read_json(settings_file).items() if settings.get(name) != value]
        raise CheckpointMismatch(f"{member_dir}/latest was trained with other settings ({', '.join(changed)}); "
                                 "resume with the same flags")
    os.makedirs(member_dir, exist_ok=True)
    write_json(settings_file, settings)
    history = train_model(model, train_images, train_labels, val_images, val_labels, seed=member_seed,
                          checkpoint_dir=member_dir, log_dir=log_dir, resume=config.resume, strategy=strategy,
                          compute_dtype=compute_dtype, **recipe)
    write_json(finished_marker, settings)
    return model, history


def read_json(path):
    """The file's contents, or None if there is no such file."""
    if not os.path.exists(path):
        return None
    with open(path) as file:
        return json.load(file)


def write_json(path, value):
    """Written to a temporary name, then renamed: a crash leaves the old file or the new, never half of one."""
    import report
    report.write_text(path, json.dumps(value))


def network_and_recipe(config, seed):
    """The network to train and train.train's keyword arguments for it: --model's network with its own recipe,
    over which every recipe setting given a value other than its default wins; or --params' tuned network,
    whose optimiser, learning rate, batch size and dropout come from the file."""
    from model import build_model, training_recipe

    overrides = {name: getattr(config, name) for name in RECIPE_SETTINGS if getattr(config, name) != DEFAULTS[name]}
    dropout_rate = overrides.pop("dropout_rate", None)
    if config.params:
        import tune
        recipe = training_recipe(config.model, **overrides)
        return tune.build_network(config.params, seed), {**recipe, **tune.training_arguments(config.params)}
    return build_model(config.model, dropout_rate, seed), training_recipe(config.model, **overrides)


TTA_SHIFTS = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]  # (rows, columns): the digit and its one-pixel shifts


def ensemble_probabilities(models, images, tta=False):
    """The mean softmax output over the models and, with tta, over the digit shifted by a pixel each way."""
    import numpy as np
    from train import predict_probabilities

    shifts = TTA_SHIFTS if tta else TTA_SHIFTS[:1]
    return np.mean([predict_probabilities(model, np.roll(images, shift, axis=(1, 2)))
                    for model in models for shift in shifts], axis=0)


def export_saved_model(models, path):
    """A SavedModel whose `serving_default` maps images [N, 28, 28, 1] in [0, 1] to class probabilities (the
    mean over the models' softmax outputs), loadable with tf.saved_model.load alone. Written beside the old
    one, then swapped in."""
    import shutil
    import tensorflow as tf

    module = tf.Module()
    module.models = list(models)

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32, name="images")])
    def serve(images):
        return {"probabilities": tf.add_n([tf.nn.softmax(m(images, training=False)) for m in module.models])
                / len(module.models)}

    module.serve = serve
    temporary = path + ".tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    tf.saved_model.save(module, temporary, signatures=serve)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(temporary, path)


if __name__ == "__main__":
    sys.exit(main())
