"""Moving images and detections between the original frame and the network's frame.

"Molding" resizes and mean-subtracts an image and records where it went (the image meta);
"unmolding" maps network outputs (normalised boxes, 28x28 masks) back to the original image.
"""
import math

import numpy as np

from mrcnn import utils


def compose_image_meta(image_id, original_image_shape, image_shape, window, scale, active_class_ids):
    """One image's attributes as a 1D array (Matterport's layout):
    image_id(1), original_image_shape(3), image_shape(3), window(4) in pixels of the molded
    image (y1, x1, y2, x2), scale(1), active_class_ids(NUM_CLASSES)."""
    return np.array([image_id] + list(original_image_shape) + list(image_shape) + list(window)
                    + [scale] + list(active_class_ids))


def parse_image_meta(meta):
    """[batch, meta length] numpy array -> dict of its components (numpy)."""
    meta = np.asarray(meta)
    return {
        "image_id": meta[:, 0].astype(np.int32),
        "original_image_shape": meta[:, 1:4].astype(np.int32),
        "image_shape": meta[:, 4:7].astype(np.int32),
        "window": meta[:, 7:11].astype(np.int32),
        "scale": meta[:, 11].astype(np.float32),
        "active_class_ids": meta[:, 12:].astype(np.int32),
    }


def parse_image_meta_graph(meta):
    """[batch, meta length] tensor -> dict of its components (tensors, float)."""
    return {
        "image_id": meta[:, 0],
        "original_image_shape": meta[:, 1:4],
        "image_shape": meta[:, 4:7],
        "window": meta[:, 7:11],
        "scale": meta[:, 11],
        "active_class_ids": meta[:, 12:],
    }


def mold_image(images, config):
    """RGB image(s) -> float32 network input: subtract the mean pixel."""
    return images.astype(np.float32) - config.MEAN_PIXEL


def unmold_image(normalized_images, config):
    """Inverse of mold_image, back to uint8."""
    return (normalized_images + config.MEAN_PIXEL).astype(np.uint8)


def mold_inputs(images, config):
    """List of HxWxC images -> (molded_images [N, h, w, C] float32, image_metas [N, meta],
    windows [N, (y1, x1, y2, x2)] where each original image sits in its molded image)."""
    molded_images, image_metas, windows = [], [], []
    for image in images:
        molded, window, scale, _padding, _crop = utils.resize_image(
            image, min_dim=config.IMAGE_MIN_DIM, min_scale=config.IMAGE_MIN_SCALE,
            max_dim=config.IMAGE_MAX_DIM, mode=config.IMAGE_RESIZE_MODE)
        molded = mold_image(molded, config)
        meta = compose_image_meta(0, image.shape, molded.shape, window, scale,
                                  np.zeros([config.NUM_CLASSES], dtype=np.int32))
        molded_images.append(molded)
        image_metas.append(meta)
        windows.append(window)
    return (np.stack(molded_images).astype(np.float32), np.stack(image_metas).astype(np.float32),
            np.stack(windows))


def unmold_detections(detections, mrcnn_mask, original_image_shape, image_shape, window, class_probs=None):
    """One image's network outputs -> results in the original image frame.

    detections: [N, (y1, x1, y2, x2, class_id, score)] normalised, zero-padded.
    mrcnn_mask: [N, height, width, num_classes] soft masks.
    class_probs: optional [N, num_classes] softmax rows of the same detections.
    Returns boxes [n, (y1, x1, y2, x2)] int32 pixels, class_ids [n] int32, scores [n] float32,
    masks [H, W, n] bool, and class_probs [n, num_classes] float32 (when given).
    """
    zero_ix = np.where(detections[:, 4] == 0)[0]
    n = zero_ix[0] if zero_ix.shape[0] > 0 else detections.shape[0]

    boxes = detections[:n, :4]
    class_ids = detections[:n, 4].astype(np.int32)
    scores = detections[:n, 5].astype(np.float32)
    masks = mrcnn_mask[np.arange(n), :, :, class_ids]
    probs = None if class_probs is None else np.asarray(class_probs[:n], dtype=np.float32)

    # Normalised boxes of the molded image -> normalised boxes of the window -> pixels.
    window = utils.norm_boxes(window, image_shape[:2])
    wy1, wx1, wy2, wx2 = window
    shift = np.array([wy1, wx1, wy1, wx1])
    wh = wy2 - wy1
    ww = wx2 - wx1
    scale = np.array([wh, ww, wh, ww])
    boxes = np.divide(boxes - shift, scale)
    boxes = utils.denorm_boxes(boxes, original_image_shape[:2])

    exclude = np.where((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) <= 0)[0]
    if exclude.shape[0] > 0:
        boxes = np.delete(boxes, exclude, axis=0)
        class_ids = np.delete(class_ids, exclude, axis=0)
        scores = np.delete(scores, exclude, axis=0)
        masks = np.delete(masks, exclude, axis=0)
        if probs is not None:
            probs = np.delete(probs, exclude, axis=0)
        n = class_ids.shape[0]

    # Pasted straight into one [H, W, n] array: stacking n full-size masks costs ~1 s at 1024 x 1024.
    full_masks = np.zeros(tuple(original_image_shape[:2]) + (n,), dtype=bool)
    for i in range(n):
        utils.unmold_mask(masks[i], boxes[i], original_image_shape, out=full_masks[..., i])
    result = (boxes.astype(np.int32), class_ids, scores, full_masks)
    if class_probs is not None:
        result += (probs,)
    return result


def compute_backbone_shapes(config, image_shape):
    """[levels, (height, width)] of the backbone feature maps for an image shape."""
    if callable(config.BACKBONE):
        if config.COMPUTE_BACKBONE_SHAPE is None:
            raise ValueError("a callable Config.BACKBONE needs Config.COMPUTE_BACKBONE_SHAPE "
                             "(a function image_shape -> feature map shapes)")
        return config.COMPUTE_BACKBONE_SHAPE(image_shape)
    if config.BACKBONE not in ("resnet50", "resnet101", "resnet18"):
        raise ValueError(f"unknown Config.BACKBONE {config.BACKBONE!r}")
    return np.array([[int(math.ceil(image_shape[0] / stride)), int(math.ceil(image_shape[1] / stride))]
                     for stride in config.BACKBONE_STRIDES])


__all__ = ["compose_image_meta", "parse_image_meta", "parse_image_meta_graph", "mold_image",
           "unmold_image", "mold_inputs", "unmold_detections", "compute_backbone_shapes"]
