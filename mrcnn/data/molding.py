"""Moving images and detections between the original frame and the network's frame.

"Molding" resizes and mean-subtracts an image and records where it went (the image meta);
"unmolding" maps network outputs (normalised boxes, 28x28 masks) back to the original image.
"""
import numpy as np

from mrcnn.config import BACKBONES
from mrcnn.data.masks import unmold_mask
from mrcnn.data.resize import resize_image
from mrcnn.modeling import boxes as boxes_lib


# Matterport's image meta layout: (field, first column, end column or None for "to the end").
META_FIELDS = (("image_id", 0, 1), ("original_image_shape", 1, 4), ("image_shape", 4, 7),
               ("window", 7, 11), ("scale", 11, 12), ("active_class_ids", 12, None))
_SCALAR_FIELDS = ("image_id", "scale")


def compose_image_meta(image_id, original_image_shape, image_shape, window, scale, active_class_ids):
    """One image's attributes as a 1D array (Matterport's layout, `META_FIELDS`):
    image_id(1), original_image_shape(3), image_shape(3), window(4) in pixels of the molded
    image (y1, x1, y2, x2), scale(1), active_class_ids(NUM_CLASSES)."""
    parts = (np.atleast_1d(image_id), original_image_shape, image_shape, window,
             np.atleast_1d(scale), active_class_ids)
    return np.concatenate([np.asarray(part).reshape(-1) for part in parts])


def _split_meta(meta):
    """{field: columns of `meta` [batch, meta length]}; scalar fields lose their column axis."""
    return {name: meta[:, first] if name in _SCALAR_FIELDS else meta[:, first:end]
            for name, first, end in META_FIELDS}


def parse_image_meta(meta):
    """[batch, meta length] numpy array -> dict of its components (numpy; scale float32,
    everything else int32)."""
    fields = _split_meta(np.asarray(meta))
    return {name: values.astype(np.float32 if name == "scale" else np.int32)
            for name, values in fields.items()}


def parse_image_meta_graph(meta):
    """[batch, meta length] tensor -> dict of its components (tensors, float)."""
    return _split_meta(meta)


def mold_image(images, config):
    """RGB image(s) -> float32 network input: the mean pixel subtracted."""
    return np.asarray(images, dtype=np.float32) - config.MEAN_PIXEL


def unmold_image(normalized_images, config):
    """Inverse of mold_image, back to uint8."""
    return np.asarray(normalized_images + config.MEAN_PIXEL).astype(np.uint8)


def inference_resize_method(config):
    """detect()'s resize method: Config.RESIZE_METHOD, else Matterport's "bilinear"."""
    return getattr(config, "RESIZE_METHOD", None) or "bilinear"


def mold_inputs(images, config):
    """List of HxWxC images -> (molded_images [N, h, w, C] float32, image_metas [N, meta],
    windows [N, (y1, x1, y2, x2)] where each original image sits in its molded image).
    Resizing is `mrcnn.data.resize.resize_image` with the config's mode and its inference method
    (Config.RESIZE_METHOD; None: "bilinear", as the reference molds). "area" runs through the
    exported graph's own TF op (resize "area_tf"), so detect() and the SavedModel agree to the bit."""
    method = inference_resize_method(config)
    no_active_classes = np.zeros([config.NUM_CLASSES], dtype=np.int32)
    molded, metas, windows = [], [], []
    for image in images:
        resized, window, scale = resize_image(
            image, min_dim=config.IMAGE_MIN_DIM, min_scale=config.IMAGE_MIN_SCALE,
            max_dim=config.IMAGE_MAX_DIM, mode=config.IMAGE_RESIZE_MODE,
            method="area_tf" if method == "area" else method)[:3]
        molded.append(mold_image(resized, config))
        metas.append(compose_image_meta(0, image.shape, resized.shape, window, scale, no_active_classes))
        windows.append(window)
    return (np.stack(molded).astype(np.float32), np.stack(metas).astype(np.float32),
            np.stack(windows))


def unmold_detections(detections, mrcnn_mask, original_image_shape, image_shape, window, class_probs=None):
    """One image's network outputs -> results in the original image frame.

    detections: [N, (y1, x1, y2, x2, class_id, score)] normalised, zero-padded (the first
    row with class 0 ends the list).
    mrcnn_mask: [N, height, width, num_classes] soft masks.
    class_probs: optional [N, num_classes] softmax rows of the same detections.
    Returns boxes [n, (y1, x1, y2, x2)] int32 pixels, class_ids [n] int32, scores [n] float32,
    masks [H, W, n] bool, and class_probs [n, num_classes] float32 (when given). Boxes that
    round to an empty area are dropped with everything that belongs to them, and so is every
    detection when the window is one pixel wide or high (it has no extent to map back through).
    The arithmetic (window shift and scale in float32, then rounding) is the reference's,
    so boxes and masks agree with it pixel for pixel.
    """
    detections = np.asarray(detections)
    padding = np.flatnonzero(detections[:, 4] == 0)
    count = int(padding[0]) if padding.size else detections.shape[0]
    class_ids = detections[:count, 4].astype(np.int32)
    fields = {
        "scores": detections[:count, 5].astype(np.float32),
        "class_ids": class_ids,
        "masks": mrcnn_mask[np.arange(count), :, :, class_ids],   # [n, h, w] of each own class
    }
    if class_probs is not None:
        fields["probs"] = np.asarray(class_probs[:count], dtype=np.float32)

    # Normalised in the molded image -> normalised in the window -> pixels of the original.
    window = boxes_lib.normalize_np(window, image_shape[:2])
    origin = np.tile(window[:2], 2)
    extent = np.tile(window[2:] - window[:2], 2)
    if np.all(extent > 0):
        pixel_boxes = boxes_lib.denormalize_np((detections[:count, :4] - origin) / extent,
                                               original_image_shape[:2])
    else:  # a one-pixel side in the molded image (a 4000x3 strip, say): nothing maps back
        pixel_boxes = np.zeros((count, 4), np.int32)
    visible = boxes_lib.areas_np(pixel_boxes) > 0
    pixel_boxes = pixel_boxes[visible]
    fields = {name: values[visible] for name, values in fields.items()}

    # Pasted straight into one [H, W, n] array: stacking n full-size masks costs ~1 s at 1024 x 1024.
    full_masks = np.zeros(tuple(original_image_shape[:2]) + (len(pixel_boxes),), dtype=bool)
    for i, (small, box) in enumerate(zip(fields["masks"], pixel_boxes)):
        unmold_mask(small, box, original_image_shape, out=full_masks[..., i])
    result = (pixel_boxes.astype(np.int32), fields["class_ids"], fields["scores"], full_masks)
    if class_probs is not None:
        result += (fields["probs"],)
    return result


def compute_backbone_shapes(config, image_shape):
    """[levels, (height, width)] of the backbone feature maps for an image shape."""
    if callable(config.BACKBONE):
        if config.COMPUTE_BACKBONE_SHAPE is None:
            raise ValueError("a callable Config.BACKBONE needs Config.COMPUTE_BACKBONE_SHAPE "
                             "(a function image_shape -> feature map shapes)")
        return config.COMPUTE_BACKBONE_SHAPE(image_shape)
    if config.BACKBONE not in BACKBONES:
        raise ValueError(f"unknown Config.BACKBONE {config.BACKBONE!r}")
    strides = np.asarray(config.BACKBONE_STRIDES, dtype=np.float64)[:, None]   # [levels, 1]
    return np.ceil(np.asarray(image_shape[:2], dtype=np.float64)[None, :] / strides).astype(int)


__all__ = ["compose_image_meta", "parse_image_meta", "parse_image_meta_graph", "mold_image",
           "unmold_image", "mold_inputs", "unmold_detections", "compute_backbone_shapes"]
