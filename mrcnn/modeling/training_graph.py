"""The training graph: ground truth in, RPN and detection targets built in the graph, the five
losses out, and the Keras model that trains it (its own train_step and per-loss trackers).

`mrcnn.model.MaskRCNN.build("training")` imports this module; nothing here imports the
training loop (mrcnn.engine), the data feed or albumentations.
"""
import keras
import numpy as np
import tensorflow as tf
from keras import layers as KL

from mrcnn.config import LOSS_NAMES
from mrcnn.modeling import boxes as box_coder
from mrcnn.modeling import losses as L
from mrcnn.modeling.heads import build_fpn_mask_graph, fpn_classifier_graph
from mrcnn.modeling.layers import Float32Layer, NormSpec
from mrcnn.modeling.proposal import ProposalLayer
from mrcnn.modeling.targets import DetectionTargetLayer

# Training model outputs, in order (Matterport's, the five losses last).
TRAINING_OUTPUTS = ("rpn_class_logits", "rpn_class", "rpn_bbox", "mrcnn_class_logits", "mrcnn_class",
                    "mrcnn_bbox", "mrcnn_mask", "rpn_rois", "output_rois") + LOSS_NAMES


class NormBoxes(Float32Layer):
    """Pixel GT boxes -> normalised, for the image's height and width.
    Inputs: boxes [batch, n, 4] pixels, image [batch, H, W, C]."""

    def call(self, inputs):
        boxes, image = inputs
        return box_coder.normalize_tf(tf.cast(boxes, tf.float32), tf.shape(image)[1:3])

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])


class ConstantAnchors(Float32Layer):
    """The training anchors (fixed IMAGE_SHAPE) as [batch, anchors, (y1, x1, y2, x2)]
    normalised, batched like the image it is given."""

    def __init__(self, anchors, **kwargs):
        super().__init__(**kwargs)
        self.anchors = np.asarray(anchors, np.float32)

    def call(self, image):
        anchors = tf.constant(self.anchors)[tf.newaxis]
        return tf.tile(anchors, [tf.shape(image)[0], 1, 1])

    def compute_output_shape(self, input_shape):
        return (input_shape[0],) + self.anchors.shape


class ActiveClassIds(Float32Layer):
    """image_meta [batch, meta] -> active_class_ids [batch, NUM_CLASSES]."""

    def call(self, image_meta):
        return tf.cast(image_meta[:, 12:], tf.float32)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1] - 12)


class StopGradient(Float32Layer):
    """Proposals are targets' anchors, not something to learn through (Faster R-CNN's
    approximate joint training); also used to name the output ROIs."""

    def call(self, inputs):
        return tf.stop_gradient(inputs)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)


def positive_roi_slots(config):
    """How many leading ROIs of DetectionTargetLayer's output can be positive."""
    if config.ROI_POSITIVE_RATIO <= 0:
        return config.TRAIN_ROIS_PER_IMAGE
    return max(1, int(config.TRAIN_ROIS_PER_IMAGE * config.ROI_POSITIVE_RATIO))


class LeadingRois(keras.layers.Layer):
    """[batch, rois, ...] -> [batch, count, ...]: the first `count` ROIs."""

    def __init__(self, count, **kwargs):
        kwargs.setdefault("autocast", False)  # int ids and float32 targets pass through unchanged
        super().__init__(**kwargs)
        self.count = int(count)

    def call(self, inputs):
        return inputs[:, :self.count]

    def compute_output_spec(self, inputs):
        return keras.KerasTensor((inputs.shape[0], self.count) + tuple(inputs.shape[2:]), dtype=inputs.dtype)


class LossLayer(Float32Layer):
    """One of the five losses as a float32 scalar output [1] (named like Matterport's)."""

    def __init__(self, loss_fn, **kwargs):
        super().__init__(**kwargs)
        self.loss_fn = loss_fn

    def call(self, inputs):
        return tf.reshape(tf.cast(self.loss_fn(*inputs), tf.float32), [1])

    def compute_output_shape(self, input_shape):
        return (1,)


def build_training_graph(model, config, trunk):
    """Proposals -> sampled ROIs with targets (DetectionTargetLayer) -> heads -> five losses."""
    if not config.USE_RPN_ROIS:
        raise NotImplementedError("Config.USE_RPN_ROIS=False (externally given ROIs) is not supported")
    input_image = trunk["input_image"]
    image_meta = trunk["input_image_meta"]
    input_rpn_match = KL.Input(shape=[None, 1], name="input_rpn_match", dtype="int32")
    input_rpn_bbox = KL.Input(shape=[None, 4], name="input_rpn_bbox", dtype="float32")
    input_gt_class_ids = KL.Input(shape=[None], name="input_gt_class_ids", dtype="int32")
    input_gt_boxes = KL.Input(shape=[None, 4], name="input_gt_boxes", dtype="float32")  # pixels
    mask_shape = list(config.MINI_MASK_SHAPE) if config.USE_MINI_MASK else [int(v) for v in config.IMAGE_SHAPE[:2]]
    input_gt_masks = KL.Input(shape=mask_shape + [None], name="input_gt_masks", dtype="uint8")  # 0/1

    gt_boxes = NormBoxes(name="norm_gt_boxes")([input_gt_boxes, input_image])  # [batch, MAX_GT, 4]
    anchors = ConstantAnchors(model.get_anchors(config.IMAGE_SHAPE), name="anchors")(input_image)
    rpn_rois = ProposalLayer(proposal_count=config.POST_NMS_ROIS_TRAINING, nms_threshold=config.RPN_NMS_THRESHOLD,
                             config=config, name="ROI")([trunk["rpn_class"], trunk["rpn_bbox"], anchors])
    active_class_ids = ActiveClassIds(name="active_class_ids")(image_meta)
    target_rois = StopGradient(name="target_rois")(rpn_rois)

    # [batch, TRAIN_ROIS_PER_IMAGE, ...] sampled ROIs and their targets
    rois, target_class_ids, target_bbox, target_mask = DetectionTargetLayer(config, name="proposal_targets")(
        [target_rois, input_gt_class_ids, gt_boxes, input_gt_masks])

    feature_maps = trunk["mrcnn_feature_maps"]
    mrcnn_class_logits, mrcnn_class, mrcnn_bbox = fpn_classifier_graph(
        rois, feature_maps, image_meta, config.POOL_SIZE, config.NUM_CLASSES, train_bn=NormSpec.of(config),
        fc_layers_size=config.FPN_CLASSIF_FC_LAYERS_SIZE, box_convs=config.BOX_HEAD_CONVS,
        conv_channels=config.TOP_DOWN_PYRAMID_SIZE)
    # DetectionTargetLayer puts the positive ROIs first and caps them at this count; the mask
    # loss only reads positives, so the mask head runs on these leading ROIs alone (the same
    # loss and gradients as running it on every sampled ROI, for a third of the work).
    positive_slots = positive_roi_slots(config)
    mask_rois = LeadingRois(positive_slots, name="mask_rois")(rois)
    mask_class_ids = LeadingRois(positive_slots, name="mask_target_class_ids")(target_class_ids)
    mask_targets = LeadingRois(positive_slots, name="mask_targets")(target_mask)
    # mrcnn_mask: probabilities (the model's output); mask_logits: the same layer's logits, for the loss
    mrcnn_mask, mask_logits = build_fpn_mask_graph(mask_rois, feature_maps, image_meta, config.MASK_POOL_SIZE,
                                                   config.NUM_CLASSES, train_bn=NormSpec.of(config), return_logits=True,
                                                   channels=config.MASK_HEAD_CHANNELS)
    output_rois = StopGradient(name="output_rois")(rois)

    rpn_class_loss = LossLayer(L.rpn_class_loss_graph, name="rpn_class_loss")(
        [input_rpn_match, trunk["rpn_class_logits"]])
    rpn_bbox_loss = LossLayer(lambda *a: L.rpn_bbox_loss_graph(config, *a), name="rpn_bbox_loss")(
        [input_rpn_bbox, input_rpn_match, trunk["rpn_bbox"]])
    class_loss = LossLayer(L.mrcnn_class_loss_graph, name="mrcnn_class_loss")(
        [target_class_ids, mrcnn_class_logits, active_class_ids])
    bbox_loss = LossLayer(L.mrcnn_bbox_loss_graph, name="mrcnn_bbox_loss")([target_bbox, target_class_ids, mrcnn_bbox])
    mask_loss = LossLayer(lambda *a: L.mrcnn_mask_loss_graph(*a, from_logits=True), name="mrcnn_mask_loss")(
        [mask_targets, mask_class_ids, mask_logits])

    inputs = [input_image, image_meta, input_rpn_match, input_rpn_bbox, input_gt_class_ids, input_gt_boxes,
              input_gt_masks]
    outputs = [trunk["rpn_class_logits"], trunk["rpn_class"], trunk["rpn_bbox"], mrcnn_class_logits, mrcnn_class,
               mrcnn_bbox, mrcnn_mask, rpn_rois, output_rois,
               rpn_class_loss, rpn_bbox_loss, class_loss, bbox_loss, mask_loss]
    keras_model = MaskRCNNTrainingModel(inputs, outputs, name="mask_rcnn")
    keras_model.configure_losses(config)
    return keras_model


class MaskRCNNTrainingModel(keras.Model):
    """The functional training graph with a train_step that sums the weighted losses and
    Matterport's L2 weight decay, and logs each loss with its own float32 Mean tracker
    (Keras' built-in loss tracker would log 0 for a loss it did not compute)."""

    def configure_losses(self, config):
        self.loss_weights_by_name = {name: float(config.LOSS_WEIGHTS[name]) for name in LOSS_NAMES}
        self.weight_decay = float(config.WEIGHT_DECAY)
        self.trackers = {name: keras.metrics.Mean(name=name, dtype="float32") for name in ("loss",) + LOSS_NAMES}
        self.train_step_traces = 0  # Python side effect: counts tracings of train_step, not steps

    @property
    def metrics(self):
        return list(self.trackers.values())

    def compute_losses(self, x, training):
        """(total, {name: loss}) in float32. total includes the weight decay."""
        outputs = self(x, training=training)
        values = {name: tf.reduce_mean(tf.cast(outputs[TRAINING_OUTPUTS.index(name)], tf.float32))
                  for name in LOSS_NAMES}
        total = tf.add_n([values[n] * self.loss_weights_by_name[n] for n in LOSS_NAMES])
        if self.weight_decay > 0:
            total = total + L.l2_weight_decay(self.trainable_weights, self.weight_decay)
        return total, values

    def _record(self, total, values):
        self.trackers["loss"].update_state(total)
        for name in LOSS_NAMES:
            self.trackers[name].update_state(values[name])
        results = {name: tracker.result() for name, tracker in self.trackers.items()}
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras averages per-replica logs across workers along axis 0, which a scalar lacks.
            results = {name: tf.reshape(value, [1]) for name, value in results.items()}
        return results

    def train_step(self, data):
        x = data[0] if isinstance(data, tuple) and len(data) == 1 else data
        self.train_step_traces += 1
        with tf.GradientTape() as tape:
            total, values = self.compute_losses(x, training=True)
            # Gradients are summed over replicas: each contributes its share of the mean.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = self.optimizer.scale_loss(total / replicas)
        variables = self.trainable_weights
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        return self._record(total, values)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras (3.15) builds the optimizer and metrics from a first batch that it reduces over
        # replicas with strategy.reduce("MEAN", nested batch); MultiWorkerMirroredStrategy cannot
        # reduce a nested structure. Only shapes matter here: the first local replica's slice.
        if iterator is not None and data_batch is None:
            for _, _, batches in iterator:
                first = next(batches)
                strategy = self.distribute_strategy
                data_batch = tf.nest.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues) else v, first)
                break
        return super()._maybe_symbolic_build(data_batch=data_batch)

    def test_step(self, data):
        x = data[0] if isinstance(data, tuple) and len(data) == 1 else data
        total, values = self.compute_losses(x, training=False)
        return self._record(total, values)
