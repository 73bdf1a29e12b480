"""ISIC 2018 official metrics, computed the way isic-challenge-scoring 5.6.0 computes them.

The scorer is not imported here (it is the test oracle only); every formula, edge case
and file rule below mirrors its source, so the numbers agree to floating-point rounding.
Also: COCO mask mAP through pycocotools for the detection view of the same predictions.

All scores are plain dicts of Python floats/ints/strs (json.dump-able); a value the
scorer leaves undefined (e.g. AUC of a class absent from the truth) is float('nan'),
and macro means skip NaNs as pandas does in the scorer.
"""
import contextlib
import io
import logging
import warnings

import numpy as np
import pandas as pd
import sklearn.exceptions
import sklearn.metrics
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from isic import layout
from isic.evaluation import submission_files

logger = logging.getLogger(__name__)

TASK1_RECORD_KEYS = ("accuracy", "sensitivity", "specificity", "jaccard", "threshold_jaccard", "dice")
TASK3_CATEGORY_KEYS = ("accuracy", "sensitivity", "specificity", "dice", "ppv", "npv",
                       "auc", "auc_sens_80", "ap")
JACCARD_THRESHOLD = 0.65
UNDECIDED = -1


class MetricError(ValueError):
    """Inputs to a metric that cannot be scored (shapes, empty sets, label format)."""


def _nanmean(values):
    """Mean that skips NaN like pandas' Series.mean; NaN when nothing is left."""
    values = np.asarray(list(values), dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


# --------------------------------------------------------------------------- binary confusion

def binarize_mask(mask):
    """Bool masks stay as they are; numeric masks (0/255 PNG values) become `> 128`."""
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask
    if not (np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.floating)):
        raise MetricError(f"a mask must be bool or numeric, got dtype {mask.dtype}")
    if mask.size and 0 < mask.max() <= 1:
        logger.warning("a numeric mask with values in [0, 1] is all background under the "
                       "official '> 128' rule; pass a bool mask or 0/255 values")
    return mask > 128


def segmentation_confusion(truth, pred):
    """Pixel confusion counts {'TP','TN','FP','FN'} (ints) of two same-size masks."""
    truth = binarize_mask(truth)
    pred = binarize_mask(pred)
    if truth.shape[:2] != pred.shape[:2] or truth.size != pred.size:
        raise MetricError(f"truth {truth.shape} and prediction {pred.shape} differ in size")
    truth, pred = truth.ravel(), pred.ravel()
    tp = int(np.count_nonzero(truth & pred))
    fp = int(np.count_nonzero(~truth & pred))
    fn = int(np.count_nonzero(truth & ~pred))
    tn = int(truth.size - tp - fp - fn)
    return {"TP": tp, "TN": tn, "FP": fp, "FN": fn}


# Each ratio below is the scorer's: an undefined ratio scores a "freebie" 1.0, except
# accuracy, which has no guard (an all-zero matrix gives NaN there too).

def _ratio(numerator, denominator, undefined):
    return float(numerator) / float(denominator) if denominator else undefined


def accuracy(cm):
    return _ratio(cm["TP"] + cm["TN"], cm["TP"] + cm["TN"] + cm["FP"] + cm["FN"], float("nan"))


def sensitivity(cm):
    return _ratio(cm["TP"], cm["TP"] + cm["FN"], 1.0)


def specificity(cm):
    return _ratio(cm["TN"], cm["TN"] + cm["FP"], 1.0)


def jaccard(cm):
    """TP/(TP+FP+FN); 1.0 when truth and prediction are both empty."""
    return _ratio(cm["TP"], cm["TP"] + cm["FP"] + cm["FN"], 1.0)


def dice(cm):
    """2TP/(2TP+FP+FN); 1.0 when truth and prediction are both empty."""
    if not cm["TP"] + cm["FP"] + cm["FN"]:
        return 1.0
    return _ratio(2 * cm["TP"], 2 * cm["TP"] + cm["FP"] + cm["FN"], 1.0)


def ppv(cm):
    return _ratio(cm["TP"], cm["TP"] + cm["FP"], 1.0)


def npv(cm):
    return _ratio(cm["TN"], cm["TN"] + cm["FN"], 1.0)


def threshold_jaccard(j, threshold=JACCARD_THRESHOLD):
    """The Task 1 per-image score: J when J >= threshold, else 0."""
    return float(j) if j >= threshold else 0.0


# --------------------------------------------------------------------------- Task 1

def _scoring_progress(pairs):
    """A progress bar over (truth, prediction) file pairs when there are many."""
    return tqdm(pairs, desc="scoring", unit="mask", leave=False, disable=len(pairs) < 50)


def segmentation_record(truth, pred):
    """Per-image Task 1 metrics: accuracy, sensitivity, specificity, jaccard,
    threshold_jaccard, dice."""
    cm = segmentation_confusion(truth, pred)
    j = jaccard(cm)
    return {
        "accuracy": accuracy(cm),
        "sensitivity": sensitivity(cm),
        "specificity": specificity(cm),
        "jaccard": j,
        "threshold_jaccard": threshold_jaccard(j),
        "dice": dice(cm),
    }


def summarise_task1(per_image):
    """The Task 1 score from per-image records ({image_id: segmentation_record(...)}): what
    score_task1 returns, for callers that score each image as it passes."""
    if not per_image:
        raise MetricError("Task 1 needs at least one (truth, prediction) pair")
    macro = {key: _nanmean(r[key] for r in per_image.values()) for key in TASK1_RECORD_KEYS}
    return {
        "overall": macro["threshold_jaccard"],
        "validation": macro["threshold_jaccard"],
        "macro_average": macro,
        "per_image": per_image,
        "num_images": len(per_image),
    }


def score_task1(pairs):
    """Task 1 score of in-memory masks.

    pairs: {image_id: (truth, pred)} or a sequence of (truth, pred) (ids become '0', '1', ...).
    Returns {'overall' (= mean thresholded Jaccard), 'validation', 'macro_average':
    {accuracy, sensitivity, specificity, jaccard, threshold_jaccard, dice},
    'per_image': {id: record}, 'num_images'}.
    """
    items = pairs.items() if isinstance(pairs, dict) else ((str(i), p) for i, p in enumerate(pairs))
    per_image = {}
    for image_id, (truth, pred) in items:
        try:
            per_image[str(image_id)] = segmentation_record(truth, pred)
        except MetricError as e:
            raise MetricError(f"{image_id}: {e}") from None
    return summarise_task1(per_image)


def score_task1_folders(truth_dir, pred_dir):
    """Task 1 score of a prediction folder against a ground-truth folder (official file rules).

    Every truth file (except ATTRIBUTION.txt/LICENSE.txt) must name an ISIC_<7 digits> id;
    its prediction is the single file whose stem contains those digits; both must be
    single-channel images of the same HxW. Raises submission_files.SubmissionError otherwise.
    """
    per_image = {}
    for image_id, _, truth_path, pred_path in _scoring_progress(submission_files.match_mask_files(truth_dir, pred_dir)):
        truth, pred = submission_files.read_mask_pair(truth_path, pred_path)
        per_image[image_id] = segmentation_record(truth > 128, pred > 128)
    return summarise_task1(per_image)


# --------------------------------------------------------------------------- Task 2

def normalized_confusion(truth, pred):
    """Confusion counts divided by the pixel count, so every image weighs the same."""
    cm = segmentation_confusion(truth, pred)
    total = sum(cm.values())
    return np.array([cm["TP"], cm["TN"], cm["FP"], cm["FN"]], np.float64) / total


def summarise_task2(normalized):
    """The Task 2 score from {(attribute, image_id): normalized_confusion(truth, pred)}
    (insertion order as score_task2 builds it): what score_task2 returns."""
    if not normalized:
        raise MetricError("Task 2 needs at least one (attribute, image) pair")

    def scores(matrices):
        total = np.sum(np.stack(matrices), axis=0)
        cm = dict(zip(("TP", "TN", "FP", "FN"), total))
        return {"jaccard": jaccard(cm), "dice": dice(cm)}

    attributes = sorted({attribute for attribute, _ in normalized})
    per_attribute = {
        attribute: scores([m for (a, _), m in normalized.items() if a == attribute])
        for attribute in attributes}
    micro = scores(list(normalized.values()))
    missing = [a for a in layout.ATTRIBUTES if a not in per_attribute]
    return {
        "overall": micro["jaccard"],
        "micro_average": micro,
        "per_attribute": per_attribute,
        "mean_attribute_jaccard": _nanmean(s["jaccard"] for s in per_attribute.values()),
        "attributes_scored": attributes,
        "attributes_missing": missing,
        "num_images": len({image_id for _, image_id in normalized}),
    }


def score_task2(masks):
    """Task 2 score of in-memory masks: {image_id: {attribute: (truth, pred)}}.

    Each (attribute, image) confusion matrix is normalised to sum 1 and summed over images;
    per attribute J and Dice come from those sums, 'overall' is the micro-average Jaccard
    over all attributes and images. An empty truth with an empty prediction adds only true
    negatives, so it leaves J unchanged. Either side of a pair may be None (= all zero,
    with the other side's shape). An attribute left out of an image's dict is not scored
    for that image, exactly like a missing ground-truth file for the scorer.
    Returns {'overall', 'micro_average': {jaccard, dice}, 'per_attribute': {a: {jaccard,
    dice}}, 'mean_attribute_jaccard', 'attributes_scored', 'attributes_missing', 'num_images'}.
    """
    normalized = {}
    for image_id, by_attribute in masks.items():
        for attribute, (truth, pred) in by_attribute.items():
            if truth is None and pred is None:
                raise MetricError(f"{image_id}/{attribute}: truth and prediction are both None")
            truth = np.zeros(np.shape(pred)[:2], bool) if truth is None else truth
            pred = np.zeros(np.shape(truth)[:2], bool) if pred is None else pred
            try:
                normalized[(attribute, str(image_id))] = normalized_confusion(truth, pred)
            except MetricError as e:
                raise MetricError(f"{image_id}/{attribute}: {e}") from None
    return summarise_task2(normalized)


def score_task2_folders(truth_dir, pred_dir):
    """Task 2 score of a prediction folder against a ground-truth folder (official file rules).

    Like the official scorer, only the (attribute, image) pairs that have a ground-truth
    file are scored: prediction files without truth are ignored, and an attribute with no
    truth file at all is absent from 'per_attribute' (listed in 'attributes_missing'; the
    real sample has pigment_network only). 'overall' is then the micro average over the
    attributes that were scored, which is what the scorer returns for the same folders.
    """
    normalized = {}
    for image_id, attribute, truth_path, pred_path in _scoring_progress(
            submission_files.match_mask_files(truth_dir, pred_dir)):
        if attribute is None:
            raise submission_files.SubmissionError(
                f"{truth_path.name} is not a Task 2 file (no 'attribute_<name>' in its name)")
        truth, pred = submission_files.read_mask_pair(truth_path, pred_path)
        normalized[(attribute, image_id)] = normalized_confusion(truth > 128, pred > 128)
    result = summarise_task2(normalized)
    if result["attributes_missing"]:
        logger.info("Task 2 ground truth has no files for %s; scored %s only",
                    result["attributes_missing"], result["attributes_scored"])
    return result


# --------------------------------------------------------------------------- Task 3

def argmax_labels(probabilities):
    """Row-wise argmax; rows whose maximum is tied become UNDECIDED (-1), as in the scorer."""
    probabilities = np.asarray(probabilities, np.float64)
    labels = np.argmax(probabilities, axis=1)
    is_max = probabilities == probabilities.max(axis=1, keepdims=True)
    labels[is_max.sum(axis=1) > 1] = UNDECIDED
    return labels


def balanced_accuracy(truth_labels, pred_labels, weights, num_classes):
    """Mean over classes of weighted TP / weighted truth count; classes with zero weighted
    truth count are skipped (the scorer's 0/0 = NaN dropped by the mean). UNDECIDED
    predictions count as wrong; UNDECIDED truth rows count nowhere."""
    truth_labels = np.asarray(truth_labels)
    pred_labels = np.asarray(pred_labels)
    weights = np.asarray(weights, np.float64)
    recalls = []
    for c in range(num_classes):
        is_c = truth_labels == c
        frequency = float(np.sum(weights[is_c]))
        correct = float(np.sum(weights[is_c & (pred_labels == c)]))
        recalls.append(correct / frequency if frequency else float("nan"))
    return _nanmean(recalls)


def _weighted_confusion(truth_binary, pred_binary, weights):
    return {
        "TP": float(np.sum(np.logical_and(truth_binary, pred_binary) * weights)),
        "TN": float(np.sum(np.logical_and(~truth_binary, ~pred_binary) * weights)),
        "FP": float(np.sum(np.logical_and(~truth_binary, pred_binary) * weights)),
        "FN": float(np.sum(np.logical_and(truth_binary, ~pred_binary) * weights)),
    }


def _auc_above_sensitivity(truth, pred, weights, sensitivity_threshold=0.80):
    """Raw (not McClish-corrected) ROC area over the part of the curve with TPR >= threshold.

    NaN when the (non-zero-weight) truth lacks positives or negatives: the ROC curve is
    undefined there and the official scorer raises instead of scoring.
    """
    nonzero = weights != 0.0
    truth, pred, weights = truth[nonzero], pred[nonzero], weights[nonzero]
    if not (np.any(truth > 0.5) and np.any(truth <= 0.5)):
        return float("nan")
    sample_weight = None if np.all(weights == 1.0) else weights
    fpr, tpr, _ = sklearn.metrics.roc_curve(truth, pred, sample_weight=sample_weight,
                                            drop_intermediate=False)
    index = tpr.searchsorted(sensitivity_threshold, side="left")
    fpr_at_threshold = np.interp(sensitivity_threshold, tpr[index - 1:index + 1],
                                 fpr[index - 1:index + 1])
    return float(sklearn.metrics.auc(np.insert(fpr[index:], 0, fpr_at_threshold),
                                     np.insert(tpr[index:], 0, sensitivity_threshold)))


def task3_category_scores(truth, pred, weights):
    """The scorer's per-class metrics of one class column (truth 0/1, pred probabilities)."""
    truth = np.asarray(truth, np.float64)
    pred = np.asarray(pred, np.float64)
    weights = np.asarray(weights, np.float64)
    cm = _weighted_confusion(truth > 0.5, pred > 0.5, weights)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        # A class without positives (or negatives) has an undefined AUC; sklearn warns and
        # returns NaN (AUC) or its own convention (AP), which the scorer reports as well.
        # _score_task3_frames logs such classes once.
        warnings.simplefilter("ignore", sklearn.exceptions.UndefinedMetricWarning)
        warnings.filterwarnings("ignore", message="No positive class found in y_true")
        return {
            "accuracy": accuracy(cm),
            "sensitivity": sensitivity(cm),
            "specificity": specificity(cm),
            "dice": dice(cm),
            "ppv": ppv(cm),
            "npv": npv(cm),
            "auc": float(sklearn.metrics.roc_auc_score(truth, pred, sample_weight=weights)),
            "auc_sens_80": _auc_above_sensitivity(truth, pred, weights),
            "ap": float(sklearn.metrics.average_precision_score(truth, pred, sample_weight=weights)),
        }


def _as_frame(values, categories, image_ids, what):
    if isinstance(values, pd.DataFrame):
        frame = values.set_index("image") if "image" in values.columns else values
        return frame
    values = np.asarray(values)
    if values.ndim == 1 and what == "truth":
        labels = values.astype(np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= len(categories)):
            raise MetricError(f"truth labels must lie in 0..{len(categories) - 1}")
        values = np.eye(len(categories))[labels]
    if values.ndim != 2 or values.shape[1] != len(categories):
        raise MetricError(f"{what} must be [N, {len(categories)}] (columns {list(categories)}), "
                          f"got shape {values.shape}")
    ids = [str(i) for i in image_ids] if image_ids is not None else [
        f"{i:07d}" for i in range(values.shape[0])]
    if len(ids) != values.shape[0]:
        raise MetricError(f"{len(ids)} image ids for {values.shape[0]} {what} rows")
    return pd.DataFrame(values.astype(np.float64), index=pd.Index(ids, name="image"),
                        columns=list(categories))


def score_task3(truth, pred, image_ids=None, categories=layout.DIAGNOSES):
    """Task 3 score: balanced multi-class accuracy plus the scorer's per-class metrics.

    truth: DataFrame (index or 'image' column = image ids; one column per category; optional
    'score_weight'/'validation_weight'), or an array [N, C] one-hot, or int labels [N].
    pred: DataFrame with the same images and the category columns, or an array [N, C].
    Arrays are matched row by row (image_ids names them). Weights default to 1 and
    ISIC_0035068 gets weight 0, as in the scorer.
    Returns {'overall' (= balanced_accuracy), 'balanced_accuracy', 'validation',
    'per_category': {c: {accuracy, sensitivity, specificity, dice, ppv, npv, auc,
    auc_sens_80, ap}}, 'macro_average': {...same keys}, 'num_images'}.
    """
    truth = _as_frame(truth, categories, image_ids, "truth")
    pred = _as_frame(pred, categories, image_ids, "prediction")
    weights = pd.DataFrame(index=truth.index)
    for column in ("score_weight", "validation_weight"):
        weights[column] = truth[column].astype(np.float64) if column in truth.columns else 1.0
    if "ISIC_0035068" in weights.index:
        weights.loc["ISIC_0035068", :] = 0.0
    truth = truth.drop(columns=[c for c in ("score_weight", "validation_weight") if c in truth.columns])
    categories = list(truth.columns)
    return _score_task3_frames(truth, pred, weights, categories)


def _score_task3_frames(truth, pred, weights, categories):
    missing_columns = sorted(set(categories) - set(pred.columns))
    extra_columns = sorted(set(pred.columns) - set(categories))
    if missing_columns or extra_columns:
        raise MetricError(f"prediction columns differ from {categories}: missing "
                          f"{missing_columns}, extra {extra_columns}")
    missing_rows = truth.index.difference(pred.index).tolist()
    extra_rows = pred.index.difference(truth.index).tolist()
    if missing_rows or extra_rows:
        raise MetricError(f"prediction rows differ from truth: missing {missing_rows[:10]}, "
                          f"extra {extra_rows[:10]}")
    if truth.index.has_duplicates or pred.index.has_duplicates:
        raise MetricError("duplicate image ids in Task 3 truth or prediction")
    order = truth.index.sort_values()
    truth_values = truth.loc[order, categories].to_numpy(np.float64)
    pred_values = pred.loc[order, categories].to_numpy(np.float64)
    weights = weights.loc[order]
    if not len(order):
        raise MetricError("Task 3 needs at least one image")
    if np.isnan(pred_values).any() or (pred_values < 0).any() or (pred_values > 1).any():
        raise MetricError("Task 3 probabilities must be numbers within [0, 1]")
    if np.isnan(truth_values).any():
        raise MetricError("Task 3 truth has missing values")

    score_weights = weights["score_weight"].to_numpy(np.float64)
    weighted = score_weights != 0
    one_sided = [c for k, c in enumerate(categories)
                 if np.all(truth_values[weighted, k] > 0.5) or np.all(truth_values[weighted, k] <= 0.5)]
    if one_sided:
        logger.warning("Task 3 truth has only positives or only negatives for %s: their AUC "
                       "values are NaN and the macro averages skip them", one_sided)
    truth_labels = argmax_labels(truth_values)
    pred_labels = argmax_labels(pred_values)
    per_category = {
        category: task3_category_scores(truth_values[:, k], pred_values[:, k], score_weights)
        for k, category in enumerate(categories)}
    macro = {key: _nanmean(s[key] for s in per_category.values()) for key in TASK3_CATEGORY_KEYS}
    score = balanced_accuracy(truth_labels, pred_labels, score_weights, len(categories))
    validation = balanced_accuracy(truth_labels, pred_labels,
                                   weights["validation_weight"].to_numpy(np.float64), len(categories))
    return {
        "overall": score,
        "balanced_accuracy": score,
        "validation": validation,
        "per_category": per_category,
        "macro_average": macro,
        "num_images": int(len(order)),
        "undecided_predictions": int(np.sum(pred_labels == UNDECIDED)),
    }


def score_task3_files(truth_csv, pred_csv):
    """Task 3 score of a submission CSV against the ground-truth CSV (official CSV rules)."""
    truth, weights = submission_files.read_task3_truth_csv(truth_csv)
    categories = list(truth.columns)
    pred = submission_files.read_task3_csv(pred_csv, categories)
    missing = truth.index.difference(pred.index).tolist()
    extra = pred.index.difference(truth.index).tolist()
    if missing:
        raise submission_files.SubmissionError(f"Task 3 CSV lacks images {missing[:10]}")
    if extra:
        raise submission_files.SubmissionError(f"Task 3 CSV has images not in the truth {extra[:10]}")
    return _score_task3_frames(truth, pred, weights, categories)


def task3_confusion_matrix(truth, pred, categories=layout.DIAGNOSES):
    """Counts of (true class, predicted class) by argmax, for the confusion-matrix figure.

    truth: one-hot [N, C] or labels [N]; pred: probabilities [N, C]. Tied maxima go to the
    first tied class here (the official score counts them as wrong); 'undecided' says how
    many predictions were tied. Returns {'labels', 'matrix' (rows = truth), 'undecided'}.
    """
    pred = np.asarray(pred, np.float64)
    truth = np.asarray(truth)
    truth_labels = truth.astype(np.int64) if truth.ndim == 1 else np.argmax(truth, axis=1)
    if pred.ndim != 2 or pred.shape[1] != len(categories) or pred.shape[0] != truth_labels.shape[0]:
        raise MetricError(f"pred must be [N={truth_labels.shape[0]}, {len(categories)}], got {pred.shape}")
    matrix = np.zeros((len(categories), len(categories)), np.int64)
    np.add.at(matrix, (truth_labels, np.argmax(pred, axis=1)), 1)
    return {"labels": list(categories), "matrix": matrix.tolist(),
            "undecided": int(np.sum(argmax_labels(pred) == UNDECIDED))}


# --------------------------------------------------------------------------- COCO mask mAP

def _encode_masks(masks):
    """HxWxN masks -> list of N compressed COCO RLEs."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise MetricError(f"instance masks must be HxWxN, got shape {masks.shape}")
    if masks.shape[2] == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.astype(bool).astype(np.uint8)))
    return rles


class CocoMaskAccumulator:
    """COCO mask mAP built up one image at a time: each image's masks become run-length
    encodings (pycocotools.mask.encode) as they pass, so only those are kept.
    `add` per image, then `result`; the same numbers as coco_mask_map on the full lists."""

    def __init__(self):
        self.images, self.gt_anns, self.dt_anns, self.class_ids = [], [], [], set()

    def add(self, gt_masks, gt_ids, dt_masks, dt_ids, dt_scores):
        """gt_masks [H, W, N] bool, gt_ids [N]; dt_masks [H, W, M] bool, dt_ids [M], dt_scores [M]."""
        image_index = len(self.images)
        image_id = image_index + 1
        gt_masks, dt_masks = np.asarray(gt_masks), np.asarray(dt_masks)
        if gt_masks.ndim != 3 or dt_masks.ndim != 3 or gt_masks.shape[:2] != dt_masks.shape[:2]:
            raise MetricError(f"image {image_index}: masks must be HxWxN of one HxW, got "
                              f"{gt_masks.shape} and {dt_masks.shape}")
        gt_ids, dt_ids = np.asarray(gt_ids).ravel(), np.asarray(dt_ids).ravel()
        dt_scores = np.asarray(dt_scores, np.float64).ravel()
        if gt_ids.size != gt_masks.shape[2] or not dt_ids.size == dt_scores.size == dt_masks.shape[2]:
            raise MetricError(f"image {image_index}: one class id (and score) per mask is required")
        height, width = gt_masks.shape[:2]
        self.images.append({"id": image_id, "height": int(height), "width": int(width)})
        # ids start at 1: COCOeval treats a matched id of 0 as "unmatched".
        for rle, class_id in zip(_encode_masks(gt_masks), gt_ids):
            self.class_ids.add(int(class_id))
            self.gt_anns.append({"id": len(self.gt_anns) + 1, "image_id": image_id,
                                 "category_id": int(class_id), "segmentation": rle,
                                 "area": float(mask_utils.area(rle)),
                                 "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": 0})
        for rle, class_id, score in zip(_encode_masks(dt_masks), dt_ids, dt_scores):
            self.class_ids.add(int(class_id))
            self.dt_anns.append({"id": len(self.dt_anns) + 1, "image_id": image_id,
                                 "category_id": int(class_id), "segmentation": rle,
                                 "score": float(score), "area": float(mask_utils.area(rle)),
                                 "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": 0})

    def result(self, class_names=None):
        """{'mAP@0.5', 'mAP@[.5:.95]', 'per_class': {name: {'AP@0.5', 'AP@[.5:.95]'}}}."""
        return _coco_evaluate(self.images, self.gt_anns, self.dt_anns, self.class_ids, class_names)


def coco_mask_map(gt, pred, class_names=None):
    """COCO mask mAP at IoU 0.5 and averaged over IoU 0.5:0.95 (pycocotools, maxDets 100).

    gt: list per image of (masks [H, W, N] bool, class_ids [N]);
    pred: list per image of (masks [H, W, M] bool, class_ids [M], scores [M]).
    Images without ground truth or predictions are fine. Classes never present in the
    ground truth are left out of the mean (COCO convention); with no ground truth at all
    both values are NaN. class_names: optional {class_id: name} for the per-class keys.
    Returns {'mAP@0.5', 'mAP@[.5:.95]', 'per_class': {name: {'AP@0.5', 'AP@[.5:.95]'}}}.
    """
    if len(gt) != len(pred):
        raise MetricError(f"{len(gt)} ground-truth images but {len(pred)} prediction images")
    accumulator = CocoMaskAccumulator()
    for (gt_masks, gt_ids), (dt_masks, dt_ids, dt_scores) in zip(gt, pred):
        accumulator.add(gt_masks, gt_ids, dt_masks, dt_ids, dt_scores)
    return accumulator.result(class_names)


def _coco_evaluate(images, gt_anns, dt_anns, class_ids, class_names):
    nan = float("nan")
    if not gt_anns:
        logger.warning("coco_mask_map: no ground-truth instances, mAP is undefined (NaN)")
        return {"mAP@0.5": nan, "mAP@[.5:.95]": nan, "per_class": {}}

    categories = [{"id": c} for c in sorted(class_ids)]
    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet:
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "categories": categories, "annotations": gt_anns}
        coco_gt.createIndex()
        coco_dt = COCO()
        coco_dt.dataset = {"images": images, "categories": categories, "annotations": dt_anns}
        coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()

    # precision: [iou thresholds T, recall points R, classes K, area ranges A, max dets M];
    # area 'all' is index 0 and maxDets 100 the last, as COCOeval.summarize uses them.
    precision = evaluator.eval["precision"][:, :, :, 0, -1]

    def mean_valid(p):
        p = p[p > -1]
        return float(np.mean(p)) if p.size else nan

    per_class = {}
    for k, class_id in enumerate(evaluator.params.catIds):
        name = str(class_names.get(class_id, class_id)) if class_names else str(class_id)
        per_class[name] = {"AP@0.5": mean_valid(precision[0, :, k]),
                           "AP@[.5:.95]": mean_valid(precision[:, :, k])}
    return {"mAP@0.5": mean_valid(precision[0]), "mAP@[.5:.95]": mean_valid(precision),
            "per_class": per_class}
