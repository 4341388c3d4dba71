"""The from-scratch building blocks: random streams, batch norm, dropout, augmentation (affine and elastic),
optimisers, a moving average of the weights, the learning-rate schedule; and name_scoped, which groups a
piece's ops into one box of TensorBoard's graph.

Plain TensorFlow ops on tf.Variables, no Keras. Each piece matches the library's own to float32 precision;
tests/test_tools.py holds them side by side.
"""
import contextlib
import functools
import math

import tensorflow as tf

INITIAL_WEIGHTS, TRAINING_DRAWS = 0, 1  # random_generator's streams: a network's weights; augmentation and dropout


def name_scoped(name):
    """A decorator: the function's ops go under tf.name_scope(name) (name, name_1, ... when called again in one
    graph), so that TensorBoard's graph shows each piece as one box named for what it does. It changes no
    variable's name: variables are made outside these functions and checkpointed by attribute."""
    def decorate(function):
        @functools.wraps(function)
        def scoped(*args, **kwargs):
            with tf.name_scope(name):
                return function(*args, **kwargs)
        return scoped
    return decorate

# ---------------------------------------------------------------------------------------------------------
# random streams


def random_generator(seed: int, stream: int = INITIAL_WEIGHTS) -> tf.random.Generator:
    """A Philox generator whose draws no other (seed, stream) shares: the seed is Philox's key, the stream the
    high word of its 128-bit counter. tf.random.Generator.from_seed(s) puts s in the counter with key 0 instead,
    so from_seed(s + 1) is from_seed(s)'s sequence 4 numbers on: ensemble members seeded s, s + 1, ... would draw
    almost the same initial weights, augmentation and dropout, and a network's weights the same numbers as its
    augmentation."""
    return tf.random.Generator.from_key_counter(key=seed, counter=[0, stream], alg="philox")


# ---------------------------------------------------------------------------------------------------------
# batch normalisation


def batch_norm_variables(n_channels: int) -> dict[str, tf.Variable]:
    """A learned per-channel scale and offset, and the moving statistics used at inference."""
    return {
        "scale": tf.Variable(tf.ones([n_channels]), name="scale"),
        "offset": tf.Variable(tf.zeros([n_channels]), name="offset"),
        # Every replica of a tf.distribute run computes the same (synchronised) statistics: MEAN lets each write.
        "moving_mean": tf.Variable(tf.zeros([n_channels]), trainable=False, name="moving_mean",
                                   aggregation=tf.VariableAggregation.MEAN),
        "moving_variance": tf.Variable(tf.ones([n_channels]), trainable=False, name="moving_variance",
                                       aggregation=tf.VariableAggregation.MEAN),
    }


@name_scoped("batch_norm")
def batch_normalize(x, bn: dict, training: bool, momentum=0.99, epsilon=1e-3):
    """Per-channel batch norm over every axis but the last (batch, and height/width for conv maps):

        y = scale * (x - mean) / sqrt(var + epsilon) + offset

    training: mean and (biased) var of this batch (normalize_by_batch), and
    moving = momentum * moving + (1 - momentum) * batch, exactly Keras' BatchNormalization rule.
    Inference: mean and var are the moving statistics.
    Under mixed precision x comes in as float16 or bfloat16; the statistics and the normalisation are computed
    in float32, as Keras does, and only y is cast back.
    `training` is a Python bool: the caller traces one graph per mode.
    """
    compute_dtype, x = x.dtype, tf.cast(x, tf.float32)
    if training:
        y, mean, variance = normalize_by_batch(x, tf.convert_to_tensor(bn["scale"]),
                                               tf.convert_to_tensor(bn["offset"]), epsilon)
        bn["moving_mean"].assign(bn["moving_mean"] * momentum + mean * (1.0 - momentum))
        bn["moving_variance"].assign(bn["moving_variance"] * momentum + variance * (1.0 - momentum))
        return tf.cast(y, compute_dtype)
    # The same y, folded into one multiply and one add per element: x * m + (offset - mean * m) with
    # m = scale / sqrt(var + epsilon). Per-channel work is tiny; per-element work is what costs.
    multiplier = bn["scale"] * tf.math.rsqrt(bn["moving_variance"] + epsilon)
    return tf.cast(x * multiplier + (bn["offset"] - bn["moving_mean"] * multiplier), compute_dtype)


def normalize_by_batch(x, scale, offset, epsilon):
    """-> (y, mean, var): x normalised by the statistics of its own batch, over every axis but the last,

        x_hat = (x - mean) / sqrt(var + epsilon),   y = scale * x_hat + offset,   var = mean(x^2) - mean^2,

    with the backward pass written out instead of left to autodiff, which differentiates through the mean and
    the variance op by op. For M values per channel, and D = sum dy, S = sum dy * x_hat = (sum dy * x - mean D)
    / sqrt(var + epsilon):

        dL/d offset = D,   dL/d scale = S,   dL/dx = m * (dy - (D + x_hat * S) / M),   m = scale / sqrt(var + epsilon)

    (mean and var depend on every x; the two sums are what that dependence adds up to). Only y is
    differentiated: mean and var feed the moving statistics, which are assigned, not learnt.
    Speed: a batch's activations are large and every pass over them counts in the step's time, so both
    directions are folded into per-channel coefficients, y = m x + b and dL/dx = m dy + p x + q, and the
    per-channel sums are matrix products with a row of ones, one per example, then added up: faster than
    reduce_sum on a CPU (docs/performance.md), and as exact (a single product over the whole batch adds 78,400
    values in a row, and drifts by 1e-4 of the sum).
    Under tf.distribute with several replicas, the batch is the global batch: each replica's sums are added
    across replicas (synchronised batch norm, Keras' SyncBatchNormalization), in the forward pass and in dL/dx,
    so that N devices compute what one device would on the whole batch; each replica returns its own share of
    dL/d scale and dL/d offset, which the strategy adds up like every other gradient.
    """
    n_channels = x.shape[-1]
    replicas = tf.distribute.get_replica_context()
    synchronised = replicas is not None and replicas.num_replicas_in_sync > 1

    def over_replicas(value):
        return replicas.all_reduce(tf.distribute.ReduceOp.SUM, value) if synchronised else value

    def channel_sums(values):  # [N, ..., C] -> [C]: each example's values by a matrix product, then the N sums
        per_example = tf.reshape(values, [tf.shape(values)[0], -1, n_channels])
        return tf.reduce_sum(tf.matmul(tf.ones([1, 1, tf.shape(per_example)[1]]), per_example), [0, 1])

    count = over_replicas(tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32))

    @tf.custom_gradient
    def normalize(x, scale, offset):
        mean = over_replicas(channel_sums(x)) / count
        variance = tf.maximum(over_replicas(channel_sums(tf.square(x))) / count - tf.square(mean), 0.0)
        inverse_std = tf.math.rsqrt(variance + epsilon)
        multiplier = scale * inverse_std

        def gradient(dy, unused_dmean, unused_dvariance):
            d_offset = channel_sums(dy)  # this replica's shares of D and S
            d_scale = (channel_sums(dy * x) - mean * d_offset) * inverse_std
            total_d_offset, total_d_scale = over_replicas(d_offset), over_replicas(d_scale)
            # m (dy - (D + x_hat S) / M) with x_hat = (x - mean) / std, gathered per channel: m dy + p x + q
            p = -multiplier * inverse_std * total_d_scale / count
            q = -p * mean - multiplier * total_d_offset / count
            return multiplier * dy + (p * x + q), d_scale, d_offset

        return (x * multiplier + (offset - mean * multiplier), mean, variance), gradient

    return normalize(x, scale, offset)


# ---------------------------------------------------------------------------------------------------------
# dropout


@name_scoped("dropout")
def dropout(x, rate: float, rng: tf.random.Generator, training: bool):
    """Inverted dropout: y = x * keep / (1 - rate), keep ~ Bernoulli(1 - rate) per unit, so E[y] = x and
    inference needs no rescaling. At inference, or when rate == 0, y = x and rng is not touched (may be None)."""
    if not training or rate == 0:
        return x
    keep = tf.cast(rng.uniform(tf.shape(x)) >= rate, x.dtype)
    return x * keep / (1.0 - rate)


# ---------------------------------------------------------------------------------------------------------
# augmentation


def affine_transform(images, matrices):
    """Resample each image [N,H,W,C] through its own 3x3 matrix [N,3,3]:

        (row_in, col_in, 1) = matrix @ (row_out, col_out, 1)

    with bilinear interpolation, pixel centres at integer coordinates, zeros outside: the convention of
    scipy.ndimage.affine_transform(image, matrix, order=1, mode='constant', cval=0). One difference at the
    very edge: a point less than a pixel outside the image is interpolated between the edge pixel and 0
    (scipy's mode='grid-constant') where mode='constant' gives 0 outright.

    ImageProjectiveTransformV3 takes the same map in (x=col, y=row) order, flattened to 8 numbers
    [a0 a1 a2 b0 b1 b2 c0 c1] with the last entry 1, so swap rows 0,1 and columns 0,1 and normalise.
    """
    xy = tf.gather(tf.gather(tf.cast(matrices, tf.float32), [1, 0, 2], axis=1), [1, 0, 2], axis=2)
    xy = xy / xy[:, 2:, 2:]
    # A static output size (height and width must be known) keeps the static shape that model code reshapes by.
    height, width = images.shape[1], images.shape[2]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=tf.reshape(xy, [-1, 9])[:, :8], output_shape=[height, width],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")


def random_augmentation_matrices(rng, n, height, width, max_rotation_degrees, max_shift_fraction,
                                 max_zoom_fraction, max_shear=0.0):
    """n random output->input matrices [n,3,3] about the image centre c = ((height-1)/2, (width-1)/2):

        input = A (output - c) + c + shift,   A = R(angle) @ [[1, 0], [shear, 1]] / zoom

    angle ~ U(±max_rotation_degrees), zoom ~ U(1 ± max_zoom_fraction) (> 1 enlarges the digit),
    shear ~ U(±max_shear), shift ~ U(±max_shift_fraction * height) in rows, likewise in columns.
    """
    def uniform(half_range, centre=0.0):
        return rng.uniform([n], centre - half_range, centre + half_range)

    angle = uniform(max_rotation_degrees * math.pi / 180)
    zoom = uniform(max_zoom_fraction, 1.0)
    shear = uniform(max_shear)
    shift_row, shift_col = uniform(max_shift_fraction * height), uniform(max_shift_fraction * width)
    cos, sin = tf.cos(angle), tf.sin(angle)
    a, b = (cos - sin * shear) / zoom, -sin / zoom
    c, d = (sin + cos * shear) / zoom, cos / zoom
    centre_row, centre_col = (height - 1) / 2, (width - 1) / 2
    zeros, ones = tf.zeros([n]), tf.ones([n])
    return tf.stack([
        tf.stack([a, b, centre_row + shift_row - a * centre_row - b * centre_col], axis=1),
        tf.stack([c, d, centre_col + shift_col - c * centre_row - d * centre_col], axis=1),
        tf.stack([zeros, zeros, ones], axis=1),
    ], axis=1)


# ---------------------------------------------------------------------------------------------------------
# elastic distortion (Simard, Steinkraus and Platt 2003): every pixel moved by its own small, smooth displacement


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> list[float]:
    """The 1-D Gaussian of scipy.ndimage.gaussian_filter, [2r + 1] weights:

        w_k = exp(-k^2 / (2 sigma^2)) / sum_j exp(-j^2 / (2 sigma^2)),   k = -r..r,   r = int(truncate * sigma + 0.5)
    """
    radius = int(truncate * sigma + 0.5)
    weights = [math.exp(-0.5 * (k / sigma) ** 2) for k in range(-radius, radius + 1)]
    return [w / sum(weights) for w in weights]


def gaussian_matrix(size: int, sigma: float):
    """[size, size] G with G[i, j] = w_{j-i} (0 beyond the kernel): G @ u is u convolved with the 1-D Gaussian,
    zeros assumed beyond both ends."""
    weights = gaussian_kernel(sigma)
    radius = len(weights) // 2
    return tf.constant([[weights[j - i + radius] if abs(j - i) <= radius else 0.0 for j in range(size)]
                        for i in range(size)], tf.float32)


def gaussian_smooth(maps, sigma: float):
    """Each 2-D map [..., H, W] convolved with a Gaussian of standard deviation sigma (pixels), zeros beyond the
    border: scipy.ndimage.gaussian_filter(map, sigma, mode='constant', cval=0). The 2-D Gaussian is the product
    of two 1-D ones, so smooth = G_H @ map @ G_W^T (gaussian_matrix): the separable convolution with zero
    padding, as two matrix products: far faster than two tf.nn.depthwise_conv2d passes, whose many taps at a
    large sigma (33 at sigma 4) would cost more than the whole affine augmentation (docs/performance.md)."""
    height, width = maps.shape[-2], maps.shape[-1]
    return tf.matmul(tf.matmul(gaussian_matrix(height, sigma), maps), gaussian_matrix(width, sigma), transpose_b=True)


def bilinear_sample(images, rows, cols):
    """images [N,H,W,1] read at real coordinates rows, cols [N,H,W] (pixel centres at integers) by bilinear
    interpolation between the 4 neighbours, a neighbour outside the image counting as 0:

        out = sum over r in {floor(row), floor(row) + 1}, c likewise, of (1 - |row - r|)(1 - |col - c|) image[r, c]

    scipy.ndimage.map_coordinates(image, [rows, cols], order=1, mode='grid-constant'); the same as
    mode='constant' except within one pixel outside the image, where 'constant' gives 0 outright and this fades
    the edge pixel to 0 (as affine_transform does). Returns [N,H,W,1]."""
    n, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
    if images.shape[3] != 1:
        raise ValueError(f"bilinear_sample takes one-channel images [N,H,W,1], not {images.shape}")
    # A ring of zeros round each image, and every point clamped into the ring: a point outside reads only zeros.
    padded = tf.reshape(tf.pad(images[..., 0], [[0, 0], [1, 1], [1, 1]]), [-1])
    rows, cols = tf.clip_by_value(rows + 1, 0, height + 1), tf.clip_by_value(cols + 1, 0, width + 1)
    top, left = tf.minimum(tf.floor(rows), height), tf.minimum(tf.floor(cols), width)
    down, right = rows - top, cols - left
    stride = width + 2
    corner = (tf.range(n)[:, None, None] * (height + 2) * stride + tf.cast(top, tf.int32) * stride
              + tf.cast(left, tf.int32))
    top_left, top_right, bottom_left, bottom_right = tf.unstack(
        tf.gather(padded, tf.stack([corner, corner + 1, corner + stride, corner + stride + 1])))
    return ((1 - down) * ((1 - right) * top_left + right * top_right)
            + down * ((1 - right) * bottom_left + right * bottom_right))[..., None]


def displace(images, displacements, matrices=None):
    """images [N,H,W,1] resampled through given displacement fields [N,2,H,W] (row, then column component):

        out[n, i, j] = image_n(i + dy[n, i, j], j + dx[n, i, j])      (bilinear, zero outside: bilinear_sample)

    With output->input matrices [N,3,3] (affine, as affine_transform takes them), the displaced point goes
    through them as well: out(p) = image(M (p + d(p))), the map of affine_transform(images, matrices) followed
    by displace(., displacements), interpolated once (one blur, one gather) instead of twice."""
    height, width = images.shape[1], images.shape[2]
    rows = tf.range(height, dtype=tf.float32)[:, None] + displacements[:, 0]
    cols = tf.range(width, dtype=tf.float32)[None, :] + displacements[:, 1]
    if matrices is not None:
        m = tf.cast(matrices, tf.float32)[:, :2, :, None, None]
        rows, cols = (m[:, 0, 0] * rows + m[:, 0, 1] * cols + m[:, 0, 2],
                      m[:, 1, 0] * rows + m[:, 1, 1] * cols + m[:, 1, 2])
    return bilinear_sample(images, rows, cols)


def random_displacement_fields(rng, n, height, width, alpha: float, sigma: float):
    """n random fields [n,2,H,W], Simard et al.'s:  d = alpha * G_sigma * u,  u ~ U(-1, 1) independently for
    every pixel and both components, G_sigma the Gaussian smoothing of gaussian_smooth (zeros beyond the border).
    Smoothing makes neighbours move together (a rubber sheet, not noise): each component has mean 0 and, away
    from the border, standard deviation alpha * sqrt(1/3) * sum_k w_k^2 (w the 1-D kernel), about
    alpha / (sqrt(12 pi) sigma); it tapers off near the border, where the smoothing averages in zeros.
    (No normalisation of the field, as in the common implementations of the paper.) Strength for 28x28 digits:
    Simard et al. use alpha 34, sigma 4 (on 29x29); Kaggle kernels use alpha 36, sigma 6 alone, or alpha 8-12,
    sigma 3 together with an affine transform."""
    return alpha * gaussian_smooth(rng.uniform([n, 2, height, width], -1.0, 1.0), sigma)


@name_scoped("augmentation")
def data_augmentation(images, rng, max_rotation_degrees=15.0, max_shift_fraction=0.1, max_zoom_fraction=0.1,
                      max_shear=0.0, elastic_alpha=0.0, elastic_sigma=4.0):
    """A different random rotation, zoom, shear and shift for every image [N,H,W,1] of the batch, in the graph;
    then, if elastic_alpha > 0, an elastic distortion of the result, its field in the output's frame:
    out(p) = image(M (p + d(p))), in one resampling (displace). With elastic_alpha 0 nothing more is drawn from
    rng: a recipe without elastic distortion gets the images of the affine transform alone, draw for draw."""
    n, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
    matrices = random_augmentation_matrices(rng, n, height, width, max_rotation_degrees, max_shift_fraction,
                                            max_zoom_fraction, max_shear)
    if elastic_alpha == 0:
        return affine_transform(images, matrices)
    fields = random_displacement_fields(rng, n, height, width, elastic_alpha, elastic_sigma)
    return displace(images, fields, matrices)


@name_scoped("photo_remnants")
def photo_remnants(images, rng, chance=0.25):
    """What a photo's cleaning leaves on a digit, drawn at random for every image [N,H,W,1] in [0, 1], each with
    probability `chance`, independently:

        thicker strokes:  out = max over the 3x3 neighbourhood (a dilation, tf.nn.max_pool2d stride 1)
        specks:           out = max(out, u * [v < p]),  u ~ U(0.5, 1), v ~ U(0, 1) per pixel, p ~ U(0, 0.02)
        a paper line:     out = max(out, a * [row == r]) (or a column), a ~ U(0.2, 0.8), r uniform
        a broken stroke:  out = 0 in a square of side 3-7 at a uniform place

    The digit gate sees them on digits and on what is no digit alike, so they tell it nothing either way."""
    n, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]

    def chosen():
        return tf.reshape(rng.uniform([n]) < chance, [-1, 1, 1, 1])

    out = tf.where(chosen(), tf.nn.max_pool2d(images, ksize=3, strides=1, padding="SAME"), images)
    rate = tf.reshape(rng.uniform([n], 0.0, 0.02), [-1, 1, 1, 1])
    specks = rng.uniform([n, height, width, 1], 0.5, 1.0) * tf.cast(rng.uniform([n, height, width, 1]) < rate,
                                                                    tf.float32)
    out = tf.where(chosen(), tf.maximum(out, specks), out)
    rows = tf.one_hot(rng.uniform([n], 0, height, tf.int32), height)[:, :, None, None] * tf.ones([1, 1, width, 1])
    columns = tf.one_hot(rng.uniform([n], 0, width, tf.int32), width)[:, None, :, None] * tf.ones([1, height, 1, 1])
    across = tf.where(tf.reshape(rng.uniform([n]) < 0.5, [-1, 1, 1, 1]), rows, columns)
    out = tf.where(chosen(), tf.maximum(out, across * tf.reshape(rng.uniform([n], 0.2, 0.8), [-1, 1, 1, 1])), out)
    side = rng.uniform([n], 3, 8, tf.int32)[:, None, None, None]
    top, left = (rng.uniform([n], 0, limit, tf.int32)[:, None, None, None] for limit in (height, width))
    row_index, column_index = tf.range(height)[None, :, None, None], tf.range(width)[None, None, :, None]
    hole = ((row_index >= top) & (row_index < top + side) & (column_index >= left) & (column_index < left + side))
    return tf.where(chosen() & hole, 0.0, out)


# ---------------------------------------------------------------------------------------------------------
# optimisers: each keeps its state in tf.Variables created up front, so tf.train.Checkpoint saves it and
# apply_gradients only assigns (as tf.function requires). Updates are written in Keras' algebraic form,
# e.g. m += (1 - b1)(g - m) rather than m = b1 m + (1 - b1) g, to agree with it to the last float32 bit.


def zeros_like_each(variables):
    return [tf.Variable(tf.zeros_like(variable), trainable=False) for variable in variables]


class Adam(tf.Module):
    """Adam (Kingma & Ba 2014), as Keras computes it:

        m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2;   t <- t + 1
        lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t);   p <- p - lr_t * m / (sqrt(v) + eps)
    """

    def __init__(self, variables, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
        super().__init__()
        self.params = list(variables)
        self.learning_rate = tf.Variable(learning_rate, dtype=tf.float32, trainable=False)
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.m, self.v = zeros_like_each(self.params), zeros_like_each(self.params)

    def apply_gradients(self, gradients):
        t = tf.cast(self.iterations + 1, tf.float32)
        lr_t = self.learning_rate * tf.sqrt(1 - tf.pow(self.beta_2, t)) / (1 - tf.pow(self.beta_1, t))
        for p, g, m, v in zip(self.params, gradients, self.m, self.v):
            m.assign_add((g - m) * (1 - self.beta_1))
            v.assign_add((tf.square(g) - v) * (1 - self.beta_2))
            p.assign_sub(m * lr_t / (tf.sqrt(v) + self.epsilon))
        self.iterations.assign_add(1)


class Adadelta(tf.Module):
    """Adadelta (Zeiler 2012), as Keras computes it (an optional learning rate, 1.0 being the paper's):

        E[g^2] <- rho E[g^2] + (1 - rho) g^2
        dp = -sqrt(E[dp^2] + eps) / sqrt(E[g^2] + eps) * g       (units of p, from the running RMS of steps)
        E[dp^2] <- rho E[dp^2] + (1 - rho) dp^2;   p <- p + lr * dp
    """

    def __init__(self, variables, learning_rate=1.0, rho=0.95, epsilon=1e-7):
        super().__init__()
        self.params = list(variables)
        self.learning_rate = tf.Variable(learning_rate, dtype=tf.float32, trainable=False)
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.rho, self.epsilon = rho, epsilon
        self.mean_square_gradient = zeros_like_each(self.params)
        self.mean_square_step = zeros_like_each(self.params)

    def apply_gradients(self, gradients):
        rho, eps = self.rho, self.epsilon
        for p, g, msg, mss in zip(self.params, gradients, self.mean_square_gradient, self.mean_square_step):
            msg.assign(rho * msg + (1 - rho) * tf.square(g))
            step = -(tf.sqrt(mss + eps) * g) / tf.sqrt(msg + eps)
            mss.assign(rho * mss + (1 - rho) * tf.square(step))
            p.assign_add(self.learning_rate * step)
        self.iterations.assign_add(1)


class Nadam(Adam):
    """Nadam (Dozat 2015): Adam with Nesterov momentum, as Keras 3 computes it, with its momentum schedule

        u_t = b1 (1 - 0.5 * 0.96^t),   U_t = u_1 u_2 ... u_t
        m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
        m_hat = u_{t+1} m / (1 - U_t u_{t+1}) + (1 - u_t) g / (1 - U_t);   v_hat = v / (1 - b2^t)
        p <- p - lr * m_hat / (sqrt(v_hat) + eps)

    The m_hat mixes the next step's momentum with today's gradient: the Nesterov look-ahead.
    """

    def __init__(self, variables, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
        super().__init__(variables, learning_rate, beta_1, beta_2, epsilon)  # Adam's state, plus:
        self.u_product = tf.Variable(1.0, trainable=False)

    def apply_gradients(self, gradients):
        t = tf.cast(self.iterations + 1, tf.float32)
        u_t = self.beta_1 * (1 - 0.5 * tf.pow(0.96, t))
        u_next = self.beta_1 * (1 - 0.5 * tf.pow(0.96, t + 1))
        self.u_product.assign(self.u_product * u_t)
        u_product_next = self.u_product * u_next
        for p, g, m, v in zip(self.params, gradients, self.m, self.v):
            m.assign_add((g - m) * (1 - self.beta_1))
            v.assign_add((tf.square(g) - v) * (1 - self.beta_2))
            m_hat = u_next * m / (1 - u_product_next) + (1 - u_t) * g / (1 - self.u_product)
            v_hat = v / (1 - tf.pow(self.beta_2, t))
            p.assign_sub(m_hat * self.learning_rate / (tf.sqrt(v_hat) + self.epsilon))
        self.iterations.assign_add(1)


class LossScaleOptimizer(tf.Module):
    """Dynamic loss scaling for float16 training (Micikevicius et al. 2018), as Keras' LossScaleOptimizer does
    it. float16 flushes values below 6e-8 to zero, and many gradients are that small; so the loss is multiplied
    by `scale` before differentiating (scale_loss) and the gradients divided by it before the update:

        all gradients finite:  p <- optimizer(p, g / scale);  after growth_steps such steps in a row, scale *= 2
        otherwise (overflow):  no update;  scale *= 1/2

    so the scale settles just below where the gradients overflow. bfloat16 has float32's range and needs none.
    """

    def __init__(self, optimizer, initial_scale=2.0**15, growth_steps=2000):
        super().__init__()
        self.optimizer, self.growth_steps = optimizer, growth_steps
        self.scale = tf.Variable(initial_scale, dtype=tf.float32, trainable=False)
        self.finite_steps = tf.Variable(0, dtype=tf.int64, trainable=False)  # in a row, since the last change

    @property
    def learning_rate(self):
        return self.optimizer.learning_rate

    @property
    def iterations(self):
        return self.optimizer.iterations

    def scale_loss(self, loss):
        return loss * self.scale

    def apply_gradients(self, scaled_gradients):
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in scaled_gradients])

        def update():
            self.optimizer.apply_gradients([g / self.scale for g in scaled_gradients])
            grow = self.finite_steps == self.growth_steps - 1
            self.scale.assign(tf.where(grow, self.scale * 2, self.scale))
            self.finite_steps.assign(tf.where(grow, tf.constant(0, tf.int64), self.finite_steps + 1))

        def back_off():
            self.scale.assign(self.scale / 2)
            self.finite_steps.assign(0)

        tf.cond(finite, update, back_off)


# ---------------------------------------------------------------------------------------------------------
# weight averaging


class ExponentialMovingAverage(tf.Module):
    """An exponential moving average of the weights (Polyak averaging), as Keras' optimizers keep it with
    use_ema=True, ema_momentum=decay, ema_overwrite_frequency=None. After every optimiser step, update():

        first update:  average = w                                       (Keras: momentum 0 at iteration 0)
        then:          average = decay * average + (1 - decay) * w

    so the average starts from the weights after the first step, not from the initial ones (nor from zero),
    and needs no bias correction. copy_to() puts the averages into the variables, as Keras'
    finalize_variable_values does; averaged() does so for a `with` block and puts the weights back after.

    Which variables: Keras averages the trainable ones only, and so does this when given
    model.trainable_variables. The batch-norm moving statistics are left alone: they are already a moving
    average (over ~1 / (1 - 0.99) = 100 steps) of the live network's batch statistics, while the averaged
    weights span ~1 / (1 - decay) steps, so for the averaged network they are slightly stale; if that costs
    accuracy, the remedy is SWA's: recompute them with a pass over training batches at the averaged weights.
    Under tf.distribute: create it under the strategy's scope and update() where apply_gradients is called
    (cross-replica context), so that every replica's copy of an average moves alike.
    """

    def __init__(self, variables, decay=0.999):
        super().__init__()
        self.params = list(variables)
        self.decay = decay
        self.averages = [tf.Variable(variable, trainable=False) for variable in self.params]
        self.updates = tf.Variable(0, dtype=tf.int64, trainable=False)

    def update(self):
        momentum = tf.cast(self.updates > 0, tf.float32) * self.decay
        for average, variable in zip(self.averages, self.params):
            average.assign(momentum * average + (1 - momentum) * variable)
        self.updates.assign_add(1)

    def copy_to(self):
        for average, variable in zip(self.averages, self.params):
            variable.assign(average)

    def swap(self):
        """Exchange the weights and their averages (twice: back as they were, bit for bit)."""
        for average, variable in zip(self.averages, self.params):
            weights = tf.identity(variable)
            variable.assign(average)
            average.assign(weights)

    @contextlib.contextmanager
    def averaged(self):
        """The variables hold the averages inside the block (for evaluation or saving), the weights after it.
        Do not update() inside it."""
        self.swap()
        try:
            yield
        finally:
            self.swap()


# ---------------------------------------------------------------------------------------------------------
# learning-rate schedule


def one_cycle_learning_rate(step, total_steps, peak_learning_rate, warmup_fraction=0.25, final_fraction=1e-3):
    """One-cycle schedule (Smith 2018, in the form of PyTorch's OneCycleLR with linear warm-up):

        w = warmup_fraction * total_steps
        step < w:   lr = start + (peak - start) * step / w,                       start = peak / 25
        step >= w:  lr = final + (peak - final) * (1 + cos(pi * (step - w) / (total_steps - w))) / 2,
                                                                                   final = peak * final_fraction
    so it climbs from peak/25 to the peak, then anneals to peak * final_fraction at total_steps (and stays).
    A float32 tensor, for a Python number or a tensor step alike; warmup_fraction must be in [0, 1).
    """
    step = tf.cast(step, tf.float32)
    warmup_steps = warmup_fraction * total_steps
    start, final = peak_learning_rate / 25, peak_learning_rate * final_fraction
    warming = start + (peak_learning_rate - start) * step / warmup_steps
    progress = tf.minimum((step - warmup_steps) / (total_steps - warmup_steps), 1.0)
    annealing = final + (peak_learning_rate - final) * (1 + tf.cos(math.pi * progress)) / 2
    return tf.where(step < warmup_steps, warming, annealing)
