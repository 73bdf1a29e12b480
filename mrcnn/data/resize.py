"""The one resize of the project: the scale an image gets, the image, its masks, for every
caller (training feed, detect(), the exported graph, the ISIC modes and figures).

Two named methods:
- "bilinear": Matterport's resize (skimage.transform.resize, order 1, half-pixel sample
  positions, zero beyond the border, no anti-aliasing). The COCO weights and the fidelity
  reference saw images molded this way; detect() and the exported graph use it by default.
- "area": pixel-area averaging when shrinking (cv2.INTER_AREA: hairs and lesion borders do
  not alias), bilinear when enlarging. The training feed shrinks with it.

Config.RESIZE_METHOD picks one method for training and inference alike; None keeps the
split above (training "area", detect() "bilinear").

A side never shrinks below one pixel, so a 4000x3 strip still resizes (to 256x1, say).
`resize_scale_tf`, `resize_bilinear_tf` and `resize_area_tf` restate the scale and the two
methods in TensorFlow ops for the exported graph (tests hold them to the NumPy ones);
TensorFlow is imported only when they are called.
"""
import random

import cv2
import numpy as np
import skimage.transform

from mrcnn.config import RESIZE_MODES

RESIZE_METHODS = ("bilinear", "area")
_CV2_MAX_CHANNELS = 512


def resize(image, output_shape, order=1, mode="constant", cval=0, clip=True,
           preserve_range=False, anti_aliasing=False, anti_aliasing_sigma=None):
    """Matterport's utils.resize: skimage.transform.resize without anti-aliasing by default.

    A bool image is resized as float 0/1 when order > 0 (new skimage refuses bool with
    interpolation; old skimage converted it itself)."""
    image = np.asarray(image)
    if image.dtype == bool and order != 0:
        image = image.astype(np.float64)
    return skimage.transform.resize(
        image, output_shape, order=order, mode=mode, cval=cval, clip=clip,
        preserve_range=preserve_range, anti_aliasing=anti_aliasing,
        anti_aliasing_sigma=anti_aliasing_sigma)


def resize_scale(height, width, min_dim=None, max_dim=None, min_scale=None, mode="square"):
    """The factor `resize_image` applies to a height x width image: up to min_dim on the
    short side (never down), at least min_scale, and in "square" mode at most what fits the
    long side in max_dim. "none" is 1."""
    if mode == "none":
        return 1
    factor = max(1, min_dim / min(height, width)) if min_dim else 1
    if min_scale:
        factor = max(factor, min_scale)
    if mode == "square" and max_dim and round(max(height, width) * factor) > max_dim:
        factor = max_dim / max(height, width)
    return factor


def config_scale(shape, config):
    """`resize_scale` for an image of `shape` under a Config's IMAGE_* values."""
    return resize_scale(shape[0], shape[1], config.IMAGE_MIN_DIM, config.IMAGE_MAX_DIM,
                        config.IMAGE_MIN_SCALE, config.IMAGE_RESIZE_MODE)


def scaled_size(height, width, scale):
    """(rows, cols) of a height x width image resized by `scale`: rounded, at least 1."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_array(array, height, width, method="bilinear"):
    """[H, W] or [H, W, C] array -> [height, width(, C)], same dtype (uint8 from "bilinear"
    is truncated, as Matterport's resize_image does; bool is resized as 0/1 and
    thresholded at one half)."""
    if method not in RESIZE_METHODS + ("area_tf",):
        raise ValueError(f"unknown resize method {method!r}; use one of {', '.join(RESIZE_METHODS)}")
    array = np.asarray(array)
    height, width = int(height), int(width)
    if array.shape[:2] == (height, width):
        return array.copy()
    if array.dtype == bool:
        return resize_array(array.astype(np.float32), height, width, method) >= 0.5
    if method == "bilinear" or array.shape[0] == 0 or array.shape[1] == 0:
        out = resize(array, (height, width) + array.shape[2:], preserve_range=True)
        return out.astype(array.dtype)
    if method == "area_tf" and array.dtype == np.uint8 and array.ndim == 3:
        return _area_as_exported(array, height, width)
    return _cv2_area(array, height, width)


def _area_as_exported(image, height, width):
    """"area" through resize_area_tf, rounded half up as the exported graph rounds: detect() molds
    with it, so that detect() and the SavedModel see the same pixels to the bit (OpenCV's result,
    which the training feed uses, is the same average within a grey level on ~0.02 % of pixels)."""
    import tensorflow as tf
    exact = resize_area_tf(tf.constant(image, tf.float64), int(height), int(width))
    return np.clip(np.floor(exact.numpy().astype(np.float64) + 0.5), 0, 255).astype(np.uint8)


def _cv2_area(array, height, width):
    """cv2.INTER_AREA when both sides shrink (or stay), INTER_LINEAR otherwise; any number of
    channels (OpenCV's INTER_AREA takes at most 4 at once at a non-integer factor, INTER_LINEAR
    512)."""
    shrinking = height <= array.shape[0] and width <= array.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    step = 4 if shrinking else _CV2_MAX_CHANNELS
    if array.dtype == np.uint8:
        # In float64, then rounded half up: OpenCV's own uint8 path is fixed point, a grey level off
        # here and there from the exact average that the exported graph (resize_area_tf) computes.
        exact = _cv2_area(array.astype(np.float64), height, width)
        return np.clip(np.floor(exact + 0.5), 0, 255).astype(np.uint8)
    work = array if array.dtype in (np.uint16, np.float32, np.float64) else array.astype(np.float32)
    if work.ndim == 2:
        return cv2.resize(work, (width, height), interpolation=interpolation).astype(array.dtype)
    out = np.empty((height, width) + work.shape[2:], dtype=array.dtype)
    for first in range(0, work.shape[2], step):
        chunk = np.ascontiguousarray(work[:, :, first:first + step])
        resized = cv2.resize(chunk, (width, height), interpolation=interpolation)
        out[:, :, first:first + step] = resized.reshape(height, width, -1)
    return out


def resize_masks(masks, height, width):
    """Bool instance masks [H, W, N] -> [height, width, N] by the "area" method: a pixel is
    inside when at least half of its area was (enlarging: bilinear, >= 0.5)."""
    masks = np.asarray(masks)
    if masks.shape[0] == 0 or masks.shape[1] == 0 or masks.shape[-1] == 0:
        return np.zeros((height, width, masks.shape[-1]), dtype=bool)
    return resize_array(masks.astype(np.float32), height, width, "area") >= 0.5


def _pad_centred(image, out_height, out_width):
    """Zero-pad image [h, w, ...] to [out_height, out_width, ...], the extra row/column of an
    odd margin going to the bottom/right. Returns (image, window, padding)."""
    height, width = image.shape[:2]
    top = (out_height - height) // 2
    left = (out_width - width) // 2
    padding = [(top, out_height - height - top), (left, out_width - width - left), (0, 0)]
    padded = np.pad(image, padding[:image.ndim])
    return padded, (top, left, top + height, left + width), padding


def resize_image(image, min_dim=None, max_dim=None, min_scale=None, mode="square", rng=None,
                 method="bilinear"):
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
    method: "bilinear" (Matterport's, the default) or "area" (see the module docstring).
    Returns:
      image: resized image, same dtype as the input.
      window: (y1, x1, y2, x2) of the image inside the padded result; y2, x2 exclusive.
      scale: the resize factor.
      padding: [(top, bottom), (left, right), (0, 0)].
      crop: (y, x, h, w) in "crop" mode, else None.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize_image: unknown mode {mode!r}; use one of {', '.join(RESIZE_MODES)}")
    image = np.asarray(image)
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"resize_image: the image is empty ({height}x{width} pixels)")
    no_padding = [(0, 0), (0, 0), (0, 0)]
    if mode == "none":
        return image, (0, 0, height, width), 1, no_padding, None
    if mode == "square" and not max_dim:
        raise ValueError("resize_image: mode 'square' needs max_dim (IMAGE_MAX_DIM)")
    if mode == "crop" and not min_dim:
        raise ValueError("resize_image: mode 'crop' needs min_dim (IMAGE_MIN_DIM)")
    if mode == "pad64" and min_dim and min_dim % 64 != 0:
        raise ValueError(f"resize_image: mode 'pad64' needs min_dim to be a multiple of 64, got {min_dim}")

    scale = resize_scale(height, width, min_dim, max_dim, min_scale, mode)
    resized = image if scale == 1 else resize_array(image, *scaled_size(height, width, scale), method)
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
        return cropped, (0, 0, min_dim, min_dim), scale, no_padding, (y, x, min_dim, min_dim)
    if mode == "square":
        target = (max_dim, max_dim)
    else:  # pad64: round each side up to the next multiple of 64
        target = (64 * -(-new_height // 64), 64 * -(-new_width // 64))
    padded, window, padding = _pad_centred(resized, *target)
    return padded, window, scale, padding, None


def resize_mask(mask, scale, padding, crop=None):
    """Resize and pad (or crop) masks the way `resize_image` did the image.

    mask: [H, W, N]; scale, padding, crop: as returned by `resize_image`. The size before
    padding is `scaled_size`, like the image's; the resampling is `resize_masks`.
    Returns: bool [h, w, N].
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"resize_mask needs a [height, width, instances] mask, got shape {mask.shape}")
    if scale != 1:
        mask = resize_masks(mask, *scaled_size(mask.shape[0], mask.shape[1], scale))
    mask = mask.astype(bool)
    if crop is not None:
        y, x, h, w = crop
        return mask[y:y + h, x:x + w]
    return np.pad(mask, padding)


# --- The same in TensorFlow ops, for the exported graph -------------------------------------

def resize_scale_tf(h, w, config):
    """`config_scale` for an h x w image as a float64 scalar tensor ("square" and "pad64")."""
    import tensorflow as tf
    h, w = tf.cast(h, tf.float64), tf.cast(w, tf.float64)
    scale = tf.constant(1.0, tf.float64)
    if config.IMAGE_MIN_DIM:
        scale = tf.maximum(scale, float(config.IMAGE_MIN_DIM) / tf.minimum(h, w))
    if config.IMAGE_MIN_SCALE:
        scale = tf.maximum(scale, float(config.IMAGE_MIN_SCALE))
    if config.IMAGE_MAX_DIM and config.IMAGE_RESIZE_MODE == "square":
        longest = tf.maximum(h, w)
        too_big = tf.round(longest * scale) > float(config.IMAGE_MAX_DIM)
        scale = tf.where(too_big, float(config.IMAGE_MAX_DIM) / longest, scale)
    return scale


def scaled_size_tf(h, w, scale):
    """`scaled_size` as two int32 scalar tensors."""
    import tensorflow as tf

    def side(n):
        return tf.maximum(tf.cast(tf.round(tf.cast(n, tf.float64) * scale), tf.int32), 1)
    return side(h), side(w)


def _axis_samples_tf(in_size, out_size):
    """Where each output sample of one axis falls in the input (half-pixel centres): the
    index of its lower neighbour in a 1-pixel zero-padded input, and the two linear weights
    computed as scipy's spline code does (w_low = 1 - frac, w_high = 1 - w_low)."""
    import tensorflow as tf
    ratio = tf.cast(in_size, tf.float64) / tf.cast(out_size, tf.float64)
    position = (tf.range(out_size, dtype=tf.float64) + 0.5) * ratio - 0.5  # [out]
    lower = tf.floor(position)
    w_low = 1.0 - (position - lower)
    return tf.cast(lower, tf.int32) + 1, w_low, 1.0 - w_low


def resize_bilinear_tf(image, out_h, out_w):
    """The "bilinear" method in TF ops: [H, W, C] float64 -> [out_h, out_w, C] float64.

    The four neighbours are weighed and summed in scipy's order, ((v * wy) * wx) added
    top-left, top-right, bottom-left, bottom-right, so that the float64 result is the same
    to the last bit and truncating it to uint8 gives the same grey levels."""
    import tensorflow as tf
    padded = tf.pad(image, [[1, 1], [1, 1], [0, 0]])  # [H + 2, W + 2, C]
    rows, wy0, wy1 = _axis_samples_tf(tf.shape(image)[0], out_h)
    cols, wx0, wx1 = _axis_samples_tf(tf.shape(image)[1], out_w)
    wy0, wy1 = wy0[:, tf.newaxis, tf.newaxis], wy1[:, tf.newaxis, tf.newaxis]
    wx0, wx1 = wx0[tf.newaxis, :, tf.newaxis], wx1[tf.newaxis, :, tf.newaxis]
    top, bottom = tf.gather(padded, rows), tf.gather(padded, rows + 1)  # [out_h, W + 2, C]
    top_left, top_right = tf.gather(top, cols, axis=1), tf.gather(top, cols + 1, axis=1)  # [out_h, out_w, C]
    bottom_left, bottom_right = tf.gather(bottom, cols, axis=1), tf.gather(bottom, cols + 1, axis=1)
    # MulNoNan (x * y for finite weights) because grappler reorders chains of Mul to
    # minimise broadcasts, which would change the rounding.
    weigh = tf.math.multiply_no_nan
    total = weigh(weigh(top_left, wy0), wx0)
    total = total + weigh(weigh(top_right, wy0), wx1)
    total = total + weigh(weigh(bottom_left, wy1), wx0)
    return total + weigh(weigh(bottom_right, wy1), wx1)


def resize_area_tf(image, out_h, out_w):
    """The "area" method in TF ops: [H, W, C] float -> [out_h, out_w, C] float32, before the
    rounding to uint8. Shrinking (both sides shrink or stay): tf.image.resize's "area", the
    pixel-area average of cv2.INTER_AREA; enlarging: half-pixel bilinear with the edges
    clamped, as cv2.INTER_LINEAR. OpenCV computes uint8 in fixed point, so the two agree
    within a grey level (tests hold them to that), not to the bit as resize_bilinear_tf does."""
    import tensorflow as tf
    shape = tf.shape(image)
    shrinking = tf.logical_and(out_h <= shape[0], out_w <= shape[1])
    size = tf.stack([out_h, out_w])

    def area():
        return tf.cast(tf.image.resize(image, size, method="area"), tf.float32)

    def linear():
        return tf.cast(tf.image.resize(image, size, method="bilinear"), tf.float32)

    return tf.cond(shrinking, area, linear)
