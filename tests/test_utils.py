"""Numeric helpers of mrcnn.utils against hand-computed values (Matterport's conventions:
boxes (y1, x1, y2, x2) with exclusive y2, x2)."""
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mrcnn import utils
from tests.helpers import mask_iou

ROOT = Path(__file__).resolve().parents[1]


def rect_mask(shape, y1, x1, y2, x2):
    """A bool [H, W] mask, True on rows y1..y2-1 and columns x1..x2-1."""
    m = np.zeros(shape, dtype=bool)
    m[y1:y2, x1:x2] = True
    return m


# ---------------------------------------------------------------- boxes and IoU

def test_utils_does_not_import_tensorflow():
    code = "import sys, mrcnn.utils; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_compute_iou_simple_boxes():
    box = np.array([0, 0, 10, 10])
    boxes = np.array([[0, 0, 10, 10],      # same box
                      [0, 5, 10, 15],      # half overlap: 50 / 150
                      [20, 20, 30, 30],    # disjoint
                      [2, 2, 4, 4]])       # inside: 4 / 100
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    iou = utils.compute_iou(box, boxes, 100, areas)
    np.testing.assert_allclose(iou, [1.0, 1 / 3, 0.0, 0.04])


def test_compute_overlaps_matrix():
    boxes1 = np.array([[0, 0, 10, 10], [0, 0, 20, 20], [100, 100, 110, 120]])
    boxes2 = np.array([[0, 5, 10, 15], [5, 5, 15, 15]])
    expected = np.array([
        [50 / 150, 25 / 175],
        [100 / 400, 100 / 400],   # both boxes lie inside the 20x20 box
        [0.0, 0.0],
    ])
    np.testing.assert_allclose(utils.compute_overlaps(boxes1, boxes2), expected)


def test_compute_overlaps_masks():
    a = rect_mask((20, 20), 0, 0, 2, 5)      # 10 px
    b = rect_mask((20, 20), 1, 0, 5, 5)      # 20 px, 5 shared with a
    c = rect_mask((20, 20), 10, 10, 12, 12)  # disjoint
    overlaps = utils.compute_overlaps_masks(np.stack([a, b], -1), np.stack([b, c], -1))
    np.testing.assert_allclose(overlaps, [[5 / 25, 0.0], [1.0, 0.0]])
    assert utils.compute_overlaps_masks(np.zeros((20, 20, 0)), np.stack([a], -1)).shape == (0, 1)


def test_non_max_suppression_known_set():
    boxes = np.array([[0, 0, 10, 10],     # A .90
                      [0, 1, 10, 11],     # B .80, IoU(A,B) = 90/110
                      [20, 20, 30, 30],   # C .70, far away
                      [0, 5, 10, 15]])    # D .95, IoU(D,A) = 1/3, IoU(D,B) = 60/140
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    assert list(utils.non_max_suppression(boxes, scores, 0.5)) == [3, 0, 2]
    assert list(utils.non_max_suppression(boxes, scores, 0.3)) == [3, 2]
    assert list(utils.non_max_suppression(boxes, scores, 0.9)) == [3, 0, 1, 2]
    with pytest.raises(ValueError):
        utils.non_max_suppression(np.zeros((0, 4)), np.zeros(0), 0.5)


def test_box_refinement_hand_case_and_round_trip():
    box = np.array([[0, 0, 10, 10]])
    gt = np.array([[5, 5, 25, 25]])   # centre 5 -> 15, size 10 -> 20
    np.testing.assert_allclose(utils.box_refinement(box, gt), [[1, 1, math.log(2), math.log(2)]],
                               rtol=1e-6)
    rng = np.random.default_rng(0)
    y1x1 = rng.uniform(0, 100, (20, 2))
    boxes = np.concatenate([y1x1, y1x1 + rng.uniform(1, 50, (20, 2))], 1)
    gy1x1 = rng.uniform(0, 100, (20, 2))
    gts = np.concatenate([gy1x1, gy1x1 + rng.uniform(1, 50, (20, 2))], 1)
    deltas = utils.box_refinement(boxes, gts)
    np.testing.assert_allclose(utils.apply_box_deltas(boxes, deltas), gts, atol=1e-3)


def test_apply_box_deltas_hand_case():
    out = utils.apply_box_deltas(np.array([[0, 0, 10, 20]]), np.array([[0.5, -0.25, 0.0, math.log(0.5)]]))
    # centre (5, 10) -> (10, 5); height 10, width 20 -> 10
    np.testing.assert_allclose(out, [[5, 0, 15, 10]], atol=1e-5)


def test_norm_boxes_shift_convention_and_round_trip():
    shape = (100, 200)
    boxes = np.array([[0, 0, 100, 200], [10, 20, 30, 40]])
    norm = utils.norm_boxes(boxes, shape)
    np.testing.assert_allclose(norm, [[0, 0, 1, 1], [10 / 99, 20 / 199, 29 / 99, 39 / 199]], rtol=1e-6)
    assert norm.dtype == np.float32
    back = utils.denorm_boxes(norm, shape)
    np.testing.assert_array_equal(back, boxes)
    assert back.dtype == np.int32


def test_extract_bboxes_exclusive_corner():
    mask = np.zeros((10, 12, 3), dtype=bool)
    mask[2:5, 3:8, 0] = True          # rows 2..4, cols 3..7
    mask[9, 11, 1] = True             # one pixel in the corner
    boxes = utils.extract_bboxes(mask)
    np.testing.assert_array_equal(boxes, [[2, 3, 5, 8], [9, 11, 10, 12], [0, 0, 0, 0]])
    assert boxes.dtype == np.int32


def test_trim_zeros():
    x = np.array([[1, 2, 3, 4], [0, 0, 0, 0], [0, 0, 0, 5]])
    np.testing.assert_array_equal(utils.trim_zeros(x), [[1, 2, 3, 4], [0, 0, 0, 5]])


# ---------------------------------------------------------------- resizing

def test_resize_image_none():
    image = np.full((30, 40, 3), 7, np.uint8)
    out, window, scale, padding, crop = utils.resize_image(image, 64, 128, mode="none")
    assert out is image
    assert window == (0, 0, 30, 40) and scale == 1 and crop is None
    assert padding == [(0, 0), (0, 0), (0, 0)]


def test_resize_image_square_downscale_767x1022():
    image = np.full((767, 1022, 3), 200, np.uint8)
    out, window, scale, padding, crop = utils.resize_image(image, 512, 512, mode="square")
    assert out.shape == (512, 512, 3) and out.dtype == np.uint8
    assert scale == pytest.approx(512 / 1022)
    # 767 * 512 / 1022 = 384.25 -> 384 rows, padded (512 - 384) / 2 = 64 on top and bottom
    assert window == (64, 0, 448, 512)
    assert padding == [(64, 64), (0, 0), (0, 0)]
    assert crop is None
    assert out[:64].max() == 0 and out[448:].max() == 0
    assert out[64:448].mean() > 190


def test_resize_image_square_upscale_and_caps():
    # min_dim 256 on a 100x200 image: scale 2.56, long side 512 fits max_dim 512
    out, window, scale, padding, _ = utils.resize_image(np.ones((100, 200, 3), np.uint8), 256, 512)
    assert scale == pytest.approx(2.56)
    assert window == (128, 0, 384, 512) and out.shape == (512, 512, 3)
    # min_dim 800 on 500x1000 would give a 1600 long side: capped at max_dim 1024
    _, window, scale, padding, _ = utils.resize_image(np.ones((500, 1000, 3), np.uint8), 800, 1024)
    assert scale == pytest.approx(1.024)
    assert window == (256, 0, 768, 1024)
    assert padding == [(256, 256), (0, 0), (0, 0)]
    # min_scale forces an upscale even without min_dim
    _, window, scale, _, _ = utils.resize_image(np.ones((100, 100, 3), np.uint8), None, 512,
                                                min_scale=2)
    assert scale == 2 and window == (156, 156, 356, 356)
    # never scaled down by min_dim alone: a big image keeps scale 1 when it fits max_dim
    _, window, scale, _, _ = utils.resize_image(np.ones((300, 400, 3), np.uint8), 200, 512)
    assert scale == 1 and window == (106, 56, 406, 456)


def test_resize_image_pad64():
    out, window, scale, padding, _ = utils.resize_image(np.ones((100, 130, 3), np.uint8),
                                                        mode="pad64")
    assert scale == 1 and out.shape == (128, 192, 3)
    assert padding == [(14, 14), (31, 31), (0, 0)]
    assert window == (14, 31, 114, 161)
    # min_dim 128: scale 1.28 -> 128 x 166, width padded to 192
    out, window, scale, padding, _ = utils.resize_image(np.ones((100, 130, 3), np.uint8), 128,
                                                        mode="pad64")
    assert scale == pytest.approx(1.28) and out.shape == (128, 192, 3)
    assert window == (0, 13, 128, 179) and padding == [(0, 0), (13, 13), (0, 0)]
    with pytest.raises(ValueError, match="multiple of 64"):
        utils.resize_image(np.ones((100, 130, 3), np.uint8), 100, mode="pad64")


def test_resize_image_crop():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    random.seed(3)
    out, window, scale, padding, crop = utils.resize_image(image, 256, mode="crop")
    assert out.shape == (256, 256, 3) and window == (0, 0, 256, 256) and scale == 1
    y, x, h, w = crop
    assert (h, w) == (256, 256) and 0 <= y <= 44 and 0 <= x <= 144
    np.testing.assert_array_equal(out, image[y:y + 256, x:x + 256])
    mask = np.zeros((300, 400, 1), bool)
    mask[y + 10, x + 20, 0] = True
    cropped = utils.resize_mask(mask, scale, padding, crop)
    assert cropped.shape == (256, 256, 1) and cropped[10, 20, 0] and cropped.sum() == 1


def test_resize_image_bad_mode():
    with pytest.raises(ValueError, match="unknown mode"):
        utils.resize_image(np.ones((10, 10, 3), np.uint8), 8, 16, mode="squash")
    with pytest.raises(ValueError, match="max_dim"):
        utils.resize_image(np.ones((10, 10, 3), np.uint8), 8, None, mode="square")


def test_resize_mask_follows_resize_image_geometry():
    image = np.zeros((150, 200, 3), np.uint8)
    image[30:90, 50:150] = 255
    mask = rect_mask((150, 200), 30, 50, 90, 150)[..., None]
    out, window, scale, padding, crop = utils.resize_image(image, 64, 128)
    # scale 128 / 200 = 0.64: 96 x 128, 16 rows of padding on top
    assert window == (16, 0, 112, 128)
    small = utils.resize_mask(mask, scale, padding, crop)
    assert small.shape[:2] == out.shape[:2] == (128, 128)
    assert small.dtype == bool
    # rectangle 30..90 x 50..150 -> rows 16 + 19.2..57.6, cols 32..96
    np.testing.assert_allclose(utils.extract_bboxes(small)[0], [35, 32, 74, 96], atol=1)
    bright = out[..., 0] > 127
    assert mask_iou(bright, small[..., 0]) > 0.9


def test_mini_mask_round_trip():
    yy, xx = np.mgrid[:100, :120]
    disk = (yy - 50) ** 2 + (xx - 60) ** 2 < 30 ** 2
    square = rect_mask((100, 120), 5, 5, 25, 45)
    mask = np.stack([disk, square], -1)
    bbox = utils.extract_bboxes(mask)
    mini = utils.minimize_mask(bbox, mask, (56, 56))
    assert mini.shape == (56, 56, 2) and mini.dtype == bool
    full = utils.expand_mask(bbox, mini, (100, 120, 3))
    assert full.shape == (100, 120, 2)
    assert mask_iou(full[..., 0], disk) > 0.95
    assert mask_iou(full[..., 1], square) > 0.95


def test_unmold_mask_pastes_thresholded_box():
    small = np.zeros((28, 28), np.float32)
    small[:, :14] = 1.0
    full = utils.unmold_mask(small, (10, 20, 30, 60), (50, 80, 3))
    assert full.shape == (50, 80) and full.dtype == bool
    # resized to 20 x 40 bilinearly: the left 20 columns of the box are >= 0.5
    expected = rect_mask((50, 80), 10, 20, 30, 40)
    np.testing.assert_array_equal(full, expected)
    # a box hanging over the bottom-right corner keeps only its visible part
    full = utils.unmold_mask(np.ones((28, 28), np.float32), (40, 70, 60, 90), (50, 80))
    np.testing.assert_array_equal(full, rect_mask((50, 80), 40, 70, 50, 80))


# ---------------------------------------------------------------- anchors

def test_pyramid_anchors_matterport_defaults_512():
    shapes = np.array([[128, 128], [64, 64], [32, 32], [16, 16], [8, 8]])
    anchors = utils.generate_pyramid_anchors((32, 64, 128, 256, 512), [0.5, 1, 2], shapes,
                                             [4, 8, 16, 32, 64], 1)
    assert anchors.shape == (65472, 4)
    r = math.sqrt(2)
    # first position (0, 0) of P2, ratios 0.5, 1, 2 (width / height)
    np.testing.assert_allclose(anchors[0], [-16 * r, -16 / r, 16 * r, 16 / r])
    np.testing.assert_allclose(anchors[1], [-16, -16, 16, 16])
    np.testing.assert_allclose(anchors[2], [-16 / r, -16 * r, 16 / r, 16 * r])
    # next position is one stride (4 px) to the right, then rows follow
    np.testing.assert_allclose(anchors[4], [-16, 4 - 16, 16, 4 + 16])
    np.testing.assert_allclose(anchors[3 * 128 + 1], [4 - 16, -16, 4 + 16, 16])
    # P3 starts after 3 * 128 * 128 anchors with scale 64
    np.testing.assert_allclose(anchors[3 * 128 * 128 + 1], [-32, -32, 32, 32])
    # last anchor: P6 position (7, 7) -> centre 448, scale 512, ratio 2
    np.testing.assert_allclose(anchors[-1], [448 - 256 / r, 448 - 256 * r, 448 + 256 / r, 448 + 256 * r])


def test_generate_anchors_stride_and_scales():
    anchors = utils.generate_anchors([16, 32], [1], (6, 4), 8, 2)
    # 3 x 2 positions, 2 scales each; the two scales at one position are adjacent
    assert anchors.shape == (12, 4)
    np.testing.assert_allclose(anchors[:2], [[-8, -8, 8, 8], [-16, -16, 16, 16]])
    np.testing.assert_allclose(anchors[2], [-8, 16 - 8, 8, 16 + 8])


# ---------------------------------------------------------------- evaluation

def _ap_case():
    """2 GT instances in a 20x20 image; predictions given out of score order."""
    gt1 = rect_mask((20, 20), 0, 0, 10, 10)
    gt2 = rect_mask((20, 20), 10, 10, 20, 20)
    fp = rect_mask((20, 20), 0, 10, 10, 20)
    gt_masks = np.stack([gt1, gt2], -1)
    gt_boxes = utils.extract_bboxes(gt_masks)
    # input order: hit on gt2 (.7), hit on gt1 (.9), a false positive (.8)
    pred_masks = np.stack([gt2, gt1, fp], -1)
    pred_boxes = utils.extract_bboxes(pred_masks)
    pred_scores = np.array([0.7, 0.9, 0.8])
    return gt_boxes, np.array([1, 1]), gt_masks, pred_boxes, pred_scores, pred_masks


def test_compute_matches():
    gt_boxes, gt_ids, gt_masks, pred_boxes, pred_scores, pred_masks = _ap_case()
    gt_match, pred_match, overlaps = utils.compute_matches(
        gt_boxes, gt_ids, gt_masks, pred_boxes, np.array([1, 1, 1]), pred_scores, pred_masks)
    # score order: gt1-hit (.9), fp (.8), gt2-hit (.7)
    np.testing.assert_array_equal(pred_match, [0, -1, 1])
    np.testing.assert_array_equal(gt_match, [0, 2])
    np.testing.assert_allclose(overlaps, [[1, 0], [0, 0], [0, 1]])
    # wrong class on the gt2 hit: no match for it
    gt_match, pred_match, _ = utils.compute_matches(
        gt_boxes, gt_ids, gt_masks, pred_boxes, np.array([2, 1, 1]), pred_scores, pred_masks)
    np.testing.assert_array_equal(pred_match, [0, -1, -1])
    np.testing.assert_array_equal(gt_match, [0, -1])


def test_compute_ap_hand_case():
    gt_boxes, gt_ids, gt_masks, pred_boxes, pred_scores, pred_masks = _ap_case()
    ap, precisions, recalls, overlaps = utils.compute_ap(
        gt_boxes, gt_ids, gt_masks, pred_boxes, np.array([1, 1, 1]), pred_scores, pred_masks)
    # TP, FP, TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    # AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    assert ap == pytest.approx(5 / 6)
    np.testing.assert_allclose(recalls, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(precisions, [1, 1, 2 / 3, 2 / 3, 0])
    assert overlaps.shape == (3, 2)
    ap_wrong_class, _, _, _ = utils.compute_ap(
        gt_boxes, gt_ids, gt_masks, pred_boxes, np.array([2, 1, 1]), pred_scores, pred_masks)
    assert ap_wrong_class == pytest.approx(0.5)


def test_compute_ap_range():
    gt_boxes, gt_ids, gt_masks, _, _, _ = _ap_case()
    # one prediction: gt1 widened by 4 columns -> IoU 100 / 140 = 0.714
    pred_masks = rect_mask((20, 20), 0, 0, 10, 14)[..., None]
    pred_boxes = utils.extract_bboxes(pred_masks)
    ap = utils.compute_ap_range(gt_boxes, gt_ids, gt_masks, pred_boxes, np.array([1]),
                                np.array([0.9]), pred_masks, iou_thresholds=[0.5, 0.75],
                                verbose=0)
    # recall 1/2 with precision 1 at IoU 0.5, nothing at 0.75
    assert ap == pytest.approx(0.25)


def test_compute_recall():
    gt_boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30]])
    pred_boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [50, 50, 60, 60]])
    recall, positive = utils.compute_recall(pred_boxes, gt_boxes, 0.6)
    assert recall == 0.5 and list(positive) == [0]
    recall, positive = utils.compute_recall(pred_boxes, gt_boxes, 0.5)
    assert recall == 0.5 and list(positive) == [0, 1]
    recall, _ = utils.compute_recall(np.array([[20, 20, 30, 30], [0, 0, 10, 10]]), gt_boxes, 0.9)
    assert recall == 1.0


def test_compute_matches_equal_ious_go_to_the_later_gt_and_the_iou_floor_applies():
    # Prediction covers columns 0..7 of an 8x8 image; two GT halves (top, bottom) each have
    # IoU 32 / 64 = 0.5 with it.
    top = rect_mask((8, 8), 0, 0, 4, 8)
    bottom = rect_mask((8, 8), 4, 0, 8, 8)
    whole = rect_mask((8, 8), 0, 0, 8, 8)
    gt_masks = np.stack([top, bottom], -1)
    gt_boxes = utils.extract_bboxes(gt_masks)
    gt_match, pred_match, overlaps = utils.compute_matches(
        gt_boxes, np.array([1, 1]), gt_masks, utils.extract_bboxes(whole[..., None]), np.array([1]),
        np.array([0.9]), whole[..., None], iou_threshold=0.5)
    np.testing.assert_allclose(overlaps, [[0.5, 0.5]])
    np.testing.assert_array_equal(pred_match, [1])
    np.testing.assert_array_equal(gt_match, [-1, 0])
    # score_threshold is a floor on the IoU as well
    _, pred_match, _ = utils.compute_matches(
        gt_boxes, np.array([1, 1]), gt_masks, utils.extract_bboxes(whole[..., None]), np.array([1]),
        np.array([0.9]), whole[..., None], iou_threshold=0.5, score_threshold=0.6)
    np.testing.assert_array_equal(pred_match, [-1])


def test_compute_ap_ranks_every_prediction_even_without_gt():
    empty = np.zeros((20, 20, 0), bool)
    pred = rect_mask((20, 20), 0, 0, 5, 5)[..., None]
    ap, precisions, recalls, _ = utils.compute_ap(np.zeros((0, 4)), np.zeros(0), empty,
                                                  utils.extract_bboxes(pred), np.array([1]), np.array([0.5]), pred)
    assert ap == 0
    np.testing.assert_allclose(recalls, [0, 0, 1])
    np.testing.assert_allclose(precisions, [0, 0, 0])
