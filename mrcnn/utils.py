"""Matterport's `utils` API: the Dataset base class and the numeric helpers the model,
the data pipeline and the evaluation share (boxes, IoU, NMS, deltas, resizing, anchors, AP).

Conventions (the same as Matterport's Mask R-CNN):
- Boxes are [N, (y1, x1, y2, x2)]. In pixel coordinates (y2, x2) is exclusive: it lies just
  outside the box, so height = y2 - y1 is the pixel count.
- Normalized boxes (`norm_boxes`) map pixel (y1, x1) to (y1, x1) / (H - 1, W - 1) and the
  exclusive (y2, x2) to (y2 - 1, x2 - 1) / (H - 1, W - 1), so in normalized coordinates
  (y2, x2) is inside the box.
- Box deltas are [N, (dy, dx, log(dh), log(dw))] relative to the source box's height/width.

This module does not import TensorFlow; graph helpers live in the model code.
"""
import logging
import random
import warnings

import numpy as np
import scipy.ndimage
import skimage.color
import skimage.io
import skimage.transform

from mrcnn import download
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
    boxes = np.zeros([mask.shape[-1], 4], dtype=np.int32)
    for i in range(mask.shape[-1]):
        m = mask[:, :, i]
        cols = np.where(np.any(m, axis=0))[0]
        rows = np.where(np.any(m, axis=1))[0]
        if cols.size:
            boxes[i] = [rows[0], cols[0], rows[-1] + 1, cols[-1] + 1]
    return boxes


def compute_iou(box, boxes, box_area, boxes_area):
    """IoU of one box with each of `boxes`.

    box: [(y1, x1, y2, x2)]; boxes: [N, (y1, x1, y2, x2)];
    box_area: float; boxes_area: [N]. Areas are passed in so callers compute them once.
    Returns: [N] IoU values.
    """
    y1 = np.maximum(box[0], boxes[:, 0])
    y2 = np.minimum(box[2], boxes[:, 2])
    x1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[3], boxes[:, 3])
    intersection = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    union = box_area + boxes_area[:] - intersection[:]
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = intersection / union
    # Two degenerate (zero-area) boxes have no overlap rather than NaN.
    return np.where(union > 0, iou, 0.0)


def compute_overlaps(boxes1, boxes2):
    """IoU matrix between two sets of boxes.

    boxes1: [N1, (y1, x1, y2, x2)]; boxes2: [N2, (y1, x1, y2, x2)].
    Returns: float64 [N1, N2]. Pass the larger set first: the loop runs over boxes2.
    """
    boxes1 = np.asarray(boxes1)
    boxes2 = np.asarray(boxes2)
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    overlaps = np.zeros((boxes1.shape[0], boxes2.shape[0]))
    for i in range(overlaps.shape[1]):
        overlaps[:, i] = compute_iou(boxes2[i], boxes1, area2[i], area1)
    return overlaps


def compute_overlaps_masks(masks1, masks2):
    """IoU matrix between two sets of masks.

    masks1: [H, W, N1]; masks2: [H, W, N2]; values > 0.5 count as inside.
    Returns: float [N1, N2] (0 where both masks are empty).
    """
    masks1 = np.asarray(masks1)
    masks2 = np.asarray(masks2)
    if masks1.shape[-1] == 0 or masks2.shape[-1] == 0:
        return np.zeros((masks1.shape[-1], masks2.shape[-1]))
    if masks1.shape[:2] != masks2.shape[:2]:
        raise ValueError(f"compute_overlaps_masks: mask sizes differ, "
                         f"{masks1.shape[:2]} vs {masks2.shape[:2]}")
    masks1 = np.reshape(masks1 > .5, (-1, masks1.shape[-1])).astype(np.float32)
    masks2 = np.reshape(masks2 > .5, (-1, masks2.shape[-1])).astype(np.float32)
    area1 = np.sum(masks1, axis=0)
    area2 = np.sum(masks2, axis=0)
    intersections = np.dot(masks1.T, masks2)
    union = area1[:, None] + area2[None, :] - intersections
    with np.errstate(divide="ignore", invalid="ignore"):
        overlaps = np.where(union > 0, intersections / union, 0.0)
    return overlaps


def non_max_suppression(boxes, scores, threshold):
    """Greedy non-maximum suppression.

    boxes: [N, (y1, x1, y2, x2)] (y2, x2 exclusive); scores: [N];
    threshold: boxes whose IoU with a kept, higher-scored box is above it are dropped.
    Returns: int32 indices of the kept boxes, highest score first.
    """
    boxes = np.asarray(boxes)
    scores = np.asarray(scores)
    if boxes.shape[0] == 0:
        raise ValueError("non_max_suppression needs at least one box")
    if boxes.dtype.kind != "f":
        boxes = boxes.astype(np.float32)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = scores.argsort()[::-1]
    pick = []
    while len(order) > 0:
        i = order[0]
        pick.append(i)
        rest = order[1:]
        iou = compute_iou(boxes[i], boxes[rest], area[i], area[rest])
        order = rest[iou <= threshold]
    return np.array(pick, dtype=np.int32)


def apply_box_deltas(boxes, deltas):
    """Apply refinement deltas to boxes.

    boxes: [N, (y1, x1, y2, x2)] (y2, x2 exclusive); deltas: [N, (dy, dx, log(dh), log(dw))].
    Returns: float32 [N, (y1, x1, y2, x2)].
    """
    boxes = np.asarray(boxes).astype(np.float32)
    deltas = np.asarray(deltas)
    height = boxes[:, 2] - boxes[:, 0]
    width = boxes[:, 3] - boxes[:, 1]
    center_y = boxes[:, 0] + 0.5 * height
    center_x = boxes[:, 1] + 0.5 * width
    center_y += deltas[:, 0] * height
    center_x += deltas[:, 1] * width
    height *= np.exp(deltas[:, 2])
    width *= np.exp(deltas[:, 3])
    y1 = center_y - 0.5 * height
    x1 = center_x - 0.5 * width
    return np.stack([y1, x1, y1 + height, x1 + width], axis=1)


def box_refinement(box, gt_box):
    """Deltas that turn `box` into `gt_box` (the inverse of `apply_box_deltas`).

    box, gt_box: [N, (y1, x1, y2, x2)] (y2, x2 exclusive).
    Returns: float32 [N, (dy, dx, log(dh), log(dw))].
    """
    box = np.asarray(box).astype(np.float32)
    gt_box = np.asarray(gt_box).astype(np.float32)
    height = box[:, 2] - box[:, 0]
    width = box[:, 3] - box[:, 1]
    center_y = box[:, 0] + 0.5 * height
    center_x = box[:, 1] + 0.5 * width
    gt_height = gt_box[:, 2] - gt_box[:, 0]
    gt_width = gt_box[:, 3] - gt_box[:, 1]
    gt_center_y = gt_box[:, 0] + 0.5 * gt_height
    gt_center_x = gt_box[:, 1] + 0.5 * gt_width
    dy = (gt_center_y - center_y) / height
    dx = (gt_center_x - center_x) / width
    dh = np.log(gt_height / height)
    dw = np.log(gt_width / width)
    return np.stack([dy, dx, dh, dw], axis=1)


############################################################
#  Dataset
############################################################

class Dataset:
    """Base class for datasets (Matterport's API).

    Subclass it, call `add_class` and `add_image` in a load method, override
    `load_mask` (and `load_image` if needed), then call `prepare()` before use.
    """

    def __init__(self, class_map=None):
        self._image_ids = []
        self.image_info = []
        # Background is always the first class
        self.class_info = [{"source": "", "id": 0, "name": "BG"}]
        self.source_class_ids = {}

    def add_class(self, source, class_id, class_name):
        assert "." not in source, "Source name cannot contain a dot"
        for info in self.class_info:
            if info["source"] == source and info["id"] == class_id:
                return  # already registered
        self.class_info.append({"source": source, "id": class_id, "name": class_name})

    def add_image(self, source, image_id, path, **kwargs):
        image_info = {"id": image_id, "source": source, "path": path}
        image_info.update(kwargs)
        self.image_info.append(image_info)

    def image_reference(self, image_id):
        """A string that identifies the image for a person (a path or URL); override as needed."""
        return self.image_info[image_id].get("path", "")

    def prepare(self, class_map=None):
        """Build the internal index tables. Call once all classes and images are added."""
        def clean_name(name):
            return ",".join(name.split(",")[:1])

        self.num_classes = len(self.class_info)
        self.class_ids = np.arange(self.num_classes)
        self.class_names = [clean_name(c["name"]) for c in self.class_info]
        self.num_images = len(self.image_info)
        self._image_ids = np.arange(self.num_images)

        self.class_from_source_map = {f"{info['source']}.{info['id']}": id
                                      for info, id in zip(self.class_info, self.class_ids)}
        self.image_from_source_map = {f"{info['source']}.{info['id']}": id
                                      for info, id in zip(self.image_info, self.image_ids)}

        self.sources = sorted({i["source"] for i in self.class_info})
        self.source_class_ids = {}
        for source in self.sources:
            self.source_class_ids[source] = [i for i, info in enumerate(self.class_info)
                                             if i == 0 or source == info["source"]]

    def map_source_class_id(self, source_class_id):
        """'source.class_id' -> internal class id."""
        return self.class_from_source_map[source_class_id]

    def get_source_class_id(self, class_id, source):
        """Internal class id -> the class id in the given source."""
        info = self.class_info[class_id]
        assert info["source"] == source
        return info["id"]

    @property
    def image_ids(self):
        return self._image_ids

    def source_image_link(self, image_id):
        """The path or URL of the image in its source."""
        return self.image_info[image_id]["path"]

    def load_image(self, image_id):
        """Load the image as a [H, W, 3] uint8 RGB array."""
        image = skimage.io.imread(self.image_info[image_id]["path"])
        if image.ndim != 3:
            image = skimage.color.gray2rgb(image)
        if image.shape[-1] == 4:
            image = image[..., :3]
        return image

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


RESIZE_MODES = ("none", "square", "pad64", "crop")


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
                (training only), placed by `rng` (a np.random.Generator; None: Python's
                `random`, as Matterport).
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
    image_dtype = image.dtype
    h, w = image.shape[:2]
    window = (0, 0, h, w)
    scale = 1
    padding = [(0, 0), (0, 0), (0, 0)]
    crop = None

    if mode == "none":
        return image, window, scale, padding, crop

    if mode == "square" and not max_dim:
        raise ValueError("resize_image: mode 'square' needs max_dim (IMAGE_MAX_DIM)")
    if mode == "crop" and not min_dim:
        raise ValueError("resize_image: mode 'crop' needs min_dim (IMAGE_MIN_DIM)")
    if mode == "pad64" and min_dim and min_dim % 64 != 0:
        raise ValueError(f"resize_image: mode 'pad64' needs min_dim to be a multiple of 64, got {min_dim}")

    if min_dim:
        scale = max(1, min_dim / min(h, w))
    if min_scale and scale < min_scale:
        scale = min_scale
    if max_dim and mode == "square":
        image_max = max(h, w)
        if round(image_max * scale) > max_dim:
            scale = max_dim / image_max

    if scale != 1:
        image = resize(image, (round(h * scale), round(w * scale)), preserve_range=True)

    h, w = image.shape[:2]
    if mode == "square":
        top_pad = (max_dim - h) // 2
        left_pad = (max_dim - w) // 2
        padding = [(top_pad, max_dim - h - top_pad), (left_pad, max_dim - w - left_pad), (0, 0)]
        image = np.pad(image, padding[:image.ndim], mode="constant", constant_values=0)
        window = (top_pad, left_pad, h + top_pad, w + left_pad)
    elif mode == "pad64":
        target_h = -(-h // 64) * 64
        target_w = -(-w // 64) * 64
        top_pad = (target_h - h) // 2
        left_pad = (target_w - w) // 2
        padding = [(top_pad, target_h - h - top_pad), (left_pad, target_w - w - left_pad), (0, 0)]
        image = np.pad(image, padding[:image.ndim], mode="constant", constant_values=0)
        window = (top_pad, left_pad, h + top_pad, w + left_pad)
    else:  # crop
        if h < min_dim or w < min_dim:
            raise ValueError(f"resize_image: a {h}x{w} image cannot be cropped to {min_dim}x{min_dim}")
        if rng is None:
            y, x = random.randint(0, h - min_dim), random.randint(0, w - min_dim)
        else:
            y, x = (int(v) for v in rng.integers(0, [h - min_dim + 1, w - min_dim + 1]))
        crop = (y, x, min_dim, min_dim)
        image = image[y:y + min_dim, x:x + min_dim]
        window = (0, 0, min_dim, min_dim)
    return image.astype(image_dtype), window, scale, padding, crop


def resize_mask(mask, scale, padding, crop=None):
    """Resize and pad (or crop) masks the way `resize_image` did the image.

    mask: [H, W, N]; scale, padding, crop: as returned by `resize_image`.
    Nearest-neighbour zoom (scipy.ndimage.zoom, order 0), so the output size is
    round(H * scale) x round(W * scale) before padding, like the image's.
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"resize_mask needs a [height, width, instances] mask, got shape {mask.shape}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mask = scipy.ndimage.zoom(mask, zoom=[scale, scale, 1], order=0)
    if crop is not None:
        y, x, h, w = crop
        return mask[y:y + h, x:x + w]
    return np.pad(mask, padding, mode="constant", constant_values=0)


def minimize_mask(bbox, mask, mini_shape):
    """Crop each instance mask to its box and resize it to `mini_shape` to save memory.

    bbox: [N, (y1, x1, y2, x2)]; mask: [H, W, N]; mini_shape: (h, w).
    Returns: bool [h, w, N]. Undo with `expand_mask`.
    """
    mini_shape = tuple(mini_shape)
    mini_mask = np.zeros(mini_shape + (mask.shape[-1],), dtype=bool)
    for i in range(mask.shape[-1]):
        y1, x1, y2, x2 = (int(v) for v in bbox[i][:4])
        m = mask[y1:y2, x1:x2, i].astype(bool)
        if m.size == 0:
            raise ValueError(f"minimize_mask: instance {i} has an empty box {(y1, x1, y2, x2)}")
        mini_mask[:, :, i] = np.around(resize(m, mini_shape)).astype(bool)
    return mini_mask


def expand_mask(bbox, mini_mask, image_shape):
    """Paste mini-masks back into full-size masks (the inverse of `minimize_mask`).

    bbox: [N, (y1, x1, y2, x2)]; mini_mask: [h, w, N]; image_shape: (H, W, ...).
    Returns: bool [H, W, N].
    """
    mask = np.zeros(tuple(image_shape[:2]) + (mini_mask.shape[-1],), dtype=bool)
    for i in range(mask.shape[-1]):
        y1, x1, y2, x2 = (int(v) for v in bbox[i][:4])
        if y2 <= y1 or x2 <= x1:
            continue
        m = resize(mini_mask[:, :, i], (y2 - y1, x2 - x1))
        mask[y1:y2, x1:x2, i] = np.around(m).astype(bool)
    return mask


def mold_mask(mask, config):
    """Placeholder kept for API compatibility (Matterport never implemented it)."""
    raise NotImplementedError("mold_mask is not part of the pipeline; use minimize_mask")


def unmold_mask(mask, bbox, image_shape, out=None):
    """Turn a small float mask from the mask head into a full-size binary mask.

    mask: [h, w] float (typically 28x28) of probabilities; bbox: (y1, x1, y2, x2) in
    image pixels, exclusive y2, x2; image_shape: (H, W, ...).
    The mask is resized bilinearly to the box, thresholded at 0.5 (>=) and pasted; a part
    of the box outside the image is cut off.
    out: an all-False bool [H, W] array (or view) to paste into instead of a new one.
    Returns: bool [H, W] (`out` when given).
    """
    threshold = 0.5
    y1, x1, y2, x2 = (int(v) for v in bbox)
    height, width = image_shape[:2]
    full_mask = np.zeros((height, width), dtype=bool) if out is None else out
    if y2 <= y1 or x2 <= x1:
        return full_mask
    mask = resize(mask, (y2 - y1, x2 - x1)) >= threshold
    top, left = max(y1, 0), max(x1, 0)
    bottom, right = min(y2, height), min(x2, width)
    if bottom > top and right > left:
        full_mask[top:bottom, left:right] = mask[top - y1:bottom - y1, left - x1:right - x1]
    return full_mask


############################################################
#  Anchors
############################################################

def generate_anchors(scales, ratios, shape, feature_stride, anchor_stride):
    """Anchors of one feature-map level, in image pixels.

    scales: anchor side(s) in pixels (Matterport passes one scale per level);
    ratios: width/height ratios, e.g. [0.5, 1, 2]; shape: (rows, cols) of the feature map;
    feature_stride: image pixels per feature-map cell; anchor_stride: cells between anchors.
    Returns: float [rows * cols * len(scales) * len(ratios), (y1, x1, y2, x2)], centred on
    (row * feature_stride, col * feature_stride). Order: row-major over positions, and at
    each position ratio by ratio (then scale by scale), as Matterport's meshgrid gives;
    RPN outputs of the COCO weights are laid out in this order.
    """
    scales, ratios = np.meshgrid(np.array(scales), np.array(ratios))
    scales = scales.flatten()
    ratios = ratios.flatten()
    heights = scales / np.sqrt(ratios)
    widths = scales * np.sqrt(ratios)

    shifts_y = np.arange(0, shape[0], anchor_stride) * feature_stride
    shifts_x = np.arange(0, shape[1], anchor_stride) * feature_stride
    shifts_x, shifts_y = np.meshgrid(shifts_x, shifts_y)          # [rows, cols]

    box_widths, box_centers_x = np.meshgrid(widths, shifts_x)     # [positions, shapes]
    box_heights, box_centers_y = np.meshgrid(heights, shifts_y)
    box_centers = np.stack([box_centers_y, box_centers_x], axis=2).reshape([-1, 2])
    box_sizes = np.stack([box_heights, box_widths], axis=2).reshape([-1, 2])
    return np.concatenate([box_centers - 0.5 * box_sizes,
                           box_centers + 0.5 * box_sizes], axis=1)


def generate_pyramid_anchors(scales, ratios, feature_shapes, feature_strides, anchor_stride):
    """Anchors of every FPN level, level by level (scale i goes with level i).

    scales: one anchor side per level, e.g. (32, 64, 128, 256, 512); ratios: used at every
    level; feature_shapes: [levels, (rows, cols)]; feature_strides: one per level.
    Returns: float [N, (y1, x1, y2, x2)] in image pixels.
    """
    if not (len(scales) == len(feature_shapes) == len(feature_strides)):
        raise ValueError(f"generate_pyramid_anchors: {len(scales)} scales, {len(feature_shapes)} "
                         f"feature shapes and {len(feature_strides)} strides; they must match")
    anchors = [generate_anchors(scales[i], ratios, feature_shapes[i], feature_strides[i],
                                anchor_stride)
               for i in range(len(scales))]
    return np.concatenate(anchors, axis=0)


############################################################
#  Box normalization
############################################################

def norm_boxes(boxes, shape):
    """Pixel boxes -> normalized boxes.

    boxes: [N, (y1, x1, y2, x2)] pixels, exclusive y2, x2; shape: (height, width).
    Returns: float32 (boxes - (0, 0, 1, 1)) / (H - 1, W - 1, H - 1, W - 1); in normalized
    coordinates (y2, x2) is inside the box.
    """
    h, w = shape[:2]
    scale = np.array([h - 1, w - 1, h - 1, w - 1])
    shift = np.array([0, 0, 1, 1])
    return np.divide((np.asarray(boxes) - shift), scale).astype(np.float32)


def denorm_boxes(boxes, shape):
    """Normalized boxes -> int32 pixel boxes (the inverse of `norm_boxes`, rounded)."""
    h, w = shape[:2]
    scale = np.array([h - 1, w - 1, h - 1, w - 1])
    shift = np.array([0, 0, 1, 1])
    return np.around(np.multiply(boxes, scale) + shift).astype(np.int32)


############################################################
#  Evaluation
############################################################

def trim_zeros(x):
    """Drop the all-zero rows (padding) of a [rows, columns] array."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"trim_zeros needs a 2-D array, got shape {x.shape}")
    return x[~np.all(x == 0, axis=1)]


def compute_matches(gt_boxes, gt_class_ids, gt_masks,
                    pred_boxes, pred_class_ids, pred_scores, pred_masks,
                    iou_threshold=0.5, score_threshold=0.0):
    """Greedy one-to-one matching of predictions to ground truth by mask IoU.

    Predictions are taken by descending score; each takes the unmatched GT instance of
    the same class with the highest mask IoU, if that IoU >= iou_threshold. GT candidates
    with IoU below score_threshold are not considered. All-zero (padding) boxes are trimmed.
    gt_boxes: [G, 4]; gt_class_ids: [G]; gt_masks: [H, W, G];
    pred_boxes: [P, 4]; pred_class_ids: [P]; pred_scores: [P]; pred_masks: [H, W, P].
    Returns:
      gt_match: [G] index of the matched prediction (in score order), -1 if none.
      pred_match: [P] index of the matched GT, -1 if none; in descending-score order.
      overlaps: [P, G] mask IoU, rows in descending-score order.
    """
    gt_boxes = trim_zeros(np.reshape(np.asarray(gt_boxes), (-1, 4)))
    gt_masks = np.asarray(gt_masks)[..., :gt_boxes.shape[0]]
    gt_class_ids = np.asarray(gt_class_ids)[:gt_boxes.shape[0]]
    pred_boxes = trim_zeros(np.reshape(np.asarray(pred_boxes), (-1, 4)))
    pred_scores = np.asarray(pred_scores)[:pred_boxes.shape[0]]
    # Stable sort on -score keeps the input order among equal scores.
    indices = np.argsort(-pred_scores, kind="stable")
    pred_boxes = pred_boxes[indices]
    pred_class_ids = np.asarray(pred_class_ids)[indices]
    pred_scores = pred_scores[indices]
    pred_masks = np.asarray(pred_masks)[..., indices]

    overlaps = compute_overlaps_masks(pred_masks, gt_masks)

    pred_match = -1 * np.ones([pred_boxes.shape[0]])
    gt_match = -1 * np.ones([gt_boxes.shape[0]])
    for i in range(len(pred_boxes)):
        sorted_ixs = np.argsort(overlaps[i])[::-1]
        low_score_idx = np.where(overlaps[i, sorted_ixs] < score_threshold)[0]
        if low_score_idx.size > 0:
            sorted_ixs = sorted_ixs[:low_score_idx[0]]
        for j in sorted_ixs:
            if gt_match[j] > -1:
                continue
            if overlaps[i, j] < iou_threshold:
                break
            if pred_class_ids[i] == gt_class_ids[j]:
                gt_match[j] = i
                pred_match[i] = j
                break
    return gt_match, pred_match, overlaps


def compute_ap(gt_boxes, gt_class_ids, gt_masks,
               pred_boxes, pred_class_ids, pred_scores, pred_masks,
               iou_threshold=0.5):
    """Average precision of one image's predictions at one mask-IoU threshold
    (VOC style: area under the monotone precision envelope, all recall points).

    Returns:
      mAP: float.
      precisions: [P + 2] precision envelope, padded with 0 at both ends.
      recalls: [P + 2] recall after each prediction, padded with 0 first and 1 last.
      overlaps: [P, G] mask IoU (rows in descending-score order).
    With no GT instances every recall is NaN-free 0 and mAP is 0.
    """
    gt_match, pred_match, overlaps = compute_matches(
        gt_boxes, gt_class_ids, gt_masks,
        pred_boxes, pred_class_ids, pred_scores, pred_masks,
        iou_threshold)

    hits = np.cumsum(pred_match > -1)
    precisions = hits / (np.arange(len(pred_match)) + 1)
    recalls = hits.astype(np.float32) / max(len(gt_match), 1)

    precisions = np.concatenate([[0], precisions, [0]])
    recalls = np.concatenate([[0], recalls, [1]])
    # Envelope: precision at a recall is the best precision at any higher recall.
    for i in range(len(precisions) - 2, -1, -1):
        precisions[i] = np.maximum(precisions[i], precisions[i + 1])

    indices = np.where(recalls[:-1] != recalls[1:])[0] + 1
    mAP = np.sum((recalls[indices] - recalls[indices - 1]) * precisions[indices])
    return mAP, precisions, recalls, overlaps


def compute_ap_range(gt_box, gt_class_id, gt_mask,
                     pred_box, pred_class_id, pred_score, pred_mask,
                     iou_thresholds=None, verbose=1):
    """Mean of `compute_ap` over IoU thresholds (default 0.50:0.05:0.95).

    verbose > 0 prints one line per threshold and the mean (Matterport's display style).
    """
    if iou_thresholds is None:
        iou_thresholds = np.arange(0.5, 1.0, 0.05)
    iou_thresholds = list(iou_thresholds)
    if not iou_thresholds:
        raise ValueError("compute_ap_range: iou_thresholds is empty")
    aps = []
    for iou_threshold in iou_thresholds:
        ap, _, _, _ = compute_ap(gt_box, gt_class_id, gt_mask,
                                 pred_box, pred_class_id, pred_score, pred_mask,
                                 iou_threshold=iou_threshold)
        if verbose:
            print(f"AP @{iou_threshold:.2f}:\t {ap:.3f}")
        aps.append(ap)
    mean_ap = np.array(aps).mean()
    if verbose:
        print(f"AP @{iou_thresholds[0]:.2f}-{iou_thresholds[-1]:.2f}:\t {mean_ap:.3f}")
    return mean_ap


def compute_recall(pred_boxes, gt_boxes, iou):
    """Fraction of GT boxes that some predicted box overlaps with IoU >= iou
    (each prediction counts for its best GT only).

    pred_boxes: [P, (y1, x1, y2, x2)]; gt_boxes: [G, (y1, x1, y2, x2)], image pixels.
    Returns: (recall, positive_ids) where positive_ids are the predictions with IoU >= iou.
    """
    overlaps = compute_overlaps(pred_boxes, gt_boxes)
    iou_max = np.max(overlaps, axis=1)
    iou_argmax = np.argmax(overlaps, axis=1)
    positive_ids = np.where(iou_max >= iou)[0]
    matched_gt_boxes = iou_argmax[positive_ids]
    recall = len(set(matched_gt_boxes)) / gt_boxes.shape[0]
    return recall, positive_ids


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
