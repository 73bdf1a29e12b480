"""Matterport's `mrcnn.utils` import path: every name its users import from here, each
defined in the module that does that job.

- boxes, IoU, NMS, box deltas: mrcnn.modeling.boxes (the one box coder)
- anchors: mrcnn.modeling.anchors
- the Dataset base class: mrcnn.data.dataset
- resizing images and masks: mrcnn.data.resize (the one resize)
- mask boxes, mini-masks, pasting masks: mrcnn.data.masks
- AP and recall: mrcnn.evaluation.ap
- the COCO weights download: mrcnn.io.download

This module does not import TensorFlow: its two graph functions (`batch_slice`,
`box_refinement_graph`) load it when first asked for.
"""
from mrcnn.data.dataset import Dataset
from mrcnn.data.masks import expand_mask, extract_bboxes, minimize_mask, unmold_mask
from mrcnn.data.resize import resize, resize_image, resize_mask
from mrcnn.evaluation.ap import compute_ap, compute_ap_range, compute_matches, compute_overlaps_masks, compute_recall
from mrcnn.io.download import COCO_MODEL_URL, download_trained_weights
from mrcnn.modeling.anchors import generate_anchors, generate_pyramid_anchors
from mrcnn.modeling.boxes import (apply_box_deltas, box_refinement, compute_iou, compute_overlaps, denorm_boxes,
                                  non_max_suppression, norm_boxes, trim_zeros)

__all__ = ["Dataset", "expand_mask", "extract_bboxes", "minimize_mask", "unmold_mask", "resize", "resize_image",
           "resize_mask", "compute_ap", "compute_ap_range", "compute_matches", "compute_overlaps_masks",
           "compute_recall", "COCO_MODEL_URL", "download_trained_weights", "generate_anchors",
           "generate_pyramid_anchors", "apply_box_deltas", "box_refinement", "compute_iou", "compute_overlaps",
           "denorm_boxes", "non_max_suppression", "norm_boxes", "trim_zeros"]


def __getattr__(name):
    if name == "batch_slice":
        from mrcnn.modeling.layers import batch_slice
        return batch_slice
    if name == "box_refinement_graph":
        return _box_refinement_graph
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _box_refinement_graph(box, gt_box):
    """[N, (y1, x1, y2, x2)] tensors -> [N, (dy, dx, log(dh), log(dw))]: the TF twin of
    `box_refinement`."""
    import tensorflow as tf

    from mrcnn.modeling.boxes import encode_tf
    return encode_tf(tf.cast(box, tf.float32), tf.cast(gt_box, tf.float32))
