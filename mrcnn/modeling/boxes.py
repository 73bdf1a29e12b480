"""The one box coder: encode/decode/clip/normalise and pairwise IoU, NumPy and TensorFlow
side by side (as torchvision's BoxCoder keeps them together).

Conventions, fixed by the COCO weights (their box heads were trained on them):
- A box is (y1, x1, y2, x2). In pixels (y2, x2) is exclusive, so y2 - y1 is the pixel count.
- A delta is (dy, dx, log(dh), log(dw)) of the Faster R-CNN parameterisation: the shift of the
  centre in units of the source box's size, and the log of the size ratio.
- Normalised coordinates map pixel p to p / (size - 1) for (y1, x1) and (p - 1) / (size - 1)
  for the exclusive (y2, x2), so a box covering the whole image becomes (0, 0, 1, 1).

The arithmetic (centre = corner + size / 2, new corner = centre - new size / 2, far corner =
corner + size, normalising by division) is carried out in the same order as the reference
Mask R-CNN, so that the TF decoder reproduces the reference detections bit for bit; do not
"simplify" it. `*_np` functions take and return NumPy arrays, `*_tf` functions tf tensors
(inside a layer's call(), never KerasTensors).
"""
import math

import numpy as np

# An untrained head may predict exp(huge): log-scales are capped here (detectron2's bound).
LOG_SCALE_LIMIT = math.log(1000.0 / 16)
# Offset between an exclusive pixel corner and an inclusive normalised one.
_CORNER_SHIFT = (0.0, 0.0, 1.0, 1.0)


def _split_np(boxes):
    """[N, 4] boxes -> (corner [N, 2], size [N, 2], centre [N, 2])."""
    corner = boxes[:, :2]
    size = boxes[:, 2:4] - corner
    return corner, size, corner + 0.5 * size


# --- NumPy -----------------------------------------------------------------------------------

def encode_np(boxes, targets, std_dev=None):
    """Deltas [N, (dy, dx, log(dh), log(dw))] float32 that move `boxes` onto `targets`
    (both [N, (y1, x1, y2, x2)]), divided by `std_dev` (4 values) when given."""
    _, size, centre = _split_np(np.asarray(boxes, dtype=np.float32))
    _, target_size, target_centre = _split_np(np.asarray(targets, dtype=np.float32))
    deltas = np.concatenate([(target_centre - centre) / size, np.log(target_size / size)], axis=1)
    if std_dev is not None:
        deltas = deltas / np.asarray(std_dev, dtype=np.float32)
    return deltas.astype(np.float32)


def decode_np(boxes, deltas):
    """Boxes [N, (y1, x1, y2, x2)] float32 that `deltas` [N, 4] make of `boxes` [N, 4]
    (the inverse of `encode_np`; no clamping, as the NumPy API never had it)."""
    _, size, centre = _split_np(np.asarray(boxes, dtype=np.float32))
    deltas = np.asarray(deltas)
    centre = (centre + deltas[:, :2] * size).astype(np.float32)
    size = (size * np.exp(deltas[:, 2:4])).astype(np.float32)
    near = centre - 0.5 * size
    return np.concatenate([near, near + size], axis=1)


def clip_np(boxes, window):
    """Clamp each coordinate of [N, (y1, x1, y2, x2)] into window (wy1, wx1, wy2, wx2)."""
    window = np.asarray(window, dtype=np.asarray(boxes).dtype)
    return np.clip(boxes, np.tile(window[:2], 2), np.tile(window[2:], 2))


def normalize_np(boxes, shape):
    """Pixel boxes -> normalised float32 boxes; shape: (height, width, ...)."""
    height, width = shape[:2]
    extent = np.array([height - 1, width - 1, height - 1, width - 1])
    return np.divide(np.asarray(boxes) - np.array(_CORNER_SHIFT), extent).astype(np.float32)


def denormalize_np(boxes, shape):
    """Normalised boxes -> int32 pixel boxes, rounded (the inverse of `normalize_np`)."""
    height, width = shape[:2]
    extent = np.array([height - 1, width - 1, height - 1, width - 1])
    return np.around(np.multiply(boxes, extent) + np.array(_CORNER_SHIFT)).astype(np.int32)


def areas_np(boxes):
    """[N] areas of [N, (y1, x1, y2, x2)] boxes (negative for inverted boxes)."""
    boxes = np.asarray(boxes)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def iou_np(boxes1, boxes2, areas1=None, areas2=None):
    """IoU matrix [N1, N2] of boxes1 [N1, 4] and boxes2 [N2, 4], 0 where the union is empty.

    The result has the input's float type (float64 for integer boxes). Passing the areas in
    saves recomputing them; the union is (area2 + area1) - intersection, in that order.
    """
    boxes1 = np.asarray(boxes1)
    boxes2 = np.asarray(boxes2)
    areas1 = areas_np(boxes1) if areas1 is None else np.asarray(areas1)
    areas2 = areas_np(boxes2) if areas2 is None else np.asarray(areas2)
    near = np.maximum(boxes1[:, None, :2], boxes2[None, :, :2])   # [N1, N2, (y, x)]
    far = np.minimum(boxes1[:, None, 2:4], boxes2[None, :, 2:4])
    overlap = np.maximum(far - near, 0)
    intersection = overlap[..., 0] * overlap[..., 1]                # [N1, N2]
    union = (areas2[None, :] + areas1[:, None]) - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = intersection / union
    return np.where(union > 0, ratio, 0.0)


# --- TensorFlow ------------------------------------------------------------------------------

def _split_tf(boxes):
    corner = boxes[:, :2]
    size = boxes[:, 2:4] - corner
    return corner, size, corner + 0.5 * size


def encode_tf(boxes, targets, std_dev=None):
    """TF twin of `encode_np` (float32 tensors)."""
    import tensorflow as tf
    _, size, centre = _split_tf(boxes)
    _, target_size, target_centre = _split_tf(targets)
    deltas = tf.concat([(target_centre - centre) / size, tf.math.log(target_size / size)], axis=1)
    if std_dev is not None:
        deltas = deltas / tf.constant(np.asarray(std_dev, dtype=np.float32))
    return deltas


def decode_tf(boxes, deltas):
    """TF twin of `decode_np`, hardened for training: non-finite deltas count as 0 and the
    log-scales are capped at LOG_SCALE_LIMIT, so a box is never NaN (trained deltas are far
    inside the cap, so inference numbers equal the reference's)."""
    import tensorflow as tf
    deltas = tf.where(tf.math.is_finite(deltas), deltas, tf.zeros_like(deltas))
    shift = deltas[:, :2]
    log_scale = tf.minimum(deltas[:, 2:4], LOG_SCALE_LIMIT)
    _, size, centre = _split_tf(boxes)
    centre = centre + shift * size
    size = size * tf.exp(log_scale)
    near = centre - 0.5 * size
    return tf.concat([near, near + size], axis=1)


def clip_tf(boxes, window):
    """Clamp [N, (y1, x1, y2, x2)] into window (wy1, wx1, wy2, wx2); keeps the static shape."""
    import tensorflow as tf
    window = tf.cast(window, boxes.dtype)
    low = tf.tile(window[:2], [2])
    high = tf.tile(window[2:], [2])
    clipped = tf.maximum(tf.minimum(boxes, high), low)
    clipped.set_shape((boxes.shape[0], 4))
    return clipped


def _extent_tf(shape):
    import tensorflow as tf
    size = tf.cast(shape, tf.float32)[..., :2] - 1.0   # (height - 1, width - 1)
    return tf.tile(size, [2])


def normalize_tf(boxes, shape):
    """TF twin of `normalize_np` (float32); shape: (height, width)."""
    import tensorflow as tf
    return tf.divide(boxes - tf.constant(_CORNER_SHIFT), _extent_tf(shape))


def denormalize_tf(boxes, shape):
    """TF twin of `denormalize_np` (int32)."""
    import tensorflow as tf
    return tf.cast(tf.round(boxes * _extent_tf(shape) + tf.constant(_CORNER_SHIFT)), tf.int32)


def to_frame_tf(boxes, frames):
    """Express boxes [N, 4] in the frame of `frames` [N, 4]: frame (y1, x1) -> (0, 0) and
    frame (y2, x2) -> (1, 1) (how a ROI lands on its GT box's mini-mask)."""
    import tensorflow as tf
    origin = tf.tile(frames[:, :2], [1, 2])
    extent = tf.tile(frames[:, 2:4] - frames[:, :2], [1, 2])
    return (boxes - origin) / extent


def iou_tf(boxes1, boxes2):
    """IoU matrix [N1, N2] of float boxes1 [N1, 4] and boxes2 [N2, 4] (0 where the union is 0)."""
    import tensorflow as tf
    near = tf.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    far = tf.minimum(boxes1[:, None, 2:4], boxes2[None, :, 2:4])
    overlap = tf.maximum(far - near, 0.0)
    intersection = overlap[..., 0] * overlap[..., 1]
    size1 = boxes1[:, 2:4] - boxes1[:, :2]
    size2 = boxes2[:, 2:4] - boxes2[:, :2]
    area1 = size1[:, 0] * size1[:, 1]
    area2 = size2[:, 0] * size2[:, 1]
    return tf.math.divide_no_nan(intersection, area1[:, None] + area2[None, :] - intersection)


# --- Matterport's NumPy box helpers (mrcnn.utils re-exports them) ----------------------------

def compute_iou(box, boxes, box_area, boxes_area):
    """IoU of one box with each of `boxes`.

    box: [(y1, x1, y2, x2)]; boxes: [N, (y1, x1, y2, x2)];
    box_area: float; boxes_area: [N]. Areas are passed in so callers compute them once.
    Returns: [N] IoU values (0 between two zero-area boxes).
    """
    box = np.asarray(box)[None, :4]
    return iou_np(boxes, box, np.asarray(boxes_area), np.reshape(box_area, 1))[:, 0]


def compute_overlaps(boxes1, boxes2):
    """IoU matrix between two sets of boxes (one broadcast, no loop).

    boxes1: [N1, (y1, x1, y2, x2)]; boxes2: [N2, (y1, x1, y2, x2)].
    Returns: float64 [N1, N2].
    """
    return iou_np(boxes1, boxes2).astype(np.float64)


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
    areas = areas_np(boxes)
    queue = np.argsort(np.asarray(scores))[::-1]
    kept = []
    while queue.size:
        head, queue = queue[0], queue[1:]
        kept.append(head)
        queue = queue[compute_iou(boxes[head], boxes[queue], areas[head], areas[queue]) <= threshold]
    return np.array(kept, dtype=np.int32)


def apply_box_deltas(boxes, deltas):
    """Apply refinement deltas to boxes (`mrcnn.modeling.boxes.decode_np`).

    boxes: [N, (y1, x1, y2, x2)] (y2, x2 exclusive); deltas: [N, (dy, dx, log(dh), log(dw))].
    Returns: float32 [N, (y1, x1, y2, x2)].
    """
    return decode_np(boxes, deltas)


def box_refinement(box, gt_box):
    """Deltas that turn `box` into `gt_box` (`mrcnn.modeling.boxes.encode_np`).

    box, gt_box: [N, (y1, x1, y2, x2)] (y2, x2 exclusive).
    Returns: float32 [N, (dy, dx, log(dh), log(dw))].
    """
    return encode_np(box, gt_box)


def norm_boxes(boxes, shape):
    """Pixel boxes -> normalized float32 boxes (`mrcnn.modeling.boxes.normalize_np`).

    boxes: [N, (y1, x1, y2, x2)] pixels, exclusive y2, x2; shape: (height, width).
    """
    return normalize_np(boxes, shape)


def denorm_boxes(boxes, shape):
    """Normalized boxes -> int32 pixel boxes (`mrcnn.modeling.boxes.denormalize_np`)."""
    return denormalize_np(boxes, shape)


def trim_zeros(x):
    """Drop the all-zero rows (padding) of a [rows, columns] array."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"trim_zeros needs a 2-D array, got shape {x.shape}")
    return x[np.any(x != 0, axis=1)]
