"""Serving graph: raw image in, detections in the image's own pixel frame out, as TF ops only.

`detect()` wraps the Keras model in NumPy (resize.resize_image, molding.compose_image_meta,
anchors.AnchorCache, molding.unmold_detections). A SavedModel cannot carry NumPy, so this
module restates each of those steps as TensorFlow ops with the same arithmetic (float64
where the NumPy code computes in float64, the same rounding and truncation), and puts them
around the inference model in one tf.function that `keras.export.ExportArchive` saves.

The in-graph resize is the method detect() molds with (Config.RESIZE_METHOD, default
"bilinear") in TF ops (`resize_scale_tf`, `scaled_size_tf`, `resize_bilinear_tf` or
`resize_area_tf`); the agreement the export measures and records (isic.modes.export) is what
tells they still match.

`load_exported` / `ExportedModel` read a SavedModel back behind detect()'s interface.
"""
import json
import logging
import os

import numpy as np
import tensorflow as tf

from mrcnn.data.molding import inference_resize_method
from mrcnn.data.resize import resize_area_tf, resize_bilinear_tf, resize_scale_tf, scaled_size_tf
from mrcnn.io.weights_file import CARD_NAME, is_exported_model  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

SERVING_RESIZE_MODES = ("square", "pad64", "none")
SIGNATURE_IMAGE = "serving_default"
SIGNATURE_BYTES = "serving_bytes"


# --- Molding ------------------------------------------------------------------------------

def mold_image_graph(image, config):
    """One RGB uint8 [H, W, 3] image -> (molded float32 [h, w, 3], image_meta float32 [meta],
    window int32 [(y1, x1, y2, x2)]): resize.resize_image + molding.mold_image +
    molding.compose_image_meta, in TF ops."""
    mode = config.IMAGE_RESIZE_MODE
    if mode not in SERVING_RESIZE_MODES:
        raise ValueError(f"IMAGE_RESIZE_MODE {mode!r} cannot be served; use one of {SERVING_RESIZE_MODES}")
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    pixels = tf.cast(image, tf.float64)
    scale = tf.constant(1.0, tf.float64)
    new_h, new_w = h, w
    if mode != "none":
        scale = resize_scale_tf(h, w, config)
        new_h, new_w = scaled_size_tf(h, w, scale)
        if inference_resize_method(config) == "area":
            # OpenCV rounds its uint8 result to the nearest grey level, halves up.
            area = tf.cast(tf.clip_by_value(resize_area_tf(pixels, new_h, new_w), 0.0, 255.0), tf.float64)
            resized = tf.floor(area + 0.5)
        else:
            resized = resize_bilinear_tf(pixels, new_h, new_w)
            # resize_image keeps the input dtype: float -> uint8 truncates (values are >= 0).
            resized = tf.floor(tf.clip_by_value(resized, 0.0, 255.0))
        pixels = tf.cond(tf.equal(scale, 1.0), lambda: pixels, lambda: resized)
    if mode == "square":
        target_h = target_w = tf.constant(int(config.IMAGE_MAX_DIM), tf.int32)
    elif mode == "pad64":
        target_h = (new_h + 63) // 64 * 64
        target_w = (new_w + 63) // 64 * 64
    else:
        target_h, target_w = new_h, new_w
    top, left = (target_h - new_h) // 2, (target_w - new_w) // 2
    # Zero padding first, then the mean comes off every pixel (padding included), as in NumPy.
    padded = tf.pad(pixels, [[top, target_h - new_h - top], [left, target_w - new_w - left], [0, 0]])
    molded = tf.cast(padded - np.asarray(config.MEAN_PIXEL, np.float64), tf.float32)  # [target_h, target_w, 3]
    channels = int(config.IMAGE_SHAPE[2])
    window = tf.stack([top, left, top + new_h, left + new_w])
    meta = tf.concat([
        tf.zeros([1], tf.float64),  # image_id
        tf.cast(tf.stack([h, w, channels, target_h, target_w, channels]), tf.float64),
        tf.cast(window, tf.float64),
        scale[tf.newaxis],
        tf.zeros([int(config.NUM_CLASSES)], tf.float64)], axis=0)
    return molded, tf.cast(meta, tf.float32), window


def pyramid_anchors_graph(config, image_h, image_w):
    """Normalised anchors [num_anchors, (y1, x1, y2, x2)] float32 for a molded h x w image:
    anchors.pyramid_anchors in TF ops (same order: level, row, column, ratio)."""
    if callable(config.BACKBONE):
        raise ValueError("a callable BACKBONE has no in-graph anchors; use IMAGE_RESIZE_MODE 'square'")
    h, w = tf.cast(image_h, tf.float64), tf.cast(image_w, tf.float64)
    ratios = np.asarray(config.RPN_ANCHOR_RATIOS, np.float64)
    levels = []
    for side, stride in zip(config.RPN_ANCHOR_SCALES, config.BACKBONE_STRIDES):
        rows = tf.cast(tf.math.ceil(h / stride), tf.int32)
        cols = tf.cast(tf.math.ceil(w / stride), tf.int32)
        ys = tf.cast(tf.range(0, rows, config.RPN_ANCHOR_STRIDE), tf.float64) * stride
        xs = tf.cast(tf.range(0, cols, config.RPN_ANCHOR_STRIDE), tf.float64) * stride
        cy, cx = tf.meshgrid(ys, xs, indexing="ij")  # [rows, cols]
        centres = tf.reshape(tf.stack([cy, cx], axis=-1), [-1, 1, 2])  # [positions, 1, 2]
        sizes = np.stack([side / np.sqrt(ratios), side * np.sqrt(ratios)], axis=1)  # [ratios, (h, w)]
        low = tf.reshape(centres - 0.5 * sizes, [-1, 2])
        high = tf.reshape(centres + 0.5 * sizes, [-1, 2])
        levels.append(tf.concat([low, high], axis=1))  # [positions * ratios, 4]
    pixels = tf.concat(levels, axis=0)
    scale = tf.stack([h - 1, w - 1, h - 1, w - 1])
    return tf.cast((pixels - tf.constant([0.0, 0.0, 1.0, 1.0], tf.float64)) / scale, tf.float32)


# --- Unmolding ----------------------------------------------------------------------------

def paste_mask(mask, box, height, width):
    """utils.unmold_mask in TF ops: a [mh, mw] float mask resized bilinearly to its pixel
    box (y1, x1, y2, x2; int32, y2/x2 exclusive), thresholded at 0.5 and pasted into an
    all-zero [height, width] uint8 image; the part outside the image is cut off."""
    y1, x1, y2, x2 = box[0], box[1], box[2], box[3]
    box_h, box_w = tf.maximum(y2 - y1, 1), tf.maximum(x2 - x1, 1)
    soft = resize_bilinear_tf(tf.cast(mask, tf.float64)[..., tf.newaxis], box_h, box_w)[..., 0]
    binary = tf.cast(soft >= 0.5, tf.uint8)  # [box_h, box_w]
    top, left = tf.clip_by_value(y1, 0, height), tf.clip_by_value(x1, 0, width)
    bottom, right = tf.clip_by_value(y2, top, height), tf.clip_by_value(x2, left, width)
    inside = binary[top - y1:bottom - y1, left - x1:right - x1]
    return tf.pad(inside, [[top, height - bottom], [left, width - right]])


def unmold_detections_graph(detections, mrcnn_mask, class_probs, image_shape, molded_shape, window):
    """molding.unmold_detections for one image, in TF ops.

    detections: [max_instances, (y1, x1, y2, x2, class_id, score)] normalised, zero rows last.
    mrcnn_mask: [max_instances, mh, mw, num_classes]. class_probs: [max_instances, num_classes].
    image_shape: the original (H, W); molded_shape: (h, w); window: int32 [4] in the molded image.
    Returns boxes int32 [N, 4] (pixels of the original image), class_ids int32 [N],
    scores float32 [N], masks uint8 [N, H, W], class_probs float32 [N, num_classes].
    """
    empty = tf.equal(detections[:, 4], 0.0)
    count = tf.where(tf.reduce_any(empty), tf.argmax(tf.cast(empty, tf.int32), output_type=tf.int32),
                     tf.shape(detections)[0])
    boxes = detections[:count, :4]
    class_ids = tf.cast(detections[:count, 4], tf.int32)
    scores = detections[:count, 5]
    probs = class_probs[:count]
    # [N, mh, mw]: each detection's mask of its own class
    soft_masks = tf.gather_nd(tf.transpose(mrcnn_mask[:count], [0, 3, 1, 2]),
                              tf.stack([tf.range(count), class_ids], axis=1))

    # Normalised molded-image boxes -> normalised window boxes (float32, as NumPy) -> pixels.
    mh, mw = tf.cast(molded_shape[0], tf.float64), tf.cast(molded_shape[1], tf.float64)
    window_norm = tf.cast((tf.cast(window, tf.float64) - tf.constant([0.0, 0.0, 1.0, 1.0], tf.float64))
                          / tf.stack([mh - 1, mw - 1, mh - 1, mw - 1]), tf.float32)
    wy1, wx1, wy2, wx2 = window_norm[0], window_norm[1], window_norm[2], window_norm[3]
    boxes = (boxes - tf.stack([wy1, wx1, wy1, wx1])) / tf.stack([wy2 - wy1, wx2 - wx1, wy2 - wy1, wx2 - wx1])
    height, width = image_shape[0], image_shape[1]
    frame = tf.cast(tf.stack([height - 1, width - 1, height - 1, width - 1]), tf.float64)
    pixel_boxes = tf.cast(tf.round(tf.cast(boxes, tf.float64) * frame
                                   + tf.constant([0.0, 0.0, 1.0, 1.0], tf.float64)), tf.int32)

    area = (pixel_boxes[:, 2] - pixel_boxes[:, 0]) * (pixel_boxes[:, 3] - pixel_boxes[:, 1])
    keep = tf.where(area > 0)[:, 0]
    pixel_boxes = tf.gather(pixel_boxes, keep)
    class_ids = tf.gather(class_ids, keep)
    scores = tf.gather(scores, keep)
    probs = tf.gather(probs, keep)
    soft_masks = tf.gather(soft_masks, keep)

    def paste_all():
        return tf.map_fn(lambda args: paste_mask(args[0], args[1], height, width), (soft_masks, pixel_boxes),
                         fn_output_signature=tf.TensorSpec([None, None], tf.uint8))

    # map_fn cannot stack an empty list of unknown-shape masks: no detection -> [0, H, W] directly.
    masks = tf.cond(tf.size(keep) > 0, paste_all, lambda: tf.zeros(tf.stack([0, height, width]), tf.uint8))
    masks = tf.reshape(masks, tf.stack([tf.shape(keep)[0], height, width]))  # [N, H, W]
    return pixel_boxes, class_ids, tf.cast(scores, tf.float32), masks, tf.cast(probs, tf.float32)


# --- The serving function -------------------------------------------------------------------

def detection_fn(model):
    """(RGB uint8 [H, W, 3]) -> dict of boxes, class_ids, scores, masks, class_probs in the
    image's frame, and best_proposal_logits [num_classes] (the most confident proposal's classifier logits,
    detected or not), for a MaskRCNN in inference mode built with one image per batch."""
    config = model.config
    if config.BATCH_SIZE != 1:
        raise ValueError(f"export needs a model built with BATCH_SIZE 1 (IMAGES_PER_GPU=1, GPU_COUNT=1), "
                         f"got {config.BATCH_SIZE}")
    predict = model._survivor_masks_fn() if config.DETECT_MASKS_ON_SURVIVORS else model._plain_fn()
    fixed_anchors = None
    if config.IMAGE_RESIZE_MODE == "square":  # every molded image has IMAGE_SHAPE: anchors are constants
        fixed_anchors = tf.constant(model.get_anchors(config.IMAGE_SHAPE)[np.newaxis])

    def detect_image(image):
        image = tf.ensure_shape(image, [None, None, 3])
        molded, meta, window = mold_image_graph(image, config)
        molded_shape = tf.shape(molded)
        if fixed_anchors is not None:
            anchors = fixed_anchors
        else:
            anchors = pyramid_anchors_graph(config, molded_shape[0], molded_shape[1])[tf.newaxis]
        detections, mrcnn_mask, class_probs, best_proposal_logits = predict(molded[tf.newaxis], meta[tf.newaxis],
                                                                           anchors)
        boxes, class_ids, scores, masks, probs = unmold_detections_graph(
            detections[0], mrcnn_mask[0], class_probs[0], tf.shape(image)[:2], molded_shape[:2], window)
        return {"boxes": boxes, "class_ids": class_ids, "scores": scores, "masks": masks, "class_probs": probs,
                "best_proposal_logits": best_proposal_logits[0]}

    return detect_image


def export_saved_model(model, directory, extra_outputs=None):
    """Write `model` as a SavedModel with two signatures:
    serving_default(image: uint8 [H, W, 3]) and serving_bytes(image_bytes: string, a JPEG
    or PNG file's content). extra_outputs(image, detections) -> dict of further outputs
    (e.g. a task's deliverable) computed from the detection tensors.

    The network is traced once: serving_bytes decodes and calls serving_default's function.
    """
    detect_image = detection_fn(model)

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8, name="image")], autograph=False)
    def serve(image):
        outputs = detect_image(image)
        if extra_outputs is not None:
            outputs.update(extra_outputs(image, outputs))
        return outputs

    @tf.function(input_signature=[tf.TensorSpec([], tf.string, name="image_bytes")], autograph=False)
    def serve_bytes(image_bytes):
        return serve(tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8, expand_animations=False))

    module = tf.Module()
    # The tf.Variables behind the Keras variables: the functions capture exactly these.
    module.model_variables = [v.value for v in model.keras_model.weights]
    signatures = {SIGNATURE_IMAGE: serve.get_concrete_function(), SIGNATURE_BYTES: serve_bytes.get_concrete_function()}
    absl_log = logging.getLogger("absl")  # one INFO line per renamed captured input: thousands
    level = absl_log.level
    absl_log.setLevel(max(level, logging.WARNING))
    try:
        tf.saved_model.save(module, str(directory), signatures=signatures)
    finally:
        absl_log.setLevel(level)


# --- Reading an export back ---------------------------------------------------------------

def read_card(directory):
    """The model card (dict) written beside a SavedModel."""
    with open(os.path.join(directory, CARD_NAME)) as f:
        return json.load(f)


class ExportedModel:
    """A SavedModel written by `export_saved_model`, behind MaskRCNN.detect()'s interface:
    `detect(images)` returns one dict per image with rois, class_ids, scores,
    masks [H, W, N] bool and class_probs. `config` is the Config it was exported from
    (when given), so post-processing can read the run's settings."""

    def __init__(self, directory, config=None):
        self.directory = str(directory)
        self.config = config
        self._loaded = tf.saved_model.load(self.directory)
        self._serve = self._loaded.signatures[SIGNATURE_IMAGE]

    def run(self, image):
        """The raw signature outputs (numpy) for one RGB uint8 image."""
        out = self._serve(image=tf.constant(np.asarray(image, np.uint8)))
        return {k: v.numpy() for k, v in out.items()}

    def detect(self, images, verbose=0):
        results = []
        for image in images:
            out = self.run(image)
            results.append({"rois": out["boxes"].astype(np.int32), "class_ids": out["class_ids"].astype(np.int32),
                            "scores": out["scores"].astype(np.float32),
                            "masks": np.moveaxis(out["masks"], 0, -1).astype(bool),
                            "class_probs": out["class_probs"].astype(np.float32),
                            "best_proposal_logits": out["best_proposal_logits"].astype(np.float32)})
        return results


__all__ = ["mold_image_graph", "pyramid_anchors_graph", "paste_mask",
           "unmold_detections_graph", "detection_fn", "export_saved_model", "read_card", "is_exported_model",
           "ExportedModel", "SERVING_RESIZE_MODES", "CARD_NAME"]
