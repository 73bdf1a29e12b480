"""mrcnn.modeling.boxes, the one box coder: every function against numbers worked out by hand from the
definitions (Faster R-CNN's deltas, Matterport's normalisation) or against invariants
(round trips, IoU symmetry and bounds). NumPy and TF functions are each checked on their
own, never against one another."""
import math

import numpy as np
import pytest
import tensorflow as tf

from mrcnn.modeling import boxes

# Box (0, 0, 10, 10) -> target (5, 10, 25, 20): centre (5, 5) -> (15, 15), size (10, 10) -> (20, 10).
SOURCE = np.array([[0, 0, 10, 10], [10, 20, 14, 28]], np.float32)
TARGET = np.array([[5, 10, 25, 20], [11, 18, 13, 30]], np.float32)
# second pair: centre (12, 24) -> (12, 24), size (4, 8) -> (2, 12)
DELTAS = np.array([[1.0, 1.0, math.log(2.0), 0.0],
                   [0.0, 0.0, math.log(0.5), math.log(1.5)]], np.float32)
STD = np.array([0.1, 0.1, 0.2, 0.2], np.float32)


def random_boxes(rng, n, low=0.0, high=50.0):
    corner = rng.uniform(low, high, size=(n, 2))
    return np.concatenate([corner, corner + rng.uniform(1, 30, size=(n, 2))], axis=1).astype(np.float32)


@pytest.mark.parametrize("encode", [boxes.encode_np, lambda b, t, s=None: boxes.encode_tf(
    tf.constant(b), tf.constant(t), s).numpy()], ids=["np", "tf"])
def test_encode_hand_case_and_std_dev(encode):
    np.testing.assert_allclose(encode(SOURCE, TARGET), DELTAS, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(encode(SOURCE, TARGET, STD), DELTAS / STD, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(encode(TARGET, TARGET), 0, atol=1e-7)


@pytest.mark.parametrize("decode", [boxes.decode_np, lambda b, d: boxes.decode_tf(
    tf.constant(b), tf.constant(d)).numpy()], ids=["np", "tf"])
def test_decode_hand_case(decode):
    out = decode(SOURCE, DELTAS)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, TARGET, atol=1e-5)
    np.testing.assert_allclose(decode(SOURCE, np.zeros_like(DELTAS)), SOURCE)


def test_round_trips_numpy_and_tf_each_on_their_own():
    rng = np.random.default_rng(0)
    source, target = random_boxes(rng, 50), random_boxes(rng, 50)
    np.testing.assert_allclose(boxes.decode_np(source, boxes.encode_np(source, target)), target, atol=1e-3)
    src, tgt = tf.constant(source), tf.constant(target)
    np.testing.assert_allclose(boxes.decode_tf(src, boxes.encode_tf(src, tgt)).numpy(), target, atol=1e-3)


def test_decode_tf_hardens_against_untrained_deltas():
    box = tf.constant([[0, 0, 16, 16], [0, 0, 16, 16]], tf.float32)
    deltas = tf.constant([[np.nan, np.inf, -np.inf, np.nan], [0, 0, 50, 50]], tf.float32)
    out = boxes.decode_tf(box, deltas).numpy()
    np.testing.assert_allclose(out[0], [0, 0, 16, 16])  # non-finite deltas count as zero
    # log-scale capped at log(1000 / 16): a 16-pixel box grows to 1000 pixels, centred on 8
    np.testing.assert_allclose(out[1], [8 - 500, 8 - 500, 8 + 500, 8 + 500], rtol=1e-5)


def test_clip_hand_case():
    window = np.array([0, 0, 1, 1], np.float32)
    box = np.array([[-0.2, 0.1, 0.5, 1.3], [0.3, 0.3, 0.4, 0.4], [1.5, -1, 2, -0.5]], np.float32)
    want = [[0, 0.1, 0.5, 1.0], [0.3, 0.3, 0.4, 0.4], [1, 0, 1, 0]]
    np.testing.assert_allclose(boxes.clip_np(box, window), want)
    clipped = boxes.clip_tf(tf.constant(box), tf.constant(window))
    np.testing.assert_allclose(clipped.numpy(), want)
    assert clipped.shape == (3, 4)


def test_normalize_hand_case_and_round_trip():
    pixels = np.array([[0, 0, 100, 200], [10, 20, 60, 80]])
    want = [[0, 0, 1, 1], [10 / 99, 20 / 199, 59 / 99, 79 / 199]]  # (y2, x2) - 1 over (H - 1, W - 1)
    normed = boxes.normalize_np(pixels, (100, 200, 3))
    assert normed.dtype == np.float32
    np.testing.assert_allclose(normed, want, rtol=1e-6)
    np.testing.assert_array_equal(boxes.denormalize_np(normed, (100, 200)), pixels)
    normed_tf = boxes.normalize_tf(tf.constant(pixels, tf.float32), tf.constant([100, 200]))
    np.testing.assert_allclose(normed_tf.numpy(), want, rtol=1e-6)
    back = boxes.denormalize_tf(normed_tf, tf.constant([100., 200.])).numpy()
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, pixels)


def test_to_frame_maps_the_frame_onto_the_unit_square():
    frame = tf.constant([[10, 20, 30, 60]], tf.float32)
    inside = tf.constant([[15, 30, 30, 40]], tf.float32)
    np.testing.assert_allclose(boxes.to_frame_tf(frame, frame).numpy(), [[0, 0, 1, 1]])
    np.testing.assert_allclose(boxes.to_frame_tf(inside, frame).numpy(), [[0.25, 0.25, 1.0, 0.5]])


def iou_tf_np(a, b):
    return boxes.iou_tf(tf.constant(a, tf.float32), tf.constant(b, tf.float32)).numpy()


@pytest.mark.parametrize("iou", [boxes.iou_np, iou_tf_np], ids=["np", "tf"])
def test_iou_hand_cases(iou):
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], np.float32)
    b = np.array([[5, 5, 15, 15], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 0, 0]], np.float32)
    # 25 / (100 + 100 - 25); identical; disjoint; degenerate boxes overlap nothing (not NaN)
    want = [[1 / 7, 1, 0, 0], [0, 0, 0, 0]]
    np.testing.assert_allclose(iou(a, b), want, rtol=1e-6)


@pytest.mark.parametrize("iou", [boxes.iou_np, iou_tf_np], ids=["np", "tf"])
def test_iou_symmetric_bounded_and_one_on_the_diagonal(iou):
    rng = np.random.default_rng(3)
    a, b = random_boxes(rng, 30), random_boxes(rng, 20)
    ab = iou(a, b)
    assert ab.shape == (30, 20)
    np.testing.assert_allclose(ab, iou(b, a).T, rtol=1e-6)
    assert ab.min() >= 0 and ab.max() <= 1
    np.testing.assert_allclose(np.diag(iou(a, a)), 1, rtol=1e-6)
    # Enlarging a box that already contains another lowers their IoU.
    inner = np.array([[10, 10, 20, 20]], np.float32)
    outer = np.array([[10, 10, 20, 20], [8, 8, 22, 22], [0, 0, 30, 30]], np.float32)
    assert np.all(np.diff(iou(inner, outer)[0]) < 0)


def test_iou_np_integer_boxes_give_float64():
    out = boxes.iou_np(np.array([[0, 0, 2, 2]]), np.array([[1, 1, 3, 3]]))
    assert out.dtype == np.float64 and out[0, 0] == pytest.approx(1 / 7)
