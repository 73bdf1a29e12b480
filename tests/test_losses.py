"""The five Mask R-CNN losses and the weight decay against NumPy formulas."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn.config import Config
from mrcnn.modeling.losses import (l2_weight_decay, mrcnn_bbox_loss_graph, mrcnn_class_loss_graph,
                                   mrcnn_mask_loss_graph, rpn_bbox_loss_graph, rpn_class_loss_graph)

RNG = np.random.default_rng(0)


def np_cross_entropy(logits, label):
    logits = np.asarray(logits, np.float64)
    return np.log(np.sum(np.exp(logits))) - logits[label]


def np_smooth_l1(a, b):
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return np.where(d < 1, 0.5 * d ** 2, d - 0.5)


def scalar(t):
    assert t.dtype == tf.float32 and t.shape == ()
    return float(t.numpy())


def rpn_case():
    match = np.array([[1, 0, -1, 1, -1], [0, -1, 1, 0, 0]], np.int32)[..., None]
    logits = RNG.normal(size=(2, 5, 2)).astype(np.float32)
    return match, logits


def test_rpn_class_loss_matches_numpy():
    match, logits = rpn_case()
    terms = [np_cross_entropy(logits[b, a], int(match[b, a, 0] == 1))
             for b in range(2) for a in range(5) if match[b, a, 0] != 0]
    assert len(terms) == 6
    assert scalar(rpn_class_loss_graph(tf.constant(match), tf.constant(logits))) == pytest.approx(np.mean(terms), rel=1e-5)


def test_rpn_bbox_loss_pairs_positives_with_target_rows():
    match, _ = rpn_case()
    rpn_bbox = RNG.normal(size=(2, 5, 4)).astype(np.float32)
    target = np.zeros((2, 4, 4), np.float32)
    target[0, :2] = RNG.normal(size=(2, 4))  # image 0 has positive anchors 0 and 3
    target[1, :1] = RNG.normal(size=(1, 4))  # image 1 has positive anchor 2
    expected = np.mean(np.concatenate([np_smooth_l1(target[0, 0], rpn_bbox[0, 0]),
                                       np_smooth_l1(target[0, 1], rpn_bbox[0, 3]),
                                       np_smooth_l1(target[1, 0], rpn_bbox[1, 2])]))
    config = Config(NAME="losses", IMAGES_PER_GPU=2)
    got = rpn_bbox_loss_graph(config, tf.constant(target), tf.constant(match), tf.constant(rpn_bbox))
    assert scalar(got) == pytest.approx(expected, rel=1e-5)


def test_rpn_losses_are_zero_without_contributing_anchors():
    config = Config(NAME="losses", IMAGES_PER_GPU=2)
    neutral = tf.zeros((2, 5, 1), tf.int32)
    assert scalar(rpn_class_loss_graph(neutral, tf.ones((2, 5, 2)))) == 0.0
    negatives = -tf.ones((2, 5, 1), tf.int32)
    assert scalar(rpn_bbox_loss_graph(config, tf.ones((2, 4, 4)), negatives, tf.ones((2, 5, 4)))) == 0.0


def class_case():
    target = np.array([[1, 0, 2, 0], [2, 2, 0, 1]], np.int32)
    logits = RNG.normal(size=(2, 4, 3)).astype(np.float32)
    active = np.array([[1, 1, 0], [1, 1, 1]], np.float32)  # image 0's source lacks class 2
    return target, logits, active


def test_mrcnn_class_loss_uses_each_images_active_classes():
    target, logits, active = class_case()
    num, den = 0.0, 0.0
    for b in range(2):
        for r in range(4):
            weight = active[b, np.argmax(logits[b, r])]
            num += weight * np_cross_entropy(logits[b, r], target[b, r])
            den += weight
    got = mrcnn_class_loss_graph(tf.constant(target), tf.constant(logits), tf.constant(active))
    assert scalar(got) == pytest.approx(num / den, rel=1e-5)


def test_mrcnn_class_loss_is_zero_when_no_prediction_is_active():
    target, logits, _ = class_case()
    got = mrcnn_class_loss_graph(tf.constant(target), tf.constant(logits), tf.zeros((2, 3)))
    assert scalar(got) == 0.0


def bbox_mask_case():
    target_ids = np.array([[1, 0, 2], [0, 2, 0]], np.int32)
    target_bbox = RNG.normal(size=(2, 3, 4)).astype(np.float32)
    pred_bbox = RNG.normal(size=(2, 3, 3, 4)).astype(np.float32)
    target_masks = (RNG.uniform(size=(2, 3, 4, 4)) > 0.5).astype(np.float32)
    pred_masks = RNG.uniform(size=(2, 3, 4, 4, 3)).astype(np.float32)
    pred_masks[0, 0, 0, 0, 1] = 0.0  # exercises the clipping of log(0)
    return target_ids, target_bbox, pred_bbox, target_masks, pred_masks


def test_mrcnn_bbox_loss_uses_the_positive_rois_own_class():
    ids, target, pred, _, _ = bbox_mask_case()
    rows = [np_smooth_l1(target[b, r], pred[b, r, ids[b, r]]) for b in range(2) for r in range(3) if ids[b, r] > 0]
    got = mrcnn_bbox_loss_graph(tf.constant(target), tf.constant(ids), tf.constant(pred))
    assert scalar(got) == pytest.approx(np.mean(rows), rel=1e-5)


def test_mrcnn_mask_loss_is_binary_cross_entropy_of_the_positive_rois_class_mask():
    ids, _, _, target, pred = bbox_mask_case()
    eps = 1e-7
    terms = []
    for b in range(2):
        for r in range(3):
            if ids[b, r] > 0:
                p = np.clip(pred[b, r, :, :, ids[b, r]].astype(np.float64), eps, 1 - eps)
                t = target[b, r]
                terms.append(-(t * np.log(p) + (1 - t) * np.log(1 - p)))
    got = mrcnn_mask_loss_graph(tf.constant(target), tf.constant(ids), tf.constant(pred))
    assert scalar(got) == pytest.approx(np.mean(terms), rel=1e-4)


def test_head_losses_are_zero_not_nan_without_positive_rois():
    _, target_bbox, pred_bbox, target_masks, pred_masks = bbox_mask_case()
    no_positives = tf.zeros((2, 3), tf.int32)
    assert scalar(mrcnn_bbox_loss_graph(tf.constant(target_bbox), no_positives, tf.constant(pred_bbox))) == 0.0
    assert scalar(mrcnn_mask_loss_graph(tf.constant(target_masks), no_positives, tf.constant(pred_masks))) == 0.0


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_losses_compute_in_float32_from_half_precision_inputs(dtype):
    match, logits = rpn_case()
    target, class_logits, active = class_case()
    ids, target_bbox, pred_bbox, target_masks, pred_masks = bbox_mask_case()
    config = Config(NAME="losses", IMAGES_PER_GPU=2)
    rpn_target = np.zeros((2, 4, 4), np.float32)
    rpn_bbox = RNG.normal(size=(2, 5, 4)).astype(np.float32)

    def both(fn, *args):
        full = fn(*[tf.constant(a) for a in args])
        half = fn(*[tf.cast(a, dtype) if a.dtype == np.float32 else tf.constant(a) for a in args])
        return scalar(full), scalar(half)

    tol = 0.02 if dtype == tf.bfloat16 else 0.005
    for full, half in [both(rpn_class_loss_graph, match, logits),
                       both(lambda *a: rpn_bbox_loss_graph(config, *a), rpn_target, match, rpn_bbox),
                       both(mrcnn_class_loss_graph, target, class_logits, active),
                       both(mrcnn_bbox_loss_graph, target_bbox, ids, pred_bbox),
                       both(mrcnn_mask_loss_graph, target_masks, ids, pred_masks)]:
        assert np.isfinite(half) and half == pytest.approx(full, rel=tol, abs=tol)


def test_l2_weight_decay_skips_batchnorm_gamma_and_beta():
    inputs = keras.Input((3,))
    x = keras.layers.Dense(4, name="fc")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    model = keras.Model(inputs, x)
    bn = model.get_layer("bn")
    bn.gamma.assign(np.full(4, 100.0, np.float32))  # would dominate the sum if counted
    bn.beta.assign(np.full(4, 50.0, np.float32))
    fc = model.get_layer("fc")
    kernel = RNG.normal(size=(3, 4)).astype(np.float32)
    bias = RNG.normal(size=(4,)).astype(np.float32)
    fc.kernel.assign(kernel)
    fc.bias.assign(bias)
    decay = 1e-3
    expected = decay * (np.sum(kernel.astype(np.float64) ** 2) / 12 + np.sum(bias.astype(np.float64) ** 2) / 4)
    got = l2_weight_decay(model.trainable_weights, decay)
    assert scalar(got) == pytest.approx(expected, rel=1e-5)
    assert scalar(l2_weight_decay([], decay)) == 0.0
