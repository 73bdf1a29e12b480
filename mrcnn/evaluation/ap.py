"""Average precision by mask IoU (VOC style, every recall point) and box recall: Matterport's
utils.compute_ap and friends, the one AP of the project (isic.evaluation builds on it)."""
import numpy as np

from mrcnn.modeling.boxes import compute_overlaps, trim_zeros


def compute_overlaps_masks(masks1, masks2):
    """IoU matrix between two sets of masks.

    masks1: [H, W, N1]; masks2: [H, W, N2]; values > 0.5 count as inside.
    Returns: float [N1, N2] (0 where both masks are empty).
    """
    masks1 = np.asarray(masks1)
    masks2 = np.asarray(masks2)
    count1, count2 = masks1.shape[-1], masks2.shape[-1]
    if count1 == 0 or count2 == 0:
        return np.zeros((count1, count2))
    if masks1.shape[:2] != masks2.shape[:2]:
        raise ValueError(f"compute_overlaps_masks: mask sizes differ, "
                         f"{masks1.shape[:2]} vs {masks2.shape[:2]}")
    # [pixels, N] as float32 0/1 columns: one matrix product counts every intersection.
    inside1 = (masks1 > .5).reshape(-1, count1).astype(np.float32)
    inside2 = (masks2 > .5).reshape(-1, count2).astype(np.float32)
    shared = inside1.T @ inside2
    union = inside1.sum(axis=0)[:, None] + inside2.sum(axis=0)[None, :] - shared
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, shared / union, 0.0)


def compute_matches(gt_boxes, gt_class_ids, gt_masks,
                    pred_boxes, pred_class_ids, pred_scores, pred_masks,
                    iou_threshold=0.5, score_threshold=0.0):
    """Greedy one-to-one matching of predictions to ground truth by mask IoU.

    Predictions are taken by descending score (ties in input order); each takes, among the
    GT instances still free and of its class, the one with the highest mask IoU, provided
    that IoU is >= iou_threshold and >= score_threshold (the latter is Matterport's name
    for a floor on the IoU). Equal IoUs go to the later GT instance, as in the reference.
    All-zero (padding) boxes are trimmed, with the entries that go with them.
    gt_boxes: [G, 4]; gt_class_ids: [G]; gt_masks: [H, W, G];
    pred_boxes: [P, 4]; pred_class_ids: [P]; pred_scores: [P]; pred_masks: [H, W, P].
    Returns:
      gt_match: [G] index of the matched prediction (in score order), -1 if none.
      pred_match: [P] index of the matched GT, -1 if none; in descending-score order.
      overlaps: [P, G] mask IoU, rows in descending-score order.
    """
    num_gt = trim_zeros(np.reshape(np.asarray(gt_boxes), (-1, 4))).shape[0]
    num_pred = trim_zeros(np.reshape(np.asarray(pred_boxes), (-1, 4))).shape[0]
    gt_class_ids = np.asarray(gt_class_ids)[:num_gt]
    gt_masks = np.asarray(gt_masks)[..., :num_gt]
    order = np.argsort(-np.asarray(pred_scores)[:num_pred], kind="stable")
    pred_class_ids = np.asarray(pred_class_ids)[order]
    overlaps = compute_overlaps_masks(np.asarray(pred_masks)[..., order], gt_masks)  # [P, G]

    # [P, G]: pairs that may match, whatever was matched before.
    allowed = ((overlaps >= iou_threshold) & (overlaps >= score_threshold)
               & (pred_class_ids[:, None] == gt_class_ids[None, :]))
    gt_match = np.full(num_gt, -1.0)
    pred_match = np.full(num_pred, -1.0)
    taken = np.zeros(num_gt, dtype=bool)
    for p in np.flatnonzero(allowed.any(axis=1)):
        candidates = np.where(allowed[p] & ~taken, overlaps[p], -1.0)
        g = num_gt - 1 - np.argmax(candidates[::-1])  # best IoU, the later GT on a tie
        if candidates[g] >= 0:
            taken[g] = True
            gt_match[g] = p
            pred_match[p] = g
    return gt_match, pred_match, overlaps


def average_precision(hits, num_gt, recall_dtype=np.float64):
    """AP of detections in descending-score order, `hits` [P] True where one matched a GT
    instance, out of `num_gt`: the area under the monotone precision envelope.

    Returns (ap, precisions [P + 2], recalls [P + 2]), padded as `compute_ap` documents.
    recall_dtype: float32 reproduces Matterport's compute_ap to the last bit."""
    true_positives = np.cumsum(np.asarray(hits, bool))
    ranks = np.arange(1, true_positives.size + 1)
    recall_steps = true_positives.astype(recall_dtype) / max(num_gt, 1)
    precisions = np.concatenate([[0.0], true_positives / ranks, [0.0]])
    recalls = np.concatenate([[0.0], recall_steps, [1.0]])
    precisions = np.maximum.accumulate(precisions[::-1])[::-1]
    gained = recalls[1:] - recalls[:-1]
    grows = recalls[1:] != recalls[:-1]
    return float(np.sum(gained[grows] * precisions[1:][grows])), precisions, recalls


def compute_ap(gt_boxes, gt_class_ids, gt_masks,
               pred_boxes, pred_class_ids, pred_scores, pred_masks,
               iou_threshold=0.5):
    """Average precision of one image's predictions at one mask-IoU threshold
    (VOC style: area under the monotone precision envelope, every recall point).

    With predictions in score order, precision_k = TP_k / k and recall_k = TP_k / G; the
    envelope replaces each precision by the best one at that or any higher recall, and AP
    sums envelope * (recall step) over the points where recall grows.
    Returns:
      mAP: float.
      precisions: [P + 2] precision envelope, padded with 0 at both ends.
      recalls: [P + 2] recall after each prediction (float32 values), padded with 0 first
        and 1 last.
      overlaps: [P, G] mask IoU (rows in descending-score order).
    With no GT instances every recall is 0 and mAP is 0.
    """
    truth = (gt_boxes, gt_class_ids, gt_masks)
    predicted = (pred_boxes, pred_class_ids, pred_scores, pred_masks)
    gt_match, pred_match, overlaps = compute_matches(*truth, *predicted, iou_threshold=iou_threshold)
    mean_ap, precisions, recalls = average_precision(pred_match >= 0, gt_match.size, recall_dtype=np.float32)
    return mean_ap, precisions, recalls, overlaps


def compute_recall(pred_boxes, gt_boxes, iou):
    """Fraction of GT boxes that some predicted box overlaps with IoU >= iou
    (each prediction counts for its best GT only).

    pred_boxes: [P, (y1, x1, y2, x2)]; gt_boxes: [G, (y1, x1, y2, x2)], image pixels.
    Returns: (recall, positive_ids) where positive_ids are the predictions with IoU >= iou.
    """
    overlaps = compute_overlaps(pred_boxes, gt_boxes)   # [P, G]
    good = overlaps.max(axis=1) >= iou
    covered = np.unique(overlaps.argmax(axis=1)[good])
    return covered.size / np.asarray(gt_boxes).shape[0], np.flatnonzero(good)


def compute_ap_range(gt_box, gt_class_id, gt_mask,
                     pred_box, pred_class_id, pred_score, pred_mask,
                     iou_thresholds=None, verbose=1):
    """Mean of `compute_ap` over IoU thresholds (default 0.50:0.05:0.95).

    verbose > 0 prints one line per threshold and the mean (Matterport's display style).
    """
    thresholds = list(np.arange(0.5, 1.0, 0.05) if iou_thresholds is None else iou_thresholds)
    if not thresholds:
        raise ValueError("compute_ap_range: iou_thresholds is empty")
    per_threshold = [compute_ap(gt_box, gt_class_id, gt_mask, pred_box, pred_class_id,
                                pred_score, pred_mask, iou_threshold=t)[0]
                     for t in thresholds]
    mean_ap = np.mean(per_threshold)
    if verbose:
        for t, ap in zip(thresholds, per_threshold):
            print(f"AP @{t:.2f}:\t {ap:.3f}")
        print(f"AP @{thresholds[0]:.2f}-{thresholds[-1]:.2f}:\t {mean_ap:.3f}")
    return mean_ap
