"""Train a convolutional network from scratch on Kaggle's Digit Recognizer data and write submission.csv.

    python run.py                          # the defaults below
    python run.py --max_n_epochs 3 --show_incorrect
    python run.py --help                   # every setting, what it means and its default
"""
# ---- configuration: every name here is also a flag, e.g. --batch_size 256 ----
model = "digitnet"               # the network, trained by its own recipe (recipes.py; see --list_models)
params = ""                      # a tune.py best_params.json: train the network and recipe it describes
# The training recipe. Left unset (None), each comes from the network's own recipe in recipes.MODELS; set here or
# given as a flag, it wins. How digitnet's recipe was chosen: docs/recipe.md.
max_n_epochs: int = None         # the learning-rate schedule spans this many; early stopping may end sooner
patience: int = None             # epochs without a better validation accuracy before stopping, counted once the
                                 # learning rate has annealed to a tenth of its peak (so never cutting the schedule)
batch_size: int = None           # digits per training step
learning_rate: float = None      # the one-cycle schedule's peak, or the constant rate of other schedules
dropout_rate: float = None       # the share of the dense layer's units dropped in each training step
label_smoothing: float = None    # the training targets: (1 - s) * one_hot + s / 10
max_rotation_degrees: float = None  # augmentation: turn each training digit by a random angle up to this
max_shift_fraction: float = None    # augmentation: shift it by up to this share of its side
max_zoom_fraction: float = None     # augmentation: zoom it in or out by up to this share
elastic_alpha: float = None      # augmentation: elastic distortion's strength in pixels (Simard 2003); 0: none
elastic_sigma: float = None      # augmentation: the smoothness of its random field, in pixels
ema_decay: float = None          # evaluate and keep a moving average of the weights with this decay; 0: off
outlier_exposure: float = None   # the weight of learning "no digit" on letters (letters.py) in every batch; 0: off
                                 # (0.5: predict.py refuses more letters, at a cost in digits: docs/recipe.md)
# The run.
percent_data_for_training = 90   # of train.csv, to train on; the rest is the validation split, which picks the
                                 # epoch, stops early and feeds the report (100: no split, the last epoch is kept)
seed = 42                        # the split, the initial weights, the data order, augmentation and dropout
ensemble = 1                     # train this many networks (seeds seed, seed+1, ...) and average their outputs
tta = True                       # test-time augmentation: also average over the digit shifted by one pixel
digit_gate = True                # train a small network beside the classifier that tells digits from letters,
                                 # scribbles and noise, exported with it: predict.py then answers "?" for those
resume = False                   # go on from model/latest where an interrupted run stopped (same settings)
deterministic = False            # TensorFlow's deterministic ops: two runs give bit-identical weights
devices = ""                     # "": every GPU there is (else the CPU); or a list, "GPU:0,GPU:1" (see README)
mixed_precision = True           # the layers compute in float16 on a GPU, bfloat16 on a CPU with bfloat16 units
                                 # (AMX, AVX512-BF16), else float32; the weights stay float32 (docs/performance.md)
SHOW_INCORRECT = False           # list every misclassified validation digit and draw them in
                                 # resources/misclassified_digits.png
train = ""                       # train.csv's path; default: ./train.csv(.gz), else the shipped copy
test = ""                        # test.csv's path; likewise
# ------------------------------------------------------------------------------
import dataclasses
import glob
import json
import os
import re
import sys
import time
from datetime import datetime

import files
import flags
from devices import compute_dtype, device_names, distribution_strategy, import_tensorflow

DEFAULTS = flags.settings_of(globals())
RECIPE_SETTINGS = [name for name, value in DEFAULTS.items() if value is None]  # None: the network's own
INF = float("inf")
VALID_RANGES = {  # name: (lowest, highest, what the error message says)
    "max_n_epochs": (1, INF, "at least 1"), "patience": (1, INF, "at least 1"),
    "batch_size": (1, INF, "at least 1"), "learning_rate": (1e-12, INF, "positive"),
    "dropout_rate": (0, 0.999, "in [0, 1)"), "label_smoothing": (0, 1, "in [0, 1]"),
    "max_rotation_degrees": (0, 180, "in [0, 180]"), "max_shift_fraction": (0, 1, "in [0, 1]"),
    "max_zoom_fraction": (0, 0.9, "in [0, 0.9]"), "percent_data_for_training": (1, 100, "in [1, 100]"),
    "elastic_alpha": (0, 100, "in [0, 100]"), "elastic_sigma": (0.5, 20, "in [0.5, 20]"),
    "ema_decay": (0, 0.99999, "in [0, 1)"), "outlier_exposure": (0, 10, "in [0, 10]"),
    "ensemble": (1, INF, "at least 1"),
}
MODEL_DIR, LOG_DIR, RESOURCES_DIR, SUBMISSION = "model", "tf_logs", "resources", "submission.csv"


def parse_flags(argv):
    parser = flags.settings_parser(globals(), unset="the network's own")
    parser.add_argument("--list_models", action="store_true", help="list the networks with their size and cost")
    config = parser.parse_args(argv)
    for name, (low, high, meaning) in VALID_RANGES.items():
        value = getattr(config, name)
        if value is not None and not low <= value <= high:
            parser.error(f"--{name.lower()} {value}: must be {meaning}")
    for name in device_names(config.devices):
        if not re.fullmatch(r"(CPU|GPU):\d+", name, re.IGNORECASE):
            parser.error(f"--devices {config.devices}: {name!r} is not a device name like GPU:0 or CPU:0")
    if config.params and config.model != DEFAULTS["model"]:
        parser.error("--params and --model: choose one (a params file names its own network)")
    return config


def cannot_apply(config):
    """Why a flag given cannot do what it says in this configuration (a one-line error), or None."""
    if config.percent_data_for_training == 100:  # no validation split: nothing to stop early on or to list
        for given, flag in ((config.patience is not None, "--patience"), (config.SHOW_INCORRECT, "--show_incorrect")):
            if given:
                return f"{flag} needs a validation split, and --percent_data_for_training 100 leaves none"
    directories = [MODEL_DIR] if config.ensemble == 1 else [f"{MODEL_DIR}/ensemble/member-{member}"
                                                             for member in range(1, config.ensemble + 1)]
    started = any(os.path.exists(f"{directory}/settings.json") for directory in directories)
    if config.resume and not started:
        return f"--resume: no interrupted run to go on from in {directories[0]}/latest; run without --resume"
    return None


def main(argv=None):
    args = sys.argv[1:] if argv is None else list(argv)
    config = parse_flags(args)
    started = time.time()
    if config.list_models:
        import_tensorflow()
        import recipes
        return print_models(recipes.describe_models())
    if refusal := cannot_apply(config):
        return fail(refusal)
    import data  # numpy and pandas only: bad files are refused before TensorFlow starts
    try:
        train_path, test_path = data.find_csv("train", config.train), data.find_csv("test", config.test)
        images, labels = data.load_train(train_path)
        test_images = data.load_test(test_path)
    except data.DataError as error:
        return fail(error)
    tf = import_tensorflow()
    import recipes
    import train
    if config.model not in recipes.MODELS:
        return fail(f"--model {config.model}: choose from {', '.join(recipes.MODELS)}")
    try:
        config.params = config.params and recipes.load_params(config.params)  # the file's contents, checked
        strategy = distribution_strategy(config.devices)
        recipe_of(config)  # refuses a setting the recipe would not use
    except (data.DataError, ValueError) as error:
        return fail(error)
    split = data.split_train_validation(images, labels, config.percent_data_for_training, config.seed)
    print(f"data: {len(split[1])} training and {len(split[3])} validation digits from {train_path}, "
          f"{len(test_images)} test digits from {test_path}")
    if strategy.num_replicas_in_sync > 1:
        print(f"devices: {strategy.num_replicas_in_sync} replicas, each batch split between them")
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    try:
        with files.exclusive_lock(MODEL_DIR):
            run_name = datetime.now().strftime("%Y%m%d-%H%M%S")
            members, history = train_members(config, strategy, run_name, split)
            write_outputs(config, members, history, split, test_images, run_name)
    except files.Busy as error:
        return fail(error)
    except train.TrainingInterrupted as stop:
        again = resume_command(args)
        print(f"stopped: {stop}\nto go on where it stopped: {again}", file=sys.stderr)
        return 130
    except train.CheckpointMismatch as error:
        return fail(error)
    except train.TrainingDiverged as error:
        return fail(error, code=1)
    except files.DiskFull as error:
        return fail(f"{error}; what was there before is as it was: free some space, then {go_on(args, started)}",
                    code=1)
    print(f"{time.time() - started:.0f}s in all")
    return 0


def go_on(args, started):
    """How to go on after a full disk stopped the run of these arguments that started at `started` (time.time()):
    with --resume if it saved a checkpoint, else (it saved none, only an earlier run did) by running it again."""
    saved = [f"{MODEL_DIR}/latest/checkpoint"] + glob.glob(f"{MODEL_DIR}/ensemble/member-*/latest/checkpoint")
    if any(os.path.getmtime(path) >= started for path in saved if os.path.exists(path)):
        return resume_command(args)
    return "run the same command again"


def resume_command(args):
    """The command that goes on where the run of these arguments stopped."""
    return " ".join(["python", "run.py", *[arg for arg in args if arg != "--resume"], "--resume"])


def fail(error, code=2):
    print(f"error: {error}", file=sys.stderr)
    return code


def print_models(rows):
    print(f"{'model':<20}{'parameters':>12}{'FLOPs/image':>16}")
    for name, parameters, flops in rows:
        print(f"{name:<20}{parameters:>12,}{flops:>16,}")
    return 0


def train_members(config, strategy, run_name, split):
    """Train the network, or each member of the ensemble. -> (the networks, the last trained one's history)."""
    members, history, dtype = [], None, compute_dtype(config.mixed_precision)
    if dtype != "float32":
        print(f"mixed precision: the layers compute in {dtype}, the weights stay float32")
    for member in range(1, config.ensemble + 1):
        # Members differ in seed (initial weights, data order, augmentation, dropout) and share the split,
        # so the validation digits are held out from every one of them.
        one = config.ensemble == 1
        member_dir = MODEL_DIR if one else f"{MODEL_DIR}/ensemble/member-{member}"
        if not one:
            print(f"ensemble member {member}/{config.ensemble}")
        import train
        options = train.RunOptions(checkpoint_dir=member_dir, resume=config.resume, strategy=strategy,
                                   compute_dtype=dtype,
                                   log_dir=f"{LOG_DIR}/{run_name}" + ("" if one else f"/member-{member}"))
        network, member_history = train_or_reuse_member(config, config.seed + member - 1, split, options)
        members.append(network)
        history = member_history or history
    return members, history


def train_or_reuse_member(config, member_seed, split, options):
    """Train one network, or, for an ensemble member finished by an earlier run with the same settings,
    restore it from its best checkpoint. -> (network, history or None when reused)."""
    import tensorflow as tf
    import train

    tf.random.set_seed(member_seed)
    with options.strategy.scope():  # the network's variables: a copy on each device
        network, recipe = network_and_recipe(config, member_seed)
    # What the member learns depends on these, and only on these.
    settings = json.loads(json.dumps(dict(
        dataclasses.asdict(recipe), model=config.model, params=config.params, dropout_rate=network.dropout_rate,
        seed=member_seed, percent_data_for_training=config.percent_data_for_training, n_train=len(split[1]),
        train_labels_sum=int(split[1].sum()), compute_dtype=options.compute_dtype)))
    member_dir = options.checkpoint_dir
    if config.ensemble > 1 and files.read_json(f"{member_dir}/finished.json") == settings:
        tf.train.Checkpoint(model=network).read(tf.train.latest_checkpoint(f"{member_dir}/best")).expect_partial()
        print(f"  reusing the finished member in {member_dir}")
        return network, None
    recorded = files.read_json(f"{member_dir}/settings.json")
    if config.resume and recorded not in (None, settings):
        changed = [name for name, value in recorded.items() if settings.get(name) != value]
        raise train.CheckpointMismatch(f"{member_dir}/latest was trained with other settings ({', '.join(changed)}); "
                                       "resume with the same flags")
    files.write_json(f"{member_dir}/settings.json", settings)
    history = train.train(network, split, recipe, member_seed, options)
    files.write_json(f"{member_dir}/finished.json", settings)
    return network, history


def network_and_recipe(config, seed):
    """The network to train and its train.Recipe (recipe_of): --model's network, or --params' tuned network."""
    import recipes

    if config.params:
        params = config.params if config.dropout_rate is None else {**config.params, "dropout_rate": config.dropout_rate}
        network = recipes.tuned_network(params, seed)
    else:
        network = recipes.build_model(config.model, config.dropout_rate, seed)
    return network, recipe_of(config)


def recipe_of(config):
    """--model's recipe, or --params' with the optimiser, learning rate and batch size that its file sets; every
    recipe setting that was given (not None) wins over both. A setting the recipe would not use is refused
    (ValueError): elastic distortion's smoothness without its strength."""
    import recipes

    given = {name: getattr(config, name) for name in RECIPE_SETTINGS if getattr(config, name) is not None}
    given.pop("dropout_rate", None)  # the network's, not the recipe's
    recipe = recipes.training_recipe(config.model)
    if config.params:
        recipe = recipes.tuned_recipe(config.params, recipe)
    recipe = recipes.with_overrides(recipe, **given)
    if config.elastic_sigma is not None and not (recipe.augmentation or {}).get("elastic_alpha"):
        raise ValueError(f"--elastic_sigma {config.elastic_sigma}: there is no elastic distortion to smooth; "
                         "give --elastic_alpha too")
    return recipe


def write_outputs(config, members, history, split, test_images, run_name):
    """The SavedModel, submission.csv, the validation accuracy and the report."""
    import data
    import ensemble
    import report

    train_images, train_labels, val_images, val_labels = split
    gate = train_digit_gate(train_images, config.seed) if config.digit_gate else None
    ensemble.export_saved_model(members, f"{MODEL_DIR}/saved_model", train_images, train_labels, config.tta, gate)
    data.write_submission(SUBMISSION, ensemble.ensemble_probabilities(members, test_images, config.tta).argmax(1))
    if len(val_labels):
        val_probabilities = ensemble.ensemble_probabilities(members, val_images, config.tta)
        print_validation_accuracy(config, history, val_probabilities, val_labels)
        report.log_misclassified(val_images, val_labels, val_probabilities, f"{LOG_DIR}/{run_name}/validation")
        # The report looks inside one network: with an ensemble, the first member on its own.
        report.write_report(members[0], history if config.ensemble == 1 else None, train_labels, val_images,
                            val_labels, RESOURCES_DIR, log_dir=f"{LOG_DIR}/{run_name}/report")
        if config.SHOW_INCORRECT:
            print_misclassified(val_images, val_probabilities, val_labels)
    else:
        print("no validation split (--percent_data_for_training 100), so no report; python benchmarks/holdout.py "
              "measures this recipe on unseen digits")
    checkpoints = f"{MODEL_DIR}/best, {MODEL_DIR}/latest" if config.ensemble == 1 else f"{MODEL_DIR}/ensemble/member-*/"
    print(f"checkpoints: {checkpoints}; SavedModel: {MODEL_DIR}/saved_model")
    print(f"TensorBoard logs: {LOG_DIR}/{run_name} (tensorboard --logdir {LOG_DIR}); submission: {SUBMISSION}")


def train_digit_gate(train_images, seed):
    """The digit gate (model.DigitGate), trained on the training digits, and up to letters.NON_DIGITS of them
    remade as a photo's (letters.remade_digits), against pictures of no digit (letters.non_digit_pictures: every
    font letter, and as many more as digits, up to letters.NON_DIGITS) -> the gate. The classifier is not touched."""
    import numpy as np

    import letters
    import train
    from model import DigitGate

    started = time.time()
    # A stop asked for while the pictures are made waits for them, then ends the gate's first step
    # (train.TrainingInterrupted). Nothing of the gate is kept: --resume finds the classifier done and trains the
    # gate again. The line that says Ctrl-C stops it comes once that is so.
    with train.StopRequests():
        print(f"digit gate: training it, {train.GATE_EPOCHS:g} passes over the digits (Ctrl-C stops it and keeps "
              "the classifier)", flush=True)
        non_digits = letters.non_digit_pictures(min(len(train_images), letters.NON_DIGITS), seed)
        digits = np.concatenate([train_images, letters.remade_digits(train_images, letters.NON_DIGITS, seed)])
        gate = DigitGate(seed=seed)
        train.train_digit_gate(gate, digits, non_digits, seed)
    print(f"digit gate: {len(train_images)} digits ({len(digits) - len(train_images)} of them also remade as a "
          f"photo's) against {len(non_digits)} pictures of no digit (letters, scribbles, blobs, specks, noise), "
          f"{time.time() - started:.0f}s")
    return gate


def print_validation_accuracy(config, history, val_probabilities, val_labels):
    """The accuracy on the validation split: for one network, that of the epoch chosen on these same digits,
    so an optimistic figure (benchmarks/holdout.py measures on digits that took part in no choice)."""
    import numpy as np
    from train import best_epoch

    accuracy = float(np.mean(val_probabilities.argmax(1) == val_labels))
    if config.ensemble == 1:
        what = f"validation accuracy (best epoch, {best_epoch(history)['epoch']} of {len(history)})"
    else:
        what = f"validation accuracy of the {config.ensemble}-member ensemble"
    print(f"{what}{' with test-time augmentation' if config.tta else ''}: {100 * accuracy:.2f}%")


def print_misclassified(val_images, val_probabilities, val_labels):
    """SHOW_INCORRECT: every misclassified validation digit listed, the most confident mistakes first, and drawn."""
    import report
    predictions = val_probabilities.argmax(1)
    picture = report.plot_misclassified(val_images, val_labels, val_probabilities,
                                        f"{RESOURCES_DIR}/misclassified_digits.png")
    print(f"misclassified validation digits (the first 64 drawn in {picture}):")
    for index in report.misclassified(val_labels, val_probabilities):
        print(f"  validation digit {index}: true {val_labels[index]}, predicted {predictions[index]} "
              f"(probability {val_probabilities[index, predictions[index]]:.2f})")


if __name__ == "__main__":
    sys.exit(main())
