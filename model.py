"""The networks, built by hand from tf.Variables and tf.nn ops.

Each network is a tf.Module: its variables are created in __init__ (so tf.train.Checkpoint and
tf.saved_model find them) and __call__ is the forward pass, written to read like the diagram above it.
Images come in as float32 [batch, 28, 28, 1] in [0, 1]; logits go out as [batch, 10].
"""
import math

import tensorflow as tf

from tools import batch_norm_variables, batch_normalize, dropout

N_CLASSES = 10


def he_normal(rng, shape, fan_in):
    """Weights ~ N(0, 2 / fan_in): keeps the variance of ReLU activations constant from layer to layer."""
    return tf.Variable(rng.normal(shape) * math.sqrt(2.0 / fan_in))


def conv_kernel(rng, size, in_channels, out_channels):
    return he_normal(rng, [size, size, in_channels, out_channels], size * size * in_channels)


def conv_bn_relu(x, kernel, bn, training):
    """3x3/5x5 'same' convolution, then batch norm (which makes a conv bias redundant), then ReLU."""
    x = tf.nn.conv2d(x, kernel, strides=1, padding="SAME")
    return tf.nn.relu(batch_normalize(x, bn, training))


def max_pool(x):
    return tf.nn.max_pool2d(x, ksize=2, strides=2, padding="VALID")


class DigitNet(tf.Module):
    """The default network: three conv blocks with batch norm, then a dense layer with dropout.

        28x28x1  -> conv 5x5 32, BN, ReLU -> maxpool -> 14x14x32
                 -> conv 3x3 64, BN, ReLU -> maxpool ->  7x7x64
                 -> conv 3x3 128, BN, ReLU -> maxpool -> 3x3x128 -> flatten 1152
                 -> dense 128, BN, ReLU -> dropout -> dense 10
    """

    def __init__(self, dropout_rate=0.25, seed=0, widths=(32, 64, 128), dense_units=128):
        super().__init__()
        rng = tf.random.Generator.from_seed(seed)
        w1, w2, w3 = widths
        self.dropout_rate = dropout_rate
        self.conv1, self.bn1 = conv_kernel(rng, 5, 1, w1), batch_norm_variables(w1)
        self.conv2, self.bn2 = conv_kernel(rng, 3, w1, w2), batch_norm_variables(w2)
        self.conv3, self.bn3 = conv_kernel(rng, 3, w2, w3), batch_norm_variables(w3)
        self.dense1, self.bn4 = he_normal(rng, [3 * 3 * w3, dense_units], 3 * 3 * w3), batch_norm_variables(dense_units)
        self.dense2 = tf.Variable(rng.normal([dense_units, N_CLASSES]) * math.sqrt(1.0 / dense_units))
        self.bias2 = tf.Variable(tf.zeros([N_CLASSES]))

    def __call__(self, images, training=False, rng=None):
        x = max_pool(conv_bn_relu(images, self.conv1, self.bn1, training))
        x = max_pool(conv_bn_relu(x, self.conv2, self.bn2, training))
        x = max_pool(conv_bn_relu(x, self.conv3, self.bn3, training))
        x = tf.reshape(x, [-1, x.shape[1] * x.shape[2] * x.shape[3]])
        x = tf.nn.relu(batch_normalize(x @ self.dense1, self.bn4, training))
        x = dropout(x, self.dropout_rate, rng, training)
        return x @ self.dense2 + self.bias2
