"""Training targets: which anchors the RPN should fire on (NumPy, in the data pipeline) and
which proposals the heads should learn from (DetectionTargetLayer, in the graph).

Semantics follow Matterport's build_rpn_targets / detection_targets_graph, with one
extension: an image without instances is a valid training image whose sampled anchors
and ROIs are all negative (Matterport drops such images).
"""
import keras
import numpy as np
import tensorflow as tf

from mrcnn import utils
from mrcnn.layers import trim_zeros_graph

# IoU thresholds of the RPN (Faster R-CNN's) and of the detection heads.
RPN_POSITIVE_IOU = 0.7
RPN_NEGATIVE_IOU = 0.3
ROI_POSITIVE_IOU = 0.5
# Anchors and proposals touching a crowd box above this IoU are never negatives.
CROWD_IOU = 0.001


############################################################
#  RPN targets (NumPy)
############################################################

def build_rpn_targets(image_shape, anchors, gt_class_ids, gt_boxes, config, rng=None):
    """Label anchors positive/negative/neutral and compute the deltas of the positives.

    image_shape: [H, W, C] (unused, kept for Matterport's signature).
    anchors: [A, (y1, x1, y2, x2)] in pixels.
    gt_class_ids: [G] integer class ids; negative ids are crowd boxes (never matched,
        and anchors overlapping them are not negatives).
    gt_boxes: [G, (y1, x1, y2, x2)] in pixels. G may be 0.
    rng: np.random.Generator for the subsampling; None uses the global np.random.
    Returns:
        rpn_match: [A] int32, 1 positive, -1 negative, 0 neutral.
        rpn_bbox: [RPN_TRAIN_ANCHORS_PER_IMAGE, (dy, dx, log(dh), log(dw))] float32, the
            deltas of the positive anchors in anchor order, divided by RPN_BBOX_STD_DEV,
            zero padded.
    """
    del image_shape
    rng = np.random if rng is None else rng
    anchors = np.asarray(anchors, dtype=np.float64)
    gt_class_ids = np.asarray(gt_class_ids).reshape(-1)
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    num_anchors = anchors.shape[0]
    max_anchors = config.RPN_TRAIN_ANCHORS_PER_IMAGE
    rpn_match = np.zeros([num_anchors], dtype=np.int32)
    rpn_bbox = np.zeros((max_anchors, 4), dtype=np.float32)

    crowd = gt_class_ids < 0
    if crowd.any():
        crowd_overlaps = utils.compute_overlaps(anchors, gt_boxes[crowd])
        not_crowd_anchor = crowd_overlaps.max(axis=1) < CROWD_IOU
    else:
        not_crowd_anchor = np.ones([num_anchors], dtype=bool)
    instance = gt_class_ids > 0
    gt_boxes = gt_boxes[instance]

    if gt_boxes.shape[0] == 0:
        rpn_match[not_crowd_anchor] = -1
        anchor_iou_argmax = np.zeros([num_anchors], dtype=np.int64)
    else:
        overlaps = utils.compute_overlaps(anchors, gt_boxes)  # [A, G]
        anchor_iou_argmax = np.argmax(overlaps, axis=1)
        anchor_iou_max = overlaps[np.arange(num_anchors), anchor_iou_argmax]
        # Negatives first; matches below overwrite them.
        rpn_match[(anchor_iou_max < RPN_NEGATIVE_IOU) & not_crowd_anchor] = -1
        # Every GT box gets its best anchor(s), whatever the IoU. A GT box that touches no
        # anchor at all (best IoU 0) is skipped: otherwise every non-overlapping anchor
        # would tie for "best" (a Matterport quirk).
        gt_best = overlaps.max(axis=0)  # [G]
        best_anchor_ids = np.argwhere((overlaps == gt_best) & (gt_best > 0))[:, 0]
        rpn_match[best_anchor_ids] = 1
        rpn_match[anchor_iou_max >= RPN_POSITIVE_IOU] = 1

    # Balance: at most half positives, negatives fill up to RPN_TRAIN_ANCHORS_PER_IMAGE.
    ids = np.where(rpn_match == 1)[0]
    extra = len(ids) - max_anchors // 2
    if extra > 0:
        rpn_match[rng.choice(ids, extra, replace=False)] = 0
    ids = np.where(rpn_match == -1)[0]
    extra = len(ids) - (max_anchors - np.sum(rpn_match == 1))
    if extra > 0:
        rpn_match[rng.choice(ids, extra, replace=False)] = 0

    # Deltas from each positive anchor to its closest GT box (possibly IoU < 0.7).
    ids = np.where(rpn_match == 1)[0]
    if len(ids):
        deltas = utils.box_refinement(anchors[ids], gt_boxes[anchor_iou_argmax[ids]])
        rpn_bbox[:len(ids)] = deltas / np.asarray(config.RPN_BBOX_STD_DEV, dtype=np.float32)
    return rpn_match, rpn_bbox


############################################################
#  Detection targets (graph)
############################################################

def _overlaps_graph(boxes1, boxes2):
    """IoU matrix [N1, N2] of boxes1 [N1, 4] and boxes2 [N2, 4] (0 where the union is 0)."""
    b1 = boxes1[:, tf.newaxis, :]  # [N1, 1, 4]
    b2 = boxes2[tf.newaxis, :, :]  # [1, N2, 4]
    y1 = tf.maximum(b1[..., 0], b2[..., 0])
    x1 = tf.maximum(b1[..., 1], b2[..., 1])
    y2 = tf.minimum(b1[..., 2], b2[..., 2])
    x2 = tf.minimum(b1[..., 3], b2[..., 3])
    intersection = tf.maximum(y2 - y1, 0.0) * tf.maximum(x2 - x1, 0.0)
    area1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
    area2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
    return tf.math.divide_no_nan(intersection, area1 + area2 - intersection)


def _box_refinement_graph(boxes, gt_boxes):
    """[N, (dy, dx, log(dh), log(dw))] that move boxes [N, 4] onto gt_boxes [N, 4]."""
    height = boxes[:, 2] - boxes[:, 0]
    width = boxes[:, 3] - boxes[:, 1]
    center_y = boxes[:, 0] + 0.5 * height
    center_x = boxes[:, 1] + 0.5 * width
    gt_height = gt_boxes[:, 2] - gt_boxes[:, 0]
    gt_width = gt_boxes[:, 3] - gt_boxes[:, 1]
    gt_center_y = gt_boxes[:, 0] + 0.5 * gt_height
    gt_center_x = gt_boxes[:, 1] + 0.5 * gt_width
    return tf.stack([(gt_center_y - center_y) / height,
                     (gt_center_x - center_x) / width,
                     tf.math.log(gt_height / height),
                     tf.math.log(gt_width / width)], axis=1)


def detection_targets_graph(proposals, gt_class_ids, gt_boxes, gt_masks, config):
    """Sample ROIs from one image's proposals and compute their class, delta and mask targets.

    proposals: [N, (y1, x1, y2, x2)] normalised, possibly zero padded.
    gt_class_ids: [MAX_GT] int, zero padded; negative ids are crowd boxes.
    gt_boxes: [MAX_GT, (y1, x1, y2, x2)] normalised, zero padded.
    gt_masks: [h, w, MAX_GT] bool; mini-masks (USE_MINI_MASK) or full-image masks.
    Returns (all zero padded to TRAIN_ROIS_PER_IMAGE = T):
        rois [T, 4] float32, class_ids [T] int32, deltas [T, 4] float32 (divided by
        BBOX_STD_DEV), masks [T, MASK_SHAPE[0], MASK_SHAPE[1]] float32 of 0/1.
    Positives (IoU >= 0.5) are capped at T * ROI_POSITIVE_RATIO and negatives (IoU < 0.5,
    off crowds) keep that ratio; an image without instances gets T negatives.
    """
    num_rois = config.TRAIN_ROIS_PER_IMAGE
    ratio = float(config.ROI_POSITIVE_RATIO)
    proposals = tf.cast(proposals, tf.float32)
    gt_boxes = tf.cast(gt_boxes, tf.float32)
    gt_class_ids = tf.cast(gt_class_ids, tf.int32)

    proposals, _ = trim_zeros_graph(proposals)
    gt_boxes, non_zeros = trim_zeros_graph(gt_boxes)
    gt_class_ids = tf.boolean_mask(gt_class_ids, non_zeros)
    gt_masks = tf.gather(gt_masks, tf.where(non_zeros)[:, 0], axis=2)

    crowd_ix = tf.where(gt_class_ids < 0)[:, 0]
    instance_ix = tf.where(gt_class_ids > 0)[:, 0]
    crowd_boxes = tf.gather(gt_boxes, crowd_ix)
    gt_class_ids = tf.gather(gt_class_ids, instance_ix)
    gt_boxes = tf.gather(gt_boxes, instance_ix)
    gt_masks = tf.gather(gt_masks, instance_ix, axis=2)
    num_gt = tf.shape(gt_boxes)[0]

    overlaps = _overlaps_graph(proposals, gt_boxes)  # [N, G]
    crowd_iou_max = tf.reduce_max(_overlaps_graph(proposals, crowd_boxes), axis=1)  # -inf without crowds
    not_crowd = crowd_iou_max < CROWD_IOU
    roi_iou_max = tf.reduce_max(overlaps, axis=1)  # -inf without GT
    positive_indices = tf.where(roi_iou_max >= ROI_POSITIVE_IOU)[:, 0]
    negative_indices = tf.where(tf.logical_and(roi_iou_max < ROI_POSITIVE_IOU, not_crowd))[:, 0]

    positive_indices = tf.random.shuffle(positive_indices)[:int(num_rois * ratio)]
    positive_count = tf.shape(positive_indices)[0]
    if ratio > 0:
        negative_count = tf.cast(tf.cast(positive_count, tf.float32) / ratio, tf.int32) - positive_count
    else:
        negative_count = tf.constant(num_rois, tf.int32)
    negative_count = tf.where(num_gt > 0, negative_count, num_rois)
    negative_count = tf.minimum(negative_count, num_rois - positive_count)
    negative_indices = tf.random.shuffle(negative_indices)[:negative_count]
    positive_rois = tf.gather(proposals, positive_indices)
    negative_rois = tf.gather(proposals, negative_indices)

    positive_overlaps = tf.gather(overlaps, positive_indices)  # [P, G]
    roi_gt_assignment = tf.cond(num_gt > 0,
                                lambda: tf.argmax(positive_overlaps, axis=1),
                                lambda: tf.zeros([0], tf.int64))
    roi_gt_boxes = tf.gather(gt_boxes, roi_gt_assignment)
    roi_gt_class_ids = tf.gather(gt_class_ids, roi_gt_assignment)
    deltas = _box_refinement_graph(positive_rois, roi_gt_boxes)
    deltas /= tf.constant(np.asarray(config.BBOX_STD_DEV), tf.float32)

    # [P, h, w, 1] the GT mask of each positive ROI
    roi_masks = tf.gather(tf.transpose(gt_masks, [2, 0, 1])[..., tf.newaxis], roi_gt_assignment)
    boxes = positive_rois
    if config.USE_MINI_MASK:
        # Normalised image coordinates -> normalised coordinates inside the GT box (mini-mask).
        y1, x1, y2, x2 = tf.split(positive_rois, 4, axis=1)
        gt_y1, gt_x1, gt_y2, gt_x2 = tf.split(roi_gt_boxes, 4, axis=1)
        gt_h = gt_y2 - gt_y1
        gt_w = gt_x2 - gt_x1
        boxes = tf.concat([(y1 - gt_y1) / gt_h, (x1 - gt_x1) / gt_w,
                           (y2 - gt_y1) / gt_h, (x2 - gt_x1) / gt_w], axis=1)
    box_ids = tf.range(tf.shape(roi_masks)[0])
    masks = tf.image.crop_and_resize(tf.cast(roi_masks, tf.float32), boxes, box_ids,
                                     list(config.MASK_SHAPE))
    masks = tf.round(tf.squeeze(masks, axis=3))  # [P, mh, mw] of 0/1

    rois = tf.concat([positive_rois, negative_rois], axis=0)
    num_negative = tf.shape(negative_rois)[0]
    pad = tf.maximum(num_rois - tf.shape(rois)[0], 0)
    rois = tf.pad(rois, [(0, pad), (0, 0)])
    roi_gt_class_ids = tf.pad(roi_gt_class_ids, [(0, num_negative + pad)])
    deltas = tf.pad(deltas, [(0, num_negative + pad), (0, 0)])
    masks = tf.pad(masks, [(0, num_negative + pad), (0, 0), (0, 0)])
    mask_h, mask_w = config.MASK_SHAPE
    return (tf.reshape(rois, [num_rois, 4]),
            tf.reshape(roi_gt_class_ids, [num_rois]),
            tf.reshape(deltas, [num_rois, 4]),
            tf.reshape(masks, [num_rois, mask_h, mask_w]))


class DetectionTargetLayer(keras.layers.Layer):
    """Subsample proposals and attach class, box-delta and mask targets (no weights).

    Inputs: proposals [batch, N, 4] normalised; gt_class_ids [batch, MAX_GT];
    gt_boxes [batch, MAX_GT, 4] normalised; gt_masks [batch, h, w, MAX_GT] bool.
    Outputs: rois [batch, T, 4], target_class_ids [batch, T] int32,
    target_deltas [batch, T, 4], target_mask [batch, T, MASK_SHAPE[0], MASK_SHAPE[1]],
    T = TRAIN_ROIS_PER_IMAGE, zero padded. Runs in float32 under any precision policy.
    """

    def __init__(self, config, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.config = config

    def call(self, inputs):
        proposals, gt_class_ids, gt_boxes, gt_masks = inputs
        num_rois = self.config.TRAIN_ROIS_PER_IMAGE
        mask_h, mask_w = self.config.MASK_SHAPE
        signature = (tf.TensorSpec([num_rois, 4], tf.float32),
                     tf.TensorSpec([num_rois], tf.int32),
                     tf.TensorSpec([num_rois, 4], tf.float32),
                     tf.TensorSpec([num_rois, mask_h, mask_w], tf.float32))
        outputs = tf.map_fn(
            lambda x: detection_targets_graph(x[0], x[1], x[2], x[3], self.config),
            (tf.cast(proposals, tf.float32), tf.cast(gt_class_ids, tf.int32),
             tf.cast(gt_boxes, tf.float32), tf.cast(gt_masks, tf.bool)),
            fn_output_signature=signature)
        return list(outputs)

    def compute_output_spec(self, inputs):
        batch = inputs[0].shape[0]
        num_rois = self.config.TRAIN_ROIS_PER_IMAGE
        mask_h, mask_w = self.config.MASK_SHAPE
        return [keras.KerasTensor((batch, num_rois, 4), dtype="float32"),
                keras.KerasTensor((batch, num_rois), dtype="int32"),
                keras.KerasTensor((batch, num_rois, 4), dtype="float32"),
                keras.KerasTensor((batch, num_rois, mask_h, mask_w), dtype="float32")]

    def compute_mask(self, inputs, mask=None):
        return [None, None, None, None]
