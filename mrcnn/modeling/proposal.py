"""ProposalLayer: RPN scores and deltas -> a fixed number of proposals per image."""
import tensorflow as tf

from mrcnn.modeling import boxes as box_coder
from mrcnn.modeling.layers import Float32Layer, as_float_array, batch_slice


class ProposalLayer(Float32Layer):
    """Keeps the PRE_NMS_LIMIT best-scored anchors, refines them with the RPN deltas
    (times RPN_BBOX_STD_DEV), clips them to the image (normalised window 0..1), applies NMS
    and zero-pads to `proposal_count`.

    Inputs: rpn_probs [batch, anchors, (bg, fg)], rpn_bbox [batch, anchors, 4],
            anchors [batch, anchors, (y1, x1, y2, x2)] normalised.
    Output: [batch, proposal_count, (y1, x1, y2, x2)] normalised.
    """

    def __init__(self, proposal_count, nms_threshold, config=None, pre_nms_limit=None,
                 images_per_gpu=None, rpn_bbox_std_dev=None, **kwargs):
        super().__init__(**kwargs)
        self.proposal_count = int(proposal_count)
        self.nms_threshold = float(nms_threshold)
        self.pre_nms_limit = int(pre_nms_limit if pre_nms_limit is not None else config.PRE_NMS_LIMIT)
        self.images_per_gpu = int(images_per_gpu if images_per_gpu is not None else config.IMAGES_PER_GPU)
        std = rpn_bbox_std_dev if rpn_bbox_std_dev is not None else config.RPN_BBOX_STD_DEV
        self.rpn_bbox_std_dev = [float(v) for v in std]

    def call(self, inputs):
        scores = inputs[0][:, :, 1]  # [batch, anchors] foreground probability
        deltas = inputs[1] * tf.reshape(as_float_array(self.rpn_bbox_std_dev), [1, 1, 4])
        anchors = inputs[2]

        # [batch, k] best anchors, k = min(PRE_NMS_LIMIT, anchors)
        k = tf.minimum(self.pre_nms_limit, tf.shape(anchors)[1])
        ix = tf.nn.top_k(scores, k, sorted=True, name="top_anchors").indices
        scores = tf.gather(scores, ix, batch_dims=1)
        deltas = tf.gather(deltas, ix, batch_dims=1)
        pre_nms_anchors = tf.gather(anchors, ix, batch_dims=1)

        # [batch, k, (y1, x1, y2, x2)] refined and clipped to the image
        boxes = batch_slice([pre_nms_anchors, deltas], box_coder.decode_tf, self.images_per_gpu,
                            names=["refined_anchors"])
        window = tf.constant([0., 0., 1., 1.], dtype=tf.float32)
        boxes = batch_slice(boxes, lambda b: box_coder.clip_tf(b, window), self.images_per_gpu,
                            names=["refined_anchors_clipped"])

        def nms(image_boxes, image_scores):
            keep = tf.image.non_max_suppression(image_boxes, image_scores, self.proposal_count,
                                                self.nms_threshold, name="rpn_non_max_suppression")
            proposals = tf.gather(image_boxes, keep)
            padding = tf.maximum(self.proposal_count - tf.shape(proposals)[0], 0)
            return tf.pad(proposals, [(0, padding), (0, 0)])

        proposals = batch_slice([boxes, scores], nms, self.images_per_gpu)
        proposals.set_shape([None, self.proposal_count, 4])
        return proposals

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.proposal_count, 4)

    def get_config(self):
        config = super().get_config()
        config.update(proposal_count=self.proposal_count, nms_threshold=self.nms_threshold,
                      pre_nms_limit=self.pre_nms_limit, images_per_gpu=self.images_per_gpu,
                      rpn_bbox_std_dev=self.rpn_bbox_std_dev)
        return config
