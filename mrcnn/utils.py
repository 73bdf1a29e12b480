"""Matterport's `utils` API: the Dataset base class and the numeric helpers the model,
the data pipeline and the evaluation share (boxes, IoU, NMS, deltas, resizing, anchors, AP).

Conventions (the same as Matterport's Mask R-CNN, see `mrcnn.boxes`):
- Boxes are [N, (y1, x1, y2, x2)]. In pixel coordinates (y2, x2) is exclusive: it lies just
  outside the box, so height = y2 - y1 is the pixel count.
- Normalized boxes (`norm_boxes`) map pixel (y1, x1) to (y1, x1) / (H - 1, W - 1) and the
  exclusive (y2, x2) to (y2 - 1, x2 - 1) / (H - 1, W - 1), so in normalized coordinates
  (y2, x2) is inside the box.
- Box deltas are [N, (dy, dx, log(dh), log(dw))] relative to the source box's height/width.

The box coder itself lives in `mrcnn.boxes`; `box_refinement`, `apply_box_deltas`,
`norm_boxes` and `denorm_boxes` are its NumPy functions under Matterport's names.
This module does not import TensorFlow.
"""
import logging
import random

import cv2
import numpy as np
import skimage.io
import skimage.transform

from mrcnn import boxes as box_coder
from mrcnn import download
from mrcnn.config import RESIZE_MODES
from mrcnn.download import COCO_MODEL_URL  # noqa: F401  (Matterport's utils.COCO_MODEL_URL)

log = logging.getLogger(__name__)


############################################################
#  Bounding Boxes
############################################################

def extract_bboxes(mask):
    """Bounding boxes of instance masks.

    mask: [height, width, num_instances], nonzero inside the instance.
    Returns: int32 [num_instances, (y1, x1, y2, x2)] with exclusive y2, x2;
    an empty mask gives (0, 0, 0, 0).
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"extract_bboxes needs a [height, width, instances] mask, got shape {mask.shape}")
    # One contiguous [N, H, W] copy: reducing the middle axis of [H, W, N] is 5x slower.
    per_instance = np.ascontiguousarray(np.moveaxis(mask, -1, 0)) != 0
    in_row = per_instance.any(axis=2)   # [N, H]: instance present somewhere in that row
    in_col = per_instance.any(axis=1)   # [N, W]
    top = in_row.argmax(axis=1)
    bottom = in_row.shape[1] - in_row[:, ::-1].argmax(axis=1)
    left = in_col.argmax(axis=1)
    right = in_col.shape[1] - in_col[:, ::-1].argmax(axis=1)
    found = in_row.any(axis=1)          # [N]
    corners = np.stack([top, left, bottom, right], axis=1) * found[:, None]
    return corners.astype(np.int32).reshape(-1, 4)


def compute_iou(box, boxes, box_area, boxes_area):
    """IoU of one box with each of `boxes`.

    box: [(y1, x1, y2, x2)]; boxes: [N, (y1, x1, y2, x2)];
    box_area: float; boxes_area: [N]. Areas are passed in so callers compute them once.
    Returns: [N] IoU values (0 between two zero-area boxes).
    """
    box = np.asarray(box)[None, :4]
    return box_coder.iou_np(boxes, box, np.asarray(boxes_area), np.reshape(box_area, 1))[:, 0]


def compute_overlaps(boxes1, boxes2):
    """IoU matrix between two sets of boxes (one broadcast, no loop).

    boxes1: [N1, (y1, x1, y2, x2)]; boxes2: [N2, (y1, x1, y2, x2)].
    Returns: float64 [N1, N2].
    """
    return box_coder.iou_np(boxes1, boxes2).astype(np.float64)


def compute_overlaps_masks(masks1, masks2):
    """IoU matrix between two sets of masks.

    masks1: [H, W, N1]; masks2: [H, W, N2]; values > 0.5 count as inside.
    Returns: float [N1, N2] (0 where both masks are empty).
    """
    masks1 = np.asarray(masks1)
    masks2 = np.asarray(masks2)
    count1, count2 = masks1.shape[-1], masks2.shape[-1]
    if count1 == 0 or count2 == 0:
        return np.zeros((count1, count2))
    if masks1.shape[:2] != masks2.shape[:2]:
        raise ValueError(f"compute_overlaps_masks: mask sizes differ, "
                         f"{masks1.shape[:2]} vs {masks2.shape[:2]}")
    # [pixels, N] as float32 0/1 columns: one matrix product counts every intersection.
    inside1 = (masks1 > .5).reshape(-1, count1).astype(np.float32)
    inside2 = (masks2 > .5).reshape(-1, count2).astype(np.float32)
    shared = inside1.T @ inside2
    union = inside1.sum(axis=0)[:, None] + inside2.sum(axis=0)[None, :] - shared
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, shared / union, 0.0)


def non_max_suppression(boxes, scores, threshold):
    """Greedy non-maximum suppression.

    boxes: [N, (y1, x1, y2, x2)] (y2, x2 exclusive); scores: [N];
    threshold: boxes whose IoU with a kept, higher-scored box is above it are dropped.
    Returns: int32 indices of the kept boxes, highest score first (equal scores: the
    later box first, as a reversed ascending sort gives).
    """
    boxes = np.asarray(boxes)
    if boxes.shape[0] == 0:
        raise ValueError("non_max_suppression needs at least one box")
    if boxes.dtype.kind != "f":
        boxes = boxes.astype(np.float32)
    areas = box_coder.areas_np(boxes)
    queue = np.argsort(np.asarray(scores))[::-1]
    kept = []
    while queue.size:
        head, queue = queue[0], queue[1:]
        kept.append(head)
        queue = queue[compute_iou(boxes[head], boxes[queue], areas[head], areas[queue]) <= threshold]
    return np.array(kept, dtype=np.int32)


def apply_box_deltas(boxes, deltas):
    """Apply refinement deltas to boxes (`mrcnn.boxes.decode_np`).

    boxes: [N, (y1, x1, y2, x2)] (y2, x2 exclusive); deltas: [N, (dy, dx, log(dh), log(dw))].
    Returns: float32 [N, (y1, x1, y2, x2)].
    """
    return box_coder.decode_np(boxes, deltas)


def box_refinement(box, gt_box):
    """Deltas that turn `box` into `gt_box` (`mrcnn.boxes.encode_np`).

    box, gt_box: [N, (y1, x1, y2, x2)] (y2, x2 exclusive).
    Returns: float32 [N, (dy, dx, log(dh), log(dw))].
    """
    return box_coder.encode_np(box, gt_box)


############################################################
#  Dataset
############################################################

def _source_key(info):
    """'source.id', the key of a class or image in its source."""
    return f"{info['source']}.{info['id']}"


class Dataset:
    """Base class for datasets (Matterport's API).

    Subclass it, call `add_class` and `add_image` in a load method, override
    `load_mask` (and `load_image` if needed), then call `prepare()` before use.
    Class 0 is always the background ("BG", source "").
    """

    def __init__(self, class_map=None):
        del class_map  # part of Matterport's signature, never used
        self.class_info = [dict(source="", id=0, name="BG")]
        self.image_info = []
        self.source_class_ids = {}
        self._image_ids = []

    def add_class(self, source, class_id, class_name):
        """Register a class once; a repeat of (source, class_id) is ignored."""
        if "." in source:
            raise ValueError(f"a dataset source name cannot contain a dot: {source!r}")
        if (source, class_id) not in {(c["source"], c["id"]) for c in self.class_info}:
            self.class_info.append(dict(source=source, id=class_id, name=class_name))

    def add_image(self, source, image_id, path, **kwargs):
        """Register an image; extra keyword arguments are kept in its info dict."""
        self.image_info.append(dict(kwargs, id=image_id, source=source, path=path))

    def image_reference(self, image_id):
        """A string that identifies the image for a person (a path or URL); override as needed."""
        return self.image_info[image_id].get("path", "")

    def prepare(self, class_map=None):
        """Build the lookup tables. Call once all classes and images are added.

        Class names keep only the part before the first comma ("person, man" -> "person").
        """
        del class_map
        self.num_classes = len(self.class_info)
        self.num_images = len(self.image_info)
        self.class_ids = np.arange(self.num_classes)
        self._image_ids = np.arange(self.num_images)
        self.class_names = [c["name"].split(",", 1)[0] for c in self.class_info]
        self.class_from_source_map = {_source_key(c): int(i) for i, c in zip(self.class_ids, self.class_info)}
        self.image_from_source_map = {_source_key(m): int(i) for i, m in zip(self._image_ids, self.image_info)}
        self.sources = sorted(set(c["source"] for c in self.class_info))
        # Per source: the background plus that source's classes, as internal ids.
        owner = np.array([c["source"] for c in self.class_info], dtype=object)
        self.source_class_ids = {
            name: [int(i) for i in np.flatnonzero((owner == name) | (self.class_ids == 0))]
            for name in self.sources}

    def map_source_class_id(self, source_class_id):
        """'source.class_id' -> internal class id."""
        return self.class_from_source_map[source_class_id]

    def get_source_class_id(self, class_id, source):
        """Internal class id -> the class id in the given source."""
        info = self.class_info[class_id]
        if info["source"] != source:
            raise ValueError(f"class {class_id} comes from source {info['source']!r}, not {source!r}")
        return info["id"]

    @property
    def image_ids(self):
        return self._image_ids

    def source_image_link(self, image_id):
        """The path or URL of the image in its source."""
        return self.image_info[image_id]["path"]

    def load_image(self, image_id):
        """Load the image as a [H, W, 3] RGB array: grey is repeated into three channels,
        an alpha channel dropped."""
        pixels = skimage.io.imread(self.image_info[image_id]["path"])
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[:, :, None], 3, axis=2)
        return pixels[:, :, :3]

    def load_mask(self, image_id):
        """Instance masks [H, W, N] bool and class ids [N] int32.

        The base class has no masks; subclasses override this. An empty result is
        returned here, and logged, so that a forgotten override is visible.
        """
        log.warning("Dataset.load_mask is not overridden; returning no instances.")
        return np.empty([0, 0, 0], dtype=bool), np.empty([0], np.int32)


############################################################
#  Resizing
############################################################

def resize(image, output_shape, order=1, mode="constant", cval=0, clip=True,
           preserve_range=False, anti_aliasing=False, anti_aliasing_sigma=None):
    """skimage.transform.resize with Matterport's defaults (bilinear, constant border,
    no anti-aliasing), the one place the project's resizing defaults are set.

    A bool image is resized as float 0/1 when order > 0 (old skimage did this itself;
    new skimage refuses bool with interpolation).
    """
    image = np.asarray(image)
    if image.dtype == bool and order != 0:
        image = image.astype(np.float64)
    return skimage.transform.resize(
        image, output_shape, order=order, mode=mode, cval=cval, clip=clip,
        preserve_range=preserve_range, anti_aliasing=anti_aliasing,
        anti_aliasing_sigma=anti_aliasing_sigma)


def resize_masks_cv2(masks, height, width):
    """Resize bool instance masks [H, W, N] to [height, width, N] with OpenCV.

    Shrinking averages pixel areas (INTER_AREA: anti-aliased, a pixel is inside when at
    least half its area was), enlarging interpolates bilinearly; inside means >= 0.5.
    Used for training masks only, where no reference numbers are at stake; it is several
    times faster than scipy/skimage and sample-centred like the image resize.
    """
    masks = np.asarray(masks)
    count = masks.shape[-1]
    out = np.zeros((height, width, count), dtype=bool)
    if count == 0 or height == 0 or width == 0 or masks.shape[0] == 0 or masks.shape[1] == 0:
        return out
    shrinking = height <= masks.shape[0] and width <= masks.shape[1]
    method = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    for first in range(0, count, 512):  # OpenCV takes at most 512 channels
        chunk = masks[:, :, first:first + 512].astype(np.float32)
        resized = cv2.resize(chunk, (width, height), interpolation=method)
        out[:, :, first:first + 512] = resized.reshape(height, width, -1) >= 0.5
    return out


def _scale_for(height, width, min_dim, max_dim, min_scale, mode):
    """The resize factor of `resize_image`: up to min_dim on the short side (never down),
    at least min_scale, and in "square" mode at most what fits the long side in max_dim."""
    factor = max(1, min_dim / min(height, width)) if min_dim else 1
    if min_scale:
        factor = max(factor, min_scale)
    if mode == "square" and max_dim and round(max(height, width) * factor) > max_dim:
        factor = max_dim / max(height, width)
    return factor


def _pad_centred(image, out_height, out_width):
    """Zero-pad image [h, w, ...] to [out_height, out_width, ...], the extra row/column of an
    odd margin going to the bottom/right. Returns (image, window, padding)."""
    height, width = image.shape[:2]
    top = (out_height - height) // 2
    left = (out_width - width) // 2
    padding = [(top, out_height - height - top), (left, out_width - width - left), (0, 0)]
    padded = np.pad(image, padding[:image.ndim])
    return padded, (top, left, top + height, left + width), padding


def resize_image(image, min_dim=None, max_dim=None, min_scale=None, mode="square", rng=None):
    """Resize an image keeping its aspect ratio, then pad or crop it (Matterport's modes).

    image: [H, W, C]. min_dim: scale up (never down) so the short side reaches it.
    max_dim: in "square" mode, cap the scale so the long side is at most max_dim.
    min_scale: scale up by at least this factor.
    mode:
      "none":   return the image unchanged.
      "square": resize, then zero-pad to [max_dim, max_dim], image centred.
      "pad64":  resize (min_dim/min_scale only), then zero-pad each side up to a
                multiple of 64 (the FPN's total stride). max_dim is ignored.
      "crop":   resize (min_dim/min_scale only), then take a random min_dim x min_dim crop
                (training only), drawn from `rng` (a np.random.Generator: the training
                feed passes the run's seeded one) or, without it, Python's `random`.
    The resampling is skimage's bilinear one without anti-aliasing, as in the reference:
    the COCO weights and the fidelity reference saw images molded exactly this way.
    Returns:
      image: resized image, same dtype as the input (values are truncated, not rounded).
      window: (y1, x1, y2, x2) of the image inside the padded result; y2, x2 exclusive.
      scale: the resize factor.
      padding: [(top, bottom), (left, right), (0, 0)].
      crop: (y, x, h, w) in "crop" mode, else None.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize_image: unknown mode {mode!r}; use one of {', '.join(RESIZE_MODES)}")
    image = np.asarray(image)
    height, width = image.shape[:2]
    no_padding = [(0, 0), (0, 0), (0, 0)]
    if mode == "none":
        return image, (0, 0, height, width), 1, no_padding, None
    if mode == "square" and not max_dim:
        raise ValueError("resize_image: mode 'square' needs max_dim (IMAGE_MAX_DIM)")
    if mode == "crop" and not min_dim:
        raise ValueError("resize_image: mode 'crop' needs min_dim (IMAGE_MIN_DIM)")
    if mode == "pad64" and min_dim and min_dim % 64 != 0:
        raise ValueError(f"resize_image: mode 'pad64' needs min_dim to be a multiple of 64, got {min_dim}")

    scale = _scale_for(height, width, min_dim, max_dim, min_scale, mode)
    resized = image
    if scale != 1:
        resized = resize(image, (round(height * scale), round(width * scale)), preserve_range=True)
    new_height, new_width = resized.shape[:2]

    if mode == "crop":
        if new_height < min_dim or new_width < min_dim:
            raise ValueError(f"resize_image: a {new_height}x{new_width} image cannot be cropped "
                             f"to {min_dim}x{min_dim}")
        if rng is None:
            y = random.randint(0, new_height - min_dim)
            x = random.randint(0, new_width - min_dim)
        else:
            y, x = (int(v) for v in rng.integers(0, [new_height - min_dim + 1, new_width - min_dim + 1]))
        cropped = resized[y:y + min_dim, x:x + min_dim]
        return (cropped.astype(image.dtype), (0, 0, min_dim, min_dim), scale, no_padding,
                (y, x, min_dim, min_dim))
    if mode == "square":
        target = (max_dim, max_dim)
    else:  # pad64: round each side up to the next multiple of 64
        target = (64 * -(-new_height // 64), 64 * -(-new_width // 64))
    padded, window, padding = _pad_centred(resized, *target)
    return padded.astype(image.dtype), window, scale, padding, None


def resize_mask(mask, scale, padding, crop=None):
    """Resize and pad (or crop) masks the way `resize_image` did the image.

    mask: [H, W, N]; scale, padding, crop: as returned by `resize_image`.
    The output size is round(H * scale) x round(W * scale) before padding, like the
    image's; the resampling is OpenCV's (`resize_masks_cv2`), not the reference's
    nearest-neighbour zoom: training masks only need to cover the resized lesion.
    Returns: bool [h, w, N].
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"resize_mask needs a [height, width, instances] mask, got shape {mask.shape}")
    if scale != 1:
        mask = resize_masks_cv2(mask, round(mask.shape[0] * scale), round(mask.shape[1] * scale))
    mask = mask.astype(bool)
    if crop is not None:
        y, x, h, w = crop
        return mask[y:y + h, x:x + w]
    return np.pad(mask, padding)


def minimize_mask(bbox, mask, mini_shape):
    """Crop each instance mask to its box and resize it to `mini_shape` to save memory.

    bbox: [N, (y1, x1, y2, x2)]; mask: [H, W, N]; mini_shape: (h, w).
    OpenCV resampling (`resize_masks_cv2`, area averaging when shrinking).
    Returns: bool [h, w, N]. Undo with `expand_mask`.
    """
    mini_height, mini_width = (int(v) for v in mini_shape[:2])
    mini = np.zeros((mini_height, mini_width, mask.shape[-1]), dtype=bool)
    for i, (y1, x1, y2, x2) in enumerate(np.asarray(bbox)[:, :4].astype(int)):
        if y2 <= y1 or x2 <= x1:
            raise ValueError(f"minimize_mask: instance {i} has an empty box {(y1, x1, y2, x2)}")
        inside = np.asarray(mask[y1:y2, x1:x2, i:i + 1], dtype=bool)
        mini[:, :, i:i + 1] = resize_masks_cv2(inside, mini_height, mini_width)
    return mini


def expand_mask(bbox, mini_mask, image_shape):
    """Paste mini-masks back into full-size masks (the inverse of `minimize_mask`).

    bbox: [N, (y1, x1, y2, x2)]; mini_mask: [h, w, N]; image_shape: (H, W, ...).
    Bilinear (skimage), > 0.5 inside. Returns: bool [H, W, N].
    """
    count = mini_mask.shape[-1]
    full = np.zeros((image_shape[0], image_shape[1], count), dtype=bool)
    for i, (y1, x1, y2, x2) in enumerate(np.asarray(bbox)[:, :4].astype(int)):
        if y2 > y1 and x2 > x1:
            full[y1:y2, x1:x2, i] = resize(mini_mask[:, :, i], (y2 - y1, x2 - x1)) > 0.5
    return full


def mold_mask(mask, config):
    """Placeholder kept for API compatibility (Matterport never implemented it)."""
    raise NotImplementedError("mold_mask is not part of the pipeline; use minimize_mask")


def unmold_mask(mask, bbox, image_shape, out=None):
    """Turn a small float mask from the mask head into a full-size binary mask.

    mask: [h, w] float (typically 28x28) of probabilities; bbox: (y1, x1, y2, x2) in
    image pixels, exclusive y2, x2; image_shape: (H, W, ...).
    The mask is resized bilinearly to the box (skimage, as the reference: the fidelity
    test compares these masks pixel for pixel), thresholded at 0.5 (>=) and pasted; a part
    of the box outside the image is cut off.
    out: an all-False bool [H, W] array (or view) to paste into instead of a new one.
    Returns: bool [H, W] (`out` when given).
    """
    y1, x1, y2, x2 = (int(v) for v in bbox)
    height, width = image_shape[:2]
    canvas = np.zeros((height, width), dtype=bool) if out is None else out
    if y2 <= y1 or x2 <= x1:
        return canvas
    box_mask = resize(mask, (y2 - y1, x2 - x1)) >= 0.5
    # The visible part of the box, in image rows/cols and in box rows/cols.
    rows = slice(max(y1, 0), min(y2, height))
    cols = slice(max(x1, 0), min(x2, width))
    if rows.stop > rows.start and cols.stop > cols.start:
        canvas[rows, cols] = box_mask[rows.start - y1:rows.stop - y1, cols.start - x1:cols.stop - x1]
    return canvas


############################################################
#  Anchors
############################################################

def generate_anchors(scales, ratios, shape, feature_stride, anchor_stride):
    """Anchors of one feature-map level, in image pixels.

    scales: anchor side(s) in pixels (Matterport passes one scale per level);
    ratios: width/height ratios, e.g. [0.5, 1, 2]; shape: (rows, cols) of the feature map;
    feature_stride: image pixels per feature-map cell; anchor_stride: cells between anchors.
    An anchor of side s and ratio r is s / sqrt(r) high and s * sqrt(r) wide.
    Returns: float64 [rows * cols * len(scales) * len(ratios), (y1, x1, y2, x2)], centred on
    (row * feature_stride, col * feature_stride). Order: row-major over positions, and at
    each position ratio by ratio (then scale by scale). The RPN outputs of the COCO weights
    are laid out in exactly this order and these numbers; do not change either.
    """
    sides = np.atleast_1d(np.asarray(scales, dtype=np.float64))           # [S]
    roots = np.sqrt(np.atleast_1d(np.asarray(ratios, dtype=np.float64)))  # [R]
    # [R * S, (h, w)], ratio-major
    sizes = np.stack([(sides[None, :] / roots[:, None]).ravel(),
                      (sides[None, :] * roots[:, None]).ravel()], axis=1)
    rows = np.arange(0, shape[0], anchor_stride) * feature_stride
    cols = np.arange(0, shape[1], anchor_stride) * feature_stride
    centres = np.stack(np.meshgrid(rows, cols, indexing="ij"), axis=-1).reshape(-1, 1, 2).astype(np.float64)
    half = 0.5 * sizes[None]                                              # [1, R * S, 2]
    return np.concatenate([centres - half, centres + half], axis=2).reshape(-1, 4)


def generate_pyramid_anchors(scales, ratios, feature_shapes, feature_strides, anchor_stride):
    """Anchors of every FPN level, level by level (scale i goes with level i).

    scales: one anchor side per level, e.g. (32, 64, 128, 256, 512); ratios: used at every
    level; feature_shapes: [levels, (rows, cols)]; feature_strides: one per level.
    Returns: float [N, (y1, x1, y2, x2)] in image pixels.
    """
    if not (len(scales) == len(feature_shapes) == len(feature_strides)):
        raise ValueError(f"generate_pyramid_anchors: {len(scales)} scales, {len(feature_shapes)} "
                         f"feature shapes and {len(feature_strides)} strides; they must match")
    levels = zip(scales, feature_shapes, feature_strides)
    return np.concatenate([generate_anchors(side, ratios, grid, stride, anchor_stride)
                           for side, grid, stride in levels], axis=0)


############################################################
#  Box normalization
############################################################

def norm_boxes(boxes, shape):
    """Pixel boxes -> normalized float32 boxes (`mrcnn.boxes.normalize_np`).

    boxes: [N, (y1, x1, y2, x2)] pixels, exclusive y2, x2; shape: (height, width).
    """
    return box_coder.normalize_np(boxes, shape)


def denorm_boxes(boxes, shape):
    """Normalized boxes -> int32 pixel boxes (`mrcnn.boxes.denormalize_np`)."""
    return box_coder.denormalize_np(boxes, shape)


############################################################
#  Evaluation
############################################################

def trim_zeros(x):
    """Drop the all-zero rows (padding) of a [rows, columns] array."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"trim_zeros needs a 2-D array, got shape {x.shape}")
    return x[np.any(x != 0, axis=1)]


def compute_matches(gt_boxes, gt_class_ids, gt_masks,
                    pred_boxes, pred_class_ids, pred_scores, pred_masks,
                    iou_threshold=0.5, score_threshold=0.0):
    """Greedy one-to-one matching of predictions to ground truth by mask IoU.

    Predictions are taken by descending score (ties in input order); each takes, among the
    GT instances still free and of its class, the one with the highest mask IoU, provided
    that IoU is >= iou_threshold and >= score_threshold (the latter is Matterport's name
    for a floor on the IoU). Equal IoUs go to the later GT instance, as in the reference.
    All-zero (padding) boxes are trimmed, with the entries that go with them.
    gt_boxes: [G, 4]; gt_class_ids: [G]; gt_masks: [H, W, G];
    pred_boxes: [P, 4]; pred_class_ids: [P]; pred_scores: [P]; pred_masks: [H, W, P].
    Returns:
      gt_match: [G] index of the matched prediction (in score order), -1 if none.
      pred_match: [P] index of the matched GT, -1 if none; in descending-score order.
      overlaps: [P, G] mask IoU, rows in descending-score order.
    """
    num_gt = trim_zeros(np.reshape(np.asarray(gt_boxes), (-1, 4))).shape[0]
    num_pred = trim_zeros(np.reshape(np.asarray(pred_boxes), (-1, 4))).shape[0]
    gt_class_ids = np.asarray(gt_class_ids)[:num_gt]
    gt_masks = np.asarray(gt_masks)[..., :num_gt]
    order = np.argsort(-np.asarray(pred_scores)[:num_pred], kind="stable")
    pred_class_ids = np.asarray(pred_class_ids)[order]
    overlaps = compute_overlaps_masks(np.asarray(pred_masks)[..., order], gt_masks)  # [P, G]

    # [P, G]: pairs that may match, whatever was matched before.
    allowed = ((overlaps >= iou_threshold) & (overlaps >= score_threshold)
               & (pred_class_ids[:, None] == gt_class_ids[None, :]))
    gt_match = np.full(num_gt, -1.0)
    pred_match = np.full(num_pred, -1.0)
    taken = np.zeros(num_gt, dtype=bool)
    for p in np.flatnonzero(allowed.any(axis=1)):
        candidates = np.where(allowed[p] & ~taken, overlaps[p], -1.0)
        g = num_gt - 1 - np.argmax(candidates[::-1])  # best IoU, the later GT on a tie
        if candidates[g] >= 0:
            taken[g] = True
            gt_match[g] = p
            pred_match[p] = g
    return gt_match, pred_match, overlaps


def compute_ap(gt_boxes, gt_class_ids, gt_masks,
               pred_boxes, pred_class_ids, pred_scores, pred_masks,
               iou_threshold=0.5):
    """Average precision of one image's predictions at one mask-IoU threshold
    (VOC style: area under the monotone precision envelope, every recall point).

    With predictions in score order, precision_k = TP_k / k and recall_k = TP_k / G; the
    envelope replaces each precision by the best one at that or any higher recall, and AP
    sums envelope * (recall step) over the points where recall grows.
    Returns:
      mAP: float.
      precisions: [P + 2] precision envelope, padded with 0 at both ends.
      recalls: [P + 2] recall after each prediction (float32 values), padded with 0 first
        and 1 last.
      overlaps: [P, G] mask IoU (rows in descending-score order).
    With no GT instances every recall is 0 and mAP is 0.
    """
    gt_match, pred_match, overlaps = compute_matches(
        gt_boxes, gt_class_ids, gt_masks,
        pred_boxes, pred_class_ids, pred_scores, pred_masks,
        iou_threshold)
    true_positives = np.cumsum(pred_match >= 0)
    ranks = np.arange(1, pred_match.size + 1)
    recall_steps = (true_positives.astype(np.float32) / max(gt_match.size, 1))
    precisions = np.concatenate([[0.0], true_positives / ranks, [0.0]])
    recalls = np.concatenate([[0.0], recall_steps, [1.0]])
    precisions = np.maximum.accumulate(precisions[::-1])[::-1]
    gained = recalls[1:] - recalls[:-1]
    grows = recalls[1:] != recalls[:-1]
    mean_ap = np.sum(gained[grows] * precisions[1:][grows])
    return mean_ap, precisions, recalls, overlaps


def compute_ap_range(gt_box, gt_class_id, gt_mask,
                     pred_box, pred_class_id, pred_score, pred_mask,
                     iou_thresholds=None, verbose=1):
    """Mean of `compute_ap` over IoU thresholds (default 0.50:0.05:0.95).

    verbose > 0 prints one line per threshold and the mean (Matterport's display style).
    """
    thresholds = list(np.arange(0.5, 1.0, 0.05) if iou_thresholds is None else iou_thresholds)
    if not thresholds:
        raise ValueError("compute_ap_range: iou_thresholds is empty")
    per_threshold = [compute_ap(gt_box, gt_class_id, gt_mask, pred_box, pred_class_id,
                                pred_score, pred_mask, iou_threshold=t)[0]
                     for t in thresholds]
    mean_ap = np.mean(per_threshold)
    if verbose:
        for t, ap in zip(thresholds, per_threshold):
            print(f"AP @{t:.2f}:\t {ap:.3f}")
        print(f"AP @{thresholds[0]:.2f}-{thresholds[-1]:.2f}:\t {mean_ap:.3f}")
    return mean_ap


def compute_recall(pred_boxes, gt_boxes, iou):
    """Fraction of GT boxes that some predicted box overlaps with IoU >= iou
    (each prediction counts for its best GT only).

    pred_boxes: [P, (y1, x1, y2, x2)]; gt_boxes: [G, (y1, x1, y2, x2)], image pixels.
    Returns: (recall, positive_ids) where positive_ids are the predictions with IoU >= iou.
    """
    overlaps = compute_overlaps(pred_boxes, gt_boxes)   # [P, G]
    good = overlaps.max(axis=1) >= iou
    covered = np.unique(overlaps.argmax(axis=1)[good])
    return covered.size / np.asarray(gt_boxes).shape[0], np.flatnonzero(good)


############################################################
#  Weights
############################################################

def download_trained_weights(coco_model_path, verbose=1):
    """Download Matterport's COCO-trained weights to `coco_model_path` (atomically, with
    a progress bar when verbose, and checked for size and HDF5 layout).
    Raises mrcnn.download.DownloadError when offline or the file is wrong.
    """
    path = download.download_coco_weights(coco_model_path, progress=verbose > 0)
    if verbose > 0:
        log.info("COCO weights ready at %s", path)
    return path
