"""Small building blocks shared by the Mask R-CNN graph: frozen BatchNorm, a reshaping
TimeDistributed wrapper, and the box helpers that run inside custom layers.

Everything named `*_graph` works on tf tensors inside a layer's `call()`; it must never be
given KerasTensors (Keras 3 rejects tf ops on them).
"""
import math

import keras
import numpy as np
import tensorflow as tf

BN_EPSILON = 1e-3


class BatchNorm(keras.layers.BatchNormalization):
    """BatchNormalization whose mode is fixed at construction (Matterport's TRAIN_BN).

    train_bn=False: always inference mode (moving statistics), even while training,
    because Mask R-CNN batches are too small to estimate statistics.
    train_bn=True: follows the `training` flag of the call.
    """

    def __init__(self, train_bn=False, epsilon=BN_EPSILON, **kwargs):
        super().__init__(epsilon=epsilon, **kwargs)
        self.train_bn = bool(train_bn)

    def call(self, inputs, training=None, mask=None):
        if not self.train_bn:
            training = False
        return super().call(inputs, training=training, mask=mask)

    def get_config(self):
        config = super().get_config()
        config["train_bn"] = self.train_bn
        return config


class TimeDistributed(keras.layers.TimeDistributed):
    """Applies the wrapped layer to every ROI by folding [batch, rois] into one axis.

    Keras 3's own wrapper unrolls a Python loop over a static time axis (1000 ROIs would mean
    1000 copies of the layer in the graph); folding is what Keras 2 did and is one op.
    The inner layer gets the wrapper's name, so its variables are `<name>/kernel` etc.
    """

    def __init__(self, layer, **kwargs):
        super().__init__(layer, **kwargs)

    def call(self, inputs, training=None, mask=None):
        # [batch, rois, ...] -> [batch * rois, ...] -> layer -> [batch, rois, ...]
        shape = tf.shape(inputs)
        folded = tf.reshape(inputs, tf.concat([[-1], shape[2:]], axis=0))
        kwargs = {"training": training} if self.layer._call_has_training_arg else {}
        out = self.layer(folded, **kwargs)
        out_shape = tf.shape(out)
        out = tf.reshape(out, tf.concat([shape[:2], out_shape[1:]], axis=0))
        static = self.compute_output_shape(tuple(inputs.shape))
        out.set_shape(static)
        return out


def time_distributed(layer_cls, name, *args, **kwargs):
    """TimeDistributed(layer_cls(*args, name=name, **kwargs), name=name)."""
    return TimeDistributed(layer_cls(*args, name=name, **kwargs), name=name)


# --- Box helpers (tf) ---------------------------------------------------------------------

BOX_SCALE_CLAMP = math.log(1000.0 / 16)


def apply_box_deltas_graph(boxes, deltas):
    """Apply [N, (dy, dx, log(dh), log(dw))] deltas to [N, (y1, x1, y2, x2)] boxes.

    An untrained or early network can predict huge or non-finite deltas: those are zeroed
    and the log-scales capped at log(1000/16) (as detectron2 does), so a box is never NaN
    (inf - inf) and never crashes ROI alignment. Trained deltas are far inside the cap.
    """
    deltas = tf.where(tf.math.is_finite(deltas), deltas, tf.zeros_like(deltas))
    deltas = tf.concat([deltas[:, :2], tf.minimum(deltas[:, 2:], BOX_SCALE_CLAMP)], axis=1)
    height = boxes[:, 2] - boxes[:, 0]
    width = boxes[:, 3] - boxes[:, 1]
    center_y = boxes[:, 0] + 0.5 * height
    center_x = boxes[:, 1] + 0.5 * width
    center_y += deltas[:, 0] * height
    center_x += deltas[:, 1] * width
    height *= tf.exp(deltas[:, 2])
    width *= tf.exp(deltas[:, 3])
    y1 = center_y - 0.5 * height
    x1 = center_x - 0.5 * width
    y2 = y1 + height
    x2 = x1 + width
    return tf.stack([y1, x1, y2, x2], axis=1)


def clip_boxes_graph(boxes, window):
    """Clip [N, (y1, x1, y2, x2)] boxes to window (wy1, wx1, wy2, wx2)."""
    wy1, wx1, wy2, wx2 = tf.split(tf.cast(window, boxes.dtype), 4)
    y1, x1, y2, x2 = tf.split(boxes, 4, axis=1)
    y1 = tf.maximum(tf.minimum(y1, wy2), wy1)
    x1 = tf.maximum(tf.minimum(x1, wx2), wx1)
    y2 = tf.maximum(tf.minimum(y2, wy2), wy1)
    x2 = tf.maximum(tf.minimum(x2, wx2), wx1)
    clipped = tf.concat([y1, x1, y2, x2], axis=1)
    clipped.set_shape((boxes.shape[0], 4))
    return clipped


def norm_boxes_graph(boxes, shape):
    """Pixel boxes -> normalised coordinates (Matterport's convention: (y2, x2) exclusive,
    so a box of the whole image becomes (0, 0, 1, 1)). shape: (height, width)."""
    h, w = tf.split(tf.cast(shape, tf.float32), 2)
    scale = tf.concat([h, w, h, w], axis=-1) - tf.constant(1.0)
    shift = tf.constant([0., 0., 1., 1.])
    return tf.divide(boxes - shift, scale)


def denorm_boxes_graph(boxes, shape):
    """Normalised boxes -> integer pixel boxes (inverse of norm_boxes_graph)."""
    h, w = tf.split(tf.cast(shape, tf.float32), 2)
    scale = tf.concat([h, w, h, w], axis=-1) - tf.constant(1.0)
    shift = tf.constant([0., 0., 1., 1.])
    return tf.cast(tf.round(tf.multiply(boxes, scale) + shift), tf.int32)


def log2_graph(x):
    """Base-2 logarithm (as Matterport computes it: ln(x) / ln(2))."""
    return tf.math.log(x) / tf.math.log(2.0)


def batch_slice(inputs, graph_fn, batch_size, names=None):
    """Run graph_fn on each batch item and stack the results along a new batch axis.

    inputs: a tensor or list of tensors, all with the batch on axis 0. The batch size is the
    static one of inputs[0] when known (so one graph serves any batch size fed through a fixed
    signature), else `batch_size`. graph_fn returns a tensor or a list of tensors.
    """
    if not isinstance(inputs, (list, tuple)):
        inputs = [inputs]
    static = inputs[0].shape[0]
    count = static if static is not None else batch_size
    outputs = []
    for i in range(count):
        result = graph_fn(*[x[i] for x in inputs])
        if not isinstance(result, (list, tuple)):
            result = [result]
        outputs.append(result)
    outputs = list(zip(*outputs))
    if names is None:
        names = [None] * len(outputs)
    result = [tf.stack(o, axis=0, name=n) for o, n in zip(outputs, names)]
    return result[0] if len(result) == 1 else result


def trim_zeros_graph(boxes, name="trim_zeros"):
    """Drop all-zero rows of [N, 4] boxes; returns (boxes, non_zeros bool mask)."""
    non_zeros = tf.cast(tf.reduce_sum(tf.abs(boxes), axis=1), tf.bool)
    boxes = tf.boolean_mask(boxes, non_zeros, name=name)
    return boxes, non_zeros


def as_float_array(values):
    """Config arrays (float64 in Config) as float32 numpy, for use as tf constants."""
    return np.asarray(values, dtype=np.float32)
