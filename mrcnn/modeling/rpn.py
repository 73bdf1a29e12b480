"""Region Proposal Network: one small conv model shared by every pyramid level."""
import keras
from keras import layers as KL


def build_rpn_model(anchor_stride, anchors_per_location, depth, channels=512):
    """The nested Model `rpn_model`: feature map [batch, h, w, depth] ->
    [rpn_class_logits [batch, anchors, 2], rpn_probs [batch, anchors, 2], rpn_bbox [batch, anchors, 4]].

    Anchors are ordered (row, column, anchor-at-location), matching utils.generate_pyramid_anchors.
    channels: width of the shared 3x3 convolution (Config.RPN_CONV_CHANNELS).
    """
    feature_map = KL.Input(shape=[None, None, depth], name="input_rpn_feature_map")
    shared = KL.Conv2D(channels, (3, 3), padding="same", activation="relu", strides=anchor_stride,
                       name="rpn_conv_shared")(feature_map)
    # [batch, h, w, anchors_per_location * 2] -> [batch, anchors, 2]
    x = KL.Conv2D(2 * anchors_per_location, (1, 1), padding="valid", activation="linear",
                  name="rpn_class_raw")(shared)
    rpn_class_logits = KL.Reshape((-1, 2), name="rpn_class_logits_reshape")(x)
    rpn_probs = KL.Activation("softmax", name="rpn_class_xxx")(rpn_class_logits)
    # [batch, h, w, anchors_per_location * 4] -> [batch, anchors, (dy, dx, log(dh), log(dw))]
    x = KL.Conv2D(anchors_per_location * 4, (1, 1), padding="valid", activation="linear",
                  name="rpn_bbox_pred")(shared)
    rpn_bbox = KL.Reshape((-1, 4), name="rpn_bbox_reshape")(x)
    return keras.Model([feature_map], [rpn_class_logits, rpn_probs, rpn_bbox], name="rpn_model")


def rpn_outputs(rpn, feature_maps):
    """Run the shared RPN on every pyramid level and concatenate per output:
    [rpn_class_logits, rpn_class, rpn_bbox], each [batch, all anchors, 2 or 4]."""
    per_level = [rpn([p]) for p in feature_maps]  # Keras 3: a nested Model returns a list
    names = ["rpn_class_logits", "rpn_class", "rpn_bbox"]
    return [KL.Concatenate(axis=1, name=name)([level[i] for level in per_level])
            for i, name in enumerate(names)]
