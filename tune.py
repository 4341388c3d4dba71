"""Search for the best network and training recipe with Optuna, in the time you have, resumably.

    python tune.py --trials 50 --timeout 3600     # 50 more trials or an hour, whichever comes first
    python tune.py --quick                         # a smoke run of a couple of minutes on 3,000 digits
    python run.py --params model/best_params.json  # then train the winner
    python tune.py --workers 2                     # two workers on this machine, on the one study
    python tune.py --storage postgresql://me@db-host/tuning   # on each of several machines
    python tune.py --trials 0                      # no trials: the tables and pictures of the study as it stands

Each trial draws a network (2-3 conv layers of 32-256 filters of 3x3-7x7, 1-2 dense layers of 64-512 units)
and a recipe (optimiser, learning rate, dropout, batch size), trains it on train.csv's training split and scores
it by its best validation accuracy. Optuna's TPE proposes the next trial from the ones before; a trial whose
accuracy after an epoch trails the median of the finished trials' at that epoch is pruned there, so a bad
network costs one epoch, not all of them. The study lives in a SQLite database: every finished trial is kept,
and the same command resumes an interrupted search.

Several workers share one study, on this machine (--workers K) or on several (--storage postgresql://USER@HOST/DB
on each; README: several machines); Optuna hands each trial to one worker. A search counts finished trials
(pruned ones included): --trials N fixes its target when it starts, N more than the study has, and every worker
that joins it, or resumes it after Ctrl-C or a time limit, works to that same target, waiting for the last
trials running elsewhere rather than start one too many. --timeout bounds each worker, on its own clock. A
worker lost mid-trial (kill -9, a machine gone) stops giving its heartbeat; after --grace_period seconds another
worker marks its trial failed and runs its params again, so the search still ends with its N trials.

Writes resources/tuning.md (the best and worst 10 trials), resources/tuning_history.png,
resources/tuning_accuracies.png and model/best_params.json; a --quick smoke run writes the same names ending in
_quick (tuning_quick.md, ..., best_params_quick.json), never over a real search's.
"""
# ---- settings: each is also a flag, e.g. --trials 20 ----
trials = 100                          # finished trials (pruned ones count) this search adds to the study; a worker
                                      # joining a search under way, or resuming one cut short, works to its count.
                                      # 0: no trials, only the tables and pictures of the study as it stands
timeout = 0                           # seconds, for each worker on its own clock; 0: no limit. A trial still
                                      # training then is stopped there
workers = 1                           # worker processes to start on this machine, all on the one study
report = True                         # write the tables and pictures at the end (--no-report: leave them to others)
max_n_epochs = 10                     # per trial; the one-cycle schedule spans them
patience = 3                          # a trial stops after this many epochs without a better validation accuracy
rows = 0                              # use the first this many digits of train.csv; 0: all
prune_after = 5                       # finished trials before pruning starts: the median needs a few to mean much
storage = "sqlite:///model/tuning.db"   # where the study lives: an Optuna storage URL, e.g.
                                        # postgresql://USER@HOST/DB for workers on several machines
study = "digit-recognizer"            # the study's name in the storage
percent_data_for_training = 90        # of the digits, to train each trial; the rest scores it
seed = 42                             # the split, every trial's initial weights and data order, the sampler
                                      # of a search's first worker (one that joins draws its own)
heartbeat_interval = 10               # seconds between a running trial's signs of life in the storage
grace_period = 60                     # seconds without one after which its worker counts as lost: the trial is
                                      # failed and its params tried again
max_retry = 3                         # times a lost trial's params are tried again
quick = False                         # 3,000 digits, 2 epochs a trial, 10 trials, at most 120 s: a smoke run
# ------------------------------------------------------------------------------
QUICK = dict(rows=3000, max_n_epochs=2, trials=10, timeout=120, prune_after=3, study="digit-recognizer-quick")

# ---- the search space ----
CONV_LAYERS = (2, 3)                  # 28x28 -> 14x14 -> 7x7 (-> 3x3): each block halves the digit
FILTERS = (32, 64, 128, 256)          # per conv layer
KERNEL_SIZES = (3, 5, 7)              # per conv layer
DENSE_LAYERS = (1, 2)
UNITS = (64, 512)                     # per dense layer, in steps of 64
DROPOUT_RATES = (0.0, 0.5)            # after each dense layer
BATCH_SIZES = (32, 64, 128, 256)
# Peak learning rates, log-uniform, per optimiser: Adadelta scales its steps by a ratio of running RMS values,
# so its rate is a multiplier near 1 where Adam's is a step size near 1e-3.
LEARNING_RATES = {"adam": (1e-4, 1e-2), "nadam": (1e-4, 1e-2), "adadelta": (0.1, 3.0)}

MODEL_DIR, RESOURCES_DIR = "model", "resources"
import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import time
import warnings
from collections import Counter
from datetime import datetime

from devices import compute_dtype, import_tensorflow

WORKER_ENVIRONMENT = dict(os.environ)  # as given: import_tensorflow sets what would keep the workers' start-up noisy
tf = import_tensorflow()
import numpy as np
import optuna
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator
from optuna.trial import TrialState

import data
import files
import flags
import train
from model import DigitNet
from recipes import MODELS, training_recipe, tuned_network, tuned_recipe

# Every trial is trained by the project's default recipe (recipes.MODELS["digitnet"]) but for what the trial
# draws: the network, the optimiser, its learning rate, the batch size and dropout.
DEFAULT_RECIPE = MODELS["digitnet"].recipe
# The project's default, model.DigitNet with its recipe, as a trial draws it. A new study trains it first, so
# that the results show what the search found beside the default, trained the same way.
DEFAULT_TRIAL = {"conv_layers": 3, "filters_1": 32, "kernel_size_1": 5, "filters_2": 64, "kernel_size_2": 3,
                 "filters_3": 128, "kernel_size_3": 3, "dense_layers": 1, "units_1": 128,
                 "dropout_rate": DigitNet().dropout_rate, "optimizer": DEFAULT_RECIPE.optimizer,
                 f"learning_rate_{DEFAULT_RECIPE.optimizer}": DEFAULT_RECIPE.learning_rate,
                 "batch_size": DEFAULT_RECIPE.batch_size}


def suggest_params(trial):
    """Draw one point of the search space from the trial -> params: the network and how to train it."""
    conv_layers = trial.suggest_int("conv_layers", min(CONV_LAYERS), max(CONV_LAYERS))
    dense_layers = trial.suggest_int("dense_layers", min(DENSE_LAYERS), max(DENSE_LAYERS))
    optimizer = trial.suggest_categorical("optimizer", list(LEARNING_RATES))
    return dict(
        filters=[trial.suggest_categorical(f"filters_{i}", FILTERS) for i in range(1, conv_layers + 1)],
        kernel_sizes=[trial.suggest_categorical(f"kernel_size_{i}", KERNEL_SIZES) for i in range(1, conv_layers + 1)],
        units=[trial.suggest_int(f"units_{i}", *UNITS, step=64) for i in range(1, dense_layers + 1)],
        dropout_rate=trial.suggest_float("dropout_rate", *DROPOUT_RATES),
        optimizer=optimizer,
        # One name per optimiser, so that TPE learns each one's good rates apart.
        learning_rate=trial.suggest_float(f"learning_rate_{optimizer}", *LEARNING_RATES[optimizer], log=True),
        batch_size=trial.suggest_categorical("batch_size", BATCH_SIZES),
    )


# ---- best_params.json ----

def write_params(path, params):
    files.write_json(path, params)


# ---- the search ----

# What a search counts: a trial that ran to its end or was pruned. A failed one (its worker lost, or Ctrl-C) counts
# for nothing; a lost worker's params are queued again.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def open_storage(config):
    """config.storage with Optuna's heartbeat: a trial whose worker has given no sign of life for
    config.grace_period seconds is failed by the next worker to look, and its params are queued again (up to
    config.max_retry times). postgresql:// is read as postgresql+psycopg://, the driver requirements.txt installs."""
    url = config.storage
    if url.startswith("sqlite:///"):  # SQLite makes the file but not its directory
        os.makedirs(os.path.dirname(url.removeprefix("sqlite:///")) or ".", exist_ok=True)
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    # Optuna calls its heartbeat experimental, and warns so.
    with warnings.catch_warnings(category=optuna.exceptions.ExperimentalWarning, action="ignore"):
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=config.heartbeat_interval, grace_period=config.grace_period,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=config.max_retry))


def open_study(config):
    """The study config.study in config.storage, created if new, with DEFAULT_TRIAL as its first trial."""
    study = optuna.create_study(storage=open_storage(config), study_name=config.study, direction="maximize",
                                load_if_exists=True, pruner=optuna.pruners.MedianPruner(n_startup_trials=config.prune_after))
    if not study.trials:
        study.enqueue_trial(DEFAULT_TRIAL, skip_if_exists=True)
    return study


def count_finished(study):
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def join_search(study, config):
    """The search this worker works in -> (its target, the finished trials the study is to have; whether it
    joined). A search under way, short of its target (other workers', or one cut short by Ctrl-C or a time limit),
    is joined; else a new one starts, config.trials more than the study has finished."""
    target, finished = study.user_attrs.get("target"), count_finished(study)
    if target and finished < target:
        print(f"joining the search under way: {finished} of its {target} finished trials "
              f"(--trials counts from a search's start)", flush=True)
        return target, True
    target = finished + config.trials
    study.set_user_attr("target", target)
    print(f"a new search: {config.trials} more finished trials, to {target}"
          f"{f', or {config.timeout}s for each worker' if config.timeout else ''}", flush=True)
    return target, False


class SearchComplete(Exception):
    """A trial taken when the search's target was already met by the trials before it: it is failed unrun."""


def in_flight(trial, grace_period):
    """Whether a trial is running and will finish: once its worker is named (the first thing a trial does), its
    heartbeat has begun and goes stale if the worker is lost; a trial unnamed after grace_period seconds lost its
    worker before that, and nothing will ever fail it."""
    if trial.state != TrialState.RUNNING:
        return False
    return "worker" in trial.user_attrs or (datetime.now() - trial.datetime_start).total_seconds() < grace_period


def search_done(study, target, deadline, grace_period, poll_seconds):
    """Whether this worker should start no more trials: the study has its target of finished trials, or the
    deadline (time.time() seconds) has passed. While the trials running elsewhere would make up the target, it waits
    for them rather than start one too many, and fails those whose worker was lost (Optuna's heartbeat): their
    params come back as waiting trials, and it runs them."""
    while time.time() < deadline:
        with warnings.catch_warnings(category=optuna.exceptions.ExperimentalWarning, action="ignore"):
            optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state in FINISHED for t in trials)
        running = sum(in_flight(t, grace_period) for t in trials)
        if finished >= target:
            return True
        if finished + running < target:
            return False
        time.sleep(poll_seconds)
    return True


def run_trial(trial, digits, config, deadline):
    """Train the trial's network -> its best validation accuracy. Each epoch's accuracy goes to the pruner,
    which may stop the trial there; so does the deadline (time.time() seconds)."""
    params = suggest_params(trial)
    trial.set_user_attr("params", params)
    network = tuned_network(params, config.seed)
    recipe = tuned_recipe(params, training_recipe("digitnet", max_n_epochs=config.max_n_epochs,
                                                  patience=config.patience))
    steps_per_epoch = math.ceil(len(digits[1]) / recipe.batch_size)  # as train.train counts them
    stop = []

    def after_step(step, training_seconds):
        """At the last step of an epoch, score the epoch for the pruner; -> True (stop) if pruned or out of time."""
        if step % steps_per_epoch == 0:
            _, accuracy = train.evaluate(network, digits[2], digits[3])
            trial.report(accuracy, step // steps_per_epoch)
            if trial.should_prune():
                stop.append("pruned")
        if time.time() > deadline:
            trial.set_user_attr("stopped", "out of time")
            stop.append("out of time")
        return bool(stop)

    options = train.RunOptions(after_step=after_step, compute_dtype=compute_dtype(mixed_precision=True),  # as run.py
                               verbose=False)
    history = train.train(network, digits, recipe, config.seed, options)
    if stop:
        raise optuna.TrialPruned()
    return max(record["val_accuracy"] for record in history)


def search(study, digits, config):
    """Run trials of the study until its search has its target (join_search), for at most config.timeout seconds
    (0: no limit)."""
    deadline = time.time() + config.timeout if config.timeout else math.inf
    target, joined = join_search(study, config)
    # A search's first worker draws from config.seed, so that a lone search repeats; a worker that joins draws from
    # the system, else workers started together would draw the same networks.
    study.sampler = optuna.samplers.TPESampler(seed=None if joined else config.seed + len(study.trials))
    if search_done(study, target, deadline, config.grace_period, config.heartbeat_interval):
        return

    def objective(trial):
        """run_trial, unless the trials before this one make up the target: two workers that found the search one
        trial short at the same moment both took one."""
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        trials = study.get_trials(deepcopy=False)
        if sum(t.state in FINISHED or (t.number < trial.number and in_flight(t, config.grace_period))
               for t in trials) >= target:
            raise SearchComplete(f"trial {trial.number} is not needed: the search has its {target} trials without it")
        return run_trial(trial, digits, config, deadline)

    def stop_when_done(study, trial):
        if search_done(study, target, deadline, config.grace_period, config.heartbeat_interval):
            study.stop()

    # gc after each trial: a network and its traced functions are held in reference cycles.
    study.optimize(objective, timeout=config.timeout or None, catch=(SearchComplete,),
                   callbacks=[print_trial, stop_when_done], gc_after_trial=True)


def worker_flags(config):
    """The flags that make a lone worker of this config: every setting as given, but --workers 1 --no-report."""
    given = {**vars(config), "workers": 1, "report": False}
    return [f"--{name}" if value is True else f"--no-{name}" if value is False else f"--{name}={value}"
            for name, value in given.items()]


def run_workers(study, config):
    """config.workers lone workers of this script on the study, each a process of its own, after starting their
    search (join_search); -> the exit code: 0 once the search has its target, whatever became of the workers."""
    target, _ = join_search(study, config)
    workers = [subprocess.Popen([sys.executable, os.path.abspath(__file__), *worker_flags(config)],
                                env=WORKER_ENVIRONMENT) for _ in range(config.workers)]
    try:
        ended = [worker.wait() for worker in workers]
    except KeyboardInterrupt:  # the workers had it too: they end as a lone run does
        for worker in workers:
            worker.wait()
        print(f"\ninterrupted: the finished trials are kept in {config.storage}; the same command resumes")
        return 0
    for number, (worker, code) in enumerate(zip(workers, ended), 1):
        if code:
            print(f"worker {number} (pid {worker.pid}) ended with {f'signal {-code}' if code < 0 else f'code {code}'}")
    finished = count_finished(study)
    print(f"study {config.study}: {finished} of the search's {target} finished trials", flush=True)
    return 0 if finished >= target else 1


# ---- what it found ----

def layers(params):
    """-> ('5x5/32 3x3/64', '256'): each conv layer's kernel/filters, each dense layer's units."""
    convs = " ".join(f"{k}x{k}/{f}" for k, f in zip(params["kernel_sizes"], params["filters"]))
    return convs, " ".join(map(str, params["units"]))


def print_trial(study, trial):
    if "params" not in trial.user_attrs:  # failed before it drew its network
        return
    params, epochs_done = trial.user_attrs["params"], len(trial.intermediate_values)
    last = f"{100 * trial.value:.2f}%" if trial.value is not None else "no accuracy yet"
    if trial.state == TrialState.COMPLETE:
        best = study.best_trial
        outcome = f"{last} in {epochs_done} epochs (best {100 * best.value:.2f}%, trial {best.number})"
    elif trial.user_attrs.get("stopped"):
        outcome = f"stopped at the time limit after {epochs_done} epochs, {last}"
    else:
        outcome = f"pruned after epoch {epochs_done}, {last}, behind the median"
    convs, units = layers(params)
    print(f"trial {trial.number:3d}: {outcome}  [{convs} | {units}, dropout {params['dropout_rate']:.2f}, "
          f"{params['optimizer']} {params['learning_rate']:.1e}, batch {params['batch_size']}]  "
          f"{trial.duration.total_seconds():.0f}s", flush=True)


def markdown_table(trials):
    lines = ["| trial | val accuracy | conv kxk/filters | dense units | dropout | optimiser | learning rate | batch "
             "| epochs | seconds |", "|" + " --- |" * 10]
    for trial in trials:
        params = trial.user_attrs["params"]
        convs, units = layers(params)
        lines.append(f"| {trial.number} | {100 * trial.value:.2f}% | {convs} | {units} | {params['dropout_rate']:.2f} "
                     f"| {params['optimizer']} | {params['learning_rate']:.1e} | {params['batch_size']} "
                     f"| {len(trial.intermediate_values)} | {trial.duration.total_seconds():.0f} |")
    return "\n".join(lines)


def error_percent(trial):
    """100 * (1 - accuracy), with a perfect score (possible on a small validation split) drawn at 0.01%: a log
    axis has no 0."""
    return max(100 * (1 - trial.value), 0.01)


def plot_history(trials, path):
    """Each trial's validation error (a pruned trial's at the epoch it stopped) and the best so far."""
    figure = Figure(figsize=(8, 4.5))
    axis = figure.subplots()
    for state, style in [(TrialState.PRUNED, dict(marker="x", color="0.6", label="pruned or stopped")),
                         (TrialState.COMPLETE, dict(marker="o", color="C0", label="finished"))]:
        shown = [t for t in trials if t.state == state and t.value is not None]
        axis.scatter([t.number for t in shown], [error_percent(t) for t in shown], **style)
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    best = np.minimum.accumulate([error_percent(t) for t in finished])
    axis.step([t.number for t in finished], best, where="post", color="C3", label="best so far")
    axis.set(yscale="log", xlabel="trial", ylabel="validation error (%), log scale",
             title=f"tuning history: {len(trials)} trials, the best error {best[-1]:.2f}%")
    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 0.6, 2, 40 rather than 6x10^-1
    axis.yaxis.set_major_formatter(plain)
    axis.yaxis.set_minor_locator(LogLocator(subs=(2, 4, 6)))
    axis.yaxis.set_minor_formatter(plain)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.legend()
    figure.tight_layout()
    return files.save_figure(figure, path)


def plot_accuracies(finished, path):
    """How the finished trials' validation accuracies are spread."""
    accuracies = [100 * t.value for t in finished]
    figure = Figure(figsize=(8, 4.5))
    axis = figure.subplots()
    axis.hist(accuracies, bins=20, color="C0")
    axis.axvline(max(accuracies), color="C3", label=f"best {max(accuracies):.2f}%")
    axis.set(xlabel="validation accuracy (%)", ylabel="finished trials",
             title=f"validation accuracy of {len(accuracies)} finished trials")
    axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    axis.legend()
    figure.tight_layout()
    return files.save_figure(figure, path)


def default_sentence(trials, finished):
    """Where the project's default (DEFAULT_TRIAL) came, if the study trained it."""
    default = next((t for t in trials if t.params == DEFAULT_TRIAL), None)
    if default is None or default.state != TrialState.COMPLETE:
        return "The default network and recipe did not finish in this study."
    rank = [t.number for t in finished].index(default.number) + 1
    return (f"The default, DigitNet with run.py's recipe, is trial {default.number}: {100 * default.value:.2f}%, "
            f"{rank} of {len(finished)} finished trials.")


def write_results(study, resources_dir=RESOURCES_DIR, model_dir=MODEL_DIR, suffix=""):
    """The best and worst 10 finished trials as tables (printed and in tuning{suffix}.md), the two pictures, and
    the best trial's params in best_params{suffix}.json; -> the best params, or None before any trial has
    finished."""
    trials = [t for t in study.get_trials(deepcopy=False) if "params" in t.user_attrs]
    finished = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: -t.value)
    if not finished:
        print("no trial has finished yet: nothing to report")
        return None
    states, params = Counter(t.state for t in trials), f"{model_dir}/best_params{suffix}.json"
    out_of_time = sum(bool(t.user_attrs.get("stopped")) for t in trials)
    best = finished[0]
    text = (f"# Hyperparameter search: study {study.study_name}\n\n"
            f"{len(trials)} trials: {states[TrialState.COMPLETE]} finished, {states[TrialState.PRUNED]} pruned "
            f"({out_of_time} of them at the time limit), {states[TrialState.FAIL]} failed, "
            f"{states[TrialState.RUNNING]} running. Settings: {json.dumps(study.user_attrs.get('settings'))}.\n"
            f"The best, trial {best.number}, reached {100 * best.value:.2f}% validation accuracy; its params are in "
            f"{params} (`python run.py --params {params}` trains it).\n"
            f"{default_sentence(trials, finished)}\n\n"
            f"## The best {min(10, len(finished))}\n\n{markdown_table(finished[:10])}\n\n"
            f"## The worst {min(10, len(finished))}\n\n{markdown_table(finished[::-1][:10])}\n")
    print(text)
    files.write_text(f"{resources_dir}/tuning{suffix}.md", text)
    plot_history(trials, f"{resources_dir}/tuning_history{suffix}.png")
    plot_accuracies(finished, f"{resources_dir}/tuning_accuracies{suffix}.png")
    write_params(params, best.user_attrs["params"])
    print(f"tuning: {resources_dir}/tuning{suffix}.md, tuning_history{suffix}.png, tuning_accuracies{suffix}.png; "
          f"best params: {params}")
    return best.user_attrs["params"]


def parse_flags(argv):
    """Every setting above becomes --name; --quick changes the defaults of those in QUICK, not what is given."""
    parser = flags.settings_parser(globals())
    if parser.parse_known_args(argv)[0].quick:
        parser.set_defaults(**QUICK)
    config = parser.parse_args(argv)
    for name in ("max_n_epochs", "patience"):
        if getattr(config, name) < 1:
            parser.error(f"--{name} {getattr(config, name)}: must be at least 1")
    for name in ("workers", "heartbeat_interval", "grace_period"):
        if getattr(config, name) < 1:
            parser.error(f"--{name} {getattr(config, name)}: must be at least 1")
    if min(config.trials, config.timeout, config.prune_after, config.max_retry) < 0:
        parser.error("--trials, --timeout, --prune_after and --max_retry must be 0 or more")
    if config.trials == 0 and not config.report:
        parser.error("--trials 0 --no-report: nothing to do")
    if config.grace_period <= config.heartbeat_interval:
        parser.error(f"--grace_period {config.grace_period}: must be longer than --heartbeat_interval "
                     f"{config.heartbeat_interval}, or a worker alive would count as lost")
    if config.rows and config.rows < 100:
        parser.error(f"--rows {config.rows}: must be 0 (all) or at least 100, for a validation split of every digit")
    return config


def main(argv=None):
    config = parse_flags(sys.argv[1:] if argv is None else argv)
    # A full disk, met by the study's SQLite file or by the results' files: one line. A database server's disk is
    # the server's to report.
    study_file = config.storage.removeprefix("sqlite:///") if config.storage.startswith("sqlite:///") else None
    try:
        with files.writing(study_file, "the study") if study_file else contextlib.nullcontext():
            return search_and_report(config)
    except files.DiskFull as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def search_and_report(config):
    """The search that config describes, then its results (write_results). -> the exit code."""
    if config.quick:
        print(f"quick: {config.rows} digits, {config.max_n_epochs} epochs a trial, {config.trials} trials or "
              f"{config.timeout}s, study {config.study}: a smoke run of the search; its numbers mean nothing")
    try:
        images, labels = data.load_train(data.find_csv("train"), max_rows=config.rows or None)
    except data.DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    digits = data.split_train_validation(images, labels, config.percent_data_for_training, config.seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # print_trial says what matters, in one line a trial
    tf.get_logger().setLevel("ERROR")  # every trial traces its own step: TensorFlow's retracing warning is expected
    tuning = open_study(config)
    # What an accuracy means depends on these: trials run under other settings do not compare.
    settings = dict(digits=len(labels), epochs=config.max_n_epochs, patience=config.patience,
                    percent_data_for_training=config.percent_data_for_training, seed=config.seed)
    recorded = tuning.user_attrs.get("settings", settings)
    if recorded != settings:
        print(f"error: study {config.study} in {config.storage} was run with {recorded}, not "
              f"{settings}; resume it with those or start another with --study NAME", file=sys.stderr)
        return 2
    tuning.set_user_attr("settings", settings)
    print(f"study {config.study} in {config.storage}: {len(tuning.trials)} trials so far, {config.max_n_epochs} "
          f"epochs each, on {len(digits[1])} training and {len(digits[3])} validation digits", flush=True)
    code = 0
    if config.trials == 0:
        print("--trials 0: no trials, the study's results as they stand")
    elif config.workers > 1:
        code = run_workers(tuning, config)
    else:
        try:
            search(tuning, digits, config)
        except KeyboardInterrupt:
            print(f"\ninterrupted: the finished trials are kept in {config.storage}; the same command resumes")
    if config.report:
        write_results(tuning, suffix="_quick" if config.quick else "")
    return code


if __name__ == "__main__":
    sys.exit(main())
