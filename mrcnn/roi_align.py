"""PyramidROIAlign: crops a fixed-size feature patch for every box from its pyramid level."""
import keras
import tensorflow as tf

from mrcnn.layers import log2_graph
from mrcnn.molding import parse_image_meta_graph


def roi_level_graph(boxes, image_shape):
    """Pyramid level (2..5) per box, Matterport's rule: a 224x224 box (in pixels of a
    224-square image's scale) goes to P4, each halving of sqrt(area) one level down.

    boxes: [batch, num_boxes, (y1, x1, y2, x2)] normalised. image_shape: (h, w, c) of the
    molded image. Returns [batch, num_boxes] int32. Zero-area (padding) boxes get level 2.
    """
    y1, x1, y2, x2 = tf.split(boxes, 4, axis=2)
    h = y2 - y1
    w = x2 - x1
    image_area = tf.cast(image_shape[0] * image_shape[1], tf.float32)
    level = log2_graph(tf.sqrt(h * w) / (224.0 / tf.sqrt(image_area)))
    # Clip in float: log2(0) = -inf becomes level 2 (Matterport's int cast gives the same).
    level = tf.clip_by_value(4.0 + tf.round(level), 2.0, 5.0)
    level = tf.where(tf.math.is_nan(level), 2.0, level)
    return tf.squeeze(tf.cast(level, tf.int32), 2)


class PyramidROIAlign(keras.layers.Layer):
    """Inputs: boxes [batch, num_boxes, (y1, x1, y2, x2)] normalised,
               image_meta [batch, meta], feature maps P2..P5 [batch, h, w, channels].
    Output: [batch, num_boxes, pool_h, pool_w, channels], in the order of the boxes.
    Sampling is tf.image.crop_and_resize (bilinear) on normalised boxes.
    """

    def __init__(self, pool_shape, **kwargs):
        kwargs.setdefault("dtype", "float32")  # box math stays float32 under mixed precision
        super().__init__(**kwargs)
        self.pool_shape = tuple(int(v) for v in pool_shape)

    def call(self, inputs):
        boxes = inputs[0]
        image_meta = inputs[1]
        feature_maps = inputs[2:]

        image_shape = parse_image_meta_graph(image_meta)["image_shape"][0]
        roi_level = roi_level_graph(boxes, image_shape)  # [batch, num_boxes]

        pooled = []
        box_to_level = []
        for i, level in enumerate(range(2, 6)):
            ix = tf.where(tf.equal(roi_level, level))  # [n_level, (batch index, box index)]
            level_boxes = tf.stop_gradient(tf.gather_nd(boxes, ix))
            box_indices = tf.stop_gradient(tf.cast(ix[:, 0], tf.int32))
            box_to_level.append(ix)
            pooled.append(tf.image.crop_and_resize(feature_maps[i], level_boxes, box_indices,
                                                   self.pool_shape, method="bilinear"))
        pooled = tf.concat(pooled, axis=0)  # [all boxes grouped by level, ph, pw, channels]

        # Back to (batch, box) order: position of each crop in the flattened [batch * num_boxes].
        box_to_level = tf.concat(box_to_level, axis=0)
        num_boxes = tf.cast(tf.shape(boxes)[1], tf.int64)
        flat_index = box_to_level[:, 0] * num_boxes + box_to_level[:, 1]
        order = tf.argsort(flat_index, stable=True)
        pooled = tf.gather(pooled, order)

        shape = tf.concat([tf.shape(boxes)[:2], tf.shape(pooled)[1:]], axis=0)
        pooled = tf.reshape(pooled, shape)
        pooled.set_shape(self.compute_output_shape([b.shape for b in inputs]))
        return pooled

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:2]) + self.pool_shape + (input_shape[2][-1],)

    def get_config(self):
        config = super().get_config()
        config["pool_shape"] = list(self.pool_shape)
        return config
