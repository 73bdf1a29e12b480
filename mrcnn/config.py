"""Mask R-CNN configuration with Matterport's attribute names, defaults and derived values.

Subclass `Config` and override class attributes (Matterport's way), or pass keyword
overrides to the constructor. Every run saves its config as JSON so that a checkpoint
always travels with the exact settings that produced it.
"""
import difflib
import json
import logging
import math

import numpy as np

from mrcnn.io import atomic

log = logging.getLogger(__name__)

BACKBONES = ("resnet50", "resnet101", "resnet18")
RESIZE_MODES = ("none", "square", "pad64", "crop")
# Matterport's class-dependent heads: exclude them to load COCO weights for another class count.
HEAD_LAYERS = ("mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask")
LOSS_NAMES = ("rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss", "mrcnn_mask_loss")
MIXED_PRECISION_POLICIES = (None, "mixed_float16", "mixed_bfloat16")
# Config.NORM: Matterport's frozen BatchNorm, BatchNorm in training mode, Group Normalization.
NORMS = ("frozen_bn", "bn", "gn")
# Config.RESIZE_METHOD (mrcnn.data.resize's methods; None: area to train, bilinear to detect).
RESIZE_METHOD_CHOICES = ("area", "bilinear")
# Config.CLASS_BALANCING: how the training feed samples images (mrcnn.data.balancing).
CLASS_BALANCING_CHOICES = ("none", "repeat_factor")

# Attributes that hold numpy arrays in memory and lists in JSON.
_ARRAY_ATTRS = ("MEAN_PIXEL", "RPN_BBOX_STD_DEV", "BBOX_STD_DEV")
# The key of config.json that records where each value came from (Config.save).
VALUE_SOURCES_KEY = "_value_sources"
# Computed in __init__ from the others; never read back from JSON.
_DERIVED_ATTRS = ("BATCH_SIZE", "IMAGE_SHAPE", "IMAGE_META_SIZE")


# Attribute groups checked alike by Config.validate.
_POSITIVE_INTS = ("GPU_COUNT", "IMAGES_PER_GPU", "STEPS_PER_EPOCH", "VALIDATION_STEPS",
                  "FPN_CLASSIF_FC_LAYERS_SIZE", "TOP_DOWN_PYRAMID_SIZE", "RPN_CONV_CHANNELS",
                  "MASK_HEAD_CHANNELS", "RPN_ANCHOR_STRIDE",
                  "RPN_TRAIN_ANCHORS_PER_IMAGE", "PRE_NMS_LIMIT", "POST_NMS_ROIS_TRAINING", "POST_NMS_ROIS_INFERENCE",
                  "IMAGE_MIN_DIM", "IMAGE_MAX_DIM", "IMAGE_CHANNEL_COUNT", "TRAIN_ROIS_PER_IMAGE", "POOL_SIZE",
                  "MASK_POOL_SIZE", "MAX_GT_INSTANCES", "DETECTION_MAX_INSTANCES")
_PROBABILITIES = ("RPN_NMS_THRESHOLD", "DETECTION_NMS_THRESHOLD", "DETECTION_MIN_CONFIDENCE", "ROI_POSITIVE_RATIO",
                  "LEARNING_MOMENTUM")
_BOOLEANS = ("USE_MINI_MASK", "USE_RPN_ROIS", "TRAIN_BN", "KEEP_EMPTY_IMAGES", "DETECT_MASKS_ON_SURVIVORS",
             "IMAGE_CACHE", "PRECISE_BN_EVERY_EPOCH", "DETERMINISTIC")
# The feature pyramid's levels: one backbone stride and one anchor scale each.
_PYRAMID_LEVELS = ("P2", "P3", "P4", "P5", "P6")


class ConfigError(ValueError):
    """An invalid configuration value; the message names the attribute."""


def is_int(value):
    """An integer, and not a bool (True is an int to Python, never a count here)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_number(value):
    """A finite int or float, not a bool and not a string such as '0.5'."""
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
            and math.isfinite(value))


def is_numbers(values, length=None, positive=False):
    """A flat list, tuple or array of numbers (`length` of them, each > 0 when `positive`)."""
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            return False
        values = values.tolist()
    if not isinstance(values, (list, tuple)) or (length is not None and len(values) != length):
        return False
    return all(is_number(v) and (v > 0 or not positive) for v in values)


class Config:
    """Base configuration. Matterport's attribute names and defaults, plus a few extras
    (marked below) that the ISIC tasks need."""

    NAME = None  # Override in sub-classes

    # Devices: GPU_COUNT > 1 trains through tf.distribute.MirroredStrategy.
    GPU_COUNT = 1
    IMAGES_PER_GPU = 2

    STEPS_PER_EPOCH = 1000
    VALIDATION_STEPS = 50

    # "resnet50", "resnet101", or "resnet18" (a light backbone for CPU demos and tests).
    BACKBONE = "resnet101"
    # Only needed for a callable BACKBONE: a function (image_shape) -> feature map shapes.
    COMPUTE_BACKBONE_SHAPE = None
    BACKBONE_STRIDES = [4, 8, 16, 32, 64]

    FPN_CLASSIF_FC_LAYERS_SIZE = 1024
    TOP_DOWN_PYRAMID_SIZE = 256
    # Widths that Matterport hard-codes (the COCO weights need these values): the RPN's shared
    # 3x3 convolution, run on every pyramid level, and the mask head's four 3x3 convolutions and
    # transposed convolution, run on every positive ROI. A model trained from scratch on a CPU
    # can narrow them; they are most of the arithmetic above the backbone.
    RPN_CONV_CHANNELS = 512
    MASK_HEAD_CHANNELS = 256

    NUM_CLASSES = 1  # Override in sub-classes (background + classes)

    RPN_ANCHOR_SCALES = (32, 64, 128, 256, 512)
    RPN_ANCHOR_RATIOS = [0.5, 1, 2]
    RPN_ANCHOR_STRIDE = 1
    RPN_NMS_THRESHOLD = 0.7
    RPN_TRAIN_ANCHORS_PER_IMAGE = 256
    PRE_NMS_LIMIT = 6000
    POST_NMS_ROIS_TRAINING = 2000
    POST_NMS_ROIS_INFERENCE = 1000

    USE_MINI_MASK = True
    MINI_MASK_SHAPE = (56, 56)

    IMAGE_RESIZE_MODE = "square"
    IMAGE_MIN_DIM = 800
    IMAGE_MAX_DIM = 1024
    IMAGE_MIN_SCALE = 0
    IMAGE_CHANNEL_COUNT = 3

    MEAN_PIXEL = np.array([123.7, 116.8, 103.9])

    TRAIN_ROIS_PER_IMAGE = 200
    ROI_POSITIVE_RATIO = 0.33

    POOL_SIZE = 7
    MASK_POOL_SIZE = 14
    MASK_SHAPE = [28, 28]

    MAX_GT_INSTANCES = 100

    RPN_BBOX_STD_DEV = np.array([0.1, 0.1, 0.2, 0.2])
    BBOX_STD_DEV = np.array([0.1, 0.1, 0.2, 0.2])

    DETECTION_MAX_INSTANCES = 100
    DETECTION_MIN_CONFIDENCE = 0.7
    DETECTION_NMS_THRESHOLD = 0.3

    LEARNING_RATE = 0.001
    LEARNING_MOMENTUM = 0.9
    WEIGHT_DECAY = 0.0001

    LOSS_WEIGHTS = {
        "rpn_class_loss": 1.,
        "rpn_bbox_loss": 1.,
        "mrcnn_class_loss": 1.,
        "mrcnn_bbox_loss": 1.,
        "mrcnn_mask_loss": 1.,
    }

    USE_RPN_ROIS = True
    TRAIN_BN = False  # BatchNorm frozen: batches are too small to estimate statistics
    GRADIENT_CLIP_NORM = 5.0

    # --- Extras beyond Matterport ---
    # Keep images without any instance in training as negatives (ISIC Task 2 needs this;
    # Matterport drops them).
    KEEP_EMPTY_IMAGES = False
    # None, "mixed_float16" (GPU) or "mixed_bfloat16" (CPU); losses stay float32.
    MIXED_PRECISION = None
    # Seed for splits, augmentation and synthetic data.
    SEED = 42
    # detect() runs the mask head only on the detection slots that hold a detection (the
    # most any image of the batch has) instead of on all DETECTION_MAX_INSTANCES slots.
    # Same results; False runs keras_model's plain graph (the mask head on every slot).
    DETECT_MASKS_ON_SURVIVORS = True
    # Training and validation feeds store each image and its masks, decoded and resized for
    # the IMAGE_* values above, in an on-disk cache read by later epochs and runs
    # (mrcnn.data.image_cache: $MRCNN_IMAGE_CACHE_DIR, else $MRCNN_CACHE_DIR/images or
    # ~/.cache/isic-mrcnn/images). Never used with IMAGE_RESIZE_MODE "crop". False: decode every time.
    IMAGE_CACHE = True
    # Normalisation layers of the backbone, the FPN and the ROI heads: "frozen_bn" (Matterport's
    # BatchNorm on its moving statistics), "bn" (BatchNorm on batch statistics while training) or
    # "gn" (Group Normalization, GN_GROUPS groups: independent of the batch size, the from-scratch
    # choice of Wu & He 2018). None: "bn" when TRAIN_BN else "frozen_bn", so TRAIN_BN works as before.
    # GN layers keep the BatchNorm layers' names (bn_conv1, mrcnn_mask_bn1, ...) and hold gamma
    # and beta only; with "gn" the FPN convolutions get a GN layer each (fpn_c5p5_norm, ...).
    NORM = None
    # Groups of every GN layer; must divide each normalised width (64, TOP_DOWN_PYRAMID_SIZE,
    # MASK_HEAD_CHANNELS, FPN_CLASSIF_FC_LAYERS_SIZE).
    GN_GROUPS = 32
    # 3x3 convolutions (TOP_DOWN_PYRAMID_SIZE wide, each with the NORM layer) on the 7x7 ROI
    # features before the classifier's two fully connected layers: 0 is Matterport's head, 4 the
    # conv head of MMDetection's and detectron2's from-scratch GN configs.
    BOX_HEAD_CONVS = 0
    # PreciseBN (NORM "bn" only): after training, recompute every trained BatchNorm layer's moving
    # mean and variance as the mean of its per-batch means and variances over this many training
    # batches, unaugmented, no weight changed; the last checkpoint is rewritten with them. 0: off.
    PRECISE_BN_BATCHES = 0
    # Also recompute them at the end of every epoch (before its checkpoint is written).
    PRECISE_BN_EVERY_EPOCH = False
    # Reproducible training: TensorFlow op determinism, Python/NumPy/Keras seeded from SEED, Keras'
    # own batch shuffling off (the feed's order is a function of SEED and epoch). lesions.py --deterministic.
    DETERMINISTIC = False
    # How images are resized, in training and in detect() / the exported graph alike: "area"
    # (pixel-area averaging when shrinking) or "bilinear" (Matterport's). None: the training feed
    # shrinks by "area" and detect() keeps Matterport's "bilinear" (the reference's behaviour).
    RESIZE_METHOD = None
    # Class-balanced sampling of training images (mrcnn.data.balancing): "none" (each image once
    # an epoch, Matterport) or "repeat_factor" (detectron2's RepeatFactorTrainingSampler idea, for
    # LVIS): class c, in a fraction f(c) of the training images, gets r(c) = max(1, sqrt(t / f(c)))
    # with t = REPEAT_FACTOR_THRESHOLD; an image is repeated max over its classes of r(c) times an
    # epoch, rounded stochastically (seeded by SEED and the epoch). Task 3 (HAM10000: NV in 67 %
    # of the images, DF in 1.1 %) is the case it is for.
    CLASS_BALANCING = "none"
    REPEAT_FACTOR_THRESHOLD = 0.5

    def __init__(self, **overrides):
        for key, value in overrides.items():
            if not key.isupper() or not hasattr(self, key):
                raise ConfigError(f"unknown Config attribute {key!r}{self.closest_attribute_hint(key)}")
            setattr(self, key, value)
        self.validate()
        for key in _ARRAY_ATTRS:
            setattr(self, key, np.array(getattr(self, key), dtype=np.float64))
        self._derive()

    @classmethod
    def attribute_names(cls):
        """The upper-case attributes a config can be given (derived ones excluded)."""
        return sorted(k for k in dir(cls) if k.isupper() and not k.startswith("_") and k not in _DERIVED_ATTRS
                      and not callable(getattr(cls, k)))

    @classmethod
    def closest_attribute_hint(cls, key):
        """'; the closest attribute is X' for a mistyped attribute name, or ''."""
        names = cls.attribute_names()
        by_upper = {n.upper(): n for n in names}
        found = difflib.get_close_matches(str(key).upper(), list(by_upper), n=1, cutoff=0.6)
        return f"; the closest attribute is {by_upper[found[0]]}" if found else ""

    def _derive(self):
        """Set the values that follow from the others (Matterport's derived attributes)."""
        self.BATCH_SIZE = self.IMAGES_PER_GPU * self.GPU_COUNT
        channels = self.IMAGE_CHANNEL_COUNT
        if self.IMAGE_RESIZE_MODE == "crop":
            self.IMAGE_SHAPE = np.array([self.IMAGE_MIN_DIM, self.IMAGE_MIN_DIM, channels])
        else:
            self.IMAGE_SHAPE = np.array([self.IMAGE_MAX_DIM, self.IMAGE_MAX_DIM, channels])
        # image_id(1) + original_image_shape(3) + image_shape(3) + window(4) + scale(1) + active_class_ids(NUM_CLASSES)
        self.IMAGE_META_SIZE = 1 + 3 + 3 + 4 + 1 + self.NUM_CLASSES

    def validate(self):
        """Raise ConfigError naming the first invalid attribute. Types are checked before
        ranges, so a string where a number belongs ('abc' from --set or a hand-edited
        config.json) is reported as such, never as a Python error further on."""
        need = self.require
        for attr in _POSITIVE_INTS:
            need(is_int(getattr(self, attr)) and getattr(self, attr) >= 1, attr, "must be an integer >= 1")
        need(is_int(self.NUM_CLASSES) and self.NUM_CLASSES >= 1, "NUM_CLASSES", "must be an integer >= 1 (background counts as one)")
        need(is_int(self.SEED) and 0 <= self.SEED < 2 ** 32, "SEED", "must be an integer in [0, 2**32 - 1]")
        for attr in _PROBABILITIES:
            need(is_number(getattr(self, attr)) and 0 <= getattr(self, attr) <= 1, attr, "must be a number in [0, 1]")
        need(is_number(self.LEARNING_RATE) and self.LEARNING_RATE > 0, "LEARNING_RATE", "must be a number > 0")
        for attr in ("WEIGHT_DECAY", "IMAGE_MIN_SCALE"):
            need(is_number(getattr(self, attr)) and getattr(self, attr) >= 0, attr, "must be a number >= 0")
        need(self.GRADIENT_CLIP_NORM is None or (is_number(self.GRADIENT_CLIP_NORM) and self.GRADIENT_CLIP_NORM > 0),
             "GRADIENT_CLIP_NORM", "must be a number > 0, or null for no clipping")
        for attr in _BOOLEANS:
            need(isinstance(getattr(self, attr), (bool, np.bool_)), attr, "must be true or false")
        need(self.NAME is None or (isinstance(self.NAME, str) and self.NAME.strip() != ""), "NAME",
             "must be a non-empty string")

        need(callable(self.BACKBONE) or self.BACKBONE in BACKBONES, "BACKBONE",
             f"must be one of {', '.join(BACKBONES)} or a callable")
        need(self.COMPUTE_BACKBONE_SHAPE is None or callable(self.COMPUTE_BACKBONE_SHAPE), "COMPUTE_BACKBONE_SHAPE",
             "must be None or a function (image_shape) -> feature map shapes")
        need(self.IMAGE_RESIZE_MODE in RESIZE_MODES, "IMAGE_RESIZE_MODE", f"must be one of {', '.join(RESIZE_MODES)}")
        size_attr = "IMAGE_MIN_DIM" if self.IMAGE_RESIZE_MODE == "crop" else "IMAGE_MAX_DIM"
        need(getattr(self, size_attr) % 64 == 0, size_attr, "must be a multiple of 64 (the FPN downsamples 6 times)")
        if self.IMAGE_RESIZE_MODE != "crop":
            need(self.IMAGE_MIN_DIM <= self.IMAGE_MAX_DIM, "IMAGE_MIN_DIM", "must not exceed IMAGE_MAX_DIM")
        need(is_numbers(self.MEAN_PIXEL, self.IMAGE_CHANNEL_COUNT), "MEAN_PIXEL",
             f"must be a list of {self.IMAGE_CHANNEL_COUNT} numbers, one per image channel (IMAGE_CHANNEL_COUNT)")
        for attr in ("RPN_BBOX_STD_DEV", "BBOX_STD_DEV"):
            need(is_numbers(getattr(self, attr), 4, positive=True), attr,
                 "must be a list of 4 positive numbers (dy, dx, log dh, log dw)")

        levels = len(_PYRAMID_LEVELS)
        need(is_numbers(self.BACKBONE_STRIDES, levels, positive=True)
             and all(is_int(v) for v in self.BACKBONE_STRIDES), "BACKBONE_STRIDES",
             f"must be a list of {levels} positive integers, one per pyramid level {', '.join(_PYRAMID_LEVELS)}")
        need(is_numbers(self.RPN_ANCHOR_SCALES, levels, positive=True), "RPN_ANCHOR_SCALES",
             f"must be a list of {levels} positive numbers (anchor sides in pixels), one per BACKBONE_STRIDES level")
        need(is_numbers(self.RPN_ANCHOR_RATIOS, positive=True) and len(self.RPN_ANCHOR_RATIOS) > 0,
             "RPN_ANCHOR_RATIOS", "must be a non-empty list of positive numbers (width/height ratios)")

        need(is_numbers(self.MASK_SHAPE, 2, positive=True) and all(is_int(v) for v in self.MASK_SHAPE), "MASK_SHAPE",
             "must be [height, width] of positive integers")
        need(list(self.MASK_SHAPE) == [2 * self.MASK_POOL_SIZE] * 2, "MASK_SHAPE",
             f"the mask head upsamples its MASK_POOL_SIZE={self.MASK_POOL_SIZE} grid 2x, so MASK_SHAPE must be "
             f"[{2 * self.MASK_POOL_SIZE}, {2 * self.MASK_POOL_SIZE}] (e.g. MASK_POOL_SIZE=28 with [56, 56])")
        need(is_numbers(self.MINI_MASK_SHAPE, 2, positive=True) and all(is_int(v) for v in self.MINI_MASK_SHAPE),
             "MINI_MASK_SHAPE", "must be (height, width) of positive integers")
        need(isinstance(self.LOSS_WEIGHTS, dict) and set(self.LOSS_WEIGHTS) == set(LOSS_NAMES), "LOSS_WEIGHTS",
             f"must have exactly the keys {', '.join(LOSS_NAMES)}")
        need(all(is_number(v) and v >= 0 for v in self.LOSS_WEIGHTS.values()), "LOSS_WEIGHTS",
             "must map each loss to a number >= 0")
        need(self.MIXED_PRECISION in MIXED_PRECISION_POLICIES, "MIXED_PRECISION",
             "must be None, 'mixed_float16' or 'mixed_bfloat16'")
        need(self.NORM is None or self.NORM in NORMS, "NORM",
             f"must be one of {', '.join(NORMS)}, or None to follow TRAIN_BN")
        need(is_int(self.GN_GROUPS) and self.GN_GROUPS >= 1, "GN_GROUPS", "must be an integer >= 1")
        if self.NORM == "gn":
            for attr in ("TOP_DOWN_PYRAMID_SIZE", "MASK_HEAD_CHANNELS", "FPN_CLASSIF_FC_LAYERS_SIZE"):
                need(getattr(self, attr) % self.GN_GROUPS == 0, "GN_GROUPS",
                     f"must divide {attr}={getattr(self, attr)} (each GN group needs a whole number of channels)")
            need(64 % self.GN_GROUPS == 0, "GN_GROUPS",
                 "must divide 64, the narrowest backbone stage (1, 2, 4, 8, 16, 32 or 64)")
        need(is_int(self.BOX_HEAD_CONVS) and self.BOX_HEAD_CONVS >= 0, "BOX_HEAD_CONVS", "must be an integer >= 0")
        need(is_int(self.PRECISE_BN_BATCHES) and self.PRECISE_BN_BATCHES >= 0, "PRECISE_BN_BATCHES",
             "must be an integer >= 0 (0: off)")
        need(self.RESIZE_METHOD is None or self.RESIZE_METHOD in RESIZE_METHOD_CHOICES, "RESIZE_METHOD",
             f"must be one of {', '.join(RESIZE_METHOD_CHOICES)}, or None (area to train, bilinear to detect)")
        need(self.CLASS_BALANCING in CLASS_BALANCING_CHOICES, "CLASS_BALANCING",
             f"must be one of {', '.join(CLASS_BALANCING_CHOICES)}")
        need(isinstance(self.REPEAT_FACTOR_THRESHOLD, (int, float)) and not isinstance(self.REPEAT_FACTOR_THRESHOLD, bool)
             and 0 < self.REPEAT_FACTOR_THRESHOLD <= 1, "REPEAT_FACTOR_THRESHOLD", "must be a number in (0, 1]")

    def norm(self):
        """The normalisation in use: NORM, or the one TRAIN_BN implies when NORM is None."""
        if self.NORM is not None:
            return self.NORM
        return "bn" if self.TRAIN_BN else "frozen_bn"

    def require(self, condition, attr, why):
        """Raise ConfigError('Config.<attr>=<value>: <why>') unless `condition` holds."""
        if not condition:
            value = getattr(self, attr)
            shown = value.tolist() if isinstance(value, np.ndarray) else value
            raise ConfigError(f"Config.{attr}={shown!r}: {why}")

    # --- Serialisation ---
    def to_dict(self):
        """Every upper-case attribute (derived ones included), JSON-ready."""
        out = {}
        for key in sorted(dir(self)):
            if not key.isupper() or key.startswith("_"):
                continue
            value = getattr(self, key)
            if callable(value):
                value = getattr(value, "__name__", repr(value))
            out[key] = _jsonable(value)
        return out

    def save(self, path):
        """Write the config as JSON (atomically: temp file + rename). When the config knows where
        its values came from (`value_sources`, set by the command line), they are written under
        VALUE_SOURCES_KEY, which `from_dict` ignores, so the file still builds the same config."""
        values = self.to_dict()
        sources = getattr(self, "value_sources", None)
        if sources:
            values[VALUE_SOURCES_KEY] = {k: sources.get(k, "derived" if k in _DERIVED_ATTRS else "default")
                                         for k in sorted(values)}
        with atomic.atomic_open(path, "w", encoding="utf-8") as f:
            json.dump(values, f, indent=2, sort_keys=True)
            f.write("\n")

    @classmethod
    def from_dict(cls, values):
        """Build a config of this class from a dict as `to_dict` writes it; derived values are recomputed."""
        overrides = {k: v for k, v in values.items() if k not in _DERIVED_ATTRS and k != VALUE_SOURCES_KEY}
        for key in ("MINI_MASK_SHAPE", "RPN_ANCHOR_SCALES"):
            if key in overrides and isinstance(overrides[key], list):
                overrides[key] = tuple(overrides[key])
        return cls(**overrides)

    @classmethod
    def load(cls, path):
        """Read a config JSON written by `save`. A file that is not such JSON, or holds an
        invalid value, raises ConfigError naming the file (and the attribute)."""
        try:
            with open(path, encoding="utf-8") as f:
                values = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path} is not a readable config JSON ({e}); restore the run's config.json or "
                              "remove it to use the task's defaults") from e
        if not isinstance(values, dict):
            raise ConfigError(f"{path} holds a JSON {type(values).__name__}, not the object of Config "
                              "attributes that Config.save writes")
        try:
            return cls.from_dict(values)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from e

    def display(self):
        """Print every configuration value (Matterport's display())."""
        print("\nConfigurations:")
        for key, value in self.to_dict().items():
            print(f"{key:30} {value}")
        print("\n")

    def __repr__(self):
        return f"<{type(self).__name__} NAME={self.NAME!r} NUM_CLASSES={self.NUM_CLASSES} BACKBONE={self.BACKBONE!r}>"


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value
