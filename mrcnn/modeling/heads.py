"""The second-stage heads on ROI-aligned features: classifier + box regressor, and mask head.
Layer names are Matterport's (the TimeDistributed wrappers carry them).

The classifier's two "fully connected" layers are convolutions in Matterport's graph (a 7x7
valid convolution on 7x7 ROI features, then a 1x1). TensorFlow's CPU convolution kernels,
the backward ones above all, are 30-50x slower on that shape than the same arithmetic as one
matrix product, so those layers (and the mask head's last 1x1 layer) keep Keras' Conv2D
variables (names, shapes, HDF5 layout: every weights file loads and saves as before) and
compute the same sums with tf.matmul. `reference_convolutions()` switches them back to the
convolution op (the tests compare both paths).
"""
import contextlib

import keras
from keras import layers as KL
import tensorflow as tf

from mrcnn.modeling.layers import TimeDistributed, time_distributed, time_distributed_norm
from mrcnn.modeling.roi_align import PyramidROIAlign

_USE_MATMUL = [True]


@contextlib.contextmanager
def reference_convolutions():
    """Within this block, graphs traced from the head layers use tf.nn convolutions."""
    _USE_MATMUL.append(False)
    try:
        yield
    finally:
        _USE_MATMUL.pop()


def _finish(layer, outputs):
    """Bias and activation, as Conv2D.call applies them."""
    if layer.use_bias:
        outputs = outputs + tf.cast(layer.bias, outputs.dtype)
    return layer.activation(outputs) if layer.activation is not None else outputs


class MatmulConv2D(KL.Conv2D):
    """Conv2D (stride 1, no dilation, channels last) as a matrix product with the kernel
    reshaped to [kh * kw * in, out], for the two layouts where that needs no patch copies:
    "valid" with the kernel as large as the input (a dense layer over the whole ROI patch),
    and 1x1 kernels. Anything else runs the convolution. (3x3 "same" convolutions on 14x14
    ROI patches, the mask head's, were measured faster as convolutions than as im2col
    products, and so were its 2x2 transposed convolution: those stay Keras layers.)"""

    def _patch_matrix(self, inputs):
        """[n, h, w, in] -> ([n * oh * ow, kh * kw * in] patches, (n, oh, ow)), or None when the
        layout needs a real convolution."""
        kh, kw = self.kernel_size
        shape = tf.shape(inputs)
        n, h, w = shape[0], shape[1], shape[2]
        channels = inputs.shape[-1]
        static_hw = tuple(inputs.shape[1:3])
        if (kh, kw) == (1, 1):
            return tf.reshape(inputs, [-1, channels]), (n, h, w)
        if self.padding == "valid" and static_hw == (kh, kw):
            return tf.reshape(inputs, [-1, kh * kw * channels]), (n, 1, 1)
        return None

    def call(self, inputs):
        plain = (self.strides == (1, 1) and self.dilation_rate == (1, 1) and self.groups == 1
                 and self.data_format == "channels_last")
        patches = self._patch_matrix(inputs) if plain and _USE_MATMUL[-1] else None
        if patches is None:
            return super().call(inputs)
        matrix, (n, out_h, out_w) = patches
        kernel = tf.cast(tf.reshape(self.kernel, [-1, self.filters]), matrix.dtype)  # [kh * kw * in, out]
        outputs = tf.reshape(tf.matmul(matrix, kernel), tf.stack([n, out_h, out_w, self.filters]))
        return _finish(self, outputs)


class MaskOutput(TimeDistributed):
    """The mask head's last layer, "mrcnn_mask": a 1x1 convolution per ROI whose output is
    float32. Called plainly it returns the sigmoid probabilities (the model's mrcnn_mask
    output); called with logits=True (the training graph calls it a second time for the loss)
    it returns the logits, so the binary cross-entropy is computed from logits in float32
    (a float16 sigmoid saturates at |logit| ~ 8 and gives no gradient past it)."""

    def __init__(self, layer, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(layer, **kwargs)

    def call(self, inputs, training=None, mask=None, logits=False):
        values = tf.cast(super().call(inputs, training=training, mask=mask), tf.float32)
        return values if logits else tf.sigmoid(values)


class PoolSqueeze(keras.layers.Layer):
    """[batch, rois, 1, 1, channels] -> [batch, rois, channels]."""

    def call(self, inputs):
        return tf.squeeze(tf.squeeze(inputs, 3), 2)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:2]) + (input_shape[-1],)


def fpn_classifier_graph(rois, feature_maps, image_meta, pool_size, num_classes, train_bn=True,
                         fc_layers_size=1024, box_convs=0, conv_channels=256):
    """rois [batch, num_rois, (y1, x1, y2, x2)] normalised -> (mrcnn_class_logits [batch, num_rois, classes],
    mrcnn_probs [batch, num_rois, classes], mrcnn_bbox [batch, num_rois, classes, (dy, dx, log(dh), log(dw))]).

    train_bn: Matterport's flag or a layers.NormSpec (the norm after each conv). box_convs: 3x3
    convs (conv_channels wide, named mrcnn_box_conv<i> / mrcnn_box_conv<i>_norm) on the ROI
    features before the two "FC" layers (Config.BOX_HEAD_CONVS; 0 is Matterport's head)."""
    x = PyramidROIAlign([pool_size, pool_size], name="roi_align_classifier")([rois, image_meta] + feature_maps)
    # [batch, num_rois, pool_size, pool_size, channels]
    for i in range(1, box_convs + 1):
        x = time_distributed(KL.Conv2D, f"mrcnn_box_conv{i}", conv_channels, (3, 3), padding="same")(x)
        x = time_distributed_norm(f"mrcnn_box_conv{i}_norm", train_bn)(x)
        x = KL.Activation("relu")(x)
    # Two "FC" layers as convs: a pool_size x pool_size valid conv, then a 1x1 conv.
    x = time_distributed(MatmulConv2D, "mrcnn_class_conv1", fc_layers_size, (pool_size, pool_size), padding="valid")(x)
    x = time_distributed_norm("mrcnn_class_bn1", train_bn)(x)
    x = KL.Activation("relu")(x)
    x = time_distributed(MatmulConv2D, "mrcnn_class_conv2", fc_layers_size, (1, 1))(x)
    x = time_distributed_norm("mrcnn_class_bn2", train_bn)(x)
    x = KL.Activation("relu")(x)
    shared = PoolSqueeze(name="pool_squeeze")(x)  # [batch, num_rois, fc_layers_size]

    mrcnn_class_logits = time_distributed(KL.Dense, "mrcnn_class_logits", num_classes)(shared)
    mrcnn_probs = KL.Activation("softmax", name="mrcnn_class")(mrcnn_class_logits)

    x = time_distributed(KL.Dense, "mrcnn_bbox_fc", num_classes * 4, activation="linear")(shared)
    mrcnn_bbox = KL.Reshape((-1, num_classes, 4), name="mrcnn_bbox")(x)
    return mrcnn_class_logits, mrcnn_probs, mrcnn_bbox


def build_fpn_mask_graph(rois, feature_maps, image_meta, pool_size, num_classes, train_bn=True,
                         return_logits=False, channels=256):
    """rois [batch, num_rois, (y1, x1, y2, x2)] normalised -> masks [batch, num_rois, 2*pool, 2*pool, classes]
    (sigmoid probabilities, float32). return_logits: also return the logits (same shape), as
    (masks, logits). channels: width of the 3x3 and transposed convolutions (Config.MASK_HEAD_CHANNELS).
    train_bn: Matterport's flag or a layers.NormSpec."""
    x = PyramidROIAlign([pool_size, pool_size], name="roi_align_mask")([rois, image_meta] + feature_maps)
    for i in range(1, 5):
        x = time_distributed(KL.Conv2D, f"mrcnn_mask_conv{i}", channels, (3, 3), padding="same")(x)
        x = time_distributed_norm(f"mrcnn_mask_bn{i}", train_bn)(x)
        x = KL.Activation("relu")(x)
    x = time_distributed(KL.Conv2DTranspose, "mrcnn_mask_deconv", channels, (2, 2), strides=2,
                         activation="relu")(x)
    output = MaskOutput(MatmulConv2D(num_classes, (1, 1), strides=1, name="mrcnn_mask"), name="mrcnn_mask")
    masks = output(x)
    if return_logits:
        return masks, output(x, logits=True)
    return masks
