"""DetectionLayer: classifier outputs on the proposals -> final detections per image."""
import keras
import tensorflow as tf

from mrcnn.layers import (apply_box_deltas_graph, as_float_array, batch_slice, clip_boxes_graph,
                          norm_boxes_graph)
from mrcnn.molding import parse_image_meta_graph


def refine_detections_graph(rois, probs, deltas, window, bbox_std_dev, min_confidence, max_instances,
                            nms_threshold):
    """One image: refine, filter and suppress the classified proposals.

    rois: [N, (y1, x1, y2, x2)] normalised proposals. probs: [N, num_classes].
    deltas: [N, num_classes, (dy, dx, log(dh), log(dw))]. window: (y1, x1, y2, x2) normalised.
    Returns detections [max_instances, (y1, x1, y2, x2, class_id, score)] and
    class_probs [max_instances, num_classes] (the probs row of each detection), zero-padded,
    sorted by score.
    """
    # Best class per ROI, its score and its class-specific box delta.
    class_ids = tf.argmax(probs, axis=1, output_type=tf.int32)  # [N]
    indices = tf.stack([tf.range(tf.shape(probs)[0]), class_ids], axis=1)
    class_scores = tf.gather_nd(probs, indices)  # [N]
    deltas_specific = tf.gather_nd(deltas, indices)  # [N, 4]
    refined_rois = apply_box_deltas_graph(rois, deltas_specific * as_float_array(bbox_std_dev))
    refined_rois = clip_boxes_graph(refined_rois, window)  # [N, 4]

    # Candidates: not background, confident enough. Indices ascending.
    candidate = class_ids > 0
    if min_confidence:
        candidate = tf.logical_and(candidate, class_scores >= min_confidence)
    keep = tf.where(candidate)[:, 0]  # [K] int64

    pre_nms_class_ids = tf.gather(class_ids, keep)
    pre_nms_scores = tf.gather(class_scores, keep)
    pre_nms_rois = tf.gather(refined_rois, keep)
    unique_class_ids = tf.unique(pre_nms_class_ids)[0]

    def nms_keep_map(class_id):
        """ROI indices kept by NMS among one class, padded with -1 to max_instances."""
        ixs = tf.where(tf.equal(pre_nms_class_ids, class_id))[:, 0]
        class_keep = tf.image.non_max_suppression(
            tf.gather(pre_nms_rois, ixs), tf.gather(pre_nms_scores, ixs),
            max_output_size=max_instances, iou_threshold=nms_threshold)
        class_keep = tf.gather(keep, tf.gather(ixs, class_keep))
        gap = max_instances - tf.shape(class_keep)[0]
        class_keep = tf.pad(class_keep, [(0, gap)], mode="CONSTANT", constant_values=-1)
        class_keep.set_shape([max_instances])
        return class_keep

    nms_keep = tf.map_fn(nms_keep_map, unique_class_ids,
                         fn_output_signature=tf.TensorSpec([max_instances], tf.int64))
    nms_keep = tf.reshape(nms_keep, [-1])
    nms_keep = tf.gather(nms_keep, tf.where(nms_keep > -1)[:, 0])
    # Survivors, ascending ROI index (the order ties are broken in below).
    survived = tf.scatter_nd(tf.expand_dims(nms_keep, 1), tf.ones_like(nms_keep, dtype=tf.bool),
                             tf.shape(class_ids, out_type=tf.int64))
    keep = tf.where(survived)[:, 0]

    # Top max_instances by score.
    class_scores_keep = tf.gather(class_scores, keep)
    num_keep = tf.minimum(tf.shape(class_scores_keep)[0], max_instances)
    top_ids = tf.nn.top_k(class_scores_keep, k=num_keep, sorted=True)[1]
    keep = tf.gather(keep, top_ids)

    detections = tf.concat([
        tf.gather(refined_rois, keep),
        tf.cast(tf.gather(class_ids, keep), tf.float32)[:, tf.newaxis],
        tf.gather(class_scores, keep)[:, tf.newaxis]], axis=1)
    kept_probs = tf.gather(probs, keep)
    gap = max_instances - tf.shape(detections)[0]
    detections = tf.pad(detections, [(0, gap), (0, 0)], "CONSTANT")
    kept_probs = tf.pad(kept_probs, [(0, gap), (0, 0)], "CONSTANT")
    return detections, kept_probs


class DetectionLayer(keras.layers.Layer):
    """Inputs: rois [batch, N, 4], mrcnn_class [batch, N, classes], mrcnn_bbox [batch, N, classes, 4],
    image_meta [batch, meta].
    Outputs: detections [batch, DETECTION_MAX_INSTANCES, (y1, x1, y2, x2, class_id, score)] in
    normalised coordinates, and class_probs [batch, DETECTION_MAX_INSTANCES, classes].
    """

    def __init__(self, config=None, bbox_std_dev=None, min_confidence=None, max_instances=None,
                 nms_threshold=None, images_per_gpu=None, **kwargs):
        kwargs.setdefault("dtype", "float32")  # box math stays float32 under mixed precision
        super().__init__(**kwargs)
        pick = lambda value, attr: value if value is not None else getattr(config, attr)  # noqa: E731
        self.bbox_std_dev = [float(v) for v in pick(bbox_std_dev, "BBOX_STD_DEV")]
        self.min_confidence = float(pick(min_confidence, "DETECTION_MIN_CONFIDENCE"))
        self.max_instances = int(pick(max_instances, "DETECTION_MAX_INSTANCES"))
        self.nms_threshold = float(pick(nms_threshold, "DETECTION_NMS_THRESHOLD"))
        self.images_per_gpu = int(pick(images_per_gpu, "IMAGES_PER_GPU"))

    def call(self, inputs):
        rois, mrcnn_class, mrcnn_bbox, image_meta = inputs
        meta = parse_image_meta_graph(image_meta)
        image_shape = meta["image_shape"][0]
        window = norm_boxes_graph(meta["window"], image_shape[:2])  # [batch, 4]

        def refine(r, p, d, w):
            return refine_detections_graph(r, p, d, w, self.bbox_std_dev, self.min_confidence,
                                           self.max_instances, self.nms_threshold)

        detections, class_probs = batch_slice([rois, mrcnn_class, mrcnn_bbox, window], refine,
                                              self.images_per_gpu)
        num_classes = mrcnn_class.shape[-1]
        detections.set_shape([None, self.max_instances, 6])
        class_probs.set_shape([None, self.max_instances, num_classes])
        return [detections, class_probs]

    def compute_output_shape(self, input_shape):
        batch = input_shape[0][0]
        return [(batch, self.max_instances, 6), (batch, self.max_instances, input_shape[1][-1])]

    def get_config(self):
        config = super().get_config()
        config.update(bbox_std_dev=self.bbox_std_dev, min_confidence=self.min_confidence,
                      max_instances=self.max_instances, nms_threshold=self.nms_threshold,
                      images_per_gpu=self.images_per_gpu)
        return config
