"""Training mode: the training graph (RPN targets in, five losses out), the Keras model that
trains it (its own train_step and per-loss trackers), layer freezing, the run-folder
callbacks and `train()`, Matterport's MaskRCNN.train.

Importing this module registers the "training" graph builder with mrcnn.model.
"""
import json
import logging
import math
import os
import re
import shutil
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from keras import layers as KL

from mrcnn import boxes as box_coder
from mrcnn import image_cache, weights_io
from mrcnn import losses as L
from mrcnn.config import LOSS_NAMES
from mrcnn.data import MaskRCNNSequence
from mrcnn.heads import build_fpn_mask_graph, fpn_classifier_graph
from mrcnn.layer_sets import LAYER_REGEX, check_matches, layer_regex  # noqa: F401 (LAYER_REGEX: Matterport's name)
from mrcnn.layers import Float32Layer
from mrcnn.model import register_graph_builder
from mrcnn.proposal import ProposalLayer
from mrcnn.targets import DetectionTargetLayer

log = logging.getLogger(__name__)

# Training model outputs, in order (Matterport's, the five losses last).
TRAINING_OUTPUTS = ("rpn_class_logits", "rpn_class", "rpn_bbox", "mrcnn_class_logits", "mrcnn_class",
                    "mrcnn_bbox", "mrcnn_mask", "rpn_rois", "output_rois") + LOSS_NAMES
HISTORY_CSV = "history.csv"
DEFAULT_WORKERS = 2


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss and was stopped."""


############################################################
#  Graph
############################################################

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
        rois, feature_maps, image_meta, config.POOL_SIZE, config.NUM_CLASSES, train_bn=config.TRAIN_BN,
        fc_layers_size=config.FPN_CLASSIF_FC_LAYERS_SIZE)
    # DetectionTargetLayer puts the positive ROIs first and caps them at this count; the mask
    # loss only reads positives, so the mask head runs on these leading ROIs alone (the same
    # loss and gradients as running it on every sampled ROI, for a third of the work).
    positive_slots = positive_roi_slots(config)
    mask_rois = LeadingRois(positive_slots, name="mask_rois")(rois)
    mask_class_ids = LeadingRois(positive_slots, name="mask_target_class_ids")(target_class_ids)
    mask_targets = LeadingRois(positive_slots, name="mask_targets")(target_mask)
    # mrcnn_mask: probabilities (the model's output); mask_logits: the same layer's logits, for the loss
    mrcnn_mask, mask_logits = build_fpn_mask_graph(mask_rois, feature_maps, image_meta, config.MASK_POOL_SIZE,
                                                   config.NUM_CLASSES, train_bn=config.TRAIN_BN, return_logits=True,
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


register_graph_builder("training", build_training_graph)


############################################################
#  Distribution and layer selection
############################################################

_STRATEGIES = {}


def cluster_workers():
    """(number of workers, this worker's index) from TF_CONFIG, or None when it is unset.

    TF_CONFIG is TensorFlow's JSON cluster description, e.g.
    {"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}};
    worker 0 is the chief (a separate "chief" task, when listed, is index 0 and the workers follow).
    """
    text = os.environ.get("TF_CONFIG")
    if not text:
        return None
    try:
        spec = json.loads(text)
        cluster, task = spec["cluster"], spec["task"]
        chiefs = list(cluster.get("chief", []))
        workers = list(cluster.get("worker", []))
        kind, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"TF_CONFIG is not a valid cluster description ({type(e).__name__}: {e}); expected "
                         '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": N}}')
    if kind not in ("chief", "worker") or not 0 <= index < len(cluster.get(kind, [])):
        raise ValueError(f"TF_CONFIG task {kind!r} {index} is not in its cluster {cluster}")
    return len(chiefs) + len(workers), index + (len(chiefs) if kind == "worker" else 0)


def is_chief():
    """True unless TF_CONFIG makes this process a worker other than the chief."""
    workers = cluster_workers()
    return workers is None or workers[1] == 0


def global_batch_size(config):
    """Images per training step over all replicas: IMAGES_PER_GPU x GPU_COUNT x workers."""
    workers = cluster_workers()
    return config.BATCH_SIZE * (workers[0] if workers else 1)


def distribution_strategy(config):
    """The MirroredStrategy for GPU_COUNT replicas (one per GPU, else one per logical CPU
    device), created once per replica count; with TF_CONFIG set, the
    MultiWorkerMirroredStrategy over its workers (GPU_COUNT GPUs each, or the CPU)."""
    workers = cluster_workers()
    if workers is not None:
        return _multi_worker_strategy(config, workers[0])
    count = int(config.GPU_COUNT)
    if count not in _STRATEGIES:
        gpus = tf.config.list_logical_devices("GPU")
        cpus = tf.config.list_logical_devices("CPU")
        devices = gpus if len(gpus) >= count else cpus
        if len(devices) < count:
            raise ValueError(f"Config.GPU_COUNT={count} but only {len(gpus)} GPU(s) and {len(cpus)} logical CPU "
                             "device(s) are visible; lower GPU_COUNT or configure logical devices")
        _STRATEGIES[count] = tf.distribute.MirroredStrategy([d.name for d in devices[:count]])
    return _STRATEGIES[count]


def _multi_worker_strategy(config, num_workers):
    if "multi_worker" not in _STRATEGIES:
        _STRATEGIES["multi_worker"] = tf.distribute.MultiWorkerMirroredStrategy()
    strategy = _STRATEGIES["multi_worker"]
    expected = int(config.GPU_COUNT) * num_workers
    if strategy.num_replicas_in_sync != expected:
        raise ValueError(f"TF_CONFIG lists {num_workers} workers and Config.GPU_COUNT={config.GPU_COUNT}, so "
                         f"{expected} replicas were expected, but TensorFlow found "
                         f"{strategy.num_replicas_in_sync}: set GPU_COUNT to the GPUs each worker sees "
                         "(1 on CPU), or limit them with CUDA_VISIBLE_DEVICES")
    return strategy


def set_trainable(keras_model, regex, verbose=0, _indent=0):
    """Make the layers whose name fully matches `regex` trainable and freeze the others,
    looking inside nested models and TimeDistributed wrappers. Layers without weights are
    left alone. Returns the names of the trainable layers."""
    trainable = []
    if _indent == 0:
        log.info("Selecting layers to train (regex %s)", regex)
    for layer in keras_model.layers:
        if isinstance(layer, keras.Model):
            trainable += set_trainable(layer, regex, verbose, _indent + 4)
            continue
        if not layer.weights:
            continue
        on = bool(re.fullmatch(regex, layer.name))
        layer.trainable = on
        if isinstance(layer, KL.TimeDistributed):
            layer.layer.trainable = on
        if on:
            trainable.append(layer.name)
            if verbose:
                log.info("%s%-20s (%s)", " " * _indent, layer.name, type(layer).__name__)
    return trainable


############################################################
#  Callbacks
############################################################

class NonFiniteGuard(keras.callbacks.Callback):
    """Stops training at the first batch whose loss (or any of the five) is NaN or infinite,
    and remembers where, so no checkpoint is written for that epoch."""

    def __init__(self):
        super().__init__()
        self.failure = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        for name, value in (logs or {}).items():
            value = float(value)
            if not math.isfinite(value):
                self.failure = (self._epoch + 1, batch + 1, name, value)
                self.model.stop_training = True
                return


class WallClockLimit(keras.callbacks.Callback):
    """Stops training after the first batch that ends past `deadline` (a time.monotonic()
    value). Keras still ends that (shortened) epoch, so its checkpoint is written: a time
    budget never loses the work done."""

    def __init__(self, deadline):
        super().__init__()
        self.deadline = float(deadline)

    def on_train_batch_end(self, batch, logs=None):
        if time.monotonic() >= self.deadline:
            log.info("Time budget used: stopping after batch %d", batch + 1)
            self.model.stop_training = True


class EpochCheckpoint(keras.callbacks.Callback):
    """After each finished epoch: the weights in the Keras-2 layout at
    checkpoint_path.format(epoch=epoch + 1), written atomically, unless a loss went bad."""

    def __init__(self, checkpoint_path, guard, write=True):
        super().__init__()
        self.checkpoint_path = checkpoint_path
        self.guard = guard
        self.write = write  # False on multi-worker workers other than the chief
        self.last_saved = None

    def on_epoch_end(self, epoch, logs=None):
        bad = [k for k, v in (logs or {}).items() if not math.isfinite(float(v))]
        if self.guard.failure is not None or bad:
            if self.guard.failure is None:
                self.guard.failure = (epoch + 1, None, bad[0], float(logs[bad[0]]))
            self.model.stop_training = True
            return
        if not self.write:
            return
        path = self.checkpoint_path.format(epoch=epoch + 1)
        weights_io.save_weights_h5(self.model, path)
        self.last_saved = path


class CountingCSVLogger(keras.callbacks.CSVLogger):
    """CSVLogger that skips epochs whose losses are not finite (they get no checkpoint)."""

    def __init__(self, filename, guard, **kwargs):
        super().__init__(filename, **kwargs)
        self.guard = guard

    def on_epoch_end(self, epoch, logs=None):
        if self.guard.failure is None and all(math.isfinite(float(v)) for v in (logs or {}).values()):
            super().on_epoch_end(epoch, logs)


############################################################
#  Data feeds
############################################################

class TrainingFeed(MaskRCNNSequence):
    """MaskRCNNSequence with a fixed number of batches per Keras epoch (STEPS_PER_EPOCH or
    VALIDATION_STEPS); batch indices past the dataset wrap around its epoch order."""

    def __init__(self, *args, steps=1, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps = int(steps)

    @property
    def num_batches(self):
        return self.steps

    def __len__(self):
        return self.steps

    def __getitem__(self, index):
        # gt_masks as uint8: Keras reduces a first distributed batch with a MEAN, which bool cannot take.
        (inputs,) = super().__getitem__(index)
        return (inputs[:-1] + (inputs[-1].view(np.uint8),),)


def make_feeds(model, train_dataset, val_dataset, augmentation=None, workers=None, use_multiprocessing=False):
    """(train feed, validation feed). Validation is not augmented and visits images in order."""
    config = model.config
    workers = DEFAULT_WORKERS if workers is None else int(workers)
    # Under TF_CONFIG every worker builds the same global batch (batches are a pure function of
    # seed, epoch and index) and tf.distribute hands each replica its slice.
    batch = global_batch_size(config)
    train_feed = TrainingFeed(train_dataset, config, shuffle=True, augmentation=augmentation, batch_size=batch,
                              steps=config.STEPS_PER_EPOCH, workers=workers, use_multiprocessing=use_multiprocessing)
    train_feed.set_epoch(model.epoch)
    val_feed = TrainingFeed(val_dataset, config, shuffle=False, batch_size=batch, steps=config.VALIDATION_STEPS,
                            workers=workers, use_multiprocessing=use_multiprocessing)
    return train_feed, val_feed


############################################################
#  train()
############################################################

def synchronize_batch_norm(keras_model):
    """Make every BatchNormalization layer (nested models and TimeDistributed included) take
    its training statistics over the global batch (Keras' `synchronized`, read when train_step
    is traced). With TRAIN_BN each replica then updates the moving averages alike, so all
    workers keep identical weights. Frozen BatchNorm (TRAIN_BN False) is unaffected."""
    for layer in keras_model.layers:
        if isinstance(layer, keras.Model):
            synchronize_batch_norm(layer)
            continue
        inner = layer.layer if isinstance(layer, KL.TimeDistributed) else layer
        if isinstance(inner, KL.BatchNormalization):
            inner.synchronized = True


def compile_model(model, learning_rate, layers):
    """Freeze per `layers`, then compile with SGD(momentum, clipnorm); mixed_float16 adds
    dynamic loss scaling. Recompiling retraces train_step for the new trainable set; a stage
    that trains the same layers as the compiled one (a learning-rate drop) only sets the new
    rate on the same optimizer, so its momentum carries over and nothing is retraced."""
    config = model.config
    keras_model = model.keras_model
    trainable = tuple(set_trainable(keras_model, layer_regex(layers)))
    if getattr(keras_model, "compiled_trainable", None) == trainable and keras_model.optimizer is not None:
        keras_model.optimizer.learning_rate.assign(learning_rate)
        return keras_model
    if keras_model.distribute_strategy.num_replicas_in_sync > 1:
        synchronize_batch_norm(keras_model)
    with keras_model.distribute_strategy.scope():
        clip = config.GRADIENT_CLIP_NORM
        optimizer = keras.optimizers.SGD(learning_rate=learning_rate, momentum=config.LEARNING_MOMENTUM,
                                         clipnorm=float(clip) if clip else None)
        if config.MIXED_PRECISION == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        keras_model.compile(optimizer=optimizer, jit_compile=False)
    keras_model.compiled_trainable = trainable
    return keras_model


def train(model, train_dataset, val_dataset, learning_rate, epochs, layers, augmentation=None,
          custom_callbacks=None, no_augmentation_sources=None, workers=None, use_multiprocessing=False,
          verbose=None):
    """Train `model` (a MaskRCNN in training mode) from model.epoch up to `epochs`.

    layers: heads, 3+, 4+, 5+, all, or a regex of layer names to train.
    augmentation: an albumentations transform or imgaug augmenter (None: none).
    workers: data-loading threads (or processes with use_multiprocessing); default 2.
    Writes into model.log_dir: config.json, mask_rcnn_<name>_<epoch:04d>.h5 after every
    epoch (atomic, Keras-2 layout), TensorBoard events and history.csv. With TF_CONFIG set
    (MultiWorkerMirroredStrategy) each step trains on IMAGES_PER_GPU x GPU_COUNT x workers
    images and only the chief (worker 0) writes into log_dir. Raises
    NonFiniteLossError when a loss becomes NaN or infinite (earlier checkpoints stay).
    verbose: Keras' fit verbosity; default a progress bar on a terminal, one line per epoch otherwise.
    Returns the Keras History.
    """
    if no_augmentation_sources:
        raise NotImplementedError("no_augmentation_sources is not supported; pass augmentation=None")
    config = model.config
    check_matches(model.keras_model, layers)  # a typo ('head') fails here, before anything is written
    if model.epoch >= epochs:
        log.info("Already at epoch %d >= %d: nothing to train", model.epoch, epochs)
        return None
    train_feed, val_feed = make_feeds(model, train_dataset, val_dataset, augmentation, workers,
                                      use_multiprocessing)
    # Everything that can refuse the request runs before the run folder exists.
    keras_model = compile_model(model, learning_rate, layers)
    chief = is_chief()
    new_run = model.open_log_dir() if chief else False
    guard = NonFiniteGuard()
    checkpoint = EpochCheckpoint(model.checkpoint_path, guard, write=chief)
    callbacks = [guard, checkpoint]
    if chief:  # under TF_CONFIG the other workers write nothing into the run folder
        callbacks += [CountingCSVLogger(os.path.join(model.log_dir, HISTORY_CSV), guard, append=True),
                      keras.callbacks.TensorBoard(log_dir=model.log_dir, histogram_freq=0, write_graph=False)]
    else:
        log.info("Worker %d of %d: training without writing (the chief writes the run folder)",
                 *reversed(cluster_workers()))
    callbacks += list(custom_callbacks or [])

    log.info("Starting at epoch %d, LR=%s; checkpoints: %s", model.epoch, learning_rate, model.checkpoint_path)
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    try:
        history = keras_model.fit(train_feed, initial_epoch=model.epoch, epochs=epochs,
                                  steps_per_epoch=config.STEPS_PER_EPOCH, callbacks=callbacks,
                                  validation_data=val_feed, validation_steps=config.VALIDATION_STEPS,
                                  verbose=verbose)
    except BaseException:
        if new_run and checkpoint.last_saved is None:
            _remove_empty_run(model)
        raise
    stats = train_feed.stats()
    log.info("Training data: %d images without instances served, %d skipped, %d failed to load, %d truncated",
             stats["empty_served"], stats["empty_skipped"], stats["failed"], stats["truncated"])
    model.train_stats = stats
    cache = image_cache.STATS
    log.info("Image cache (%s), this process so far: %d entries read, %d written, %d rebuilt, %d images not cacheable",
             image_cache.cache_dir() if config.IMAGE_CACHE else "off", cache["hits"], cache["writes"],
             cache["rebuilt"], cache["uncached"])
    if guard.failure is not None:
        epoch, batch, name, value = guard.failure
        where = f"epoch {epoch}" + (f", batch {batch}" if batch else "")
        kept = checkpoint.last_saved or _last_checkpoint_or_none(model)
        raise NonFiniteLossError(f"training stopped: {name} became {value} at {where}; last good checkpoint: "
                                 f"{kept or 'none'} (lower the learning rate or check the data)")
    # A callback (time budget) may stop before `epochs`: continue from the last epoch run.
    model.epoch = max(model.epoch, history.epoch[-1] + 1 if history.epoch else model.epoch)
    return history


def _remove_empty_run(model):
    """A run that failed before its first checkpoint leaves no folder that `--weights last`
    would have to pass over (the folder was created by this training, so all of it is ours)."""
    log.info("Removing %s: training stopped before its first checkpoint", model.log_dir)
    shutil.rmtree(model.log_dir, ignore_errors=True)
    model._resuming_run = False


def _last_checkpoint_or_none(model):
    try:
        return model.find_last()
    except FileNotFoundError:
        return None
