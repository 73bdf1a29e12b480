"""PreciseBN: BatchNorm moving statistics recomputed from many training batches after training.

BatchNorm's moving averages are an exponential average of batch statistics taken while the
weights moved; at Mask R-CNN's batch of two they can be far from the statistics of the final
network (the quick start's worst checkpoint scored 0.12 thresholded Jaccard with them and 0.67
with recomputed ones, no weight changed). detectron2's PreciseBN hook replaces them by the
equal-weighted mean of the per-batch means and of the per-batch variances over N batches of
the final network, run in training mode; this module does the same for every BatchNorm layer
that trains (Config.NORM "bn", layer trainable), without augmentation and without changing a
weight. The variance is the biased batch variance, the one Keras' BatchNorm averages.
"""
import logging
import time

import keras
import numpy as np
import tensorflow as tf
from keras import layers as KL

from mrcnn.modeling.layers import BatchNorm

log = logging.getLogger(__name__)


def trained_batch_norms(keras_model):
    """[(layer in keras_model.layers, its BatchNorm)] for the BatchNorm layers that use batch
    statistics while training (train_bn and trainable; TimeDistributed wrappers looked into)."""
    found = []
    for layer in keras_model.layers:
        inner = layer.layer if isinstance(layer, KL.TimeDistributed) else layer
        if isinstance(inner, BatchNorm) and inner.train_bn and inner.trainable and layer.trainable:
            found.append((layer, inner))
    return found


def batch_moments_fn(keras_model, layers):
    """A tf.function inputs -> [(mean [C], variance [C])] of each layer's input, the model run in
    training mode (each BatchNorm normalising by its batch's statistics, as training does)."""
    probe = keras.Model(keras_model.inputs, [layer.input for layer, _ in layers], name="precise_bn_probe")

    @tf.function
    def moments(inputs):
        outputs = probe(inputs, training=True)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        result = []
        for x in outputs:
            x = tf.cast(x, tf.float32)
            axes = list(range(len(x.shape) - 1))  # every axis but the channels
            mean = tf.reduce_mean(x, axis=axes)
            result.append((mean, tf.reduce_mean(tf.square(x - mean), axis=axes)))
        return result

    return moments


def recompute_batch_norm_statistics(keras_model, batches):
    """Set every trained BatchNorm layer's moving mean and variance to the mean over `batches`
    (an iterable of the training model's input lists) of its per-batch means and variances.
    The weights are not changed (the batches' own updates of the moving averages are
    overwritten). Returns the number of layers recomputed (0: none trains its statistics)."""
    layers = trained_batch_norms(keras_model)
    if not layers:
        return 0
    moments = batch_moments_fn(keras_model, layers)
    sums = [[np.zeros(bn.moving_mean.shape, np.float64), np.zeros(bn.moving_variance.shape, np.float64)]
            for _, bn in layers]
    count = 0
    for inputs in batches:
        for acc, (mean, variance) in zip(sums, moments([tf.convert_to_tensor(v) for v in inputs])):
            acc[0] += mean.numpy()
            acc[1] += variance.numpy()
        count += 1
    if count == 0:
        raise ValueError("recompute_batch_norm_statistics: no batch given")
    for (_, bn), (mean_sum, variance_sum) in zip(layers, sums):
        bn.moving_mean.assign((mean_sum / count).astype(bn.moving_mean.dtype))
        bn.moving_variance.assign((variance_sum / count).astype(bn.moving_variance.dtype))
    return len(layers)


def feed_batches(feed, count):
    """The first `count` batches of a MaskRCNNSequence, as lists of input arrays."""
    for index in range(count):
        (inputs,) = feed[index]
        yield list(inputs)


class PreciseBatchNorm(keras.callbacks.Callback):
    """Recomputes the statistics from `feed` (unaugmented training batches) with `count`
    batches: at every epoch end when every_epoch (listed before the checkpoint callback, so
    the epoch's checkpoint holds them), and on `recompute()`."""

    def __init__(self, feed, count, every_epoch=False, guard=None):
        super().__init__()
        self.feed = feed
        self.count = int(count)
        self.every_epoch = bool(every_epoch)
        self.guard = guard
        self.done_epoch = None  # the last epoch whose end saw a recomputation

    def recompute(self, keras_model, epoch=None):
        start = time.monotonic()
        if epoch is not None:
            self.feed.set_epoch(epoch)
        layers = recompute_batch_norm_statistics(keras_model, feed_batches(self.feed, self.count))
        if layers:
            log.info("PreciseBN: moving statistics of %d BatchNorm layers recomputed over %d training batches "
                     "(%.1f s)", layers, self.count, time.monotonic() - start)
        else:
            log.info("PreciseBN: no BatchNorm layer trains its statistics (Config.NORM is not 'bn'): nothing to do")
        return layers

    def on_epoch_end(self, epoch, logs=None):
        if not self.every_epoch or (self.guard is not None and self.guard.failure is not None):
            return
        logs = logs or {}
        if any(not np.isfinite(float(v)) for v in logs.values()):
            return
        self.recompute(self.model, epoch)
        self.done_epoch = epoch
