"""From Mask R-CNN detections of one image to the ISIC 2018 deliverables of each task.

Investigate and predict both go through here, so the files they write mean the same thing:
- Task 1: the mask of the highest-scoring lesion detection (empty when nothing is detected).
- Task 2: per attribute, the union of the masks of that attribute's detections.
- Task 3: one row for the whole image: the score-weighted mean of every detection's class
  probabilities, background dropped, renormalised to sum to 1 (with one detection: its softmax
  without the background entry). When no detection passes DETECTION_MIN_CONFIDENCE, the
  softmax over the diagnosis logits of the most confident proposal (detect()'s
  best_proposal_logits) instead, so that a model with any opinion never emits the uniform row
  the official scorer counts as undecided.
  Only a model with no proposal at all gives the uniform row. `task3_row` also says which
  source the row came from.
"""
import logging
import pathlib

import numpy as np

from isic import layout
from isic.outputs import submission

log = logging.getLogger(__name__)

TASK3_CSV_NAME = "ISIC2018_Task3_predictions.csv"
UNIFORM_TASK3 = np.full(len(layout.DIAGNOSES), 1.0 / len(layout.DIAGNOSES))


def lesion_mask(result, image_shape):
    """Task 1: the top detection's mask, [H, W] bool."""
    masks = result["masks"]
    if len(result["scores"]) == 0:
        return np.zeros(image_shape[:2], dtype=bool)
    return masks[..., int(np.argmax(result["scores"]))].astype(bool)


def attribute_masks(result, image_shape):
    """Task 2: {attribute: [H, W] bool}, the union of each attribute's detections."""
    out = {}
    for class_id, name in enumerate(layout.ATTRIBUTES, start=1):
        chosen = result["class_ids"] == class_id
        if chosen.any():
            out[name] = result["masks"][..., chosen].any(axis=-1)
        else:
            out[name] = np.zeros(image_shape[:2], dtype=bool)
    return out


# Where a Task 3 row came from (the per-image JSON's "probability_source").
SOURCE_DETECTIONS = "detections"
SOURCE_BEST_PROPOSAL = "best proposal"
SOURCE_NONE = "none"


def _foreground(probs):
    """[..., 7] float64: the diagnosis entries of softmax rows [..., NUM_CLASSES] (background dropped)."""
    return np.asarray(probs, dtype=np.float64)[..., 1:1 + len(layout.DIAGNOSES)]


TASK3_RULES = ("combined", "top_detection")


def task3_row(result, rule="combined"):
    """(7 probabilities in the official column order, source) for one image's detect() result.

    rule "top_detection" is the rule of earlier versions (and of the export until it adopts
    `task3_row_graph`): the top detection's row, the uniform row when nothing is detected.

    detections: sum_i score_i * fg_i / sum_i score_i over the detections, fg_i the i-th
    detection's softmax without background, renormalised (a detection's fg need not sum to 1:
    its background share is dropped). A confident detection counts more than a weak one, and
    every detection of the lesion has a say rather than only the top one.
    """
    if rule not in TASK3_RULES:
        raise ValueError(f"unknown Task 3 rule {rule!r}; expected one of {', '.join(TASK3_RULES)}")
    scores = np.asarray(result["scores"], dtype=np.float64)  # [N]
    if rule == "top_detection":
        if not len(scores):
            return UNIFORM_TASK3.copy(), SOURCE_NONE
        fg = _foreground(result["class_probs"][int(np.argmax(scores))])
        return (fg / fg.sum(), SOURCE_DETECTIONS) if fg.sum() > 0 else (UNIFORM_TASK3.copy(), SOURCE_NONE)
    if len(scores) and scores.sum() > 0:
        fg = _foreground(result["class_probs"])  # [N, 7]
        row = (scores[:, None] * fg).sum(axis=0) / scores.sum()  # [7]
        if row.sum() > 0:
            return row / row.sum(), SOURCE_DETECTIONS
    best = result.get("best_proposal_logits")
    if best is not None:
        logits = _foreground(best)  # [7] diagnosis logits, background dropped
        if np.ptp(logits) > 0:  # all equal: zeros for "no proposal", or no opinion at all
            e = np.exp(logits - logits.max())
            return e / e.sum(), SOURCE_BEST_PROPOSAL
    return UNIFORM_TASK3.copy(), SOURCE_NONE


def diagnosis_probabilities(result, rule="combined"):
    """Task 3: the 7 class probabilities (official column order) of one image (`task3_row`)."""
    return task3_row(result, rule)[0]


def task3_row_graph(det):
    """`task3_row` (rule "combined") in TF ops, for an exported graph: det holds scores [N],
    class_probs [N, NUM_CLASSES] and best_proposal_logits [NUM_CLASSES] of one image.
    Returns the 7 probabilities, float32 (computed in float64, as task3_row)."""
    import tensorflow as tf
    count = len(layout.DIAGNOSES)
    uniform = tf.fill([count], tf.constant(1.0 / count, tf.float64))
    scores = tf.cast(det["scores"], tf.float64)  # [N]
    fg = tf.cast(det["class_probs"], tf.float64)[:, 1:1 + count]  # [N, 7]
    combined = tf.reduce_sum(scores[:, None] * fg, axis=0) / tf.maximum(tf.reduce_sum(scores), 1e-300)  # [7]
    logits = tf.cast(det["best_proposal_logits"], tf.float64)[1:1 + count]  # [7]
    best = tf.where(tf.reduce_max(logits) > tf.reduce_min(logits), tf.nn.softmax(logits), uniform)
    use_detections = (tf.reduce_sum(scores) > 0) & (tf.reduce_sum(combined) > 0)
    row = tf.where(use_detections, combined / tf.maximum(tf.reduce_sum(combined), 1e-300), best)
    return tf.cast(row, tf.float32)


def prior_corrected(probabilities, class_frequencies):
    """Rows divided by the training class frequencies and renormalised: p(c|x) / p(c) is what a
    model trained on balanced classes would say (Bayes' rule with a flat prior), the row
    balanced accuracy wants. probabilities: [..., 7]; class_frequencies: [7], any scale."""
    prior = np.asarray(class_frequencies, dtype=np.float64)
    if prior.shape != (len(layout.DIAGNOSES),) or not (prior > 0).all():
        raise ValueError(f"class_frequencies must be {len(layout.DIAGNOSES)} positive numbers, got {prior}")
    corrected = np.asarray(probabilities, dtype=np.float64) / (prior / prior.sum())
    return corrected / corrected.sum(axis=-1, keepdims=True)


def task_deliverable(task, result, image_shape, task3_rule="combined"):
    """The task's deliverable for one image: a mask, a dict of masks, or 7 probabilities."""
    if task == "segmentation":
        return lesion_mask(result, image_shape)
    if task == "attributes":
        return attribute_masks(result, image_shape)
    return diagnosis_probabilities(result, task3_rule)


def deliverable_paths(task, out_dir, image_id):
    """The Task 1/2 submission files `write_deliverable` writes for one image (none for Task 3)."""
    stem = submission.submission_stem(image_id)
    if task == "segmentation":
        return [pathlib.Path(out_dir) / layout.segmentation_name(stem)]
    if task == "attributes":
        return [pathlib.Path(out_dir) / layout.attribute_name(stem, a) for a in layout.ATTRIBUTES]
    return []


def write_deliverable(task, out_dir, image_id, deliverable):
    """Write Task 1/2 masks in the submission format; Task 3 rows go into one CSV later.
    Returns the written paths."""
    if task == "segmentation":
        return [submission.write_task1_mask(out_dir, image_id, deliverable)]
    if task == "attributes":
        return list(submission.write_task2_masks(out_dir, image_id, deliverable))
    return []


def write_task3_predictions(out_dir, image_ids, probabilities):
    """The Task 3 submission CSV (official header, one row per image) in `out_dir`."""
    return submission.write_task3_csv(pathlib.Path(out_dir) / TASK3_CSV_NAME,
                                      list(zip(image_ids, probabilities)))


def detections_json(result, class_names, task=None, probabilities=None, probability_source=None):
    """A JSON-ready summary of one image's detections. Task 3: the row (`task3_row`'s, or
    `probabilities` when the caller changed it, e.g. calibrated) and where it came from:
    probability_source "detections", "best proposal" (nothing passed DETECTION_MIN_CONFIDENCE)
    or "none" (no proposal at all: the uniform row)."""
    detections = []
    for i in range(len(result["scores"])):
        y1, x1, y2, x2 = (int(v) for v in result["rois"][i])
        class_id = int(result["class_ids"][i])
        entry = {"box": [y1, x1, y2, x2], "class_id": class_id,
                 "class_name": class_names[class_id] if class_id < len(class_names) else str(class_id),
                 "score": float(result["scores"][i]),
                 "mask_area": int(result["masks"][..., i].sum())}
        detections.append(entry)
    out = {"box_format": "y1,x1,y2,x2 pixels, y2/x2 exclusive", "detections": detections}
    if task == "classification":
        probs, source = task3_row(result)
        if probabilities is not None:  # the caller's row (e.g. temperature-scaled), same source
            probs, source = probabilities, probability_source or source
        out["probabilities"] = dict(zip(layout.DIAGNOSES, (float(p) for p in probs)))
        out["probability_source"] = source
        out["nothing_detected"] = len(result["scores"]) == 0
    return out
