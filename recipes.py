"""Each network by name with the recipe it is trained by (MODELS), the tuned network a best_params.json
describes, and every network's size and cost.

    build_model("digitnet", seed=1)                   -> the network, a model.py tf.Module
    training_recipe("digitnet", max_n_epochs=3)       -> its train.Recipe, with overrides laid over it
    load_params("model/best_params.json")             -> tune.py's params, checked (DataError in one line)
    tuned_network(params, seed), tuned_recipe(params, base)
    describe_models()                                 -> (name, parameters, FLOPs per image) of each network

The networks themselves are model.py's; how each recipe was chosen, with the held-out figures of every
candidate, is docs/recipe.md.
"""
import dataclasses
import json
import math
from functools import partial
from typing import Callable, NamedTuple

import tensorflow as tf

from data import DataError
from model import CNNBNDeep, CNNKerasExample, CNNSmall, CNNTuned, DigitNet, MLP, TunedCNN, count_parameters
from train import OPTIMIZERS, Recipe, graph_function

# ---------------------------------------------------------------------------------------------------------
# The registry: each network by name, with the recipe it is trained by.


class ModelSpec(NamedTuple):
    build: Callable  # (dropout_rate=..., seed=..., input_size=...) -> the network; DigitNet has no input_size
    recipe: Recipe


MODELS = {
    # the project's default: what `python run.py` trains. How each setting was chosen, with the held-out figures
    # of every candidate: docs/recipe.md.
    "digitnet": ModelSpec(DigitNet, Recipe(
        optimizer="adam", schedule="one_cycle", learning_rate=5e-3, max_n_epochs=20, patience=5, batch_size=128,
        label_smoothing=0.05,
        augmentation=dict(max_rotation_degrees=10.0, max_shift_fraction=0.1, max_zoom_fraction=0.1,
                          elastic_alpha=24.0, elastic_sigma=5.0))),
    # the MLP write-ups (Keras' mnist_mlp.py) train with RMSprop; Adam is the nearest optimiser this project has
    "mlp": ModelSpec(partial(MLP, hidden_units=(512, 256)), Recipe(
        optimizer="adam", schedule="constant", learning_rate=1e-3, max_n_epochs=20, patience=5, batch_size=128)),
    "mlp_dropout": ModelSpec(partial(MLP, hidden_units=(512, 512), dropout_rate=0.2), Recipe(
        optimizer="adam", schedule="constant", learning_rate=1e-3, max_n_epochs=20, patience=5, batch_size=128)),
    "cnn_small": ModelSpec(CNNSmall, Recipe(
        optimizer="adam", schedule="constant", learning_rate=1e-3, max_n_epochs=15, patience=5, batch_size=128)),
    # as published: 12 epochs of Adadelta, no early stopping, no augmentation
    "cnn_keras_example": ModelSpec(CNNKerasExample, Recipe(
        optimizer="adadelta", schedule="constant", learning_rate=1.0, max_n_epochs=12, patience=12, batch_size=128)),
    "cnn_bn_deep": ModelSpec(CNNBNDeep, Recipe(
        optimizer="adam", schedule="constant", learning_rate=1e-3, max_n_epochs=20, patience=5, batch_size=128,
        # the write-up's shear_range=0.3, taken as tools' shear (tan of the angle, up to 17 degrees)
        augmentation=dict(max_rotation_degrees=8.0, max_shift_fraction=0.08, max_zoom_fraction=0.08, max_shear=0.3))),
    "cnn_tuned": ModelSpec(CNNTuned, Recipe(
        optimizer="adam", schedule="plateau", learning_rate=1e-3, plateau_factor=0.1, plateau_patience=4,
        max_n_epochs=50, patience=10, batch_size=128, class_weights="balanced", weight_penalty=(1e-5, 1e-4))),
}
AUGMENTATION_RANGES = ("max_rotation_degrees", "max_shift_fraction", "max_zoom_fraction", "max_shear", "elastic_alpha")
AUGMENTATION_SETTINGS = (*AUGMENTATION_RANGES, "elastic_sigma")  # tools.data_augmentation's keywords


def build_model(name, dropout_rate=None, seed=0, **architecture):
    """MODELS[name]'s network. dropout_rate None keeps the network's own; architecture e.g. input_size=48."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    if dropout_rate is not None:
        architecture["dropout_rate"] = dropout_rate
    return MODELS[name].build(seed=seed, **architecture)


def training_recipe(name, **overrides):
    """MODELS[name]'s recipe, with overrides laid over it (with_overrides)."""
    return with_overrides(MODELS[name].recipe, **overrides)


def with_overrides(recipe, **overrides):
    """The recipe with these fields replaced (run.py's flags, the experiments' quick settings). An
    augmentation range, e.g. max_rotation_degrees=5, replaces that entry of the augmentation dict; all ranges
    zero means no augmentation."""
    augmentation = dict(recipe.augmentation or {})
    for key in AUGMENTATION_SETTINGS:
        if key in overrides:
            augmentation[key] = overrides.pop(key)
    some = any(augmentation.get(key) for key in AUGMENTATION_RANGES)
    return dataclasses.replace(recipe, augmentation=augmentation if some else None, **overrides)


# ---------------------------------------------------------------------------------------------------------
# The tuned network: tune.py's search space (model.TunedCNN), built from a best_params.json.


def tuned_network(params, seed):
    """The network that params (tune.suggest_params' or load_params' dict) describe, its weights drawn from seed."""
    return TunedCNN(params["filters"], params["kernel_sizes"], params["units"], params["dropout_rate"], seed)


def tuned_recipe(params, base):
    """base (a train.Recipe) with the optimiser, learning rate and batch size that params set."""
    return dataclasses.replace(base, optimizer=params["optimizer"], learning_rate=params["learning_rate"],
                               batch_size=params["batch_size"])


def positive_ints(value, most=math.inf):
    return isinstance(value, list) and 1 <= len(value) <= most and all(type(v) is int and v > 0 for v in value)


def number(value):
    return type(value) in (int, float)


PARAM_CHECKS = {  # key: (test, what the error message says is expected)
    "filters": (lambda v: positive_ints(v, most=4), "a list of 1-4 positive whole numbers, one per conv layer"),
    "kernel_sizes": (positive_ints, "a list of positive whole numbers, one per conv layer"),
    "units": (positive_ints, "a list of positive whole numbers, one per dense layer"),
    "dropout_rate": (lambda v: number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "optimizer": (lambda v: v in OPTIMIZERS, "one of " + ", ".join(OPTIMIZERS)),
    "learning_rate": (lambda v: number(v) and v > 0, "a positive number"),
    "batch_size": (lambda v: type(v) is int and v > 0, "a positive whole number"),
}


def load_params(path):
    """best_params.json -> params, or DataError (one line naming the file and the key) for a file that
    tuned_network and tuned_recipe could not use."""
    try:
        with open(path) as file:
            params = json.load(file)
    except OSError as error:
        raise DataError(f"{path}: {error.strerror}") from None
    except ValueError as error:
        raise DataError(f"{path}: not JSON ({error})") from None
    if not isinstance(params, dict):
        raise DataError(f"{path}: expected a JSON object with the keys {', '.join(PARAM_CHECKS)}")
    unknown = sorted(params.keys() - PARAM_CHECKS.keys())
    if unknown:
        raise DataError(f"{path}: unknown key {unknown[0]!r}; the keys are {', '.join(PARAM_CHECKS)}")
    for key, (test, expected) in PARAM_CHECKS.items():
        if key not in params:
            raise DataError(f"{path}: {key} is missing; expected {expected}")
        if not test(params[key]):
            raise DataError(f"{path}: {key} is {json.dumps(params[key])}; expected {expected}")
    if len(params["kernel_sizes"]) != len(params["filters"]):
        raise DataError(f"{path}: kernel_sizes has {len(params['kernel_sizes'])} sizes for "
                        f"{len(params['filters'])} conv layers (filters); expected one per conv layer")
    return params


# ---------------------------------------------------------------------------------------------------------
# Sizes and costs (run.py --list_models, the experiments' tables, the speed benchmark).


def count_flops(model, input_size=28):
    """Forward FLOPs for one image, analytically: 2 x the multiply-adds of every convolution and matrix product
    in the traced graph of model.__call__, from their operands' shapes (conv: output H*W*C_out times kernel
    h*w*C_in; matmul [1, k] @ [k, n]: k*n). Biases, batch norm, ReLU and pooling are left out: a few percent
    of the total at most, for these networks."""
    graph = graph_function(model).get_concrete_function(tf.TensorSpec([1, input_size, input_size, 1])).graph
    multiply_adds = 0
    for op in graph.get_operations():
        if op.type == "Conv2D":
            kernel_height, kernel_width, in_channels, _ = op.inputs[1].shape
            multiply_adds += op.outputs[0].shape.num_elements() * kernel_height * kernel_width * in_channels
        elif op.type == "MatMul":
            multiply_adds += op.inputs[0].shape.num_elements() * op.inputs[1].shape[1]
    return 2 * multiply_adds


def describe_models():
    """(name, trainable parameters, forward FLOPs per 28x28 image) of every registered network."""
    rows = []
    for name in MODELS:
        model = build_model(name)
        rows.append((name, count_parameters(model), count_flops(model)))
    return rows
