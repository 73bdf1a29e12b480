"""Anchors for an image shape, in the order the RPN outputs its predictions."""
import numpy as np

from mrcnn import utils
from mrcnn.molding import compute_backbone_shapes


class AnchorCache:
    """Normalised pyramid anchors per image shape, computed once per (height, width)."""

    def __init__(self, config):
        self.config = config
        self._cache = {}

    def get(self, image_shape):
        """[num_anchors, (y1, x1, y2, x2)] float32 in normalised coordinates."""
        key = tuple(int(v) for v in image_shape[:2])
        if key not in self._cache:
            self._cache[key] = pyramid_anchors(self.config, image_shape)
        return self._cache[key]


def pyramid_anchors(config, image_shape):
    """All anchors (levels P2..P6, each in row-major cell order, ratios fastest) for an image
    shape, normalised by norm_boxes; the order matches the concatenated RPN outputs."""
    backbone_shapes = compute_backbone_shapes(config, image_shape)
    anchors = utils.generate_pyramid_anchors(
        config.RPN_ANCHOR_SCALES, config.RPN_ANCHOR_RATIOS, backbone_shapes,
        config.BACKBONE_STRIDES, config.RPN_ANCHOR_STRIDE)
    return utils.norm_boxes(anchors, image_shape[:2]).astype(np.float32)
