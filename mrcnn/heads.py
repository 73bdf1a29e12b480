"""The second-stage heads on ROI-aligned features: classifier + box regressor, and mask head.
Layer names are Matterport's (the TimeDistributed wrappers carry them)."""
import keras
from keras import layers as KL
import tensorflow as tf

from mrcnn.layers import BatchNorm, time_distributed
from mrcnn.roi_align import PyramidROIAlign


class PoolSqueeze(keras.layers.Layer):
    """[batch, rois, 1, 1, channels] -> [batch, rois, channels]."""

    def call(self, inputs):
        return tf.squeeze(tf.squeeze(inputs, 3), 2)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:2]) + (input_shape[-1],)


def fpn_classifier_graph(rois, feature_maps, image_meta, pool_size, num_classes, train_bn=True,
                         fc_layers_size=1024):
    """rois [batch, num_rois, (y1, x1, y2, x2)] normalised -> (mrcnn_class_logits [batch, num_rois, classes],
    mrcnn_probs [batch, num_rois, classes], mrcnn_bbox [batch, num_rois, classes, (dy, dx, log(dh), log(dw))])."""
    x = PyramidROIAlign([pool_size, pool_size], name="roi_align_classifier")([rois, image_meta] + feature_maps)
    # Two "FC" layers as convs: a pool_size x pool_size valid conv, then a 1x1 conv.
    x = time_distributed(KL.Conv2D, "mrcnn_class_conv1", fc_layers_size, (pool_size, pool_size), padding="valid")(x)
    x = time_distributed(BatchNorm, "mrcnn_class_bn1", train_bn=train_bn)(x)
    x = KL.Activation("relu")(x)
    x = time_distributed(KL.Conv2D, "mrcnn_class_conv2", fc_layers_size, (1, 1))(x)
    x = time_distributed(BatchNorm, "mrcnn_class_bn2", train_bn=train_bn)(x)
    x = KL.Activation("relu")(x)
    shared = PoolSqueeze(name="pool_squeeze")(x)  # [batch, num_rois, fc_layers_size]

    mrcnn_class_logits = time_distributed(KL.Dense, "mrcnn_class_logits", num_classes)(shared)
    mrcnn_probs = KL.Activation("softmax", name="mrcnn_class")(mrcnn_class_logits)

    x = time_distributed(KL.Dense, "mrcnn_bbox_fc", num_classes * 4, activation="linear")(shared)
    mrcnn_bbox = KL.Reshape((-1, num_classes, 4), name="mrcnn_bbox")(x)
    return mrcnn_class_logits, mrcnn_probs, mrcnn_bbox


def build_fpn_mask_graph(rois, feature_maps, image_meta, pool_size, num_classes, train_bn=True):
    """rois [batch, num_rois, (y1, x1, y2, x2)] normalised -> masks [batch, num_rois, 2*pool, 2*pool, classes]
    (sigmoid)."""
    x = PyramidROIAlign([pool_size, pool_size], name="roi_align_mask")([rois, image_meta] + feature_maps)
    for i in range(1, 5):
        x = time_distributed(KL.Conv2D, f"mrcnn_mask_conv{i}", 256, (3, 3), padding="same")(x)
        x = time_distributed(BatchNorm, f"mrcnn_mask_bn{i}", train_bn=train_bn)(x)
        x = KL.Activation("relu")(x)
    x = time_distributed(KL.Conv2DTranspose, "mrcnn_mask_deconv", 256, (2, 2), strides=2, activation="relu")(x)
    return time_distributed(KL.Conv2D, "mrcnn_mask", num_classes, (1, 1), strides=1, activation="sigmoid")(x)
