"""DetectionLayer: classifier outputs on the proposals -> final detections per image."""
import tensorflow as tf

from mrcnn.data.molding import parse_image_meta_graph
from mrcnn.modeling import boxes
from mrcnn.modeling.layers import Float32Layer, as_float_array, batch_slice


def _survivors_of_classwise_nms(boxes_, scores, class_ids, candidate, max_per_class, iou_threshold):
    """[N] bool: the candidates that NMS keeps within their own class (at most
    max_per_class per class). Each class's NMS sees its candidates in ascending ROI order,
    as in the reference, so ties resolve the same way."""
    num_rois = tf.shape(scores)[0]

    def kept_in_class(class_id):
        members = tf.where(candidate & tf.equal(class_ids, class_id))[:, 0]  # [M] ascending
        picked = tf.image.non_max_suppression(
            tf.gather(boxes_, members), tf.gather(scores, members),
            max_output_size=max_per_class, iou_threshold=iou_threshold)
        rows = tf.gather(members, picked)[:, tf.newaxis]
        return tf.scatter_nd(rows, tf.ones_like(rows[:, 0], tf.int32), [num_rois])  # [N] 0/1

    # Class 0 (background, never a candidate) keeps the map from being empty.
    classes = tf.unique(tf.concat([[0], tf.boolean_mask(class_ids, candidate)], axis=0))[0]
    votes = tf.map_fn(kept_in_class, classes, fn_output_signature=tf.TensorSpec([None], tf.int32))
    return tf.reduce_sum(votes, axis=0) > 0


def refine_detections_graph(rois, probs, deltas, window, bbox_std_dev, min_confidence, max_instances,
                            nms_threshold):
    """One image: refine, filter and suppress the classified proposals (Mask R-CNN sec. 3,
    "Inference": box regression of the top class, per-class NMS, the top scores kept).

    rois: [N, (y1, x1, y2, x2)] normalised proposals. probs: [N, num_classes].
    deltas: [N, num_classes, (dy, dx, log(dh), log(dw))]. window: (y1, x1, y2, x2) normalised.
    Returns detections [max_instances, (y1, x1, y2, x2, class_id, score)] and
    class_probs [max_instances, num_classes] (the probs row of each detection), zero-padded,
    sorted by score (equal scores: lower ROI index first).
    The numbers are the reference's: same decoding, same NMS inputs and order, same top-k.
    """
    # [N] top class of each ROI and its probability; [N, 4] the box regressed for that class.
    top_class = tf.argmax(probs, axis=1, output_type=tf.int32)
    pick = tf.stack([tf.range(tf.shape(probs)[0]), top_class], axis=1)
    top_score = tf.gather_nd(probs, pick)
    refined = boxes.decode_tf(rois, tf.gather_nd(deltas, pick) * as_float_array(bbox_std_dev))
    refined = boxes.clip_tf(refined, window)

    candidate = top_class > 0  # background ROIs are never detections
    if min_confidence:
        candidate &= top_score >= min_confidence
    survived = _survivors_of_classwise_nms(refined, top_score, top_class, candidate,
                                           max_instances, nms_threshold)

    # Best max_instances survivors; top_k breaks ties towards the lower ROI index.
    survivor_ids = tf.where(survived)[:, 0]
    survivor_scores = tf.gather(top_score, survivor_ids)
    count = tf.minimum(tf.size(survivor_scores), max_instances)
    chosen = tf.gather(survivor_ids, tf.math.top_k(survivor_scores, k=count).indices)

    rows = [tf.gather(refined, chosen),
            tf.expand_dims(tf.cast(tf.gather(top_class, chosen), tf.float32), 1),
            tf.expand_dims(tf.gather(top_score, chosen), 1)]
    missing = [[0, max_instances - count], [0, 0]]
    detections = tf.pad(tf.concat(rows, axis=1), missing)
    return detections, tf.pad(tf.gather(probs, chosen), missing)


class DetectionLayer(Float32Layer):
    """Inputs: rois [batch, N, 4], mrcnn_class [batch, N, classes], mrcnn_bbox [batch, N, classes, 4],
    image_meta [batch, meta].
    Outputs: detections [batch, DETECTION_MAX_INSTANCES, (y1, x1, y2, x2, class_id, score)] in
    normalised coordinates, and class_probs [batch, DETECTION_MAX_INSTANCES, classes].
    """

    def __init__(self, config=None, bbox_std_dev=None, min_confidence=None, max_instances=None,
                 nms_threshold=None, images_per_gpu=None, **kwargs):
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
        window = boxes.normalize_tf(meta["window"], image_shape[:2])  # [batch, 4]

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


def best_proposal_logits_graph(rois, logits):
    """The classifier logits of each image's most confident proposal, detected or not.

    rois: [batch, N, (y1, x1, y2, x2)] normalised proposals, zero rows for padding.
    logits: [batch, N, num_classes] classifier logits (before the softmax).
    Returns [batch, num_classes]: the logits row of the real proposal whose best foreground
    log-probability is the highest (ties: the lower ROI index), zeros when an image has no real
    proposal. Task 3 falls back on it when no detection passes DETECTION_MIN_CONFIDENCE. Logits,
    not probabilities: a classifier sure of background gives float32 foreground probabilities of
    exactly 0 (measured on a short real-image training), while the softmax over the foreground
    logits alone still ranks the diagnoses.
    """
    real = (rois[..., 2] > rois[..., 0]) & (rois[..., 3] > rois[..., 1])  # [batch, N]
    foreground = tf.reduce_max(tf.nn.log_softmax(logits, axis=-1)[..., 1:], axis=-1)  # [batch, N]
    foreground = tf.where(real, foreground, tf.fill(tf.shape(foreground), float("-inf")))
    best = tf.argmax(foreground, axis=1, output_type=tf.int32)  # [batch] first maximum
    rows = tf.gather(logits, best, batch_dims=1)  # [batch, num_classes]
    return tf.where(tf.reduce_any(real, axis=1, keepdims=True), rows, tf.zeros_like(rows))


class BestProposalLayer(Float32Layer):
    """Inputs: rois [batch, N, 4], mrcnn_class_logits [batch, N, classes].
    Output: best_proposal_logits [batch, classes] (`best_proposal_logits_graph`)."""

    def call(self, inputs):
        rois, logits = inputs
        return best_proposal_logits_graph(rois, logits)

    def compute_output_shape(self, input_shape):
        return (input_shape[1][0], input_shape[1][-1])
