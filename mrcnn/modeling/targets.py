"""Training targets: which anchors the RPN should fire on (NumPy, in the data pipeline) and
which proposals the heads should learn from (DetectionTargetLayer, in the graph).

Semantics follow Matterport's build_rpn_targets / detection_targets_graph, with one
extension: an image without instances is a valid training image whose sampled anchors
and ROIs are all negative (Matterport drops such images).
"""
import keras
import numpy as np
import tensorflow as tf

from mrcnn.modeling import boxes as box_coder
from mrcnn.modeling.layers import Float32Layer, trim_zeros_graph

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

    # Anchors touching a crowd box are never negatives (they may still become positives).
    is_crowd = gt_class_ids < 0
    crowd_iou = box_coder.iou_np(anchors, gt_boxes[is_crowd])                  # [A, crowds]
    off_crowd = ~np.any(crowd_iou >= CROWD_IOU, axis=1)
    gt_boxes = gt_boxes[gt_class_ids > 0]

    nearest_gt = np.zeros([num_anchors], dtype=np.int64)
    if len(gt_boxes) == 0:
        rpn_match[off_crowd] = -1
    else:
        iou = box_coder.iou_np(anchors, gt_boxes)                              # [A, G]
        nearest_gt = iou.argmax(axis=1)
        best_iou = iou.max(axis=1)
        # Faster R-CNN sec. 3.1.2: negatives below 0.3 (off crowds), positives from 0.7 up,
        # plus, for each GT box, the anchor(s) overlapping it most. A GT box overlapping no
        # anchor at all is left out here: otherwise every anchor would tie as its "best".
        rpn_match[off_crowd & (best_iou < RPN_NEGATIVE_IOU)] = -1
        per_gt_best = iou.max(axis=0)                                          # [G]
        is_best_for_some_gt = np.any((iou == per_gt_best) & (per_gt_best > 0), axis=1)
        rpn_match[is_best_for_some_gt | (best_iou >= RPN_POSITIVE_IOU)] = 1

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
    positive = np.flatnonzero(rpn_match == 1)
    rpn_bbox[:positive.size] = box_coder.encode_np(anchors[positive], gt_boxes[nearest_gt[positive]],
                                                   config.RPN_BBOX_STD_DEV)
    return rpn_match, rpn_bbox


############################################################
#  Detection targets (graph)
############################################################

def _shuffle(pool, proposals, config, salt):
    """A random order of the index pool [K]. With Config.DETERMINISTIC it is stateless, keyed by
    SEED and the image's own proposals: Keras traces the validation step apart from the training
    step, and a stateful shuffle there drew other negatives from run to run."""
    if not getattr(config, "DETERMINISTIC", False):
        return tf.random.shuffle(pool)
    key = tf.cast(tf.math.floormod(tf.cast(tf.reduce_sum(proposals) * 1e4, tf.int64), 2 ** 31 - 1), tf.int32)
    seed = tf.stack([tf.constant(int(config.SEED) % 2 ** 30 * 2 + salt, tf.int32), key])
    return tf.random.experimental.stateless_shuffle(pool, seed=seed)


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
    proposals, _ = trim_zeros_graph(tf.cast(proposals, tf.float32))
    gt_boxes = tf.cast(gt_boxes, tf.float32)
    gt_class_ids = tf.cast(gt_class_ids, tf.int32)

    # Split the non-padding GT rows into crowds (negative ids) and instances (positive ids).
    present = tf.reduce_any(tf.not_equal(gt_boxes, 0), axis=1)
    crowd_boxes = tf.boolean_mask(gt_boxes, present & (gt_class_ids < 0))
    instance = present & (gt_class_ids > 0)
    gt_boxes = tf.boolean_mask(gt_boxes, instance)                    # [G, 4]
    gt_class_ids = tf.boolean_mask(gt_class_ids, instance)            # [G]
    gt_masks = tf.boolean_mask(gt_masks, instance, axis=2)            # [h, w, G]
    has_gt = tf.shape(gt_boxes)[0] > 0

    iou = box_coder.iou_tf(proposals, gt_boxes)                       # [N, G]
    best_iou = tf.reduce_max(iou, axis=1)                             # -inf without GT
    near_crowd = tf.reduce_max(box_coder.iou_tf(proposals, crowd_boxes), axis=1) >= CROWD_IOU
    positive_pool = tf.where(best_iou >= ROI_POSITIVE_IOU)[:, 0]
    negative_pool = tf.where((best_iou < ROI_POSITIVE_IOU) & ~near_crowd)[:, 0]

    # Mask R-CNN sec. 3.1: a fixed positive:total ratio; without GT, all negatives.
    positives = _shuffle(positive_pool, proposals, config, 0)[:int(num_rois * ratio)]
    num_positive = tf.size(positives)
    if ratio > 0:
        negatives_wanted = tf.cast(tf.cast(num_positive, tf.float32) / ratio, tf.int32) - num_positive
        negatives_wanted = tf.where(has_gt, negatives_wanted, num_rois)
    else:
        negatives_wanted = tf.constant(num_rois, tf.int32)
    negatives = _shuffle(negative_pool, proposals, config, 1)[:tf.minimum(negatives_wanted, num_rois - num_positive)]
    positive_rois = tf.gather(proposals, positives)                   # [P, 4]

    # Each positive learns from the GT box it overlaps most.
    assigned = tf.cond(has_gt, lambda: tf.argmax(tf.gather(iou, positives), axis=1),
                       lambda: tf.zeros([0], tf.int64))
    assigned_boxes = tf.gather(gt_boxes, assigned)
    deltas = box_coder.encode_tf(positive_rois, assigned_boxes, config.BBOX_STD_DEV)

    # Mask target: the assigned GT mask sampled inside the ROI (in the GT box's own frame
    # when the GT masks are mini-masks), rounded to 0/1.
    assigned_masks = tf.gather(tf.transpose(gt_masks, [2, 0, 1]), assigned)[..., tf.newaxis]
    crop_boxes = (box_coder.to_frame_tf(positive_rois, assigned_boxes) if config.USE_MINI_MASK
                  else positive_rois)
    masks = tf.image.crop_and_resize(tf.cast(assigned_masks, tf.float32), crop_boxes,
                                     tf.range(tf.size(assigned)), list(config.MASK_SHAPE))
    masks = tf.round(masks[..., 0])                                   # [P, mh, mw]

    # Positives first, then negatives (whose targets are all zero), then zero padding.
    rois = tf.concat([positive_rois, tf.gather(proposals, negatives)], axis=0)
    return (_zero_pad_rows(rois, num_rois),
            _zero_pad_rows(tf.gather(gt_class_ids, assigned), num_rois),
            _zero_pad_rows(deltas, num_rois),
            _zero_pad_rows(masks, num_rois))


def _zero_pad_rows(values, rows):
    """Zero-pad axis 0 of `values` to `rows` (it never has more) and fix the static shape."""
    rank = len(values.shape)
    padded = tf.pad(values, [[0, rows - tf.shape(values)[0]]] + [[0, 0]] * (rank - 1))
    return tf.ensure_shape(padded, [rows] + values.shape[1:].as_list())


class DetectionTargetLayer(Float32Layer):
    """Subsample proposals and attach class, box-delta and mask targets (no weights).

    Inputs: proposals [batch, N, 4] normalised; gt_class_ids [batch, MAX_GT];
    gt_boxes [batch, MAX_GT, 4] normalised; gt_masks [batch, h, w, MAX_GT] bool.
    Outputs: rois [batch, T, 4], target_class_ids [batch, T] int32,
    target_deltas [batch, T, 4], target_mask [batch, T, MASK_SHAPE[0], MASK_SHAPE[1]],
    T = TRAIN_ROIS_PER_IMAGE, zero padded. Runs in float32 under any precision policy.
    """

    def __init__(self, config, **kwargs):
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
