"""The five Mask R-CNN training losses (Matterport's definitions) and its L2 weight decay.

Plain TensorFlow functions. Every loss computes in float32 whatever the input dtype
(mixed precision feeds float16/bfloat16 logits), from logits where the model has them (the
class losses always, the mask loss in the training graph), returns a float32 scalar, and returns 0
rather than NaN when nothing contributes (no positive anchors or ROIs).
"""
import tensorflow as tf


def _f32(x):
    return tf.cast(x, tf.float32)


def _mean_or_zero(values):
    """Mean of a tensor, 0 when it is empty."""
    values = tf.reshape(values, [-1])
    count = tf.cast(tf.size(values), tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(values), count)


def smooth_l1_loss(y_true, y_pred):
    """Element-wise smooth L1 (Huber with delta 1): 0.5 d^2 below 1, |d| - 0.5 above."""
    diff = tf.abs(_f32(y_true) - _f32(y_pred))
    return tf.where(diff < 1.0, 0.5 * tf.square(diff), diff - 0.5)


def rpn_class_loss_graph(rpn_match, rpn_class_logits):
    """RPN anchor classifier cross-entropy over positive and negative anchors.

    rpn_match: [batch, anchors, 1] 1 positive, -1 negative, 0 neutral (ignored).
    rpn_class_logits: [batch, anchors, 2] background/foreground logits.
    """
    rpn_match = tf.squeeze(tf.cast(rpn_match, tf.int32), -1)  # [batch, anchors]
    anchor_class = tf.cast(tf.equal(rpn_match, 1), tf.int32)
    indices = tf.where(tf.not_equal(rpn_match, 0))  # [n, (batch, anchor)]
    logits = tf.gather_nd(_f32(rpn_class_logits), indices)  # [n, 2]
    labels = tf.gather_nd(anchor_class, indices)  # [n]
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return _mean_or_zero(loss)


def rpn_bbox_loss_graph(config, target_bbox, rpn_match, rpn_bbox):
    """Smooth L1 between the RPN deltas of positive anchors and their targets.

    target_bbox: [batch, RPN_TRAIN_ANCHORS_PER_IMAGE, 4]; the first k rows of an image are
        the targets of its k positive anchors in anchor order, the rest zero padding.
    rpn_match: [batch, anchors, 1].
    rpn_bbox: [batch, anchors, (dy, dx, log(dh), log(dw))].
    config is unused (kept for Matterport's signature): any batch size is handled.
    """
    del config
    target_bbox = _f32(target_bbox)
    positive = tf.equal(tf.squeeze(tf.cast(rpn_match, tf.int32), -1), 1)  # [batch, anchors]
    max_targets = tf.shape(target_bbox)[1]
    # Rank of each positive anchor within its image; anchors beyond the target rows are dropped.
    rank = tf.cumsum(tf.cast(positive, tf.int32), axis=1, exclusive=True)
    positive = tf.logical_and(positive, rank < max_targets)
    pred = tf.boolean_mask(_f32(rpn_bbox), positive)  # [n, 4]
    counts = tf.reduce_sum(tf.cast(positive, tf.int32), axis=1)  # [batch]
    rows = tf.range(max_targets)[tf.newaxis, :] < counts[:, tf.newaxis]  # [batch, R]
    target = tf.boolean_mask(target_bbox, rows)  # [n, 4]
    return _mean_or_zero(smooth_l1_loss(target, pred))


def mrcnn_class_loss_graph(target_class_ids, pred_class_logits, active_class_ids):
    """Classifier-head cross-entropy, counted only where the predicted class is active in
    the source dataset of the image (each image uses its own active classes).

    target_class_ids: [batch, num_rois] integer class ids, zero padded.
    pred_class_logits: [batch, num_rois, num_classes].
    active_class_ids: [batch, num_classes] 1 for classes of the image's source, else 0.
    """
    target_class_ids = tf.cast(target_class_ids, tf.int64)
    logits = _f32(pred_class_logits)
    pred_class_ids = tf.argmax(logits, axis=2)  # [batch, num_rois]
    pred_active = tf.gather(_f32(active_class_ids), pred_class_ids, batch_dims=1)  # [batch, num_rois]
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target_class_ids, logits=logits)
    return tf.math.divide_no_nan(tf.reduce_sum(loss * pred_active), tf.reduce_sum(pred_active))


def mrcnn_bbox_loss_graph(target_bbox, target_class_ids, pred_bbox):
    """Smooth L1 on the deltas of positive ROIs, for the ROI's own class only.

    target_bbox: [batch, num_rois, (dy, dx, log(dh), log(dw))].
    target_class_ids: [batch, num_rois].
    pred_bbox: [batch, num_rois, num_classes, (dy, dx, log(dh), log(dw))].
    """
    target_class_ids = tf.reshape(tf.cast(target_class_ids, tf.int64), [-1])
    target_bbox = tf.reshape(_f32(target_bbox), [-1, 4])
    pred_bbox = _f32(pred_bbox)
    pred_bbox = tf.reshape(pred_bbox, [-1, tf.shape(pred_bbox)[2], 4])  # [batch*rois, classes, 4]
    positive_ix = tf.where(target_class_ids > 0)[:, 0]
    indices = tf.stack([positive_ix, tf.gather(target_class_ids, positive_ix)], axis=1)
    target = tf.gather(target_bbox, positive_ix)  # [n, 4]
    pred = tf.gather_nd(pred_bbox, indices)  # [n, 4]
    return _mean_or_zero(smooth_l1_loss(target, pred))


def mrcnn_mask_loss_graph(target_masks, target_class_ids, pred_masks, epsilon=1e-7, from_logits=False):
    """Binary cross-entropy between the mask of the ROI's class and its target, positive
    ROIs only.

    target_masks: [batch, num_rois, height, width] of 0/1.
    target_class_ids: [batch, num_rois].
    pred_masks: [batch, num_rois, height, width, num_classes]: probabilities in [0, 1]
        (Matterport's definition: clipped to [epsilon, 1 - epsilon], then logged), or logits
        when from_logits (what the training graph passes: the cross-entropy is then exact in
        float32 and keeps its gradient at any logit, whatever precision the head ran in).
    """
    target_class_ids = tf.reshape(tf.cast(target_class_ids, tf.int64), [-1])
    target_masks = _f32(target_masks)
    mask_shape = tf.shape(target_masks)
    target_masks = tf.reshape(target_masks, [-1, mask_shape[2], mask_shape[3]])  # [N, h, w]
    pred_masks = _f32(pred_masks)
    pred_shape = tf.shape(pred_masks)
    pred_masks = tf.reshape(pred_masks, [-1, pred_shape[2], pred_shape[3], pred_shape[4]])  # [N, h, w, classes]
    positive_ix = tf.where(target_class_ids > 0)[:, 0]
    # [n, (roi, class)]: the mask of each positive ROI's own class, gathered without
    # transposing every class's mask first
    y_true = tf.gather(target_masks, positive_ix)  # [n, h, w]
    y_pred = tf.gather(tf.gather(pred_masks, positive_ix), tf.gather(target_class_ids, positive_ix),
                       axis=3, batch_dims=1)  # [n, h, w]
    if from_logits:
        bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=y_true, logits=y_pred)
    else:
        y_pred = tf.clip_by_value(y_pred, epsilon, 1.0 - epsilon)
        bce = -(y_true * tf.math.log(y_pred) + (1.0 - y_true) * tf.math.log(1.0 - y_pred))
    return _mean_or_zero(bce)


def _weight_name(weight):
    return getattr(weight, "path", None) or weight.name


def l2_weight_decay(trainable_weights, weight_decay):
    """Matterport's L2 regulariser: sum over trainable weights whose name has neither
    'gamma' nor 'beta' (BatchNorm) of weight_decay * sum(w^2) / size(w)."""
    terms = [weight_decay * tf.reduce_sum(tf.square(_f32(w))) / tf.cast(tf.size(w), tf.float32)
             for w in trainable_weights
             if "gamma" not in _weight_name(w) and "beta" not in _weight_name(w)]
    if not terms:
        return tf.constant(0.0, tf.float32)
    return tf.add_n(terms)
