"""Small building blocks shared by the Mask R-CNN graph: frozen BatchNorm, the normalisation
choice (Config.NORM), a reshaping TimeDistributed wrapper, and the box helpers that run inside custom layers.

Everything named `*_graph` works on tf tensors inside a layer's `call()`; it must never be
given KerasTensors (Keras 3 rejects tf ops on them).
"""
import collections

import keras
import numpy as np
import tensorflow as tf

from mrcnn.modeling import boxes

BN_EPSILON = 1e-3
GN_EPSILON = 1e-5  # the Group Normalization paper's and detectron2's


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


class NormSpec(collections.namedtuple("NormSpec", "kind groups")):
    """Which normalisation layer the graph builders make: kind "frozen_bn", "bn" or "gn"
    (Config.NORM), groups for "gn" (Config.GN_GROUPS)."""

    @classmethod
    def of(cls, config):
        return cls(config.norm(), int(config.GN_GROUPS))

    @classmethod
    def from_train_bn(cls, train_bn):
        """Matterport's train_bn flag (or a NormSpec, returned as it is)."""
        if isinstance(train_bn, cls):
            return train_bn
        return cls("bn" if train_bn else "frozen_bn", 32)


def norm_layer(name, train_bn=False):
    """The normalisation layer called `name`: BatchNorm (frozen or training) or Group
    Normalization. train_bn: Matterport's flag, or a NormSpec. A GN layer keeps the name of the
    BatchNorm it replaces, so checkpoints pair by name and a BatchNorm/GN mix is caught on load."""
    spec = NormSpec.from_train_bn(train_bn)
    if spec.kind == "gn":
        return keras.layers.GroupNormalization(groups=spec.groups, epsilon=GN_EPSILON, name=name)
    return BatchNorm(train_bn=spec.kind == "bn", name=name)


def time_distributed_norm(name, train_bn=False):
    """norm_layer(name, train_bn) applied per ROI."""
    return TimeDistributed(norm_layer(name, train_bn), name=name)


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


class Float32Layer(keras.layers.Layer):
    """A layer that computes in float32 whatever the precision policy: box arithmetic,
    sampling and losses lose too much in float16. A `dtype` passed in still wins."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)


def time_distributed(layer_cls, name, *args, **kwargs):
    """TimeDistributed(layer_cls(*args, name=name, **kwargs), name=name)."""
    return TimeDistributed(layer_cls(*args, name=name, **kwargs), name=name)


# --- Box helpers (tf): Matterport's names for the coder in mrcnn.modeling.boxes ----------------------

BOX_SCALE_CLAMP = boxes.LOG_SCALE_LIMIT
apply_box_deltas_graph = boxes.decode_tf
clip_boxes_graph = boxes.clip_tf
norm_boxes_graph = boxes.normalize_tf
denorm_boxes_graph = boxes.denormalize_tf


def log2_graph(x):
    """Base-2 logarithm (as Matterport computes it: ln(x) / ln(2))."""
    return tf.math.log(x) / tf.math.log(2.0)


def batch_slice(inputs, graph_fn, batch_size, names=None):
    """Run graph_fn on each batch item and stack the results along a new batch axis.

    inputs: a tensor or list of tensors, all with the batch on axis 0. The batch size is the
    static one of inputs[0] when known (so one graph serves any batch size fed through a fixed
    signature), else `batch_size`. graph_fn returns a tensor or a list of tensors; so does
    batch_slice. names: optional names of the stacked outputs.
    """
    tensors = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    items = tensors[0].shape[0]
    if items is None:
        items = batch_size
    per_item = []
    for index in range(items):
        out = graph_fn(*(t[index] for t in tensors))
        per_item.append(tuple(out) if isinstance(out, (list, tuple)) else (out,))
    stacked = [tf.stack([item[k] for item in per_item], axis=0,
                        name=None if names is None else names[k])
               for k in range(len(per_item[0]))]
    return stacked if len(stacked) > 1 else stacked[0]


def trim_zeros_graph(boxes, name="trim_zeros"):
    """Drop the all-zero (padding) rows of [N, 4] boxes.
    Returns (boxes [n, 4], non_zeros [N] bool: which rows were kept)."""
    non_zeros = tf.reduce_any(tf.not_equal(boxes, 0), axis=1)
    return tf.boolean_mask(boxes, non_zeros, name=name), non_zeros


def as_float_array(values):
    """Config arrays (float64 in Config) as float32 numpy, for use as tf constants."""
    return np.asarray(values, dtype=np.float32)
