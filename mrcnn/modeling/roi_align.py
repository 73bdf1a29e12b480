"""PyramidROIAlign: crops a fixed-size feature patch for every box from its pyramid level."""
import tensorflow as tf

from mrcnn.data.molding import parse_image_meta_graph
from mrcnn.modeling.layers import Float32Layer, log2_graph

# The FPN levels boxes are pooled from, P2..P5 (the order of the feature-map inputs).
POOLED_LEVELS = (2, 3, 4, 5)
# FPN paper eq. 1: a box of 224 x 224 pixels (ImageNet's size) belongs to level 4.
CANONICAL_SIZE = 224.0
CANONICAL_LEVEL = 4.0


def roi_level_graph(boxes, image_shape):
    """Pyramid level (2..5) per box, the FPN paper's rule k = k0 + log2(sqrt(wh) / 224)
    rounded, with the box side measured in pixels of a square image of the same area
    (the reference's variant, which the COCO weights' heads were trained with).

    boxes: [batch, num_boxes, (y1, x1, y2, x2)] normalised. image_shape: (h, w, c) of the
    molded image. Returns [batch, num_boxes] int32. Zero-area (padding) boxes get level 2.
    """
    height = boxes[..., 2] - boxes[..., 0]
    width = boxes[..., 3] - boxes[..., 1]
    image_side = tf.sqrt(tf.cast(image_shape[0] * image_shape[1], tf.float32))
    octave = log2_graph(tf.sqrt(height * width) / (CANONICAL_SIZE / image_side))
    # In float so that log2(0) = -inf lands on level 2; NaN (0 / 0 boxes) too.
    level = tf.clip_by_value(CANONICAL_LEVEL + tf.round(octave),
                             float(POOLED_LEVELS[0]), float(POOLED_LEVELS[-1]))
    level = tf.where(tf.math.is_nan(level), float(POOLED_LEVELS[0]), level)
    return tf.cast(level, tf.int32)


class PyramidROIAlign(Float32Layer):
    """Inputs: boxes [batch, num_boxes, (y1, x1, y2, x2)] normalised,
               image_meta [batch, meta], feature maps P2..P5 [batch, h, w, channels].
    Output: [batch, num_boxes, pool_h, pool_w, channels], in the order of the boxes.
    Sampling is tf.image.crop_and_resize (bilinear) on normalised boxes; boxes get no
    gradient (as in the reference).
    """

    def __init__(self, pool_shape, **kwargs):
        super().__init__(**kwargs)
        self.pool_shape = tuple(int(v) for v in pool_shape)

    def call(self, inputs):
        boxes, image_meta = inputs[0], inputs[1]
        feature_maps = inputs[2:]
        image_shape = parse_image_meta_graph(image_meta)["image_shape"][0]

        # Flatten [batch, num_boxes] into one list of boxes, each knowing its image.
        batch_and_count = tf.shape(boxes)[:2]
        flat_boxes = tf.stop_gradient(tf.reshape(boxes, [-1, 4]))                  # [B * N, 4]
        image_of_box = tf.repeat(tf.range(batch_and_count[0]), batch_and_count[1])  # [B * N]
        slot = tf.reshape(roi_level_graph(boxes, image_shape), [-1]) - POOLED_LEVELS[0]

        # Partition the boxes by level, crop each part from its map, stitch back in box order.
        parts = len(POOLED_LEVELS)
        positions = tf.dynamic_partition(tf.range(tf.size(slot)), slot, parts)
        level_boxes = tf.dynamic_partition(flat_boxes, slot, parts)
        level_images = tf.dynamic_partition(image_of_box, slot, parts)
        crops = [tf.image.crop_and_resize(fmap, b, i, self.pool_shape, method="bilinear")
                 for fmap, b, i in zip(feature_maps, level_boxes, level_images)]
        pooled = tf.dynamic_stitch(positions, crops)                    # [B * N, ph, pw, C]

        pooled = tf.reshape(pooled, tf.concat([batch_and_count, tf.shape(pooled)[1:]], axis=0))
        pooled.set_shape(self.compute_output_shape([b.shape for b in inputs]))
        return pooled

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:2]) + self.pool_shape + (input_shape[2][-1],)

    def get_config(self):
        config = super().get_config()
        config["pool_shape"] = list(self.pool_shape)
        return config
