"""The Mask R-CNN graph pieces on hand-made inputs, each against numbers worked out by hand
or a small sampler written from the op's documented definition (never against the project's
own NumPy twin of the same step; the box coder has its own tests in test_boxes.py)."""
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn import utils
from mrcnn.modeling.detection import DetectionLayer
from mrcnn.modeling.layers import (BatchNorm, Float32Layer, TimeDistributed, apply_box_deltas_graph, batch_slice,
                                   clip_boxes_graph, denorm_boxes_graph, norm_boxes_graph, trim_zeros_graph)
from mrcnn.data.molding import (compose_image_meta, compute_backbone_shapes, mold_image, mold_inputs,
                                parse_image_meta, parse_image_meta_graph, unmold_detections, unmold_image)
from mrcnn.modeling.proposal import ProposalLayer
from mrcnn.modeling.roi_align import PyramidROIAlign, roi_level_graph
from tests.helpers import tiny_config

STD = np.array([0.1, 0.1, 0.2, 0.2])


def meta_for(image_shape, num_classes=4, window=None, batch=1):
    window = window if window is not None else (0, 0, image_shape[0], image_shape[1])
    meta = compose_image_meta(0, image_shape, image_shape, window, 1.0, np.zeros(num_classes))
    return np.tile(meta[None].astype(np.float32), (batch, 1))


# --- Graph helpers ------------------------------------------------------------------------

def test_layers_keeps_matterports_box_helper_names():
    boxes = tf.constant([[-0.2, 0.1, 0.5, 1.3]], tf.float32)
    np.testing.assert_allclose(clip_boxes_graph(boxes, tf.constant([0., 0., 1., 1.])).numpy(), [[0, 0.1, 0.5, 1]])
    np.testing.assert_allclose(norm_boxes_graph(tf.constant([[0., 0., 100., 200.]]), tf.constant([100, 200])).numpy(),
                               [[0, 0, 1, 1]])
    np.testing.assert_array_equal(denorm_boxes_graph(tf.constant([[0., 0., 1., 1.]]), tf.constant([100, 200])).numpy(),
                                  [[0, 0, 100, 200]])
    # A unit shift of the centre and a doubled height: (0, 0, 10, 10) -> (5 + 10 - 10, 5, 5 + 10 + 10, 15)
    moved = apply_box_deltas_graph(tf.constant([[0., 0., 10., 10.]]), tf.constant([[1., 0., np.log(2.), 0.]]))
    np.testing.assert_allclose(moved.numpy(), [[5, 0, 25, 10]], atol=1e-5)


def test_trim_zeros_graph_drops_padding_rows():
    rows = tf.constant([[1, 2, 3, 4], [0, 0, 0, 0], [0, 0, 0, 0.5], [0, 0, 0, 0]], tf.float32)
    kept, non_zeros = trim_zeros_graph(rows)
    np.testing.assert_array_equal(kept.numpy(), [[1, 2, 3, 4], [0, 0, 0, 0.5]])
    np.testing.assert_array_equal(non_zeros.numpy(), [True, False, True, False])


def test_batch_slice_stacks_per_item_results():
    x = tf.constant(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    sums, maxes = batch_slice([x], lambda a: [tf.reduce_sum(a), tf.reduce_max(a)], 2)
    np.testing.assert_allclose(sums.numpy(), [66, 210])
    np.testing.assert_allclose(maxes.numpy(), [11, 23])


# --- PyramidROIAlign ---------------------------------------------------------------------

def crop_and_resize_np(fmap, box, size):
    """NumPy bilinear sampler with tf.image.crop_and_resize's grid (corners on the box edges,
    zero outside the map)."""
    h, w, _ = fmap.shape
    y1, x1, y2, x2 = box
    out = np.zeros((size, size, fmap.shape[2]), np.float64)
    for i in range(size):
        yy = y1 * (h - 1) + i * (y2 - y1) * (h - 1) / (size - 1)
        for j in range(size):
            xx = x1 * (w - 1) + j * (x2 - x1) * (w - 1) / (size - 1)
            if yy < 0 or yy > h - 1 or xx < 0 or xx > w - 1:
                continue
            t, l = int(np.floor(yy)), int(np.floor(xx))
            b, r = int(np.ceil(yy)), int(np.ceil(xx))
            dy, dx = yy - t, xx - l
            top = fmap[t, l] + (fmap[t, r] - fmap[t, l]) * dx
            bottom = fmap[b, l] + (fmap[b, r] - fmap[b, l]) * dx
            out[i, j] = top + (bottom - top) * dy
    return out


def expected_level(box, image_side):
    side = np.sqrt((box[2] - box[0]) * (box[3] - box[1]))
    if side == 0:
        return 2
    return int(min(5, max(2, 4 + np.round(np.log2(side / (224.0 / image_side))))))


def test_roi_level_assignment():
    # Square boxes of normalised side s in a 224-pixel image: level = 4 + round(log2(s)).
    sides = [1.0, 0.72, 0.70, 0.5, 0.36, 0.25, 0.1, 0.0]
    boxes = np.array([[[0, 0, s, s] for s in sides]], np.float32)
    got = roi_level_graph(tf.constant(boxes), tf.constant([224., 224., 3.])).numpy()[0]
    assert list(got) == [4, 4, 3, 3, 3, 2, 2, 2]
    # A 448-pixel image moves a unit box up to P5 (and the rule clips there).
    got = roi_level_graph(tf.constant(boxes), tf.constant([448., 448., 3.])).numpy()[0]
    assert list(got) == [expected_level(b, 448) for b in boxes[0]]
    assert got[0] == 5


def test_pyramid_roi_align_crops_from_the_right_level_in_box_order():
    rng = np.random.default_rng(1)
    # Distinct maps per level so that a crop from the wrong level cannot match.
    fmaps = [rng.normal(size=(2, n, n, 3)).astype(np.float32) + 10 * k
             for k, n in enumerate((12, 7, 5, 3))]
    boxes = np.array([
        [[0.1, 0.1, 0.3, 0.35], [0.0, 0.0, 1.0, 1.0], [0.2, 0.1, 0.7, 0.6], [0.5, 0.5, 0.6, 0.55]],
        [[0.0, 0.0, 0.45, 0.6], [0.3, 0.2, 0.35, 0.3], [0.1, 0.0, 0.9, 0.95], [0.0, 0.0, 0.0, 0.0]],
    ], np.float32)
    meta = meta_for((224, 224, 3), batch=2)
    layer = PyramidROIAlign([4, 4])
    got = layer([tf.constant(boxes), tf.constant(meta)] + [tf.constant(f) for f in fmaps]).numpy()
    assert got.shape == (2, 4, 4, 4, 3)
    levels_seen = set()
    for b in range(2):
        for n in range(4):
            level = expected_level(boxes[b, n], 224)
            levels_seen.add(level)
            want = crop_and_resize_np(fmaps[level - 2][b], boxes[b, n], 4)
            np.testing.assert_allclose(got[b, n], want, rtol=1e-5, atol=1e-4, err_msg=f"box {b},{n}")
    assert levels_seen == {2, 3, 4}


# --- ProposalLayer -----------------------------------------------------------------------

def test_proposal_layer_keeps_the_best_refined_clipped_non_overlapping_anchors():
    anchors = np.array([
        [0.10, 0.10, 0.40, 0.40],  # 0: 0.90
        [0.11, 0.10, 0.41, 0.40],  # 1: 0.85, IoU 0.29 * 0.30 / (2 * 0.09 - 0.087) = 0.94 with 0 -> suppressed
        [0.50, 0.50, 0.80, 0.90],  # 2: 0.70, refined below
        [0.60, 0.00, 0.95, 0.30],  # 3: 0.95, the best
        [-0.1, 0.70, 0.20, 1.10],  # 4: 0.60, sticks out of the image: clipped
        [0.30, 0.30, 0.60, 0.60],  # 5: 0.10, lowest score: cut by pre_nms_limit
    ])
    scores = np.array([0.90, 0.85, 0.70, 0.95, 0.60, 0.10])
    deltas = np.zeros((6, 4))
    # times STD: dy = 0.1 (of the 0.3 height), width x 2: centre (0.65, 0.70) -> (0.68, 0.70),
    # width 0.4 -> 0.8, so x2 = 1.1 is clipped to 1.
    deltas[2] = [1.0, 0.0, 0.0, np.log(2.0) / 0.2]
    probs = np.stack([1 - scores, scores], axis=1)

    layer = ProposalLayer(proposal_count=5, nms_threshold=0.5, pre_nms_limit=5, images_per_gpu=1,
                          rpn_bbox_std_dev=STD)
    got = layer([tf.constant(probs[None], tf.float32), tf.constant(deltas[None], tf.float32),
                 tf.constant(anchors[None], tf.float32)]).numpy()[0]
    want = [[0.60, 0.00, 0.95, 0.30],
            [0.10, 0.10, 0.40, 0.40],
            [0.53, 0.30, 0.83, 1.00],
            [0.00, 0.70, 0.20, 1.00],
            [0, 0, 0, 0]]  # padding: only four survive
    assert got.shape == (5, 4)
    np.testing.assert_allclose(got, want, atol=1e-6)


# --- DetectionLayer ----------------------------------------------------------------------

def probs_row(cls, score, num_classes=4):
    row = np.full(num_classes, (1 - score) / (num_classes - 1))
    row[cls] = score
    return row


def test_detection_layer_filters_suppresses_and_keeps_class_probs():
    rois = np.array([
        [0.10, 0.10, 0.40, 0.40],  # 0: class 1, 0.90
        [0.12, 0.12, 0.42, 0.41],  # 1: class 1, 0.80, overlaps 0 -> suppressed
        [0.10, 0.10, 0.40, 0.40],  # 2: class 2, 0.85, same box as 0 but another class -> kept
        [0.50, 0.50, 0.70, 0.70],  # 3: background argmax -> dropped
        [0.60, 0.10, 0.90, 0.30],  # 4: class 3, 0.50 < min confidence -> dropped
        [0.60, 0.60, 0.90, 0.90],  # 5: class 1, 0.70 -> kept
        [0.00, 0.70, 0.20, 0.95],  # 6: class 2, 0.75 -> kept
        [0.45, 0.00, 0.55, 0.20],  # 7: class 3, 0.65 -> fifth by score, cut by max instances
    ])
    probs = np.stack([probs_row(1, .9), probs_row(1, .8), probs_row(2, .85), probs_row(0, .6),
                      probs_row(3, .5), probs_row(1, .7), probs_row(2, .75), probs_row(3, .65)])
    deltas = np.zeros((8, 4, 4))
    deltas[0, 1] = [1.0, -0.5, 0.3, 0.0]  # refines roi 0 (for its class only)
    deltas[0, 2] = [5.0, 5.0, 0.0, 0.0]  # another class's delta: must not be used

    image_shape = (101, 101, 3)
    meta = meta_for(image_shape, num_classes=4)
    layer = DetectionLayer(bbox_std_dev=STD, min_confidence=0.6, max_instances=4, nms_threshold=0.3,
                           images_per_gpu=1)
    detections, class_probs = layer([tf.constant(rois[None], tf.float32), tf.constant(probs[None], tf.float32),
                                     tf.constant(deltas[None], tf.float32), tf.constant(meta)])
    detections, class_probs = detections.numpy()[0], class_probs.numpy()[0]
    assert detections.shape == (4, 6) and class_probs.shape == (4, 4)

    top = [0, 2, 6, 5]  # from the comments above: score order, NMS within class only
    # roi 0 moved by its class-1 delta times STD = (0.1, -0.05, 0.06, 0): centre (0.25, 0.25) ->
    # (0.28, 0.235), height 0.3 -> 0.3 e^0.06, width unchanged; the others have zero deltas.
    height = 0.3 * np.exp(0.06)
    refined0 = [0.28 - height / 2, 0.085, 0.28 + height / 2, 0.385]
    np.testing.assert_allclose(detections[:, :4], [refined0] + rois[top[1:]].tolist(), atol=1e-6)
    np.testing.assert_array_equal(detections[:, 4], [1, 2, 2, 1])
    np.testing.assert_allclose(detections[:, 5], [0.9, 0.85, 0.75, 0.7], rtol=1e-6)
    np.testing.assert_allclose(class_probs, probs[top], rtol=1e-6)


def test_detection_layer_pads_when_few_survive():
    rois = np.array([[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.6, 0.6]])
    probs = np.stack([probs_row(2, 0.9), probs_row(0, 0.9)])
    layer = DetectionLayer(bbox_std_dev=STD, min_confidence=0.5, max_instances=5, nms_threshold=0.3,
                           images_per_gpu=1)
    detections, class_probs = layer([tf.constant(rois[None], tf.float32), tf.constant(probs[None], tf.float32),
                                     tf.zeros((1, 2, 4, 4)), tf.constant(meta_for((64, 64, 3)))])
    detections, class_probs = detections.numpy()[0], class_probs.numpy()[0]
    assert detections[0, 4] == 2
    np.testing.assert_array_equal(detections[1:], 0)
    np.testing.assert_array_equal(class_probs[1:], 0)


# --- Frozen BatchNorm and TimeDistributed ------------------------------------------------

def test_frozen_batchnorm_uses_moving_statistics_even_when_training():
    x = np.random.default_rng(3).normal(3.0, 2.0, size=(4, 5, 5, 2)).astype(np.float32)
    frozen, live = BatchNorm(train_bn=False), BatchNorm(train_bn=True)
    for bn in (frozen, live):
        bn.build(x.shape)
        bn.set_weights([np.array([2., 3.]), np.array([0.5, -1.]), np.array([1., 2.]), np.array([4., 9.])])
    want = (x - [1., 2.]) / np.sqrt(np.array([4., 9.]) + 1e-3) * [2., 3.] + [0.5, -1.]
    np.testing.assert_allclose(frozen(x, training=True).numpy(), want, rtol=1e-4, atol=1e-4)
    assert not np.allclose(live(x, training=True).numpy(), want, atol=1e-2)  # batch statistics
    assert frozen.epsilon == 1e-3


def test_time_distributed_folds_rois_and_names_weights_after_the_wrapper():
    x = np.random.default_rng(4).normal(size=(2, 3, 5, 5, 4)).astype(np.float32)
    td = TimeDistributed(keras.layers.Conv2D(6, (3, 3), name="mrcnn_mask_conv1"), name="mrcnn_mask_conv1")
    y = td(x).numpy()
    assert y.shape == (2, 3, 3, 3, 6)
    inner = td.layer
    for b in range(2):
        for r in range(3):
            np.testing.assert_allclose(y[b, r], inner(x[b, r][None]).numpy()[0], rtol=1e-5, atol=1e-5)
    assert [w.path.split("/")[0] for w in td.weights] == ["mrcnn_mask_conv1"] * 2


# --- Molding -----------------------------------------------------------------------------

def small_config(**overrides):
    """The tests' tiny network with 3 classes, one image, molded to 128 x 128."""
    return tiny_config(**{"NAME": "t", "NUM_CLASSES": 3, "IMAGES_PER_GPU": 1, "IMAGE_MAX_DIM": 128, **overrides})


def test_image_meta_round_trip():
    meta = compose_image_meta(7, (100, 150, 3), (128, 128, 3), (21, 0, 106, 128), 0.85, [1, 0, 1])
    parsed = parse_image_meta(meta[None])
    assert parsed["image_id"][0] == 7
    assert list(parsed["original_image_shape"][0]) == [100, 150, 3]
    assert list(parsed["image_shape"][0]) == [128, 128, 3]
    assert list(parsed["window"][0]) == [21, 0, 106, 128]
    assert parsed["scale"][0] == pytest.approx(0.85)
    assert list(parsed["active_class_ids"][0]) == [1, 0, 1]
    graph = parse_image_meta_graph(tf.constant(meta[None], tf.float32))
    np.testing.assert_allclose(graph["window"].numpy()[0], [21, 0, 106, 128])
    assert len(meta) == small_config().IMAGE_META_SIZE


def test_mold_image_round_trip_and_backbone_shapes():
    config = small_config()
    image = np.random.default_rng(5).integers(0, 256, size=(6, 7, 3)).astype(np.uint8)
    molded = mold_image(image, config)
    np.testing.assert_allclose(molded, image.astype(np.float64) - config.MEAN_PIXEL, atol=1e-4)
    np.testing.assert_array_equal(unmold_image(molded, config), image)
    assert compute_backbone_shapes(config, (128, 128, 3)).tolist() == [[32, 32], [16, 16], [8, 8], [4, 4], [2, 2]]


def test_mold_inputs_then_unmold_detections_maps_boxes_back():
    config = small_config()
    image = np.zeros((100, 150, 3), np.uint8)
    molded, metas, windows = mold_inputs([image], config)
    scale = 128 / 150
    top = (128 - round(100 * scale)) // 2
    assert molded.shape == (1, 128, 128, 3)
    assert tuple(windows[0]) == (top, 0, top + round(100 * scale), 128)
    np.testing.assert_allclose(parse_image_meta(metas)["scale"][0], scale, rtol=1e-6)

    box = np.array([10, 30, 60, 120])  # original pixels (y2, x2 exclusive)
    molded_box = box * scale + [top, 0, top, 0]
    norm = utils.norm_boxes(molded_box, (128, 128))
    degenerate = utils.norm_boxes(np.array([top + 5, 10, top + 5, 40]), (128, 128))  # zero height
    detections = np.zeros((4, 6))
    detections[0] = list(norm) + [2, 0.9]
    detections[1] = list(degenerate) + [1, 0.8]
    mask = np.zeros((4, 28, 28, 3), np.float32)
    mask[0, :, :, 2] = 1.0
    probs = np.arange(12, dtype=np.float32).reshape(4, 3)
    rois, class_ids, scores, masks, kept_probs = unmold_detections(
        detections, mask, image.shape, molded.shape[1:], windows[0], class_probs=probs)
    assert rois.dtype == np.int32 and class_ids.dtype == np.int32 and masks.dtype == bool
    assert len(class_ids) == 1  # the zero-area box is dropped, padding rows ignored
    assert np.abs(rois[0] - box).max() <= 1
    assert class_ids[0] == 2 and scores[0] == pytest.approx(0.9)
    assert masks.shape == (100, 150, 1)
    y1, x1, y2, x2 = rois[0]
    assert masks[y1:y2, x1:x2, 0].all() and masks[..., 0].sum() == (y2 - y1) * (x2 - x1)
    np.testing.assert_array_equal(kept_probs, probs[:1])



def test_unmold_detections_of_a_one_pixel_wide_window_gives_none_without_warnings():
    """A 4000x3 strip molded to 128 px keeps a window one pixel wide: its normalised width
    is 0, so no detection can be mapped back (before: a division by zero and NaN boxes)."""
    config = small_config()
    image = np.zeros((4000, 3, 3), np.uint8)
    molded, _metas, windows = mold_inputs([image], config)
    assert windows[0][3] - windows[0][1] == 1
    detections = np.zeros((2, 6))
    detections[0] = [0.1, 0.4, 0.6, 0.6, 1, 0.9]
    mask = np.ones((2, 28, 28, 2), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rois, class_ids, scores, masks = unmold_detections(detections, mask, image.shape, molded.shape[1:],
                                                           windows[0])
    assert rois.shape == (0, 4) and class_ids.shape == (0,) and scores.shape == (0,)
    assert masks.shape == (4000, 3, 0)

def test_float32_layers_compute_in_float32_under_mixed_precision():
    class Square(Float32Layer):
        def call(self, x):
            return x * x

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        default, explicit = Square(), Square(dtype="float16")
        assert default.compute_dtype == "float32" and explicit.compute_dtype == "float16"
        # 300^2 overflows float16 (max 65504) but not float32.
        assert float(default(tf.constant([300.0], tf.float16))[0]) == 90000.0
        assert DetectionLayer(bbox_std_dev=STD, min_confidence=0.5, max_instances=2, nms_threshold=0.3,
                              images_per_gpu=1).compute_dtype == "float32"
        assert PyramidROIAlign([2, 2]).compute_dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy(previous)
