"""Anchors for an image shape, in the order the RPN outputs its predictions."""

import numpy as np

from mrcnn.data.molding import compute_backbone_shapes
from mrcnn.modeling import boxes


class AnchorCache:
    """Normalised pyramid anchors per image shape, computed once per (height, width)."""

    def __init__(self, config):
        self.config = config
        self._cache = {}

    def get(self, image_shape):
        """[num_anchors, (y1, x1, y2, x2)] float32 in normalised coordinates."""
        return self._entry(image_shape)[1]

    def get_pixels(self, image_shape):
        """The same anchors in pixels of the image (float64)."""
        return self._entry(image_shape)[0]

    def _entry(self, image_shape):
        key = tuple(int(v) for v in image_shape[:2])
        if key not in self._cache:
            pixels = pixel_pyramid_anchors(self.config, image_shape)
            self._cache[key] = (pixels, boxes.normalize_np(pixels, key))
        return self._cache[key]


def pixel_pyramid_anchors(config, image_shape):
    """All anchors in pixels (levels P2..P6, each in row-major cell order, ratios fastest);
    the order matches the concatenated RPN outputs."""
    backbone_shapes = compute_backbone_shapes(config, image_shape)
    return generate_pyramid_anchors(
        config.RPN_ANCHOR_SCALES, config.RPN_ANCHOR_RATIOS, backbone_shapes,
        config.BACKBONE_STRIDES, config.RPN_ANCHOR_STRIDE)


def pyramid_anchors(config, image_shape):
    """pixel_pyramid_anchors normalised (mrcnn.modeling.boxes.normalize_np), float32."""
    return boxes.normalize_np(pixel_pyramid_anchors(config, image_shape), image_shape[:2])


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
