"""The training loop: mini-batches, augmentation, Adam, a one-cycle learning rate, early stopping,
checkpoints and TensorBoard logs. run.py calls train(); so do the experiments and the tuner.
Also the write-ups' extras: class weights, an L1/L2 weight penalty, a learning rate cut on a plateau.
"""
import json
import math
import signal
import sys
import threading
import time
import weakref

import numpy as np
import tensorflow as tf

from tools import Adadelta, Adam, LossScaleOptimizer, Nadam, data_augmentation, one_cycle_learning_rate

EVAL_BATCH_SIZE = 1000
OPTIMIZERS = {"adam": Adam, "nadam": Nadam, "adadelta": Adadelta}


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


_compiled_predictions = weakref.WeakKeyDictionary()  # model -> its traced inference function


def predict_probabilities(model, images, batch_size=EVAL_BATCH_SIZE):
    """Softmax outputs of the model in inference mode, batch by batch -> numpy [N, 10]."""
    if model not in _compiled_predictions:
        model_reference = weakref.ref(model)  # the cache must not keep a finished model alive
        _compiled_predictions[model] = tf.function(
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


def train(model, train_images, train_labels, val_images, val_labels, *, max_n_epochs, patience, batch_size,
          learning_rate, seed, label_smoothing=0.0, augmentation=None, optimizer="adam", schedule="one_cycle",
          plateau_patience=4, plateau_factor=0.1, class_weights=None, weight_penalty=None,
          checkpoint_dir=None, log_dir=None, resume=False, after_step=None, strategy=None, compute_dtype="float32",
          verbose=True):
    """Train `model` in place and restore its best epoch (by validation accuracy, then loss).

    augmentation: keyword arguments for tools.data_augmentation, or None for none.
    optimizer: a name in OPTIMIZERS; schedule: 'one_cycle' (peak learning_rate), 'constant', or 'plateau'
    (learning_rate, times plateau_factor whenever plateau_patience epochs pass without a lower validation loss).
    class_weights: per-class loss weights [10], 'balanced' (from train_labels), or None.
    weight_penalty: (l1, l2) for kernel_penalty, added to the loss; or None.
    checkpoint_dir: where tf.train.CheckpointManager keeps 'latest' and 'best'; log_dir: TensorBoard.
    resume: go on from checkpoint_dir/latest, if there is one, exactly where it stopped.
    Ctrl-C or SIGTERM ends the current step, saves 'latest' and raises TrainingInterrupted; a loss that is not
    finite raises TrainingDiverged; a 'latest' that does not fit the network raises CheckpointMismatch.
    after_step(step, training_seconds): called after every step (benchmarks evaluate from it).
    strategy: a tf.distribute.Strategy whose replicas share each batch (the model must have been built in its
    scope); None: TensorFlow's default, one device.
    compute_dtype: 'float32', or 'float16'/'bfloat16' for mixed precision: the layers compute in it while the
    weights and their updates stay float32; float16 adds dynamic loss scaling (tools.LossScaleOptimizer).
    Returns the history: a list of one dict per epoch.
    """
    strategy = strategy or tf.distribute.get_strategy()
    n_replicas = strategy.num_replicas_in_sync
    if n_replicas > 1 and not strategy.extended.variable_created_in_scope(model.trainable_variables[0]):
        raise ValueError("train(strategy=...) needs a model built under strategy.scope()")
    n_train = len(train_images)
    steps_per_epoch = math.ceil(n_train / batch_size)
    total_steps = steps_per_epoch * max_n_epochs
    plateau = Plateau(plateau_patience, plateau_factor)
    if isinstance(class_weights, str) and class_weights == "balanced":
        class_weights = balanced_class_weights(train_labels)
    if class_weights is not None:
        class_weights = tf.constant(class_weights, tf.float32)
    images = tf.constant(train_images)
    labels = tf.constant(train_labels)
    # Everything a resumed run needs to go on exactly where this one stopped: the weights, the optimiser's
    # slots, the random stream of augmentation and dropout, the best epoch's weights and the loop's own
    # counters (`progress`, kept as JSON). The data order needs no saving: it is a function of (seed, epoch).
    with strategy.scope():  # a copy of each variable on every replica's device
        optimizer = OPTIMIZERS[optimizer](model.trainable_variables, learning_rate=learning_rate)
        if compute_dtype == "float16":
            optimizer = LossScaleOptimizer(optimizer)
        rng = tf.random.Generator.from_seed(seed)
        best_weights = [tf.Variable(variable, trainable=False) for variable in model.variables]
    progress_text = tf.Variable("", dtype=tf.string, trainable=False)  # the host's alone: replicas never read it

    def replica_step(batch_images, batch_labels):
        """One replica's consecutive share of the global batch -> its part of the loss, of the gradients (whose
        sums over the replicas are the global batch's) and of the count of correct answers."""
        global_batch_size = tf.shape(batch_labels)[0]
        share = (global_batch_size + n_replicas - 1) // n_replicas
        start = tf.distribute.get_replica_context().replica_id_in_sync_group * share
        batch_images, batch_labels = batch_images[start:start + share], batch_labels[start:start + share]
        with tf.GradientTape() as tape:
            # dropout: each replica its own random stream. The loss is float32 whatever the layers compute in.
            logits = tf.cast(model(tf.cast(batch_images, compute_dtype), training=True, rng=rng), tf.float32)
            loss = cross_entropy(logits, batch_labels, label_smoothing, class_weights, global_batch_size)
            if weight_penalty:  # counted once over the replicas, not once on each
                loss += tf.nn.scale_regularization_loss(kernel_penalty(model.trainable_variables, *weight_penalty))
            differentiated = optimizer.scale_loss(loss) if compute_dtype == "float16" else loss
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, 1, output_type=tf.int32), batch_labels), tf.float32))
        return loss, tape.gradient(differentiated, model.trainable_variables), correct

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32)])
    def train_step(batch_indices):
        batch_images = tf.gather(images, batch_indices)
        batch_labels = tf.gather(labels, batch_indices)
        if augmentation:  # on the global batch, so that its random draws do not depend on the number of replicas
            batch_images = data_augmentation(batch_images, rng, **augmentation)
        loss, gradients, correct = strategy.run(replica_step, args=(batch_images, batch_labels))
        loss, correct, *gradients = [strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
                                     for value in [loss, correct, *gradients]]
        if schedule == "one_cycle":
            optimizer.learning_rate.assign(one_cycle_learning_rate(optimizer.iterations, total_steps, learning_rate))
        optimizer.apply_gradients(gradients)  # once, on the summed gradients: every replica's copy moves alike
        # (for float16, LossScaleOptimizer unscales them, or skips the step if they overflowed)
        return loss, correct

    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, rng=rng, best_weights=best_weights,
                                     progress=progress_text)
    latest = best = None
    if checkpoint_dir:
        latest = tf.train.CheckpointManager(checkpoint, f"{checkpoint_dir}/latest", max_to_keep=1)
        best = tf.train.CheckpointManager(checkpoint, f"{checkpoint_dir}/best", max_to_keep=1)
    progress = dict(epochs_done=0, steps_done=0, loss_sum=0.0, correct_sum=0.0, best_key=None, best_epoch=0,
                    history=[], plateau=[plateau.best, plateau.flat_epochs])
    if resume and latest and latest.latest_checkpoint:
        restore_checkpoint(checkpoint, latest.latest_checkpoint)
        progress = json.loads(progress_text.numpy().decode())
        plateau.best, plateau.flat_epochs = progress["plateau"]
        if verbose:
            print(f"resuming after epoch {progress['epochs_done']}, step {progress['steps_done']}, "
                  f"from {latest.latest_checkpoint}")

    def save(manager):
        progress["plateau"] = [plateau.best, plateau.flat_epochs]
        progress_text.assign(json.dumps(progress))
        manager.save(checkpoint_number=optimizer.iterations)  # a new name each time: the old stays till it is written

    writers = None
    if log_dir:
        writers = {split: tf.summary.create_file_writer(f"{log_dir}/{split}") for split in ("train", "validation")}
        with writers["train"].as_default():
            tf.summary.graph(train_step.get_concrete_function().graph)

    history, training_seconds = progress["history"], 0.0
    with StopRequests() as stop:
        for epoch_index in range(progress["epochs_done"] + 1, max_n_epochs + 1):
            if progress["epochs_done"] - progress["best_epoch"] >= patience:
                break  # an early-stopped run, resumed: nothing left to do
            started = time.time()
            order = np.random.default_rng([seed, epoch_index]).permutation(n_train).astype(np.int32)
            bar = ProgressBar(steps_per_epoch, enabled=verbose)
            for step in range(progress["steps_done"], steps_per_epoch):
                step_started = time.time()
                batch_indices = order[step * batch_size:(step + 1) * batch_size]
                loss, correct = train_step(batch_indices)
                loss = float(loss)
                if not math.isfinite(loss):
                    bar.close()
                    raise TrainingDiverged(
                        f"the training loss became {loss} at epoch {epoch_index}, step {step + 1}; "
                        + (f"the last good checkpoint is in {checkpoint_dir}/latest; " if latest else "")
                        + "try a lower --learning_rate")
                progress["loss_sum"] += loss * len(batch_indices)
                progress["correct_sum"] += float(correct)
                progress["steps_done"] = step + 1
                training_seconds += time.time() - step_started
                if after_step:
                    after_step((epoch_index - 1) * steps_per_epoch + step + 1, training_seconds)
                bar.update(step + 1, progress["loss_sum"] / ((step + 1) * batch_size))
                if stop.requested and step + 1 < steps_per_epoch:
                    bar.close()
                    if latest:
                        save(latest)
                    raise TrainingInterrupted(
                        f"{stop.requested} at epoch {epoch_index}, step {step + 1} of {steps_per_epoch}"
                        + (f"; everything is saved in {checkpoint_dir}/latest" if latest else ""))
            bar.close()
            val_loss, val_accuracy = evaluate(model, val_images, val_labels) if len(val_labels) else (math.nan,) * 2
            record = dict(epoch=epoch_index, train_loss=progress["loss_sum"] / n_train,
                          train_accuracy=progress["correct_sum"] / n_train, val_loss=val_loss,
                          val_accuracy=val_accuracy, learning_rate=float(optimizer.learning_rate.numpy()),
                          seconds=time.time() - started)
            history.append(record)
            progress.update(epochs_done=epoch_index, steps_done=0, loss_sum=0.0, correct_sum=0.0)
            if verbose:
                print(f"epoch {epoch_index:3d}/{max_n_epochs}  train loss {record['train_loss']:.4f} "
                      f"acc {100 * record['train_accuracy']:.2f}%  val loss {val_loss:.4f} "
                      f"acc {100 * val_accuracy:.2f}%  lr {record['learning_rate']:.2e}  {record['seconds']:.1f}s",
                      flush=True)
            if writers:
                log_epoch(writers, model, record)
            if schedule == "plateau":  # Keras watches the validation loss; without a validation split, the training loss
                optimizer.learning_rate.assign(plateau(val_loss if len(val_labels) else record["train_loss"],
                                                       record["learning_rate"]))
            key = [val_accuracy, -val_loss]
            if progress["best_key"] is None or key > progress["best_key"] or not len(val_labels):
                progress.update(best_key=key, best_epoch=epoch_index)
                for copy, variable in zip(best_weights, model.variables):
                    copy.assign(variable)
                if best:
                    save(best)
            if latest:
                save(latest)
            if epoch_index - progress["best_epoch"] >= patience:
                if verbose:
                    print(f"early stopping: no validation improvement for {patience} epochs")
                break
            if stop.requested:
                raise TrainingInterrupted(f"{stop.requested} at the end of epoch {epoch_index}"
                                          + (f"; everything is saved in {checkpoint_dir}/latest" if latest else ""))
    for variable, copy in zip(model.variables, best_weights):
        variable.assign(copy)
    if verbose:
        print(f"restored the best epoch, {progress['best_epoch']}")
    return history


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped training at a consistent point, after saving it (with a checkpoint_dir)."""


class TrainingDiverged(Exception):
    """The loss stopped being a finite number; nothing was saved from that step on."""


class CheckpointMismatch(Exception):
    """A checkpoint that does not fit this network and recipe (another architecture, or not a checkpoint)."""


class StopRequests:
    """While active, Ctrl-C (SIGINT) and SIGTERM only record that a stop was asked for, so the training loop can
    finish its step, save and stop at a consistent point; a second Ctrl-C interrupts at once, as usual."""

    def __enter__(self):
        self.requested, self.previous = None, {}
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for signal_number in (signal.SIGINT, signal.SIGTERM):
                self.previous[signal_number] = signal.signal(signal_number, self.request)
        return self

    def request(self, signal_number, frame):
        if self.requested and signal_number == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = "interrupted by Ctrl-C" if signal_number == signal.SIGINT else "stopped by SIGTERM"

    def __exit__(self, *exception):
        for signal_number, handler in self.previous.items():
            signal.signal(signal_number, handler)


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
