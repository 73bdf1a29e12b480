"""From Mask R-CNN detections of one image to the ISIC 2018 deliverables of each task.

Investigate and predict both go through here, so the files they write mean the same thing:
- Task 1: the mask of the highest-scoring lesion detection (empty when nothing is detected).
- Task 2: per attribute, the union of the masks of that attribute's detections.
- Task 3: the diagnosis probabilities of the highest-scoring detection: its softmax vector
  without the background entry, renormalised to sum to 1. When nothing is detected the
  row is uniform (1/7 each), which the official scorer counts as undecided (wrong).
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


def diagnosis_probabilities(result):
    """Task 3: the 7 class probabilities (official column order) of the top detection."""
    if len(result["scores"]) == 0:
        return UNIFORM_TASK3.copy()
    probs = np.asarray(result["class_probs"][int(np.argmax(result["scores"]))], dtype=np.float64)
    fg = probs[1:1 + len(layout.DIAGNOSES)]
    total = fg.sum()
    return fg / total if total > 0 else UNIFORM_TASK3.copy()


def task_deliverable(task, result, image_shape):
    """The task's deliverable for one image: a mask, a dict of masks, or 7 probabilities."""
    if task == "segmentation":
        return lesion_mask(result, image_shape)
    if task == "attributes":
        return attribute_masks(result, image_shape)
    return diagnosis_probabilities(result)


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


def detections_json(result, class_names, task=None):
    """A JSON-ready summary of one image's detections."""
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
        probs = diagnosis_probabilities(result)
        out["probabilities"] = dict(zip(layout.DIAGNOSES, (float(p) for p in probs)))
        out["nothing_detected"] = len(result["scores"]) == 0
    return out
