"""Training data: one image's ground truth (`load_image_gt`) and the batch feeder
(`MaskRCNNSequence`, a keras.utils.PyDataset) that replaces Matterport's data_generator.

Each batch is `(inputs,)`: the model computes its own losses, so there are no targets.
Batches are a pure function of (seed, epoch, batch index), whatever the worker count.
"""
import functools
import itertools
import logging
import math
import threading

import keras
import numpy as np

from mrcnn.data import balancing, image_cache
from mrcnn.data.augment import AugmentationError, ImgaugNotInstalledError, apply_augmentation
from mrcnn.data.masks import extract_bboxes, minimize_mask
from mrcnn.data.molding import compose_image_meta, mold_image
from mrcnn.data.resize import resize_image, resize_mask
from mrcnn.modeling.anchors import pixel_pyramid_anchors
from mrcnn.modeling.targets import build_rpn_targets

log = logging.getLogger(__name__)

# Training shrinks by area averaging unless Config.RESIZE_METHOD says otherwise (None: this
# here, and Matterport's bilinear in detect() and the export).
TRAINING_RESIZE_METHOD = "area"


def training_resize_method(config):
    """The training feed's resize method: Config.RESIZE_METHOD, else "area"."""
    return getattr(config, "RESIZE_METHOD", None) or TRAINING_RESIZE_METHOD


class AnnotationError(ValueError):
    """An image's masks or class ids are inconsistent with the image."""


class DataPipelineError(RuntimeError):
    """A training batch cannot be filled (no usable image left, or a wrong image shape)."""


def load_image_gt(dataset, config, image_id, augmentation=None, use_mini_mask=False, rng=None):
    """Load one image and its instances, resized (and augmented) for training.

    augmentation: an albumentations transform or imgaug augmenter applied to the resized
        image and masks together, before the boxes are taken from the masks.
    use_mini_mask: return masks cropped to their boxes and resized to MINI_MASK_SHAPE.
    rng: np.random.Generator seeding the augmentation and the "crop" mode's crop; None uses
        the augmenter's own state and Python's `random`.
    Returns:
        image: [H, W, C] uint8 (resized and padded per IMAGE_RESIZE_MODE).
        image_meta: [IMAGE_META_SIZE] (molding.compose_image_meta layout).
        class_ids: [N] int32. Instances emptied by resizing or augmentation are dropped.
        bbox: [N, (y1, x1, y2, x2)] int32 pixels, y2/x2 exclusive, from the masks.
        mask: [H, W, N] bool, or [MINI_MASK_SHAPE[0], MINI_MASK_SHAPE[1], N] bool.
    """
    build = functools.partial(resize_for_training, rng=rng)
    resized = image_cache.load_resized(dataset, config, image_id, build)
    image, mask, class_ids = resized.image, resized.mask, resized.class_ids
    original_shape, window, scale = resized.original_shape, resized.window, resized.scale

    if augmentation is not None:
        seed = None if rng is None else int(rng.integers(2 ** 31))
        image, mask = apply_augmentation(augmentation, image, mask, seed=seed)

    keep = mask.sum(axis=(0, 1)) > 0
    mask = mask[:, :, keep]
    class_ids = class_ids[keep]
    bbox = extract_bboxes(mask)

    # Classes of the image's source dataset (the class loss ignores the others).
    active_class_ids = np.zeros([dataset.num_classes], dtype=np.int32)
    source = dataset.image_info[image_id]["source"]
    active_class_ids[dataset.source_class_ids[source]] = 1

    if use_mini_mask:
        mask = minimize_mask(bbox, mask, config.MINI_MASK_SHAPE)
    image_meta = compose_image_meta(image_id, original_shape, image.shape, window, scale, active_class_ids)
    return image, image_meta, class_ids, bbox, mask


def resize_for_training(dataset, config, image_id, rng=None):
    """Decode an image and its masks and resize them per IMAGE_RESIZE_MODE (the part of
    load_image_gt that mrcnn.data.image_cache stores). Returns an image_cache.ResizedItem.

    Training resizes by the "area" method of mrcnn.data.resize (an image that must shrink
    is shrunk by pixel-area averaging: no aliasing of hairs and lesion borders), or by
    Config.RESIZE_METHOD when set (detect() then uses the same).
    """
    image = dataset.load_image(image_id)
    mask, class_ids = dataset.load_mask(image_id)
    mask, class_ids = _check_annotations(image, np.asarray(mask), np.asarray(class_ids), dataset, image_id)
    original_shape = image.shape
    image, window, scale, padding, crop = resize_image(
        image, min_dim=config.IMAGE_MIN_DIM, min_scale=config.IMAGE_MIN_SCALE,
        max_dim=config.IMAGE_MAX_DIM, mode=config.IMAGE_RESIZE_MODE, rng=rng, method=training_resize_method(config))
    mask = resize_mask(mask, scale, padding, crop)
    return image_cache.ResizedItem(image, mask, class_ids, original_shape, window, scale, padding, crop)


def _check_annotations(image, mask, class_ids, dataset, image_id):
    """Masks [H, W, N] and class ids [N] matching the image; an empty mask stack of any
    shape (the base Dataset returns [0, 0, 0]) becomes [H, W, 0]."""
    class_ids = class_ids.reshape(-1).astype(np.int32)
    if mask.ndim == 3 and mask.shape[-1] == 0 and class_ids.size == 0:
        return np.zeros(image.shape[:2] + (0,), dtype=bool), class_ids
    ref = dataset.image_reference(image_id)
    if mask.ndim != 3 or mask.shape[:2] != image.shape[:2]:
        raise AnnotationError(f"{ref}: masks must be [H, W, N] with the image's {image.shape[:2]}, "
                              f"got {mask.shape}")
    if class_ids.size != mask.shape[-1]:
        raise AnnotationError(f"{ref}: {mask.shape[-1]} masks but {class_ids.size} class ids")
    return mask.astype(bool), class_ids


class MaskRCNNSequence(keras.utils.PyDataset):
    """Batches for MaskRCNN training: `(inputs,)` with inputs =
    (images [B, H, W, C] float32 molded, image_meta [B, META] float32,
     rpn_match [B, A, 1] int32, rpn_bbox [B, RPN_TRAIN_ANCHORS_PER_IMAGE, 4] float32,
     gt_class_ids [B, MAX_GT] int32, gt_boxes [B, MAX_GT, 4] float32 pixels,
     gt_masks [B, h, w, MAX_GT] bool), zero padded.

    Images whose annotations fail to load are logged once and replaced by the next image
    of the epoch order. Images without instances are served (and counted in
    `n_empty_served`) when keep_empty is True, replaced otherwise (Matterport). Counters are
    exact with threads; with use_multiprocessing each worker process keeps its own.
    """

    def __init__(self, dataset, config, shuffle=True, augmentation=None, seed=None, keep_empty=None,
                 batch_size=None, workers=1, use_multiprocessing=False, max_queue_size=10, balance=None):
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing,
                         max_queue_size=max_queue_size)
        image_ids = np.asarray(getattr(dataset, "image_ids", []))
        if image_ids.size == 0:
            raise ValueError("MaskRCNNSequence: the dataset has no images (did you call dataset.prepare()?)")
        if dataset.num_classes != config.NUM_CLASSES:
            raise ValueError(f"MaskRCNNSequence: the dataset has {dataset.num_classes} classes "
                             f"(background included) but Config.NUM_CLASSES is {config.NUM_CLASSES}")
        seed = config.SEED if seed is None else seed
        if int(seed) < 0:
            raise ValueError(f"MaskRCNNSequence: seed must be >= 0, got {seed}")
        self.dataset = dataset
        self.config = config
        self.shuffle = shuffle
        self.augmentation = augmentation
        self.seed = int(seed)
        self.keep_empty = bool(config.KEEP_EMPTY_IMAGES if keep_empty is None else keep_empty)
        self.batch_size = int(config.BATCH_SIZE if batch_size is None else batch_size)
        self.image_ids = image_ids
        self.anchors = pixel_pyramid_anchors(config, config.IMAGE_SHAPE)  # [A, (y1, x1, y2, x2)] pixels
        self.epoch = 0
        self.n_empty_served = 0  # images without instances put in a batch
        self.n_empty_skipped = 0  # images without instances replaced (keep_empty False)
        self.n_failed = 0  # images whose loading raised, each counted once
        self.n_truncated = 0  # images with more than MAX_GT_INSTANCES instances
        self._bad_ids = set()
        self._lock = threading.Lock()
        # Config.CLASS_BALANCING applies to a shuffled (training) feed unless `balance` says otherwise.
        balance = shuffle and getattr(config, "CLASS_BALANCING", "none") == "repeat_factor" if balance is None \
            else bool(balance)
        self.repeat_factors = self._repeat_factors() if balance else None  # [num_images] or None

    def _repeat_factors(self):
        """Per image its repeat factor (mrcnn.data.balancing); logs the class counts and the
        sampling rates before and after."""
        threshold = float(getattr(self.config, "REPEAT_FACTOR_THRESHOLD", 0.5))
        classes = [balancing.image_classes(self.dataset, int(i)) for i in self.image_ids]
        factors, _, _ = balancing.repeat_factors(classes, threshold)
        self.sampling_summary = balancing.sampling_summary(classes, factors, getattr(self.dataset, "class_names", None))
        balancing.log_sampling(self.sampling_summary, threshold, factors.sum())
        return factors

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self):
        images = len(self.image_ids) if self.repeat_factors is None else float(self.repeat_factors.sum())
        return max(1, math.ceil(images / self.batch_size))

    def on_epoch_end(self):
        self.epoch += 1

    def set_epoch(self, epoch):
        """Start from a given epoch (resuming a run reproduces its batches)."""
        self.epoch = int(epoch)

    def epoch_order(self, epoch=None):
        """The image ids in the order an epoch visits them."""
        epoch = self.epoch if epoch is None else epoch
        if self.repeat_factors is not None:  # [sum of this epoch's repeats] ids, shuffled
            return balancing.balanced_order(self.image_ids, self.repeat_factors, self.seed, epoch)
        if not self.shuffle:
            return self.image_ids
        return np.random.default_rng([self.seed, epoch]).permutation(self.image_ids)

    def stats(self):
        """What the feeder served, skipped and why (for the end-of-run summary)."""
        with self._lock:
            return {"epoch": self.epoch, "empty_served": self.n_empty_served,
                    "empty_skipped": self.n_empty_skipped, "failed": self.n_failed,
                    "failed_ids": sorted(int(i) for i in self._bad_ids), "truncated": self.n_truncated}

    def _count(self, name, amount=1):
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def __getitem__(self, index):
        config = self.config
        epoch = self.epoch
        order = self.epoch_order(epoch)
        num_images = len(order)
        batch = self.batch_size
        images = np.zeros((batch,) + tuple(int(v) for v in config.IMAGE_SHAPE), dtype=np.float32)
        image_metas = np.zeros((batch, config.IMAGE_META_SIZE), dtype=np.float32)
        rpn_match = np.zeros((batch, self.anchors.shape[0], 1), dtype=np.int32)
        rpn_bbox = np.zeros((batch, config.RPN_TRAIN_ANCHORS_PER_IMAGE, 4), dtype=np.float32)
        gt_class_ids = np.zeros((batch, config.MAX_GT_INSTANCES), dtype=np.int32)
        gt_boxes = np.zeros((batch, config.MAX_GT_INSTANCES, 4), dtype=np.float32)
        mask_shape = tuple(config.MINI_MASK_SHAPE) if config.USE_MINI_MASK else tuple(int(v) for v in config.IMAGE_SHAPE[:2])
        gt_masks = np.zeros((batch,) + mask_shape + (config.MAX_GT_INSTANCES,), dtype=bool)

        for b in range(batch):
            # Slot b of this batch, then (if it is unusable) the images after the batch's slots.
            candidates = itertools.chain([(index * batch + b) % num_images],
                                         (((index + 1) * batch + k) % num_images for k in range(num_images)))
            for attempt, position in enumerate(candidates):
                rng = np.random.default_rng([self.seed, epoch, index, b, attempt])
                item = self._load(int(order[position]), rng)
                if item is not None:
                    break
            else:
                raise DataPipelineError(
                    f"no usable training image: {self.n_failed} failed to load, "
                    f"{self.n_empty_skipped} skipped without instances (keep_empty={self.keep_empty})")
            image, image_meta, class_ids, boxes, masks, match, deltas = item
            images[b] = mold_image(image, config)
            image_metas[b] = image_meta
            rpn_match[b, :, 0] = match
            rpn_bbox[b] = deltas
            gt_class_ids[b, :len(class_ids)] = class_ids
            gt_boxes[b, :len(class_ids)] = boxes
            gt_masks[b, :, :, :len(class_ids)] = masks
        return ((images, image_metas, rpn_match, rpn_bbox, gt_class_ids, gt_boxes, gt_masks),)

    def _load(self, image_id, rng):
        """One image's batch entries, or None when it must be replaced."""
        if image_id in self._bad_ids:
            return None
        try:
            image, image_meta, class_ids, boxes, masks = load_image_gt(
                self.dataset, self.config, image_id, augmentation=self.augmentation,
                use_mini_mask=self.config.USE_MINI_MASK, rng=rng)
        except (AugmentationError, ImgaugNotInstalledError):
            raise
        except Exception as e:
            with self._lock:
                first = image_id not in self._bad_ids
                self._bad_ids.add(image_id)
                if first:
                    self.n_failed += 1
            if first:
                log.warning("skipping image %s (%s): %s: %s", image_id,
                            self.dataset.image_reference(image_id), type(e).__name__, e)
            return None
        if image.shape != tuple(int(v) for v in self.config.IMAGE_SHAPE):
            raise DataPipelineError(
                f"image {image_id} became {image.shape} but training batches need IMAGE_SHAPE "
                f"{tuple(self.config.IMAGE_SHAPE)}; use IMAGE_RESIZE_MODE 'square' or 'crop'")
        empty = not np.any(class_ids > 0)
        if empty and not self.keep_empty:
            self._count("n_empty_skipped")
            return None
        # RPN targets see every instance; only the GT arrays are truncated (Matterport's order).
        match, deltas = build_rpn_targets(image.shape, self.anchors, class_ids, boxes, self.config, rng=rng)
        if len(class_ids) > self.config.MAX_GT_INSTANCES:
            keep = np.sort(rng.choice(len(class_ids), self.config.MAX_GT_INSTANCES, replace=False))
            class_ids, boxes, masks = class_ids[keep], boxes[keep], masks[:, :, keep]
            self._count("n_truncated")
        if empty:
            self._count("n_empty_served")
        return image, image_meta, class_ids, boxes, masks, match, deltas
