"""Anchors for an image shape, in the order the RPN outputs its predictions."""

from mrcnn import boxes, utils
from mrcnn.molding import compute_backbone_shapes


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
    return utils.generate_pyramid_anchors(
        config.RPN_ANCHOR_SCALES, config.RPN_ANCHOR_RATIOS, backbone_shapes,
        config.BACKBONE_STRIDES, config.RPN_ANCHOR_STRIDE)


def pyramid_anchors(config, image_shape):
    """pixel_pyramid_anchors normalised (mrcnn.boxes.normalize_np), float32."""
    return boxes.normalize_np(pixel_pyramid_anchors(config, image_shape), image_shape[:2])
