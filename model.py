"""The networks, built by hand from tf.Variables and tf.nn ops. Which recipe trains each, by name, is recipes.py's.

Each network is a tf.Module: its variables are created in __init__ (so tf.train.Checkpoint and
tf.saved_model find them) and __call__ is the forward pass, written to read like the diagram above it.
Images come in as float32 [batch, 28, 28, 1] in [0, 1]; logits go out as [batch, 10]. Each network's blocks(images,
training) gives the output of each row of its diagram but the last, named by its block_names: what the SavedModel's
`explain` signature shows (ensemble.py); __call__ is the last row applied to the last block. Each layer's ops are
grouped under a name (tools.name_scoped: conv, maxpool, batch_norm, dropout, dense; DigitNet's blocks as its
diagram draws them), so that TensorBoard's graph of a traced network reads like its diagram.
"""
import math

import tensorflow as tf

from tools import batch_norm_variables, batch_normalize, dropout, name_scoped, random_generator

N_CLASSES = 10


def weight(variable, x):
    """The variable in x's dtype: under mixed precision the layers compute in float16 or bfloat16, while the
    variables, and the optimiser's updates to them, stay float32. A no-op for float32."""
    return tf.cast(variable, x.dtype)


def he_normal(rng, shape, fan_in):
    """Weights ~ N(0, 2 / fan_in): keeps the variance of ReLU activations constant from layer to layer."""
    return tf.Variable(rng.normal(shape) * math.sqrt(2.0 / fan_in))


def conv_kernel(rng, size, in_channels, out_channels):
    return he_normal(rng, [size, size, in_channels, out_channels], size * size * in_channels)


@name_scoped("conv")
def conv(x, kernel, padding="SAME", bias=None):
    """Stride-1 convolution, plus a bias if given. 'SAME' keeps the map's size; 'VALID' (Keras' default) shrinks
    it by kernel size - 1."""
    x = tf.nn.conv2d(x, weight(kernel, x), strides=1, padding=padding)
    return x if bias is None else x + weight(bias, x)


def conv_bn_relu(x, kernel, bn, training):
    """3x3/5x5 'same' convolution, then batch norm (which makes a conv bias redundant), then ReLU."""
    return tf.nn.relu(batch_normalize(conv(x, kernel), bn, training))


@name_scoped("maxpool")
def max_pool(x):
    return tf.nn.max_pool2d(x, ksize=2, strides=2, padding="VALID")


def conv_pool_bn_relu(x, kernel, bn, training):
    """'same' convolution, 2x2 max pool, batch norm, ReLU: conv_bn_relu then the pool, in an order that makes batch
    norm and ReLU work on a quarter of the values. Not quite the same network: batch norm's statistics are the
    pooled values', and a negative batch-norm scale would pool the minimum instead (ReLU and the maximum commute)."""
    return tf.nn.relu(batch_normalize(max_pool(conv(x, kernel)), bn, training))


class DigitNet(tf.Module):
    """The default network: three conv blocks with batch norm, then a dense layer with dropout.

        28x28x1  -> conv 5x5 32 -> maxpool, BN, ReLU -> 14x14x32
                 -> conv 3x3 64 -> maxpool, BN, ReLU ->  7x7x64
                 -> conv 3x3 128 -> maxpool, BN, ReLU -> 3x3x128 -> flatten 1152
                 -> dense 128, BN, ReLU -> dropout -> dense 10

    Each block pools before it normalises (conv_pool_bn_relu): batch norm and ReLU then work on a quarter of
    the values, so the step is faster, and the network reads unseen digits as well as with the pool last. The
    third pool drops the 7x7 map's last row and column, along the picture's bottom and right edges: keeping
    them ('same' padding, 4x4x128 into the dense layer) reads unseen digits no better. The evidence for both:
    docs/recipe.md.
    """

    block_names = ("block1", "block2", "block3", "dense")

    def __init__(self, dropout_rate=0.25, seed=0, widths=(32, 64, 128), dense_units=128, outputs=N_CLASSES):
        super().__init__()
        rng = random_generator(seed)
        w1, w2, w3 = widths
        self.dropout_rate = dropout_rate
        self.conv1, self.bn1 = conv_kernel(rng, 5, 1, w1), batch_norm_variables(w1)
        self.conv2, self.bn2 = conv_kernel(rng, 3, w1, w2), batch_norm_variables(w2)
        self.conv3, self.bn3 = conv_kernel(rng, 3, w2, w3), batch_norm_variables(w3)
        self.dense1, self.bn4 = he_normal(rng, [3 * 3 * w3, dense_units], 3 * 3 * w3), batch_norm_variables(dense_units)
        self.dense2 = tf.Variable(rng.normal([dense_units, outputs]) * math.sqrt(1.0 / dense_units))
        self.bias2 = tf.Variable(tf.zeros([outputs]))

    def __call__(self, images, training=False, rng=None):
        x = dropout(self.blocks(images, training)[-1], self.dropout_rate, rng, training)
        with tf.name_scope("logits"):
            return x @ weight(self.dense2, x) + weight(self.bias2, x)

    def blocks(self, images, training=False):
        """Each block's output, the diagram's rows: the three conv blocks' maps ([batch, 14, 14, 32],
        [batch, 7, 7, 64], [batch, 3, 3, 128]) and the dense layer's [batch, 128] (after batch norm and ReLU: what
        the last layer reads, through dropout). The feature-map picture (report.feature_maps) shows these; each
        block is one box of TensorBoard's graph, named as here."""
        with tf.name_scope("block1"):
            block1 = conv_pool_bn_relu(images, self.conv1, self.bn1, training)
        with tf.name_scope("block2"):
            block2 = conv_pool_bn_relu(block1, self.conv2, self.bn2, training)
        with tf.name_scope("block3"):
            block3 = conv_pool_bn_relu(block2, self.conv3, self.bn3, training)
        with tf.name_scope("dense"):
            flat = flatten(block3)
            dense = tf.nn.relu(batch_normalize(flat @ weight(self.dense1, flat), self.bn4, training))
        return block1, block2, block3, dense

    def features(self, images, training=False):
        """What each block makes of the images, as the SavedModel's novelty compares them with the training
        digits' (ensemble.novelty_statistics; Lee et al. 2018): the first two conv blocks' outputs averaged over
        the picture (32 and 64 channels), the third's 3x3x128 whole (small enough for its covariance) and the
        dense layer's 128 -> [batch, 32], [batch, 64], [batch, 1152], [batch, 128]."""
        block1, block2, block3, dense = self.blocks(images, training)
        return [tf.reduce_mean(block1, axis=[1, 2]), tf.reduce_mean(block2, axis=[1, 2]), flatten(block3), dense]

    def conv_layers(self):
        """{block name: (the kernel [h, w, in, out] that convolves the map before into this block's, its bias or None)}:
        what `explain` shows of how each map is made. No bias here: batch norm's offset is one."""
        return {"block1": (self.conv1, None), "block2": (self.conv2, None), "block3": (self.conv3, None)}


INK = 0.3  # the digit gate reads a pixel at least this light as ink, and any other as paper


class DigitGate(DigitNet):
    """Is it a digit at all? A small network beside the classifier, trained on digits against what is no digit
    (letters, scribbles, blobs, specks, noise: train.train_digit_gate), so that the classifier stays as it was:

        28x28x1  -> ink (1) or not (0), at INK
                 -> conv 5x5 32 -> maxpool, BN, ReLU -> 14x14x32
                 -> conv 3x3 64 -> maxpool, BN, ReLU ->  7x7x64
                 -> conv 3x3 128 -> maxpool, BN, ReLU -> 3x3x128 -> flatten 1152
                 -> dense 128, BN, ReLU -> dense 1: the logit of "a digit" -> [batch]

    DigitNet without dropout, with one output; exported beside it (ensemble.export_saved_model's
    digit_probability, the sigmoid of this logit), and predict.read answers "?" for a piece it refuses. At
    DigitNet's full width it refuses more letters at a limit low enough to keep the digits than at half the width
    (docs/photos.md).
    """

    def __init__(self, seed=0):
        super().__init__(dropout_rate=0.0, seed=seed, outputs=1)

    def __call__(self, images, training=False):
        # The ink's shape alone: how a picture was made 28x28 (its soft edges, its contrast) is no sign of a digit.
        return super().__call__(tf.cast(images > INK, images.dtype), training)[:, 0]


# ---------------------------------------------------------------------------------------------------------
# The original write-ups' networks, rebuilt from the same pieces. Each takes input_size (the side of a square
# image) so that the experiments can feed it larger canvases; each __call__ is (images, training, rng) -> logits.


def glorot_normal(rng, shape, fan_in, fan_out):
    """Weights ~ N(0, 2 / (fan_in + fan_out)) (Glorot & Bengio 2010): a compromise between keeping the
    activations' variance constant going forward and the gradients' going backward."""
    return tf.Variable(rng.normal(shape) * math.sqrt(2.0 / (fan_in + fan_out)))


def with_bias(kernel):
    """A layer with no batch norm after it, so it needs a bias: one zero per output channel (the kernel's last axis)."""
    return {"kernel": kernel, "bias": tf.Variable(tf.zeros(kernel.shape[-1:]))}


def conv_relu(x, layer, padding="VALID"):
    """Convolution plus bias, then ReLU; 'VALID' by default, as Keras'."""
    return tf.nn.relu(conv(x, layer["kernel"], padding, layer["bias"]))


@name_scoped("dense")
def dense(x, layer):
    return x @ weight(layer["kernel"], x) + weight(layer["bias"], x)


@name_scoped("flatten")
def flatten(x):
    return tf.reshape(x, [-1, x.shape[1] * x.shape[2] * x.shape[3]])


class MLP(tf.Module):
    """Fully connected: each pixel is its own input, so nothing learnt at one position helps at another.

        28x28x1 -> flatten 784 -> dense 512, ReLU -> dropout -> dense 256, ReLU -> dropout -> dense 10

    `mlp` is this without dropout; `mlp_dropout` is 784-512-512-10 with 20% dropout (Keras' mnist_mlp.py).
    """

    block_names = ("dense1", "dense2")

    def __init__(self, hidden_units=(512, 256), dropout_rate=0.0, seed=0, input_size=28):
        super().__init__()
        rng = random_generator(seed)
        n_pixels, (h1, h2) = input_size * input_size, hidden_units
        self.dropout_rate = dropout_rate
        self.fc1 = with_bias(he_normal(rng, [n_pixels, h1], n_pixels))
        self.fc2 = with_bias(he_normal(rng, [h1, h2], h1))
        self.fc3 = with_bias(he_normal(rng, [h2, N_CLASSES], h2))

    def __call__(self, images, training=False, rng=None):
        x = dropout(self.blocks(images, training, rng)[-1], self.dropout_rate, rng, training)
        return dense(x, self.fc3)

    def blocks(self, images, training=False, rng=None):
        """The two hidden layers' outputs, after ReLU (the first's dropout on the way into the second)."""
        dense1 = tf.nn.relu(dense(flatten(images), self.fc1))
        dense2 = tf.nn.relu(dense(dropout(dense1, self.dropout_rate, rng, training), self.fc2))
        return dense1, dense2

    def conv_layers(self):
        return {}


class CNNSmall(tf.Module):
    """The tutorials' small CNN: two unpadded conv layers, each pooled, then one hidden dense layer.

        28x28x1 -> conv 3x3 32, ReLU -> 26x26x32 -> maxpool -> 13x13x32
                -> conv 3x3 64, ReLU -> 11x11x64 -> maxpool ->  5x5x64 -> flatten 1600
                -> dense 128, ReLU -> dropout 0.5 -> dense 10
    """

    block_names = ("block1", "block2", "dense")

    def __init__(self, dropout_rate=0.5, seed=0, input_size=28):
        super().__init__()
        rng = random_generator(seed)
        side = ((input_size - 2) // 2 - 2) // 2
        self.dropout_rate = dropout_rate
        self.conv1 = with_bias(conv_kernel(rng, 3, 1, 32))
        self.conv2 = with_bias(conv_kernel(rng, 3, 32, 64))
        self.fc1 = with_bias(he_normal(rng, [side * side * 64, 128], side * side * 64))
        self.fc2 = with_bias(he_normal(rng, [128, N_CLASSES], 128))

    def __call__(self, images, training=False, rng=None):
        x = dropout(self.blocks(images, training)[-1], self.dropout_rate, rng, training)
        return dense(x, self.fc2)

    def blocks(self, images, training=False):
        """Each conv layer's pooled maps ([batch, 13, 13, 32], [batch, 5, 5, 64]) and the dense layer's 128."""
        block1 = max_pool(conv_relu(images, self.conv1))
        block2 = max_pool(conv_relu(block1, self.conv2))
        return block1, block2, tf.nn.relu(dense(flatten(block2), self.fc1))

    def conv_layers(self):
        return {"block1": (self.conv1["kernel"], self.conv1["bias"]),
                "block2": (self.conv2["kernel"], self.conv2["bias"])}


class CNNKerasExample(tf.Module):
    """Keras' classic examples/mnist_cnn.py: two unpadded conv layers, one pool, dropout on maps and dense layer.

        28x28x1 -> conv 3x3 32, ReLU -> 26x26x32
                -> conv 3x3 64, ReLU -> 24x24x64 -> maxpool -> 12x12x64 -> dropout 0.25 -> flatten 9216
                -> dense 128, ReLU -> dropout 0.5 -> dense 10
    """

    block_names = ("block1", "block2", "dense")

    def __init__(self, dropout_rate=0.5, conv_dropout_rate=0.25, seed=0, input_size=28):
        super().__init__()
        rng = random_generator(seed)
        side = (input_size - 4) // 2
        self.dropout_rate, self.conv_dropout_rate = dropout_rate, conv_dropout_rate
        self.conv1 = with_bias(conv_kernel(rng, 3, 1, 32))
        self.conv2 = with_bias(conv_kernel(rng, 3, 32, 64))
        self.fc1 = with_bias(he_normal(rng, [side * side * 64, 128], side * side * 64))
        self.fc2 = with_bias(he_normal(rng, [128, N_CLASSES], 128))

    def __call__(self, images, training=False, rng=None):
        x = dropout(self.blocks(images, training, rng)[-1], self.dropout_rate, rng, training)
        return dense(x, self.fc2)

    def blocks(self, images, training=False, rng=None):
        """The first conv layer's maps ([batch, 26, 26, 32]), the second's pooled ([batch, 12, 12, 64]; their
        dropout on the way into the dense layer) and the dense layer's 128."""
        block1 = conv_relu(images, self.conv1)
        block2 = max_pool(conv_relu(block1, self.conv2))
        x = dropout(block2, self.conv_dropout_rate, rng, training)
        return block1, block2, tf.nn.relu(dense(flatten(x), self.fc1))

    def conv_layers(self):
        return {"block1": (self.conv1["kernel"], self.conv1["bias"]),
                "block2": (self.conv2["kernel"], self.conv2["bias"])}


class CNNBNDeep(tf.Module):
    """Two pairs of 3x3 conv layers with batch norm, each pair pooled, then a wide dense layer with batch norm.
    'Same' padding throughout (model.conv_bn_relu), so only the pools shrink the map.

        28x28x1 -> conv 3x3 32, BN, ReLU -> conv 3x3 32, BN, ReLU -> maxpool -> 14x14x32
                -> conv 3x3 64, BN, ReLU -> conv 3x3 64, BN, ReLU -> maxpool ->  7x7x64 -> flatten 3136
                -> dense 512, BN, ReLU -> dropout 0.2 -> dense 10
    """

    block_names = ("block1", "block2", "block3", "block4", "dense")

    def __init__(self, dropout_rate=0.2, seed=0, input_size=28):
        super().__init__()
        rng = random_generator(seed)
        n_flat = (input_size // 4) ** 2 * 64
        self.dropout_rate = dropout_rate
        self.conv1, self.bn1 = conv_kernel(rng, 3, 1, 32), batch_norm_variables(32)
        self.conv2, self.bn2 = conv_kernel(rng, 3, 32, 32), batch_norm_variables(32)
        self.conv3, self.bn3 = conv_kernel(rng, 3, 32, 64), batch_norm_variables(64)
        self.conv4, self.bn4 = conv_kernel(rng, 3, 64, 64), batch_norm_variables(64)
        self.fc1, self.bn5 = he_normal(rng, [n_flat, 512], n_flat), batch_norm_variables(512)
        self.fc2 = with_bias(he_normal(rng, [512, N_CLASSES], 512))

    def __call__(self, images, training=False, rng=None):
        x = dropout(self.blocks(images, training)[-1], self.dropout_rate, rng, training)
        return dense(x, self.fc2)

    def blocks(self, images, training=False):
        """Each conv layer's maps, the second of a pair pooled ([batch, 28, 28, 32], [batch, 14, 14, 32],
        [batch, 14, 14, 64], [batch, 7, 7, 64]), and the dense layer's 512."""
        block1 = conv_bn_relu(images, self.conv1, self.bn1, training)
        block2 = max_pool(conv_bn_relu(block1, self.conv2, self.bn2, training))
        block3 = conv_bn_relu(block2, self.conv3, self.bn3, training)
        block4 = max_pool(conv_bn_relu(block3, self.conv4, self.bn4, training))
        x = flatten(block4)
        return block1, block2, block3, block4, tf.nn.relu(batch_normalize(x @ weight(self.fc1, x), self.bn5, training))

    def conv_layers(self):
        return {"block1": (self.conv1, None), "block2": (self.conv2, None), "block3": (self.conv3, None),
                "block4": (self.conv4, None)}


class CNNTuned(tf.Module):
    """The hyper-parameter search's winner: wide 7x7 convolutions, batch norm after every pool (and on the
    pixels), Glorot-normal weights. 'Same' padding throughout; the L1/L2 penalty is in its training recipe.

        28x28x1 -> BN -> conv 7x7 256, ReLU -> maxpool -> 14x14x256 -> BN
                      -> conv 7x7 256, ReLU -> maxpool ->  7x7x256 -> BN
                      -> conv 5x5 32, ReLU  -> maxpool ->  3x3x32  -> BN -> flatten 288
                      -> dense 64, ReLU -> dropout 0.5 -> dense 10
    """

    block_names = ("block1", "block2", "block3", "dense")

    def __init__(self, dropout_rate=0.5, seed=0, input_size=28):
        super().__init__()
        rng = random_generator(seed)
        n_flat = (input_size // 8) ** 2 * 32

        def conv(size, n_in, n_out):
            return with_bias(glorot_normal(rng, [size, size, n_in, n_out], size * size * n_in, size * size * n_out))

        self.dropout_rate = dropout_rate
        self.bn0 = batch_norm_variables(1)
        self.conv1, self.bn1 = conv(7, 1, 256), batch_norm_variables(256)
        self.conv2, self.bn2 = conv(7, 256, 256), batch_norm_variables(256)
        self.conv3, self.bn3 = conv(5, 256, 32), batch_norm_variables(32)
        self.fc1 = with_bias(glorot_normal(rng, [n_flat, 64], n_flat, 64))
        self.fc2 = with_bias(glorot_normal(rng, [64, N_CLASSES], 64, N_CLASSES))

    def __call__(self, images, training=False, rng=None):
        x = dropout(self.blocks(images, training)[-1], self.dropout_rate, rng, training)
        return dense(x, self.fc2)

    def blocks(self, images, training=False):
        """Each conv layer's pooled and normalised maps ([batch, 14, 14, 256], [batch, 7, 7, 256],
        [batch, 3, 3, 32]; the first reads the normalised pixels) and the dense layer's 64."""
        x = batch_normalize(images, self.bn0, training)
        block1 = batch_normalize(max_pool(conv_relu(x, self.conv1, "SAME")), self.bn1, training)
        block2 = batch_normalize(max_pool(conv_relu(block1, self.conv2, "SAME")), self.bn2, training)
        block3 = batch_normalize(max_pool(conv_relu(block2, self.conv3, "SAME")), self.bn3, training)
        return block1, block2, block3, tf.nn.relu(dense(flatten(block3), self.fc1))

    def conv_layers(self):
        """block1's kernel convolves the normalised pixels, not the picture itself."""
        return {f"block{i}": (layer["kernel"], layer["bias"]) for i, layer in
                enumerate([self.conv1, self.conv2, self.conv3], start=1)}


# ---------------------------------------------------------------------------------------------------------
# The tuned network: tune.py's search space (recipes.tuned_network builds one from a best_params.json).


class TunedCNN(tf.Module):
    """A network from the search space: a conv block per entry of `filters`, a dense layer per entry of `units`.

        28x28x1 -> conv k1xk1 f1, BN, ReLU -> maxpool -> 14x14xf1
                -> conv k2xk2 f2, BN, ReLU -> maxpool ->  7x7xf2
               [-> conv k3xk3 f3, BN, ReLU -> maxpool ->  3x3xf3]       a third conv layer, if any
                -> flatten
                -> dense u1, BN, ReLU -> dropout
               [-> dense u2, BN, ReLU -> dropout]                       a second dense layer, if any
                -> dense 10
    """

    def __init__(self, filters, kernel_sizes, units, dropout_rate, seed=0):
        super().__init__()
        rng = random_generator(seed)
        self.dropout_rate = dropout_rate
        channels_in = [1, *filters[:-1]]
        self.conv_kernels = [conv_kernel(rng, size, n_in, n_out)
                             for size, n_in, n_out in zip(kernel_sizes, channels_in, filters)]
        self.conv_bns = [batch_norm_variables(n) for n in filters]
        side = 28 // 2 ** len(filters)  # each 2x2 pooling halves the side, rounding down
        widths_in = [side * side * filters[-1], *units[:-1]]
        self.dense_kernels = [he_normal(rng, [n_in, n_out], n_in) for n_in, n_out in zip(widths_in, units)]
        self.dense_bns = [batch_norm_variables(n) for n in units]
        self.logits_kernel = tf.Variable(rng.normal([units[-1], N_CLASSES]) * math.sqrt(1.0 / units[-1]))
        self.logits_bias = tf.Variable(tf.zeros([N_CLASSES]))

    @property
    def block_names(self):
        return (*(f"block{i}" for i in range(1, len(self.conv_kernels) + 1)),
                *(f"dense{i}" for i in range(1, len(self.dense_kernels) + 1)))

    def __call__(self, images, training=False, rng=None):
        x = dropout(self.blocks(images, training, rng)[-1], self.dropout_rate, rng, training)
        return x @ weight(self.logits_kernel, x) + weight(self.logits_bias, x)

    def features(self, images, training=False):
        """[what the last layer reads], as the SavedModel's novelty compares it (DigitNet.features)."""
        return [self.blocks(images, training)[-1]]

    def blocks(self, images, training=False, rng=None):
        """Each conv block's pooled maps, then each dense layer's outputs after batch norm and ReLU (a dense layer's
        dropout is the next one's input's; the last one's, the caller's)."""
        x, outputs = images, []
        for block, (kernel, bn) in enumerate(zip(self.conv_kernels, self.conv_bns), start=1):
            with tf.name_scope(f"block{block}"):
                x = max_pool(conv_bn_relu(x, kernel, bn, training))
            outputs.append(x)
        x = flatten(x)
        for i, (kernel, bn) in enumerate(zip(self.dense_kernels, self.dense_bns)):
            if i:
                x = dropout(x, self.dropout_rate, rng, training)
            x = tf.nn.relu(batch_normalize(x @ weight(kernel, x), bn, training))
            outputs.append(x)
        return tuple(outputs)

    def conv_layers(self):
        return {f"block{i}": (kernel, None) for i, kernel in enumerate(self.conv_kernels, start=1)}


def count_parameters(model):
    """Trainable parameters (batch norm's moving statistics are not learnt, so not counted)."""
    return sum(variable.shape.num_elements() for variable in model.trainable_variables)
