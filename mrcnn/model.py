"""The MaskRCNN class: Matterport's public API around a Keras 3 functional model.

`build()` assembles the trunk shared by every mode (inputs, backbone, FPN, RPN) and adds the
mode's heads: the inference graph below, or mrcnn.modeling.training_graph for training
(imported only then). The training loop (mrcnn.engine) is imported only by `train()`, so
building an inference model imports neither it nor albumentations.
"""
import contextlib
import datetime
import logging
import os

import keras
import numpy as np
import tensorflow as tf
from keras import layers as KL

from mrcnn.data import molding
from mrcnn.io import run_dirs
from mrcnn.modeling.anchors import AnchorCache
from mrcnn.modeling.backbone import build_backbone
from mrcnn.modeling.detection import BestProposalLayer, DetectionLayer
from mrcnn.modeling.fpn import fpn_graph
from mrcnn.modeling.heads import build_fpn_mask_graph, fpn_classifier_graph
from mrcnn.modeling.layers import Float32Layer, NormSpec
from mrcnn.modeling.proposal import ProposalLayer
from mrcnn.modeling.rpn import build_rpn_model, rpn_outputs

log = logging.getLogger(__name__)

MODES = ("inference", "training")

# Inference model outputs, in order (Matterport's seven, then class_probs and best_proposal_logits).
INFERENCE_OUTPUTS = ("detections", "mrcnn_class", "mrcnn_bbox", "mrcnn_mask", "rpn_rois", "rpn_class",
                     "rpn_bbox", "class_probs", "best_proposal_logits")
# What _predict returns, in order (the outputs detect() needs).
PREDICT_OUTPUTS = ("detections", "mrcnn_mask", "class_probs", "best_proposal_logits")

class DetectionBoxes(Float32Layer):
    """[batch, n, (y1, x1, y2, x2, class_id, score)] -> [batch, n, (y1, x1, y2, x2)]."""

    def call(self, inputs):
        return inputs[..., :4]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (4,)


def build_inference_graph(model, config, trunk):
    """Proposals -> classifier -> detections -> masks on the detection boxes."""
    input_anchors = KL.Input(shape=[None, 4], name="input_anchors")
    rpn_rois = ProposalLayer(proposal_count=config.POST_NMS_ROIS_INFERENCE, nms_threshold=config.RPN_NMS_THRESHOLD,
                             config=config, name="ROI")([trunk["rpn_class"], trunk["rpn_bbox"], input_anchors])

    image_meta = trunk["input_image_meta"]
    feature_maps = trunk["mrcnn_feature_maps"]
    mrcnn_class_logits, mrcnn_class, mrcnn_bbox = fpn_classifier_graph(
        rpn_rois, feature_maps, image_meta, config.POOL_SIZE, config.NUM_CLASSES, train_bn=NormSpec.of(config),
        fc_layers_size=config.FPN_CLASSIF_FC_LAYERS_SIZE, box_convs=config.BOX_HEAD_CONVS,
        conv_channels=config.TOP_DOWN_PYRAMID_SIZE)

    # [batch, DETECTION_MAX_INSTANCES, (y1, x1, y2, x2, class_id, score)] normalised
    detections, class_probs = DetectionLayer(config, name="mrcnn_detection")(
        [rpn_rois, mrcnn_class, mrcnn_bbox, image_meta])
    # [batch, NUM_CLASSES]: the logits of each image's most confident proposal, detected or not
    best_proposal_logits = BestProposalLayer(name="best_proposal")([rpn_rois, mrcnn_class_logits])
    detection_boxes = DetectionBoxes(name="detection_boxes")(detections)
    mrcnn_mask = build_fpn_mask_graph(detection_boxes, feature_maps, image_meta, config.MASK_POOL_SIZE,
                                      config.NUM_CLASSES, train_bn=NormSpec.of(config),
                                      channels=config.MASK_HEAD_CHANNELS)

    inputs = [trunk["input_image"], image_meta, input_anchors]
    outputs = [detections, mrcnn_class, mrcnn_bbox, mrcnn_mask, rpn_rois, trunk["rpn_class"], trunk["rpn_bbox"],
               class_probs, best_proposal_logits]
    return keras.Model(inputs, outputs, name="mask_rcnn")


@contextlib.contextmanager
def _precision_policy(policy):
    """Build layers under Config.MIXED_PRECISION (None: float32); the global policy is
    restored afterwards, since layers keep the policy they were built with."""
    if not policy:
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _distribution_scope(mode, config):
    """Training with GPU_COUNT > 1 or with TF_CONFIG set builds its variables under a
    tf.distribute strategy (mrcnn.engine.distribute); everything else builds without one."""
    if mode == "training" and (config.GPU_COUNT > 1 or os.environ.get("TF_CONFIG")):
        from mrcnn.engine.distribute import distribution_strategy
        return distribution_strategy(config).scope()
    return contextlib.nullcontext()


class MaskRCNN:
    """Mask R-CNN with Matterport's interface. The Keras model is in `keras_model`."""

    def __init__(self, mode, config, model_dir):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.config = config
        self.model_dir = model_dir
        self._anchor_cache = AnchorCache(config)
        self._predict_fns = {}  # "static" / "dynamic" image-size signature -> tf.function
        self.set_log_dir()
        if mode == "training" and config.DETERMINISTIC:
            from mrcnn.engine import determinism
            determinism.enable(config.SEED)  # before the build: the initial weights come from the seed
        self.keras_model = self.build(mode=mode, config=config)

    # --- Graph ---------------------------------------------------------------------------
    def build_trunk(self, config):
        """Inputs, backbone, FPN and RPN: the part every mode shares. Returns a dict of tensors:
        input_image, input_image_meta, rpn_feature_maps, mrcnn_feature_maps, rpn_class_logits,
        rpn_class, rpn_bbox, and the nested `rpn` model."""
        h, w = config.IMAGE_SHAPE[:2]
        if h / 2 ** 6 != int(h / 2 ** 6) or w / 2 ** 6 != int(w / 2 ** 6):
            raise ValueError("Image size must be dividable by 2 at least 6 times (use 256, 320, 384, 448, 512, ...)")
        input_image = KL.Input(shape=[None, None, int(config.IMAGE_SHAPE[2])], name="input_image")
        input_image_meta = KL.Input(shape=[config.IMAGE_META_SIZE], name="input_image_meta")

        c2, c3, c4, c5 = build_backbone(input_image, config)
        rpn_feature_maps, mrcnn_feature_maps = fpn_graph(c2, c3, c4, c5, config.TOP_DOWN_PYRAMID_SIZE,
                                                         norm=NormSpec.of(config))

        rpn = build_rpn_model(config.RPN_ANCHOR_STRIDE, len(config.RPN_ANCHOR_RATIOS), config.TOP_DOWN_PYRAMID_SIZE,
                              channels=config.RPN_CONV_CHANNELS)
        rpn_class_logits, rpn_class, rpn_bbox = rpn_outputs(rpn, rpn_feature_maps)
        return {"input_image": input_image, "input_image_meta": input_image_meta,
                "rpn_feature_maps": rpn_feature_maps, "mrcnn_feature_maps": mrcnn_feature_maps,
                "rpn_class_logits": rpn_class_logits, "rpn_class": rpn_class, "rpn_bbox": rpn_bbox, "rpn": rpn}

    def build(self, mode, config):
        """Build the Keras model for `mode`: the shared trunk, then the mode's heads."""
        if mode == "training":
            from mrcnn.modeling.training_graph import build_training_graph as build_heads
        else:
            build_heads = build_inference_graph
        with _precision_policy(config.MIXED_PRECISION), _distribution_scope(mode, config):
            trunk = self.build_trunk(config)
            return build_heads(self, config, trunk)

    # --- Logs and checkpoints --------------------------------------------------------------
    def _name_key(self):
        return (self.config.NAME or "mrcnn").lower()

    def set_log_dir(self, model_path=None):
        """Set log_dir, checkpoint_path and epoch. A checkpoint of this model's NAME inside one
        of its run folders (`.../<name>YYYYmmddTHHMMSS/mask_rcnn_<name>_0007.h5`) resumes that
        folder after its epoch; anything else starts a new run, whose folder (named when
        training starts, see `open_log_dir`) is never one that exists already."""
        self.epoch = 0
        resumed = run_dirs.checkpoint_run(model_path, self._name_key()) if model_path else None
        if resumed:
            folder, self.epoch = resumed  # the file's epoch is done; training continues after it
            self.log_dir = str(folder)
            log.info("Re-starting from epoch %d", self.epoch)
        else:
            stamp = datetime.datetime.now().strftime(run_dirs.STAMP_FORMAT)
            self.log_dir = os.path.join(self.model_dir, self._name_key() + stamp)
        self._resuming_run = bool(resumed)
        self.checkpoint_path = os.path.join(self.log_dir, "mask_rcnn_{}_{{epoch:04d}}.h5".format(self._name_key()))

    def open_log_dir(self):
        """Called when training starts: a resumed run keeps its folder and its config.json; a new
        run claims a fresh folder (a suffix when the time stamp is taken) and writes config.json
        there. Returns True when the folder was created by this call."""
        if getattr(self, "_resuming_run", False) and os.path.isdir(self.log_dir):
            saved = os.path.join(self.log_dir, "config.json")
            if not os.path.exists(saved):
                self.config.save(saved)
            return False
        folder = run_dirs.claim_run_dir(self.model_dir, self._name_key())
        self.log_dir = str(folder)
        self.checkpoint_path = os.path.join(self.log_dir, "mask_rcnn_{}_{{epoch:04d}}.h5".format(self._name_key()))
        self.config.save(os.path.join(self.log_dir, "config.json"))
        self._resuming_run = True  # later stages of this training continue in the folder
        return True

    def find_last(self):
        """Path of the newest checkpoint of this config's NAME under model_dir (newest run folder
        that holds one). Raises FileNotFoundError when there is none."""
        return str(run_dirs.find_last(self.model_dir, self._name_key()))

    def load_weights(self, filepath, by_name=True, exclude=None):
        """Load a Keras-2-layout .h5 (Matterport's files and our checkpoints), by layer name;
        `exclude` lists layer names to skip (e.g. the heads for another class count).
        Returns mrcnn.io.weights_h5's load report."""
        from mrcnn.io import weights_h5
        report = weights_h5.load_weights_h5(self.keras_model, filepath, by_name=by_name, exclude=exclude)
        self.set_log_dir(filepath)
        return report

    def save_weights(self, filepath):
        """Write the weights in the Keras-2 layout (atomically)."""
        from mrcnn.io import weights_h5
        weights_h5.save_weights_h5(self.keras_model, filepath)

    def get_imagenet_weights(self):
        """Download (once) and return the path of the ImageNet ResNet-50 weights (Keras-2 names
        conv1, bn_conv1, res2a_branch2a, ... that load by name into this backbone)."""
        from mrcnn.io import download
        return str(download.imagenet_resnet50_weights_path())

    # --- Inference -------------------------------------------------------------------------
    def get_anchors(self, image_shape):
        """Normalised anchors [num_anchors, (y1, x1, y2, x2)] for an image shape (cached).
        As in Matterport, `self.anchors` keeps the same anchors in pixels."""
        self.anchors = self._anchor_cache.get_pixels(image_shape)
        return self._anchor_cache.get(image_shape)

    def train(self, train_dataset, val_dataset, learning_rate, epochs, layers, augmentation=None, **kwargs):
        """Matterport's train(); implemented in mrcnn.engine.trainer (needs mode='training')."""
        if self.mode != "training":
            raise ValueError("train() needs a model built with mode='training'")
        from mrcnn.engine import trainer
        return trainer.train(self, train_dataset, val_dataset, learning_rate=learning_rate, epochs=epochs,
                             layers=layers, augmentation=augmentation, **kwargs)

    def mold_inputs(self, images):
        """Matterport's MaskRCNN.mold_inputs: (molded_images, image_metas, windows)."""
        return molding.mold_inputs(images, self.config)

    def unmold_detections(self, detections, mrcnn_mask, original_image_shape, image_shape, window):
        """Matterport's MaskRCNN.unmold_detections: (boxes, class_ids, scores, masks)."""
        return molding.unmold_detections(detections, mrcnn_mask, original_image_shape, image_shape, window)

    def _predict(self, molded_images, image_metas, anchors):
        """Run the model through a tf.function with a fixed input signature (no retracing).

        Images of the configured IMAGE_SHAPE (every image in "square" mode) use a signature
        with static sizes, which lets grappler plan the whole graph; other sizes ("pad64",
        "none", detect_molded) share a second one with unknown height and width.
        Returns numpy (detections, mrcnn_mask, class_probs, best_proposal_logits).
        """
        cfg = self.config
        static = tuple(molded_images.shape[1:]) == tuple(int(v) for v in cfg.IMAGE_SHAPE)
        key = "static" if static else "dynamic"
        if key not in self._predict_fns:
            if static:
                h, w, c = (int(v) for v in cfg.IMAGE_SHAPE)
                image_spec = tf.TensorSpec([cfg.BATCH_SIZE, h, w, c], tf.float32)
                anchor_spec = tf.TensorSpec([cfg.BATCH_SIZE, anchors.shape[1], 4], tf.float32)
            else:
                image_spec = tf.TensorSpec([cfg.BATCH_SIZE, None, None, int(cfg.IMAGE_SHAPE[2])], tf.float32)
                anchor_spec = tf.TensorSpec([cfg.BATCH_SIZE, None, 4], tf.float32)
            signature = [image_spec, tf.TensorSpec([cfg.BATCH_SIZE, cfg.IMAGE_META_SIZE], tf.float32), anchor_spec]
            run = self._survivor_masks_fn() if cfg.DETECT_MASKS_ON_SURVIVORS else self._plain_fn()
            self._predict_fns[key] = tf.function(run, input_signature=signature)
        outputs = self._predict_fns[key](tf.constant(molded_images, tf.float32),
                                         tf.constant(image_metas, tf.float32), tf.constant(anchors, tf.float32))
        return [o.numpy() for o in outputs]

    def _plain_fn(self):
        """(images, metas, anchors) -> (detections, mrcnn_mask, class_probs, best_proposal_logits)
        through keras_model: the mask head runs on all DETECTION_MAX_INSTANCES slots, padding included."""
        model = self.keras_model
        wanted = [INFERENCE_OUTPUTS.index(n) for n in PREDICT_OUTPUTS]

        def predict(images, metas, anchors):
            outputs = model([images, metas, anchors], training=False)
            return tuple(tf.cast(outputs[i], tf.float32) for i in wanted)

        return predict

    def _survivor_masks_fn(self):
        """Like `_plain_fn`, but the mask head runs only on the first `count` detection slots,
        count = the largest number of detections of an image in the batch (at least 1); the
        masks are zero-padded back to DETECTION_MAX_INSTANCES slots. Detections are sorted by
        score and zero-padded at the end, so every real detection keeps its mask. Two Keras
        models share keras_model's layers (and weights): everything up to the detections, and
        the mask head from detection boxes + feature maps."""
        model = self.keras_model
        detections, class_probs = model.get_layer("mrcnn_detection").output
        best_proposal_logits = model.get_layer("best_proposal").output
        roi_align_inputs = model.get_layer("roi_align_mask").input
        boxes, image_meta, feature_maps = roi_align_inputs[0], roi_align_inputs[1], list(roi_align_inputs[2:])
        front = keras.Model(model.inputs, [detections, class_probs, best_proposal_logits] + feature_maps,
                            name="mask_rcnn_detections")
        mask_head = keras.Model([boxes, image_meta] + feature_maps, model.get_layer("mrcnn_mask").output,
                                name="mask_rcnn_mask_head")
        max_instances = int(self.config.DETECTION_MAX_INSTANCES)

        def predict(images, metas, anchors):
            # detections [batch, max_instances, (y1, x1, y2, x2, class_id, score)], zero rows last
            detections_, class_probs_, best_, *maps = front([images, metas, anchors], training=False)
            per_image = tf.reduce_sum(tf.cast(detections_[..., 4] > 0, tf.int32), axis=1)  # [batch]
            count = tf.maximum(tf.reduce_max(per_image), 1)
            # [batch, count, mask_h, mask_w, num_classes]
            masks = mask_head([detections_[:, :count, :4], metas] + maps, training=False)
            masks = tf.pad(tf.cast(masks, tf.float32), [[0, 0], [0, max_instances - count], [0, 0], [0, 0], [0, 0]])
            return (tf.cast(detections_, tf.float32), masks, tf.cast(class_probs_, tf.float32),
                    tf.cast(best_, tf.float32))

        return predict

    def detect_molded(self, molded_images, image_metas, verbose=0):
        """Detect on images already molded (and of one shape), as Matterport's detect_molded.
        Results are in the molded images' frame (window = the whole molded image)."""
        if self.mode != "inference":
            raise ValueError("detect_molded() needs a model built with mode='inference'")
        molded_images = np.asarray(molded_images, np.float32)
        image_metas = np.asarray(image_metas, np.float32)
        if molded_images.ndim != 4 or len(molded_images) != len(image_metas):
            raise ValueError("detect_molded() takes molded_images [N, H, W, C] and image_metas [N, meta size]")
        results = [None] * len(molded_images)
        batch = self.config.BATCH_SIZE
        for start in range(0, len(molded_images), batch):
            members = [(i, molded_images[i], image_metas[i], (0, 0) + molded_images[i].shape[:2])
                       for i in range(start, min(start + batch, len(molded_images)))]
            self._detect_batch([m.shape for m in molded_images], members, results, verbose)
        return results

    def detect(self, images, verbose=0):
        """Run detection on a list of images (HxWxC, any sizes, any count).

        Returns one dict per image: rois [N, (y1, x1, y2, x2)] int32 pixels of the original image,
        class_ids [N] int32, scores [N] float32, masks [H, W, N] bool, class_probs [N, NUM_CLASSES]
        float32 (the softmax of the ROI each detection came from), and best_proposal_logits
        [NUM_CLASSES] float32: the classifier logits of the image's most confident proposal even
        when no detection survives (zeros when there is no proposal), Task 3's fallback.
        """
        if self.mode != "inference":
            raise ValueError("detect() needs a model built with mode='inference'")
        images = _check_images(images, int(self.config.IMAGE_SHAPE[2]))
        if verbose:
            log.info("Processing %d images", len(images))
        batch = self.config.BATCH_SIZE
        results = [None] * len(images)
        for start in range(0, len(images), batch):
            chunk = list(range(start, min(start + batch, len(images))))
            # Mold one by one: resize modes other than "square" can give different shapes,
            # and each shape runs as its own batch.
            groups = {}
            for i in chunk:
                molded, metas, windows = self.mold_inputs([images[i]])
                groups.setdefault(molded.shape[1:], []).append((i, molded[0], metas[0], windows[0]))
            for members in groups.values():
                self._detect_batch(images, members, results, verbose)
        return results

    def _detect_batch(self, images, members, results, verbose):
        """members: up to BATCH_SIZE (index, molded image, meta, window) of one molded shape;
        images[index] is the original image (or its shape)."""
        batch = self.config.BATCH_SIZE
        padded = members + [members[-1]] * (batch - len(members))  # repeat the last image
        molded = np.stack([m[1] for m in padded])
        metas = np.stack([m[2] for m in padded])
        anchors = self.get_anchors(molded.shape[1:])
        anchors = np.broadcast_to(anchors, (batch,) + anchors.shape)
        if verbose:
            log.info("molded_images %s, image_metas %s, anchors %s", molded.shape, metas.shape, anchors.shape)
        detections, mrcnn_mask, class_probs, best_proposal_logits = self._predict(molded, metas, anchors)
        for k, (i, image_molded, _meta, window) in enumerate(members):
            rois, class_ids, scores, masks, probs = molding.unmold_detections(
                detections[k], mrcnn_mask[k], _shape(images[i]), image_molded.shape, window,
                class_probs=class_probs[k])
            results[i] = {"rois": rois, "class_ids": class_ids, "scores": scores, "masks": masks,
                          "class_probs": probs, "best_proposal_logits": best_proposal_logits[k]}


def _shape(image_or_shape):
    return image_or_shape if isinstance(image_or_shape, tuple) else image_or_shape.shape


def _check_images(images, channels):
    """A list of HxWxC arrays, or a clear ValueError."""
    if isinstance(images, np.ndarray) and images.ndim == 3:
        raise ValueError("detect() takes a list of images; wrap a single image as [image]")
    images = list(images)
    if not images:
        raise ValueError("detect() got no images")
    for i, image in enumerate(images):
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != channels:
            raise ValueError(f"image {i} has shape {image.shape}; expected (height, width, {channels}) "
                             "(Config.IMAGE_CHANNEL_COUNT)")
        images[i] = image
    return images


# Matterport's other `mrcnn.model` names, each defined in the module of its stage and
# imported on first use: the training-side ones (targets, losses, the feed) load only when
# asked for, so `import mrcnn.model` stays free of the training code.
MATTERPORT_NAMES = {
    "BatchNorm": "mrcnn.modeling.layers", "batch_slice": "mrcnn.modeling.layers",
    "apply_box_deltas_graph": "mrcnn.modeling.layers", "clip_boxes_graph": "mrcnn.modeling.layers",
    "norm_boxes_graph": "mrcnn.modeling.layers", "denorm_boxes_graph": "mrcnn.modeling.layers",
    "log2_graph": "mrcnn.modeling.layers", "trim_zeros_graph": "mrcnn.modeling.layers",
    "identity_block": "mrcnn.modeling.backbone", "conv_block": "mrcnn.modeling.backbone",
    "resnet_graph": "mrcnn.modeling.backbone", "PyramidROIAlign": "mrcnn.modeling.roi_align",
    "refine_detections_graph": "mrcnn.modeling.detection",
    "detection_targets_graph": "mrcnn.modeling.targets", "DetectionTargetLayer": "mrcnn.modeling.targets",
    "build_rpn_targets": "mrcnn.modeling.targets",
    "smooth_l1_loss": "mrcnn.modeling.losses", "rpn_class_loss_graph": "mrcnn.modeling.losses",
    "rpn_bbox_loss_graph": "mrcnn.modeling.losses", "mrcnn_class_loss_graph": "mrcnn.modeling.losses",
    "mrcnn_bbox_loss_graph": "mrcnn.modeling.losses", "mrcnn_mask_loss_graph": "mrcnn.modeling.losses",
    "load_image_gt": "mrcnn.data.feed",
    "compose_image_meta": "mrcnn.data.molding", "parse_image_meta": "mrcnn.data.molding",
    "parse_image_meta_graph": "mrcnn.data.molding", "mold_image": "mrcnn.data.molding",
    "unmold_image": "mrcnn.data.molding", "mold_inputs": "mrcnn.data.molding",
    "unmold_detections": "mrcnn.data.molding", "compute_backbone_shapes": "mrcnn.data.molding",
}


def __getattr__(name):
    if name in MATTERPORT_NAMES:
        import importlib
        return getattr(importlib.import_module(MATTERPORT_NAMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
