"""RPN targets and DetectionTargetLayer on hand-made boxes, with expectations worked out by
hand or written from the definitions (Faster R-CNN eq. 2 for the deltas)."""
import math

import numpy as np
import pytest
import tensorflow as tf

from mrcnn import utils
from mrcnn.modeling.targets import DetectionTargetLayer, build_rpn_targets
from tests.helpers import tiny_config


def deltas_by_definition(boxes, targets):
    """Faster R-CNN eq. 2, written out per coordinate: t_y = (y* - y) / h, t_h = log(h* / h)."""
    h, w = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    th, tw = targets[:, 2] - targets[:, 0], targets[:, 3] - targets[:, 1]
    cy, cx = boxes[:, 0] + h / 2, boxes[:, 1] + w / 2
    tcy, tcx = targets[:, 0] + th / 2, targets[:, 1] + tw / 2
    return np.stack([(tcy - cy) / h, (tcx - cx) / w, np.log(th / h), np.log(tw / w)], axis=1)


def make_config(**overrides):
    """The tests' tiny network with 3 classes, small target budgets and full-size 8 x 8 masks."""
    values = dict(NAME="targets", NUM_CLASSES=3, RPN_TRAIN_ANCHORS_PER_IMAGE=8, TRAIN_ROIS_PER_IMAGE=8,
                  ROI_POSITIVE_RATIO=0.25, MAX_GT_INSTANCES=3, MASK_SHAPE=[8, 8], USE_MINI_MASK=False)
    values.update(overrides)
    values["MASK_POOL_SIZE"] = values["MASK_SHAPE"][0] // 2  # the mask head's 2x upsampling
    return tiny_config(**values)


# Two GT boxes A and B, and anchors whose IoUs were worked out by hand:
GT_BOXES = np.array([[0, 0, 10, 10],      # A
                     [20, 20, 40, 40]],   # B
                    dtype=np.float64)
ANCHORS = np.array([
    [0, 0, 10, 10],    # 0: IoU(A) = 1                           -> positive
    [0, 0, 10, 12],    # 1: IoU(A) = 100/120 = 0.83              -> positive
    [0, 0, 10, 20],    # 2: IoU(A) = 100/200 = 0.5               -> neutral
    [50, 50, 60, 60],  # 3: no overlap                           -> negative
    [60, 60, 70, 70],  # 4: no overlap                           -> negative
    [10, 10, 30, 30],  # 5: IoU(B) = 100/700 = 0.14, IoU(A) = 0  -> negative
    [20, 20, 30, 30],  # 6: IoU(B) = 100/400 = 0.25, B's best    -> positive despite < 0.3
    [0, 30, 10, 40],   # 7: no overlap                           -> negative
], dtype=np.float64)


def test_rpn_targets_hand_made_case():
    config = make_config()
    match, bbox = build_rpn_targets((64, 64, 3), ANCHORS, np.array([1, 2]), GT_BOXES, config)
    assert match.dtype == np.int32 and match.shape == (8,)
    assert bbox.shape == (config.RPN_TRAIN_ANCHORS_PER_IMAGE, 4)
    assert np.flatnonzero(match == 1).tolist() == [0, 1, 6]
    assert np.flatnonzero(match == -1).tolist() == [3, 4, 5, 7]
    assert np.flatnonzero(match == 0).tolist() == [2]
    # Deltas of the positives, in anchor order, over RPN_BBOX_STD_DEV (0.1, 0.1, 0.2, 0.2):
    # anchor 0 is A itself; anchor 1 has A's centre x 1 px to its left of its own (of 12 px)
    # and is 12 wide for A's 10; anchor 6's centre (25, 25) is 5 px (half its side) from B's
    # (30, 30) and B is twice its size.
    np.testing.assert_allclose(bbox[:3], [[0, 0, 0, 0],
                                          [0, -1 / 12 / 0.1, 0, math.log(10 / 12) / 0.2],
                                          [5, 5, math.log(2) / 0.2, math.log(2) / 0.2]], rtol=1e-5, atol=1e-6)
    assert not bbox[3:].any()


def test_rpn_targets_crowd_anchors_are_not_negative():
    config = make_config()
    boxes = np.concatenate([GT_BOXES, [[50, 50, 70, 70]]])
    match, _ = build_rpn_targets((64, 64, 3), ANCHORS, np.array([1, 2, -1]), boxes, config)
    # Anchors 3 and 4 lie on the crowd box: neither negative nor positive.
    assert match[3] == 0 and match[4] == 0
    assert np.flatnonzero(match == 1).tolist() == [0, 1, 6]
    assert np.flatnonzero(match == -1).tolist() == [5, 7]


def test_rpn_targets_balance_positives_and_negatives():
    config = make_config(RPN_TRAIN_ANCHORS_PER_IMAGE=10)
    rng = np.random.default_rng(0)
    near = np.array([0, 0, 10, 10]) + rng.uniform(-0.3, 0.3, size=(20, 4))  # IoU > 0.7 with A
    far = np.array([40, 40, 50, 50]) + rng.uniform(-2, 2, size=(30, 4))      # IoU 0 with A
    anchors = np.concatenate([near, far])
    match, bbox = build_rpn_targets((64, 64, 3), anchors, np.array([1]), GT_BOXES[:1], config,
                                    rng=np.random.default_rng(1))
    assert np.sum(match == 1) == 5  # half of RPN_TRAIN_ANCHORS_PER_IMAGE
    assert np.sum(match == -1) == 5
    assert np.all(np.flatnonzero(match == 1) < 20) and np.all(np.flatnonzero(match == -1) >= 20)
    np.testing.assert_allclose(bbox[:5], deltas_by_definition(anchors[match == 1], GT_BOXES[[0] * 5])
                               / config.RPN_BBOX_STD_DEV, rtol=1e-4, atol=1e-5)
    assert not bbox[5:].any()


def test_rpn_targets_without_gt_are_all_negative():
    config = make_config(RPN_TRAIN_ANCHORS_PER_IMAGE=6)
    match, bbox = build_rpn_targets((64, 64, 3), ANCHORS, np.zeros([0], np.int32), np.zeros([0, 4]), config)
    assert np.sum(match == -1) == 6 and np.sum(match == 1) == 0 and np.sum(match == 0) == 2
    assert not bbox.any()


def test_rpn_targets_gt_touching_no_anchor_makes_no_positives():
    config = make_config(RPN_TRAIN_ANCHORS_PER_IMAGE=8)
    far_box = np.array([[100, 100, 110, 110]], dtype=np.float64)
    match, _ = build_rpn_targets((128, 128, 3), ANCHORS, np.array([1]), far_box, config)
    assert np.sum(match == 1) == 0
    assert np.sum(match == -1) == 8


############################################################
#  DetectionTargetLayer
############################################################

IMAGE = 32
GT_PIXELS = np.array([6, 6, 22, 22])  # y2, x2 exclusive
GT_NORM = (np.array([6, 6, 21, 21]) / (IMAGE - 1)).astype(np.float32)  # y2, x2 inclusive once normalised
POSITIVE_PROPOSALS = (GT_NORM + np.array([[0, 0, 0, 0], [0.02, 0, 0, 0.01],
                                          [0.01, 0.01, -0.01, -0.01], [0.01, 0.01, 0.01, 0.01]])).astype(np.float32)
NEGATIVE_PROPOSALS = np.array([[0.7, 0.7, 0.9, 0.9], [0.0, 0.7, 0.2, 0.95], [0.7, 0.0, 0.95, 0.3],
                               [0.65, 0.3, 0.9, 0.6], [0.0, 0.0, 0.1, 0.1]], np.float32)


def gt_mask_full():
    """The GT instance: an L shape (two 4-pixel bars) inside GT_PIXELS of a 32x32 image."""
    mask = np.zeros((IMAGE, IMAGE), bool)
    y1, x1, y2, x2 = GT_PIXELS
    mask[y1:y2, x1:x1 + 4] = True
    mask[y1:y1 + 4, x1:x2] = True
    return mask


def crop_and_resize_reference(image, box, size):
    """NumPy bilinear crop-and-resize with TF's sampling grid (box corners on pixel centres)."""
    h, w = image.shape
    out = np.zeros(size)
    y1, x1, y2, x2 = box
    for i in range(size[0]):
        for j in range(size[1]):
            y = y1 * (h - 1) + i * (y2 - y1) * (h - 1) / (size[0] - 1)
            x = x1 * (w - 1) + j * (x2 - x1) * (w - 1) / (size[1] - 1)
            if not (0 <= y <= h - 1 and 0 <= x <= w - 1):
                continue
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            ya, xa = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            dy, dx = y - y0, x - x0
            out[i, j] = ((1 - dy) * (1 - dx) * image[y0, x0] + (1 - dy) * dx * image[y0, xa]
                         + dy * (1 - dx) * image[ya, x0] + dy * dx * image[ya, xa])
    return out


def layer_inputs(config, with_gt_second=False, mini=False):
    """Batch of 2: image 0 has one GT (class 2) and 9 proposals + zero padding; image 1 has
    no GT (unless with_gt_second) and the same proposals."""
    proposals = np.zeros((2, 12, 4), np.float32)
    proposals[:, :4] = POSITIVE_PROPOSALS
    proposals[:, 4:9] = NEGATIVE_PROPOSALS
    class_ids = np.zeros((2, config.MAX_GT_INSTANCES), np.int32)
    boxes = np.zeros((2, config.MAX_GT_INSTANCES, 4), np.float32)
    class_ids[0, 0] = 2
    boxes[0, 0] = GT_NORM
    if with_gt_second:
        class_ids[1, 0] = 2
        boxes[1, 0] = GT_NORM
    full = gt_mask_full()
    if mini:
        mask = utils.minimize_mask(GT_PIXELS[None], full[..., None], config.MINI_MASK_SHAPE)[..., 0]
    else:
        mask = full
    masks = np.zeros((2,) + mask.shape + (config.MAX_GT_INSTANCES,), bool)
    masks[0, :, :, 0] = mask
    if with_gt_second:
        masks[1, :, :, 0] = mask
    return [tf.constant(proposals), tf.constant(class_ids), tf.constant(boxes), tf.constant(masks)]


def test_detection_targets_counts_deltas_and_masks():
    config = make_config()
    layer = DetectionTargetLayer(config)
    rois, class_ids, deltas, masks = (t.numpy() for t in layer(layer_inputs(config)))
    assert rois.shape == (2, 8, 4) and class_ids.shape == (2, 8)
    assert deltas.shape == (2, 8, 4) and masks.shape == (2, 8, 8, 8)
    assert class_ids.dtype == np.int32 and rois.dtype == np.float32 and masks.dtype == np.float32
    assert layer.weights == [] and layer.variables == []

    # Image 0: positives capped at int(8 * 0.25) = 2, negatives 2 / 0.25 - 2 = 6 but only 5
    # exist, then one zero-padded row.
    cls, r = class_ids[0], rois[0]
    assert cls.tolist()[:2] == [2, 2] and cls.tolist()[2:] == [0] * 6
    assert not r[7].any() and np.all(r[:7].any(axis=1))
    positives = r[:2]
    for roi in positives:
        assert any(np.allclose(roi, p) for p in POSITIVE_PROPOSALS)
    assert sorted(map(tuple, r[2:7].tolist())) == sorted(map(tuple, NEGATIVE_PROPOSALS.tolist()))
    np.testing.assert_allclose(deltas[0, :2], deltas_by_definition(positives, np.repeat(GT_NORM[None], 2, axis=0))
                               / config.BBOX_STD_DEV, rtol=1e-4, atol=1e-5)
    assert not deltas[0, 2:].any() and not masks[0, 2:].any()
    for k in range(2):
        expected = np.round(crop_and_resize_reference(gt_mask_full().astype(float), positives[k], (8, 8)))
        np.testing.assert_array_equal(masks[0, k], expected)
    assert masks[0, :2].sum() > 0

    # Image 1 has no GT: all proposals are negatives (up to TRAIN_ROIS_PER_IMAGE), no targets.
    assert not class_ids[1].any() and not deltas[1].any() and not masks[1].any()
    assert np.sum(rois[1].any(axis=1)) == 8
    proposals = np.concatenate([POSITIVE_PROPOSALS, NEGATIVE_PROPOSALS])
    for roi in rois[1]:
        assert any(np.allclose(roi, p) for p in proposals)


def test_detection_targets_mini_mask_matches_full_mask():
    # A 16x16 mini-mask of a 16x16-pixel box is the box's pixels themselves, so for ROIs inside
    # the GT box both paths sample the same values once the ROI is moved into mini-mask
    # coordinates. ROIs reaching past the box differ on one edge (a mini-mask has nothing
    # outside its box to interpolate with), as in Matterport.
    full_cfg = make_config(TRAIN_ROIS_PER_IMAGE=4, ROI_POSITIVE_RATIO=1.0, MASK_SHAPE=[16, 16])
    mini_cfg = make_config(TRAIN_ROIS_PER_IMAGE=4, ROI_POSITIVE_RATIO=1.0, MASK_SHAPE=[16, 16],
                           USE_MINI_MASK=True, MINI_MASK_SHAPE=(16, 16))
    full = [t.numpy() for t in DetectionTargetLayer(full_cfg)(layer_inputs(full_cfg, with_gt_second=True))]
    mini = [t.numpy() for t in DetectionTargetLayer(mini_cfg)(layer_inputs(mini_cfg, True, mini=True))]
    for outputs in (full, mini):
        assert outputs[1].tolist() == [[2] * 4, [2] * 4]
    inside = 0
    for b in range(2):
        for k in range(4):
            j = [i for i in range(4) if np.allclose(full[0][b, i], mini[0][b, k])][0]
            a, m = full[3][b, j] > 0.5, mini[3][b, k] > 0.5
            roi = mini[0][b, k]
            if np.all(roi[:2] >= GT_NORM[:2] - 1e-6) and np.all(roi[2:] <= GT_NORM[2:] + 1e-6):
                np.testing.assert_array_equal(a, m)
                inside += 1
            else:
                assert (a & m).sum() / (a | m).sum() > 0.9
    assert inside == 4  # two ROIs inside the box, in each of the two images


def test_detection_targets_crowd_proposals_are_not_negatives():
    config = make_config(TRAIN_ROIS_PER_IMAGE=8)
    proposals, class_ids, boxes, masks = [t.numpy() for t in layer_inputs(config)]
    class_ids[1, 0] = -1  # image 1: a crowd box over the top-right corner proposal
    boxes[1, 0] = [0.0, 0.7, 0.2, 0.95]
    rois, cls, _, _ = (t.numpy() for t in DetectionTargetLayer(config)(
        [tf.constant(proposals), tf.constant(class_ids), tf.constant(boxes), tf.constant(masks)]))
    assert not cls[1].any()
    kept = rois[1][rois[1].any(axis=1)]
    assert len(kept) == 8  # the 9 proposals minus the crowd one
    assert not any(np.allclose(roi, [0.0, 0.7, 0.2, 0.95]) for roi in kept)


def test_detection_target_layer_symbolic_output_dtypes():
    import keras
    config = make_config()
    inputs = [keras.Input((12, 4)), keras.Input((3,), dtype="int32"), keras.Input((3, 4)),
              keras.Input((IMAGE, IMAGE, 3), dtype="bool")]
    outputs = DetectionTargetLayer(config)(inputs)
    assert [o.dtype for o in outputs] == ["float32", "int32", "float32", "float32"]
    assert tuple(outputs[3].shape) == (None, 8, 8, 8)


def test_detection_target_layer_in_a_graph_with_unknown_batch_and_half_precision():
    config = make_config()
    layer = DetectionTargetLayer(config)
    mask_spec = tf.TensorSpec([None, IMAGE, IMAGE, 3], tf.bool)

    @tf.function(input_signature=[tf.TensorSpec([None, 12, 4], tf.float16), tf.TensorSpec([None, 3], tf.int32),
                                  tf.TensorSpec([None, 3, 4], tf.float16), mask_spec])
    def run(proposals, class_ids, boxes, masks):
        return layer([proposals, class_ids, boxes, masks])

    eager = layer_inputs(config)
    outputs = run(tf.cast(eager[0], tf.float16), eager[1], tf.cast(eager[2], tf.float16), eager[3])
    assert outputs[0].dtype == tf.float32 and outputs[0].shape == (2, 8, 4)
    assert outputs[1].numpy()[0].tolist()[:3] == [2, 2, 0] and not outputs[1].numpy()[1].any()


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
