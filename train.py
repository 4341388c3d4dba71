"""The training loop: mini-batches, augmentation, an optimiser and its learning-rate schedule, early stopping,
checkpoints and TensorBoard logs. run.py calls train(); so do the experiments, the tuner and the benchmarks.
Also the write-ups' extras: class weights, an L1/L2 weight penalty, a learning rate cut on a plateau; and
outlier exposure, letters in each batch taught as no digit.

    train(model, split, recipe, seed, options)   -> the history, one dict per epoch

Read top to bottom: what a run is given (Recipe, RunOptions), the loss, then Training: building the step,
one epoch, the end of an epoch (evaluation, the best epoch, early stopping), checkpoints and resumption, logs.
"""
import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
import weakref
from typing import Callable

import numpy as np
import tensorflow as tf

import files
from tools import (TRAINING_DRAWS, Adadelta, Adam, ExponentialMovingAverage, LossScaleOptimizer, Nadam,
                   data_augmentation, one_cycle_learning_rate, photo_remnants, random_generator)

EVAL_BATCH_SIZE = 1000
OPTIMIZERS = {"adam": Adam, "nadam": Nadam, "adadelta": Adadelta}
SCHEDULES = ("one_cycle", "constant", "plateau")
NO_DIGIT = -1  # the label of a batch's letters (outlier exposure)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a network is trained: everything but the data, the seed and where the outputs go.
    Each network's own recipe is in recipes.MODELS."""
    max_n_epochs: int | float     # the one-cycle schedule spans this many; early stopping may end sooner. A
                                  # fraction ends the last epoch early (time_to_accuracy's short schedules)
    patience: int                 # epochs without a better validation accuracy before stopping, counted only
                                  # once the schedule has annealed (see Training.annealed_from)
    batch_size: int
    learning_rate: float          # the schedule's peak (one_cycle) or its start (constant, plateau)
    optimizer: str = "adam"       # a name in OPTIMIZERS
    schedule: str = "constant"    # one_cycle, constant, or plateau: learning_rate * plateau_factor each time
    plateau_patience: int = 4     # ... epochs pass without a lower validation loss (Keras' ReduceLROnPlateau)
    plateau_factor: float = 0.1
    label_smoothing: float = 0.0
    augmentation: dict | None = None  # keyword arguments of tools.data_augmentation; None: none
    class_weights: object = None  # per-class loss weights [10], "balanced" (from the training labels), or None
    weight_penalty: tuple | None = None  # (l1, l2) for kernel_penalty, added to the loss
    ema_decay: float = 0.0        # > 0: evaluate and keep an exponential moving average of the weights; 0: off
    outlier_exposure: float = 0.0  # > 0: each batch also holds an eighth as many letters (letters.py), augmented
                                  # as the digits are, their loss (uniform_cross_entropy) weighted by this: the
                                  # network learns to be unsure of what is no digit; 0: off


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """Where a run's outputs go and what it runs on; none of it changes what is learnt."""
    checkpoint_dir: str | None = None  # tf.train.CheckpointManager's 'latest' and 'best' go here
    log_dir: str | None = None         # TensorBoard
    resume: bool = False               # go on from checkpoint_dir/latest, if there is one, exactly where it stopped
    # after_step(step, training_seconds) after every step; its returning True ends training there (the
    # benchmarks measure from it, the tuner prunes from it)
    after_step: Callable | None = None
    strategy: object = None            # a tf.distribute.Strategy whose replicas share each batch; None: one device
    compute_dtype: str = "float32"     # or float16/bfloat16: the layers compute in it, the weights stay float32
    verbose: bool = True


def cross_entropy(logits, labels, label_smoothing=0.0, class_weights=None, global_batch_size=None):
    """Mean softmax cross-entropy against one-hot targets smoothed towards uniform:
    target = (1 - s) * one_hot + s / n_classes.
    With class_weights w [n_classes]: mean_i w[label_i] * loss_i instead (Keras' class_weight).
    With global_batch_size, for a replica holding part of the batch: sum_i loss_i / global_batch_size, so that
    the replicas' losses (and gradients) add up to the global batch's mean."""
    n_classes = logits.shape[-1]
    targets = tf.one_hot(labels, n_classes) * (1.0 - label_smoothing) + label_smoothing / n_classes
    losses = tf.nn.softmax_cross_entropy_with_logits(targets, logits)
    if class_weights is not None:
        losses *= tf.gather(class_weights, labels)
    if global_batch_size is None:
        return tf.reduce_mean(losses)
    return tf.nn.compute_average_loss(losses, global_batch_size=global_batch_size)


def uniform_cross_entropy(logits):
    """Per picture, the cross-entropy of softmax(logits) against equal targets, outlier exposure's loss
    (Hendrycks, Mazeika and Dietterich 2019): -(1/K) sum_k log p_k = logsumexp(z) - mean_k z_k, least (log K)
    when all K classes are equally likely."""
    return tf.reduce_logsumexp(logits, axis=-1) - tf.reduce_mean(logits, axis=-1)


def balanced_class_weights(labels, n_classes=10):
    """w[c] = N / (n_classes * count[c]) (scikit-learn's 'balanced'): every class carries the same total
    weight, N / n_classes, however many digits it has."""
    return (len(labels) / (n_classes * np.bincount(labels, minlength=n_classes))).astype(np.float32)


def kernel_penalty(variables, l1, l2):
    """l1 * sum|w| + l2 * sum w^2 over the kernels, the variables of rank >= 2, so that biases and batch-norm
    parameters go free: Keras' kernel_regularizer=L1L2(l1, l2) on every layer."""
    return tf.add_n([l1 * tf.reduce_sum(tf.abs(w)) + l2 * tf.reduce_sum(tf.square(w))
                     for w in variables if len(w.shape) >= 2])


class Plateau:
    """Keras' ReduceLROnPlateau on a loss: once `patience` epochs in a row have not beaten the best loss by
    min_delta, lr <- lr * factor and the count starts again."""

    def __init__(self, patience, factor, min_delta=1e-4):
        self.patience, self.factor, self.min_delta = patience, factor, min_delta
        self.best, self.flat_epochs = math.inf, 0

    def __call__(self, loss, learning_rate):
        """The learning rate for the next epoch, given this epoch's loss."""
        if loss < self.best - self.min_delta:
            self.best, self.flat_epochs = loss, 0
            return learning_rate
        self.flat_epochs += 1
        if self.flat_epochs < self.patience:
            return learning_rate
        self.flat_epochs = 0
        return learning_rate * self.factor


def graph_function(function, **options):
    """tf.function(function) without AutoGraph. AutoGraph rewrites a function from its source file, read from
    disk when the function is first traced: a .py file edited while a run trains would then change, or break,
    the functions the run traces late (its evaluation, its export) and lose the run. Traced as it is, the
    function runs the code the run started with. The project needs no rewriting: its branches on tensors are
    tf.where and tf.cond."""
    return tf.function(function, autograph=False, **options)


_compiled_predictions = weakref.WeakKeyDictionary()  # model -> its traced inference function


def predict_probabilities(model, images, batch_size=EVAL_BATCH_SIZE):
    """Softmax outputs of the model in inference mode, batch by batch -> numpy [N, 10]."""
    if model not in _compiled_predictions:
        model_reference = weakref.ref(model)  # the cache must not keep a finished model alive
        _compiled_predictions[model] = graph_function(
            lambda batch: tf.nn.softmax(model_reference()(batch, training=False)),
            input_signature=[tf.TensorSpec([None, *images.shape[1:]], tf.float32)])
    probabilities = _compiled_predictions[model]
    outputs = [probabilities(images[i:i + batch_size]).numpy() for i in range(0, len(images), batch_size)]
    return np.concatenate(outputs) if outputs else np.zeros([0, 10], np.float32)


def evaluate(model, images, labels):
    """-> (mean cross-entropy, accuracy) of the model in inference mode."""
    probabilities = predict_probabilities(model, images)
    loss = -np.mean(np.log(probabilities[np.arange(len(labels)), labels] + 1e-12))
    return float(loss), float(np.mean(probabilities.argmax(1) == labels))


class ProgressBar:
    """A one-line bar redrawn in place; silent when output is not a terminal (logs, CI)."""

    def __init__(self, total, enabled=True, width=30):
        self.total, self.width, self.enabled = total, width, enabled and sys.stdout.isatty()

    def update(self, done, loss):
        if self.enabled:
            filled = self.width * done // self.total
            print(f"\r  [{'=' * filled}{'.' * (self.width - filled)}] {done}/{self.total}  loss {loss:.4f}",
                  end="", flush=True)

    def close(self):
        if self.enabled:
            print("\r" + " " * (self.width + 40) + "\r", end="", flush=True)


def train(model, split, recipe, seed, options=RunOptions()):
    """Train `model` in place on split = (train_images, train_labels, val_images, val_labels) by `recipe`, then
    restore its best epoch (best_epoch). -> the history: one dict per epoch.

    Ctrl-C or SIGTERM ends the current step, saves 'latest' and raises TrainingInterrupted; a loss that is not
    finite raises TrainingDiverged; a 'latest' that does not fit the network raises CheckpointMismatch; a full
    disk raises files.DiskFull, the checkpoints as they were before the save that met it.
    With options.strategy, the model must have been built under strategy.scope()."""
    return Training(model, split, recipe, seed, options).run()


def best_epoch(history):
    """The epoch that train() keeps: of the annealed epochs (each record's "annealed"; all of them if none is),
    the highest validation accuracy, then the lowest validation loss, the earliest of equals; without a
    validation split, the last."""
    if not history or math.isnan(history[-1]["val_accuracy"]):
        return history[-1] if history else None
    candidates = [record for record in history if record.get("annealed", True)] or history
    return max(candidates, key=lambda record: (record["val_accuracy"], -record["val_loss"]))


class Training:
    """One run of train(): the state a run keeps and the pieces of a run, each a method.

    The state is everything a resumed run needs to go on exactly where this one stopped: the weights, the
    optimiser's slots, the random stream of augmentation and dropout, the best epoch's weights and the loop's
    own counters (`progress`, kept in the checkpoint as JSON). The data order needs no saving: it is a
    function of (seed, epoch)."""

    def __init__(self, model, split, recipe, seed, options):
        if recipe.optimizer not in OPTIMIZERS or recipe.schedule not in SCHEDULES:
            raise ValueError(f"unknown optimizer {recipe.optimizer!r} or schedule {recipe.schedule!r}")
        self.model, self.recipe, self.seed, self.options = model, recipe, seed, options
        self.strategy = options.strategy or tf.distribute.get_strategy()
        if (self.strategy.num_replicas_in_sync > 1
                and not self.strategy.extended.variable_created_in_scope(model.trainable_variables[0])):
            raise ValueError("train() with a strategy needs a model built under strategy.scope()")
        train_images, train_labels, self.val_images, self.val_labels = split
        self.n_train = len(train_images)
        self.steps_per_epoch = math.ceil(self.n_train / recipe.batch_size)
        self.total_steps = math.ceil(self.steps_per_epoch * recipe.max_n_epochs)
        self.images, self.labels = tf.constant(train_images), tf.constant(train_labels)
        self.letters = None
        if recipe.outlier_exposure:
            import letters  # its fonts and photo cleaning load only for a run that teaches them
            self.letters = tf.constant(letters.letter_pictures()[0])
        class_weights = recipe.class_weights
        if isinstance(class_weights, str) and class_weights == "balanced":
            class_weights = balanced_class_weights(train_labels)
        self.class_weights = None if class_weights is None else tf.constant(class_weights, tf.float32)
        with self.strategy.scope():  # a copy of each variable on every replica's device
            self.optimizer = OPTIMIZERS[recipe.optimizer](model.trainable_variables, learning_rate=recipe.learning_rate)
            if options.compute_dtype == "float16":  # float16's narrow range needs the loss scaled
                self.optimizer = LossScaleOptimizer(self.optimizer)
            self.rng = random_generator(seed, TRAINING_DRAWS)
            # the averages are what is evaluated, kept as the best epoch and exported; the weights train on
            self.ema = (ExponentialMovingAverage(model.trainable_variables, recipe.ema_decay) if recipe.ema_decay
                        else None)
            self.best_weights = [tf.Variable(variable, trainable=False) for variable in model.variables]
        self.plateau = Plateau(recipe.plateau_patience, recipe.plateau_factor)
        self.annealed_from = self.first_annealed_epoch()
        self.progress = dict(epochs_done=0, steps_done=0, loss_sum=0.0, correct_sum=0.0, best_epoch=0, history=[],
                             plateau=[self.plateau.best, self.plateau.flat_epochs])
        self.training_seconds = 0.0
        self.step = graph_function(self.global_step, input_signature=[tf.TensorSpec([None], tf.int32)])
        self.open_checkpoints()
        self.writers = self.open_logs()

    # ---- the step ----

    def replica_step(self, batch_images, batch_labels):
        """One replica's consecutive share of the global batch -> its part of the loss, of the gradients (whose
        sums over the replicas are the global batch's) and of the count of correct answers."""
        n_replicas, compute_dtype = self.strategy.num_replicas_in_sync, self.options.compute_dtype
        global_batch_size = tf.shape(batch_labels)[0]
        if self.recipe.outlier_exposure:  # counted on the global batch, before each replica takes its share
            n_letters = tf.reduce_sum(tf.cast(batch_labels == NO_DIGIT, tf.int32))
        share = (global_batch_size + n_replicas - 1) // n_replicas
        start = tf.distribute.get_replica_context().replica_id_in_sync_group * share
        batch_images, batch_labels = batch_images[start:start + share], batch_labels[start:start + share]
        with tf.GradientTape() as tape:
            # dropout: each replica its own random stream. The loss is float32 whatever the layers compute in.
            with tf.name_scope("network"):
                logits = tf.cast(self.model(tf.cast(batch_images, compute_dtype), training=True, rng=self.rng),
                                 tf.float32)
            with tf.name_scope("loss"):
                if self.recipe.outlier_exposure:
                    loss = self.exposed_loss(logits, batch_labels, global_batch_size - n_letters, n_letters)
                else:
                    loss = cross_entropy(logits, batch_labels, self.recipe.label_smoothing, self.class_weights,
                                         global_batch_size)
                if self.recipe.weight_penalty:  # counted once over the replicas, not once on each
                    penalty = kernel_penalty(self.model.trainable_variables, *self.recipe.weight_penalty)
                    loss += tf.nn.scale_regularization_loss(penalty)
                differentiated = self.optimizer.scale_loss(loss) if compute_dtype == "float16" else loss
        with tf.name_scope("accuracy"):
            correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, 1, output_type=tf.int32), batch_labels),
                                            tf.float32))
        return loss, tape.gradient(differentiated, self.model.trainable_variables), correct

    def exposed_loss(self, logits, batch_labels, n_digits, n_letters):
        """This replica's part of the loss with outlier exposure: the mean cross-entropy of the global batch's
        digits, plus outlier_exposure times the mean uniform_cross_entropy of its letters."""
        digits = batch_labels != NO_DIGIT
        letters_loss = tf.reduce_sum(tf.where(digits, 0.0, uniform_cross_entropy(logits)))
        return (cross_entropy(tf.boolean_mask(logits, digits), tf.boolean_mask(batch_labels, digits),
                              self.recipe.label_smoothing, self.class_weights, n_digits)
                + self.recipe.outlier_exposure * letters_loss / tf.cast(tf.maximum(n_letters, 1), tf.float32))

    def global_step(self, batch_indices):
        """One step on the batch of these rows -> (its mean loss, its count of correct answers). Traced once."""
        with tf.name_scope("batch"):
            batch_images = tf.gather(self.images, batch_indices)
            batch_labels = tf.gather(self.labels, batch_indices)
        if self.recipe.augmentation:  # on the global batch: its random draws do not depend on the replica count
            batch_images = data_augmentation(batch_images, self.rng, **self.recipe.augmentation)
        if self.recipe.outlier_exposure:
            with tf.name_scope("letters"):
                batch_images, batch_labels = self.with_letters(batch_images, batch_labels)
        loss, gradients, correct = self.strategy.run(self.replica_step, args=(batch_images, batch_labels))
        with tf.name_scope("sum_over_replicas"):
            loss, correct, *gradients = [self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
                                         for value in [loss, correct, *gradients]]
        with tf.name_scope("optimizer"):
            if self.recipe.schedule == "one_cycle":
                self.optimizer.learning_rate.assign(
                    one_cycle_learning_rate(self.optimizer.iterations, self.total_steps, self.recipe.learning_rate))
            # once, on the summed gradients: every replica's copy moves alike (for float16, LossScaleOptimizer
            # unscales them, or skips the step if they overflowed)
            self.optimizer.apply_gradients(gradients)
            if self.ema:
                self.ema.update()
        return loss, correct

    def with_letters(self, batch_images, batch_labels):
        """The batch and an eighth as many letters drawn at random, augmented as the digits are, after them."""
        n_letters = tf.shape(batch_labels)[0] // 8
        letters = tf.gather(self.letters, self.rng.uniform([n_letters], 0, tf.shape(self.letters)[0], tf.int32))
        if self.recipe.augmentation:
            letters = data_augmentation(letters, self.rng, **self.recipe.augmentation)
        return (tf.concat([batch_images, letters], axis=0),
                tf.concat([batch_labels, tf.fill([n_letters], NO_DIGIT)], axis=0))

    # ---- epochs ----

    def run(self):
        with StopRequests() as stop:
            for epoch in range(self.progress["epochs_done"] + 1, math.ceil(self.recipe.max_n_epochs) + 1):
                if self.patience_ran_out():
                    break  # an early-stopped run, resumed: nothing left to do
                started = time.time()
                if not self.run_epoch(epoch, stop):
                    break  # after_step ended training
                self.end_epoch(epoch, time.time() - started)
                if self.patience_ran_out():
                    self.say(f"early stopping: no better validation accuracy for {self.recipe.patience} epochs")
                    break
                if stop.requested:
                    raise TrainingInterrupted(f"{stop.requested} at the end of epoch {epoch}" + self.saved_in())
        for variable, copy in zip(self.model.variables, self.best_weights):
            variable.assign(copy)
        self.say(self.kept())
        return self.progress["history"]

    def kept(self):
        """The one line that says which epoch's weights the run keeps, and why."""
        history, averaged = self.progress["history"], " (its averaged weights)" if self.ema else ""
        if not history:
            return "kept the initial weights: no epoch ran"
        if not len(self.val_labels):
            return f"kept the last epoch, {history[-1]['epoch']}{averaged}: there is no validation split to choose by"
        best = best_epoch(history)
        among = (f" of the annealed epochs {self.annealed_from}-{len(history)}" if self.annealed_from > 1
                 and len(history) >= self.annealed_from else "")
        return (f"kept the best epoch, {best['epoch']} of {len(history)}{averaged}: the highest validation "
                f"accuracy{among} ({100 * best['val_accuracy']:.2f}%, loss {best['val_loss']:.4f})")

    def run_epoch(self, epoch, stop):
        """The epoch's remaining steps, in the epoch's own order. -> False if after_step ended training."""
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n_train).astype(np.int32)
        batch_size, progress = self.recipe.batch_size, self.progress
        steps = min(self.steps_per_epoch, self.total_steps - (epoch - 1) * self.steps_per_epoch)
        bar = ProgressBar(steps, enabled=self.options.verbose)
        try:
            for step in range(progress["steps_done"], steps):
                step_started = time.time()
                batch_indices = order[step * batch_size:(step + 1) * batch_size]
                loss, correct = self.step(batch_indices)
                loss = float(loss)
                if not math.isfinite(loss):
                    raise TrainingDiverged(
                        f"the training loss became {loss} at epoch {epoch}, step {step + 1}; "
                        + (f"the last good checkpoint is in {self.options.checkpoint_dir}/latest; "
                           if self.managers else "") + "try a lower --learning_rate")
                progress["loss_sum"] += loss * len(batch_indices)
                progress["correct_sum"] += float(correct)
                progress["steps_done"] = step + 1
                self.training_seconds += time.time() - step_started
                bar.update(step + 1, progress["loss_sum"] / ((step + 1) * batch_size))
                after_step = self.options.after_step
                if after_step and after_step((epoch - 1) * self.steps_per_epoch + step + 1, self.training_seconds):
                    return False
                if stop.requested and step + 1 < steps:
                    self.save("latest")
                    raise TrainingInterrupted(f"{stop.requested} at epoch {epoch}, step {step + 1} of "
                                              f"{steps}" + self.saved_in())
        finally:
            bar.close()
        return True

    def end_epoch(self, epoch, seconds):
        """Evaluate, log, adjust a plateau schedule, keep the weights if this is the best epoch, save."""
        progress = self.progress
        n_seen = min(progress["steps_done"] * self.recipe.batch_size, self.n_train)  # fewer in a fraction of one
        with self.averaged_weights():
            val_loss, val_accuracy = (evaluate(self.model, self.val_images, self.val_labels) if len(self.val_labels)
                                      else (math.nan, math.nan))
        record = dict(epoch=epoch, train_loss=progress["loss_sum"] / n_seen,
                      train_accuracy=progress["correct_sum"] / n_seen, val_loss=val_loss,
                      val_accuracy=val_accuracy, learning_rate=float(self.optimizer.learning_rate.numpy()),
                      seconds=seconds, annealed=epoch >= self.annealed_from)
        progress["history"].append(record)
        progress.update(epochs_done=epoch, steps_done=0, loss_sum=0.0, correct_sum=0.0)
        validation = f"val loss {val_loss:.4f} acc {100 * val_accuracy:.2f}%  " if len(self.val_labels) else ""
        self.say(f"epoch {epoch:3d}/{math.ceil(self.recipe.max_n_epochs)}  train loss {record['train_loss']:.4f} "
                 f"acc {100 * record['train_accuracy']:.2f}%  {validation}lr {record['learning_rate']:.2e}  {seconds:.1f}s")
        if self.writers:
            with files.writing(self.options.log_dir, "the TensorBoard logs"):
                log_epoch(self.writers, self.model, record)
        if self.recipe.schedule == "plateau":  # Keras watches the validation loss; without one, the training loss
            watched = val_loss if len(self.val_labels) else record["train_loss"]
            self.optimizer.learning_rate.assign(self.plateau(watched, record["learning_rate"]))
        if best_epoch(progress["history"]) is record:
            progress["best_epoch"] = epoch
            with self.averaged_weights():  # 'best' holds the weights kept, as report.py and a reused member read it
                for copy, variable in zip(self.best_weights, self.model.variables):
                    copy.assign(variable)
                self.save("best")
        self.save("latest")

    def averaged_weights(self):
        """A block in which the model holds the moving averages of its weights (with ema_decay; else its own)."""
        return self.ema.averaged() if self.ema else contextlib.nullcontext()

    def first_annealed_epoch(self):
        """The first epoch that ends with the learning rate at a tenth of its peak or less: 1 for a constant or
        plateau schedule. The epochs before it (a one-cycle schedule's climb and most of its descent) neither
        count towards patience nor are candidates for the kept epoch: at those rates the weights still move
        fast, and an epoch that happens to score well on a few thousand validation digits is not yet the
        network the schedule is made to end on; stopped there, the schedule would never anneal."""
        if self.recipe.schedule != "one_cycle":
            return 1

        def final_rate(epoch):
            last_step = min(epoch * self.steps_per_epoch, self.total_steps) - 1
            return float(one_cycle_learning_rate(last_step, self.total_steps, self.recipe.learning_rate))

        epoch = math.ceil(self.recipe.max_n_epochs)  # from the end back: the warm-up starts low too
        while epoch > 1 and final_rate(epoch - 1) <= self.recipe.learning_rate / 10:
            epoch -= 1
        return epoch

    def patience_ran_out(self):
        """`patience` epochs have passed since the best one, counting only annealed epochs (first_annealed_epoch).
        Without a validation split, never."""
        if not len(self.val_labels):
            return False
        counted_from = max(self.progress["best_epoch"], self.annealed_from - 1)
        return self.progress["epochs_done"] - counted_from >= self.recipe.patience

    # ---- checkpoints ----

    def open_checkpoints(self):
        """tf.train.CheckpointManagers for checkpoint_dir/latest and /best (none without a checkpoint_dir), and,
        with options.resume, the state of the latest checkpoint restored."""
        self.progress_text = tf.Variable("", dtype=tf.string, trainable=False)  # the host's: replicas never read it
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, rng=self.rng,
                                              best_weights=self.best_weights, progress=self.progress_text,
                                              **({"ema": self.ema} if self.ema else {}))
        directory = self.options.checkpoint_dir
        self.managers = {} if not directory else {
            which: tf.train.CheckpointManager(self.checkpoint, f"{directory}/{which}", max_to_keep=1)
            for which in ("latest", "best")}
        latest = self.managers and self.managers["latest"].latest_checkpoint
        if self.options.resume and latest:
            self.checkpoint.save_counter  # made before the restore fills it: else TensorFlow warns it was left out
            restore_checkpoint(self.checkpoint, latest)
            self.progress.update(json.loads(self.progress_text.numpy().decode()))
            self.plateau.best, self.plateau.flat_epochs = self.progress["plateau"]
            self.say(f"resuming after epoch {self.progress['epochs_done']}, step {self.progress['steps_done']}, "
                     f"from {latest}")
        elif self.options.resume and directory:
            self.say(f"resuming: the interrupted run saved nothing in {directory}/latest yet, so training starts over")

    def save(self, which):
        """The whole state to checkpoint_dir/which, under a new name each time: TensorFlow switches its
        'checkpoint' file to it only once it is written, so a crash keeps the previous one. A save that fails
        (a full disk: files.DiskFull) leaves nothing of itself behind."""
        if self.managers:
            self.progress["plateau"] = [self.plateau.best, self.plateau.flat_epochs]
            self.progress_text.assign(json.dumps(self.progress))
            directory = f"{self.options.checkpoint_dir}/{which}"
            before = set(os.listdir(directory)) if os.path.isdir(directory) else set()
            try:
                with files.writing(directory, f"the {which} checkpoint"):
                    self.managers[which].save(checkpoint_number=self.optimizer.iterations)
            except BaseException:
                remove_unfinished_checkpoint(directory, before)
                raise

    def saved_in(self):
        return f"; everything is saved in {self.options.checkpoint_dir}/latest" if self.managers else ""

    # ---- logs ----

    def open_logs(self):
        """TensorBoard writers for the training and validation curves, with the step's graph; None without a
        log_dir."""
        if not self.options.log_dir:
            return None
        with files.writing(self.options.log_dir, "the TensorBoard logs"):
            writers = {split: tf.summary.create_file_writer(f"{self.options.log_dir}/{split}")
                       for split in ("train", "validation")}
            with writers["train"].as_default():
                tf.summary.graph(self.step.get_concrete_function().graph)
        return writers

    def say(self, line):
        if self.options.verbose:
            print(line, flush=True)

class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped training at a consistent point, after saving it (with a checkpoint_dir)."""


class TrainingDiverged(Exception):
    """The loss stopped being a finite number; nothing was saved from that step on."""


class CheckpointMismatch(Exception):
    """A checkpoint that does not fit this network and recipe (another architecture, or not a checkpoint)."""


class StopRequests:
    """While active, Ctrl-C (SIGINT) and SIGTERM only record that a stop was asked for, so the training loop can
    finish its step, save and stop at a consistent point; a second Ctrl-C interrupts at once, as usual. One
    entered inside another starts with the stop the outer one recorded, so a stop asked for before the inner
    loop began is not lost."""

    def __enter__(self):
        self.requested, self.previous = None, {}
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for signal_number in (signal.SIGINT, signal.SIGTERM):
                self.previous[signal_number] = signal.signal(signal_number, self.request)
            outer = getattr(self.previous[signal.SIGINT], "__self__", None)
            if isinstance(outer, StopRequests):
                self.requested = outer.requested
        return self

    def request(self, signal_number, frame):
        if self.requested and signal_number == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = "interrupted by Ctrl-C" if signal_number == signal.SIGINT else "stopped by SIGTERM"

    def __exit__(self, *exception):
        for signal_number, handler in self.previous.items():
            signal.signal(signal_number, handler)


def remove_unfinished_checkpoint(directory, before):
    """Remove what a failed save left in directory: whatever was not there `before` (the names in it then), but
    the checkpoint that TensorFlow's 'checkpoint' file names, which it names only once that one is whole."""
    if not os.path.isdir(directory):
        return
    named = tf.train.latest_checkpoint(directory)
    for name in set(os.listdir(directory)) - before:
        if name != "checkpoint" and not (named and name.startswith(os.path.basename(named) + ".")):
            path = os.path.join(directory, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)


def restore_checkpoint(checkpoint, path):
    """Read every variable of `checkpoint` from `path`, or raise CheckpointMismatch with a one-line reason."""
    try:
        checkpoint.read(path).assert_existing_objects_matched()
    except Exception as error:  # TensorFlow raises a different type for each way a file can be wrong
        reason = str(error).strip().splitlines()[0][:200]
        raise CheckpointMismatch(f"{path} does not fit this network and recipe ({reason})") from None


def named_variables(model):
    """(path, variable) for each of the model's variables: 'conv1', 'bn1/scale', 'conv_kernels/0', ..."""
    def walk(path, value):
        if isinstance(value, tf.Variable):
            yield path, value
        elif hasattr(value, "items"):  # a batch norm's variables
            for key, item in value.items():
                yield from walk(f"{path}/{key}", item)
        elif isinstance(value, (list, tuple)):  # a stack of layers
            for index, item in enumerate(value):
                yield from walk(f"{path}/{index}", item)

    for name, value in vars(model).items():
        if not name.startswith("_"):  # tf.Module's own bookkeeping
            yield from walk(name, value)


def log_epoch(writers, model, record):
    step = record["epoch"]
    with writers["train"].as_default():
        tf.summary.scalar("loss", record["train_loss"], step=step)
        tf.summary.scalar("accuracy", record["train_accuracy"], step=step)
        tf.summary.scalar("learning_rate", record["learning_rate"], step=step)
        for name, variable in named_variables(model):
            tf.summary.histogram(name, variable, step=step)
    with writers["validation"].as_default():
        tf.summary.scalar("loss", record["val_loss"], step=step)
        tf.summary.scalar("accuracy", record["val_accuracy"], step=step)
    for writer in writers.values():
        writer.flush()


# ---- the digit gate ---------------------------------------------------------------------------------------

GATE_EPOCHS = 7          # passes over the training digits, in steps of GATE_BATCH_SIZE: half digits, half no digit
GATE_BATCH_SIZE = 256
GATE_LEARNING_RATE = 3e-3  # Adam's, the one-cycle schedule's peak
# the elastic distortion bends font letters and scribbles as a hand would, digits alike
GATE_AUGMENTATION = dict(max_rotation_degrees=15.0, max_shift_fraction=0.1, max_zoom_fraction=0.15, max_shear=0.3,
                         elastic_alpha=10.0, elastic_sigma=3.0)


def train_digit_gate(gate, digits, non_digits, seed, epochs=GATE_EPOCHS):
    """Train model.DigitGate in place to tell digits (float32 [N, 28, 28, 1], the classifier's training digits)
    from non_digits ([M, 28, 28, 1], letters.non_digit_pictures): each step draws as many of each at random,
    augments them alike (GATE_AUGMENTATION, then tools.photo_remnants) and descends the mean sigmoid
    cross-entropy of the logit against 1 for a digit, 0 for none, by Adam on a one-cycle schedule, for `epochs`
    passes over the digits. -> the last step's loss.

    Ctrl-C or SIGTERM ends the current step and raises TrainingInterrupted; nothing of the gate is saved."""
    steps = max(1, math.ceil(epochs * len(digits) / (GATE_BATCH_SIZE // 2)))
    rng = random_generator(seed, TRAINING_DRAWS)
    optimizer = Adam(gate.trainable_variables, learning_rate=GATE_LEARNING_RATE)
    digits, non_digits = tf.constant(digits), tf.constant(non_digits)
    half = GATE_BATCH_SIZE // 2
    labels = tf.concat([tf.ones([half]), tf.zeros([half])], axis=0)

    def step():
        drawn = [tf.gather(pictures, rng.uniform([half], 0, tf.shape(pictures)[0], tf.int32))
                 for pictures in (digits, non_digits)]
        images = photo_remnants(data_augmentation(tf.concat(drawn, axis=0), rng, **GATE_AUGMENTATION), rng)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels, gate(images, training=True)))
        optimizer.learning_rate.assign(one_cycle_learning_rate(optimizer.iterations, steps, GATE_LEARNING_RATE))
        optimizer.apply_gradients(tape.gradient(loss, gate.trainable_variables))
        return loss

    step = graph_function(step)
    loss = None
    with StopRequests() as stop:
        for _ in range(steps):
            loss = step()
            if stop.requested:
                raise TrainingInterrupted(f"{stop.requested} while training the digit gate")
    return float(loss)
