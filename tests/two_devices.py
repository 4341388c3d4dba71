"""Run by tests/test_devices.py in a fresh interpreter: TensorFlow fixes its devices when it starts, and this
splits the CPU into two logical devices first. Trains and normalises the same real digits on one device and
under tf.distribute.MirroredStrategy on both, and prints what each computed as one JSON object."""
import json
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import data  # noqa: E402  (after the devices are set)
import train  # noqa: E402
from recipes import build_model  # noqa: E402
from tools import batch_norm_variables, batch_normalize  # noqa: E402

ONE_DEVICE = tf.distribute.get_strategy()
TWO_CPUS = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
images, labels = data.load_train(REPO / "digit-recognizer" / "train.csv.gz", max_rows=300)
# 269 training digits: one odd-sized global batch, split 135 + 134 between the replicas.
train_images, train_labels, val_images, val_labels = data.split_train_validation(images, labels, 90, 42)
train_images, train_labels = train_images[:269], train_labels[:269]


def normalised_with_gradients(strategy, x):
    """batch_normalize on x in training mode, each replica holding consecutive rows of it -> the output, the
    gradients of sum(output * weights) with respect to x, scale and offset, and the moving statistics."""
    with strategy.scope():
        bn = batch_norm_variables(x.shape[-1])
        bn["scale"].assign(np.linspace(0.5, 1.5, x.shape[-1]))
    weights = tf.constant(np.random.default_rng(0).normal(size=x.shape), tf.float32)
    n = strategy.num_replicas_in_sync
    share = -(-len(x) // n)

    def replica(x, weights):
        start = tf.distribute.get_replica_context().replica_id_in_sync_group * share
        x, weights = x[start:start + share], weights[start:start + share]
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = batch_normalize(x, bn, training=True)
            objective = tf.reduce_sum(y * weights)
        return [y, *tape.gradient(objective, [x, bn["scale"], bn["offset"]])]

    y, dx, dscale, doffset = tf.function(lambda: strategy.run(replica, args=(x, weights)))()
    if n > 1:  # replicas' rows joined in order; the parameters' gradients summed over the replicas
        y, dx = [tf.concat(strategy.experimental_local_results(value), 0) for value in (y, dx)]
        dscale, doffset = [strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None) for value in (dscale, doffset)]
    return {"output": y, "input gradient": dx, "scale gradient": dscale, "offset gradient": doffset,
            "moving mean": bn["moving_mean"], "moving variance": bn["moving_variance"]}


def step_losses(strategy, n_steps=3, outlier_exposure=0.0):
    """The training loss of each of n_steps steps of train.train on the whole 269-digit batch (one step an
    epoch), augmentation on and dropout off (its random draws are each replica's own); with outlier_exposure, 33
    letters after the digits, all on the second replica."""
    with strategy.scope():
        model = build_model("digitnet", dropout_rate=0.0, seed=1)
    recipe = train.Recipe(max_n_epochs=n_steps, patience=n_steps, batch_size=len(train_labels), learning_rate=1e-3,
                          label_smoothing=0.1, schedule="constant", outlier_exposure=outlier_exposure,
                          augmentation=dict(max_rotation_degrees=10, max_shift_fraction=0.1, max_zoom_fraction=0.1))
    history = train.train(model, (train_images, train_labels, val_images, val_labels), recipe, 3,
                          train.RunOptions(strategy=strategy, verbose=False))
    return [record["train_loss"] for record in history]


def refusal_of_a_model_built_outside_the_scope():
    try:
        train.train(build_model("digitnet"), (train_images, train_labels, val_images, val_labels),
                    train.Recipe(max_n_epochs=1, patience=1, batch_size=64, learning_rate=1e-3), 0,
                    train.RunOptions(strategy=TWO_CPUS, verbose=False))
    except ValueError as error:
        return str(error)
    return None


feature_maps = tf.constant(train_images[:7] * 2.0 - 0.3)  # 7 digits, split 4 + 3: 28x28 maps of one channel
dense_activations = tf.constant(np.random.default_rng(1).normal(1.0, 2.0, size=[9, 5]), tf.float32)
print(json.dumps({
    "batch norm": {kind: {name: [np.asarray(one).tolist(), np.asarray(two).tolist()] for (name, one), two in zip(
        normalised_with_gradients(ONE_DEVICE, x).items(), normalised_with_gradients(TWO_CPUS, x).values())}
        for kind, x in [("conv", feature_maps), ("dense", dense_activations)]},
    "step losses": [step_losses(ONE_DEVICE), step_losses(TWO_CPUS)],
    "step losses with letters": [step_losses(ONE_DEVICE, 1, 0.5), step_losses(TWO_CPUS, 1, 0.5)],
    "outside the scope": refusal_of_a_model_built_outside_the_scope(),
}))
