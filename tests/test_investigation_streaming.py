"""Streaming investigate (isic.modes.investigate.investigate scores each image as it passes
and keeps none of its masks) reports the same numbers as a plain computation written out in
this file, which first collects every image's masks and scores them all at the end:

- the ISIC score, from the submission files investigate wrote to predictions/ and the
  ground-truth files of the dataset (mask_sources["isic"] says so):
  Task 1 per image TP/FP/FN/TN -> accuracy, sensitivity, specificity, Jaccard, Dice and the
  thresholded Jaccard (J, or 0 when J < 0.65), and their means over the images (the official
  overall score is the mean thresholded Jaccard);
  Task 2 per (attribute, image) with a ground-truth file, the confusion counts divided by the
  pixel count, summed per attribute (Jaccard, Dice) and over everything (micro average: the
  overall score);
  Task 3 isic-challenge-scoring's own metric functions (balanced accuracy; per class
  accuracy, sensitivity, specificity, Dice, PPV, NPV, AUC, AUC above 80 % sensitivity, AP)
  on the submission CSV and the truth rows, and the argmax confusion matrix;
- mask mAP, from the network's own instance masks: pycocotools' COCOeval (segm) of all
  images at once, AP@0.5 and AP@[.5:.95] per class and averaged;
- pooled AP@0.5: every detection of the split, matched greedily by mask IoU >= 0.5 to a
  free ground-truth instance of its class, sorted by score, area under the precision envelope;
- the dataset statistics (counts, sizes, median instance area).

All agree within 1e-6 (NaN where both are undefined). The detections come from a
deterministic stand-in for the network (dark regions of the image at three thresholds, with
scores and class probabilities from the image's colours), so nothing depends on TensorFlow's
numerics and the test takes seconds.
"""
import contextlib
import csv
import io
import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy import ndimage

from isic import layout
from isic.modes import investigate as investigation
from isic.modes import run_folders
from isic.outputs import deliverables
from isic.synthetic import generate_dataset
from mrcnn import utils

TASKS = ("segmentation", "attributes", "classification")
QUANTILES = (0.12, 0.25, 0.4)
IMAGES, FIGURES = 5, 2
TOLERANCE = 1e-6
SPLIT = "Training"


class StandInConfig:
    TASK1_TTA_FLIPS = False
    TASK1_MASK_REFINEMENT = "fill"


class ContentDetector:
    """A deterministic `detect` from image content: masks of the darkest 12/25/40 % of the
    smoothed image (blobs, not speckle), class ids cycling through the classes, scores and
    class probabilities from the image's mean colour."""

    def __init__(self, num_classes):
        self.num_classes = num_classes
        self.config = StandInConfig()

    def detect(self, images, verbose=0):
        image = images[0]
        gray = image.astype(np.float64).mean(axis=-1)
        gray = ndimage.uniform_filter(gray, size=max(3, min(gray.shape) // 12))
        masks = np.stack([gray <= np.quantile(gray, q) for q in QUANTILES], axis=-1)  # [H, W, 3]
        mean_rgb = image.reshape(-1, 3).mean(axis=0) / 255.0
        base = float(mean_rgb.mean())
        scores = np.array([0.55 + 0.4 * base, 0.3 + 0.5 * mean_rgb[0], 0.2 + 0.3 * mean_rgb[2]], np.float32)
        class_ids = np.array([1 + (k + int(255 * base)) % (self.num_classes - 1) for k in range(3)], np.int32)
        logits = np.outer(np.arange(1, 4), np.cos(np.arange(self.num_classes) * (1 + 3 * mean_rgb[1])))
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        return [{"rois": utils.extract_bboxes(masks), "class_ids": class_ids, "scores": scores,
                 "masks": masks, "class_probs": probs.astype(np.float32)}]


def _sample_dataset(task, root):
    return run_folders.load_dataset(task, root, "all", 42, limit=IMAGES)


def investigate_report(task, root, out):
    dataset = _sample_dataset(task, root)
    model = ContentDetector(len(dataset.class_names))
    pred_dir, fig_dir = out / "predictions", out / "figures"
    pred_dir.mkdir(parents=True, exist_ok=True)
    fig_dir.mkdir(parents=True, exist_ok=True)
    saved, investigation.FIGURE_IMAGES = investigation.FIGURE_IMAGES, FIGURES  # fewer figures to draw
    try:
        report = investigation.investigate(model, dataset, task, pred_dir, fig_dir)
    finally:
        investigation.FIGURE_IMAGES = saved
    return json.loads(json.dumps(report, default=float))


def _synthetic_root(base):
    root = base / "synthetic"
    if not root.exists():
        generate_dataset(root, count=6, task3_count=6, image_size=(80, 96), seed=11, progress=False)
    return root


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return _synthetic_root(tmp_path_factory.mktemp("stream"))


# --- The plain computation ----------------------------------------------------------------------

def assert_close(actual, expected, where):
    """Numbers equal within TOLERANCE, NaN only where NaN is expected."""
    if isinstance(expected, float) and math.isnan(expected):
        assert isinstance(actual, float) and math.isnan(actual), f"{where}: {actual} is not NaN"
    else:
        assert actual == pytest.approx(expected, abs=TOLERANCE), f"{where}: {actual} != {expected}"


def assert_all_close(actual, expected, where):
    """Every key of `expected` (a flat dict of numbers) is in `actual` with that value."""
    assert set(actual) == set(expected), f"{where}: keys {sorted(actual)} != {sorted(expected)}"
    for key, value in expected.items():
        assert_close(actual[key], value, f"{where}.{key}")


def read_binary(path):
    """A mask file as the official scorer reads it: pixels > 128."""
    with Image.open(path) as im:
        return np.asarray(im) > 128


def ratio(numerator, denominator):
    """The scorer's ratio: an undefined one (0/0) scores 1."""
    return numerator / denominator if denominator else 1.0


def confusion(truth, pred):
    """(TP, FP, FN, TN) pixel counts."""
    tp = float(np.sum(truth & pred))
    fp = float(np.sum(~truth & pred))
    fn = float(np.sum(truth & ~pred))
    return tp, fp, fn, float(truth.size) - tp - fp - fn


def task1_record(truth, pred):
    tp, fp, fn, tn = confusion(truth, pred)
    jaccard = ratio(tp, tp + fp + fn)
    return {"accuracy": (tp + tn) / (tp + fp + fn + tn), "sensitivity": ratio(tp, tp + fn),
            "specificity": ratio(tn, tn + fp), "jaccard": jaccard,
            "threshold_jaccard": jaccard if jaccard >= 0.65 else 0.0,
            "dice": ratio(2 * tp, 2 * tp + fp + fn)}


def expected_task1(root, pred_dir, ids):
    gt_dir = root / layout.TASK1_GT_DIR.format(split=SPLIT)
    per_image = {i: task1_record(read_binary(gt_dir / layout.segmentation_name(i)),
                                 read_binary(pred_dir / layout.segmentation_name(i))) for i in ids}
    macro = {key: float(np.mean([r[key] for r in per_image.values()])) for key in next(iter(per_image.values()))}
    return per_image, macro


def expected_task2(root, pred_dir, ids):
    """{attribute: summed normalised (TP, FP, FN, TN)} over the images with a truth file."""
    gt_dir = root / layout.task2_gt_dir(SPLIT)
    sums = {}
    for i in ids:
        for attribute in layout.ATTRIBUTES:
            truth_path = gt_dir / layout.attribute_name(i, attribute)
            if truth_path.is_file():
                truth = read_binary(truth_path)
                pred = read_binary(pred_dir / layout.attribute_name(i, attribute))
                sums[attribute] = sums.get(attribute, 0.0) + np.array(confusion(truth, pred)) / truth.size
    return sums


def jaccard_dice(tp, fp, fn, tn):
    return {"jaccard": ratio(tp, tp + fp + fn), "dice": ratio(2 * tp, 2 * tp + fp + fn)}


def task3_truth_rows(root, ids):
    path = root / layout.TASK3_GT_DIR.format(split=SPLIT) / layout.TASK3_GT_CSV.format(split=SPLIT)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], [r for r in rows[1:] if r[0] in set(ids)]


TASK3_KEYS = ("accuracy", "sensitivity", "specificity", "dice", "ppv", "npv", "auc", "auc_sens_80", "ap")


def official_task3(truth, predicted):
    """Balanced accuracy and per-class scores with isic-challenge-scoring's own metric
    functions (weights 1). The scorer cannot compute the AUC above 80 % sensitivity of a class
    whose truth is all positive or all negative (it raises); that value is NaN, like the AUC."""
    from isic_challenge_scoring import metrics as official
    from isic_challenge_scoring.confusion import create_binary_confusion_matrix
    weights = pd.Series(1.0, index=truth.index)
    per_category = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn on one-sided classes
        for category in layout.DIAGNOSES:
            t, p = truth[category], predicted[category]
            cm = create_binary_confusion_matrix(t.gt(0.5).to_numpy(), p.gt(0.5).to_numpy(), weights.to_numpy(),
                                                category)
            two_sided = 0 < int(t.gt(0.5).sum()) < len(t)
            per_category[category] = {
                "accuracy": official.binary_accuracy(cm), "sensitivity": official.binary_sensitivity(cm),
                "specificity": official.binary_specificity(cm), "dice": official.binary_dice(cm),
                "ppv": official.binary_ppv(cm), "npv": official.binary_npv(cm),
                "auc": official.auc(t, p, weights),
                "auc_sens_80": official.auc_above_sensitivity(t, p, weights, 0.80) if two_sided else float("nan"),
                "ap": official.average_precision(t, p, weights)}
        overall = official.balanced_multiclass_accuracy(truth, predicted, weights)
    return float(overall), {c: {k: float(v) for k, v in s.items()} for c, s in per_category.items()}


def coco_map(gt, dt, class_names):
    """COCO mask AP of all images at once: gt [(masks, class_ids)], dt [(masks, class_ids,
    scores)] per image; classes are those in the ground truth or the detections."""
    images, gt_anns, dt_anns = [], [], []
    for n, ((gt_masks, gt_ids), (dt_masks, dt_ids, scores)) in enumerate(zip(gt, dt), start=1):
        images.append({"id": n, "height": gt_masks.shape[0], "width": gt_masks.shape[1]})
        for masks, ids, anns, extra in ((gt_masks, gt_ids, gt_anns, [{}] * len(gt_ids)),
                                        (dt_masks, dt_ids, dt_anns, [{"score": float(s)} for s in scores])):
            for k, class_id in enumerate(ids):
                rle = mask_utils.encode(np.asfortranarray(masks[..., k].astype(np.uint8)))
                anns.append({"id": len(anns) + 1, "image_id": n, "category_id": int(class_id), "segmentation": rle,
                             "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist(),
                             "iscrowd": 0, **extra[k]})
    categories = sorted({a["category_id"] for a in gt_anns + dt_anns})
    with contextlib.redirect_stdout(io.StringIO()):
        truth, found = COCO(), COCO()
        for coco, anns in ((truth, gt_anns), (found, dt_anns)):
            coco.dataset = {"images": images, "categories": [{"id": c} for c in categories], "annotations": anns}
            coco.createIndex()
        evaluator = COCOeval(truth, found, iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # [IoU, recall, class] for area "all", 100 dets

    def mean_defined(p):
        return float(p[p > -1].mean()) if (p > -1).any() else float("nan")

    per_class = {class_names[c]: {"AP@0.5": mean_defined(precision[0, :, k]),
                                  "AP@[.5:.95]": mean_defined(precision[:, :, k])}
                 for k, c in enumerate(evaluator.params.catIds)}
    # COCO's own summary: stats[0] AP@[.5:.95], stats[1] AP@0.5 (-1 when undefined).
    stats = [float("nan") if v == -1 else float(v) for v in evaluator.stats[:2]]
    return {"mAP@0.5": stats[1], "mAP@[.5:.95]": stats[0], "per_class": per_class}


def mask_iou_matrix(pred_masks, gt_masks):
    pred = pred_masks.reshape(-1, pred_masks.shape[-1]).astype(np.float64)
    truth = gt_masks.reshape(-1, gt_masks.shape[-1]).astype(np.float64)
    shared = pred.T @ truth
    union = pred.sum(0)[:, None] + truth.sum(0)[None, :] - shared
    return np.where(union > 0, shared / np.maximum(union, 1), 0.0)


def pooled_ap50(gt, dt):
    """VOC-style AP@0.5 (mask IoU) of all detections of the split pooled together."""
    scored, num_gt = [], 0
    for (gt_masks, gt_ids), (dt_masks, dt_ids, scores) in zip(gt, dt):
        num_gt += len(gt_ids)
        order = np.argsort(-scores, kind="stable")
        iou = mask_iou_matrix(dt_masks[..., order], gt_masks) if len(gt_ids) else np.zeros((len(order), 0))
        free = np.ones(len(gt_ids), bool)
        for row, p in enumerate(order):
            candidates = np.where(free & (gt_ids == dt_ids[p]) & (iou[row] >= 0.5), iou[row], -1.0)
            hit = len(gt_ids) > 0 and candidates.max() >= 0.5
            if hit:
                g = len(gt_ids) - 1 - int(np.argmax(candidates[::-1]))  # the later instance on a tie
                free[g] = False
            scored.append((float(scores[p]), hit))
    ranked = sorted(range(len(scored)), key=lambda n: -scored[n][0])  # stable: ties keep their order
    hits = np.array([scored[n][1] for n in ranked], bool)
    true_positives = np.cumsum(hits)
    precision = np.concatenate([[0.0], true_positives / np.arange(1, len(hits) + 1), [0.0]])
    recall = np.concatenate([[0.0], true_positives / max(num_gt, 1), [1.0]])
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * envelope[steps + 1]))


def collect(task, root):
    """Every image's id, size, ground-truth instances and detections, all kept in memory."""
    dataset = _sample_dataset(task, root)
    detector = ContentDetector(len(dataset.class_names))
    ids, sizes, gt, dt = [], [], [], []
    for image_id in dataset.image_ids:
        info = dataset.image_info[image_id]
        image = dataset.load_image(image_id)
        masks, class_ids = dataset.load_mask(image_id)
        result = detector.detect([image])[0]
        ids.append(info.get("isic_id") or info["id"])
        sizes.append(image.shape[:2])
        gt.append((masks.astype(bool), np.asarray(class_ids)))
        dt.append((result["masks"], result["class_ids"], result["scores"]))
    return dataset, ids, sizes, gt, dt


# --- The tests ----------------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["real", "synthetic"])
@pytest.mark.parametrize("task", TASKS)
def test_streamed_metrics_equal_a_plain_computation(task, source, request, tmp_path):
    root = request.getfixturevalue("isic_sample" if source == "real" else "synthetic_root")
    report = investigate_report(task, root, tmp_path)
    pred_dir = tmp_path / "predictions"
    dataset, ids, sizes, gt, dt = collect(task, root)

    assert report["image_ids"] == ids and report["num_images"] == len(ids) == IMAGES
    assert set(report["mask_sources"]) == {"isic", "mask_map", "pooled_mask_ap50"}
    assert "predictions/" in report["mask_sources"]["isic"]
    assert "network's instance masks" in report["mask_sources"]["mask_map"]

    isic = report["isic"]
    if task == "segmentation":
        per_image, macro = expected_task1(root, pred_dir, ids)
        assert sorted(isic["per_image"]) == sorted(ids)
        for i in ids:
            assert_all_close(isic["per_image"][i], per_image[i], f"per_image.{i}")
        assert_all_close(isic["macro_average"], macro, "macro_average")
        assert_close(isic["overall"], macro["threshold_jaccard"], "overall")
    elif task == "attributes":
        sums = expected_task2(root, pred_dir, ids)
        assert sums and isic["attributes_scored"] == sorted(sums)
        assert isic["attributes_missing"] == [a for a in layout.ATTRIBUTES if a not in sums]
        assert sorted(isic["per_attribute"]) == sorted(sums)
        for attribute, total in sums.items():
            assert_all_close(isic["per_attribute"][attribute], jaccard_dice(*total), attribute)
        micro = jaccard_dice(*np.sum(list(sums.values()), axis=0))
        assert_all_close(isic["micro_average"], micro, "micro_average")
        assert_close(isic["overall"], micro["jaccard"], "overall")
        assert_close(isic["mean_attribute_jaccard"],
                     float(np.mean([jaccard_dice(*t)["jaccard"] for t in sums.values()])), "mean_attribute_jaccard")
    else:
        header, rows = task3_truth_rows(root, ids)
        assert sorted(r[0] for r in rows) == sorted(ids)
        pred_csv = pred_dir / deliverables.TASK3_CSV_NAME
        assert pred_csv.read_text().splitlines()[0] == ",".join(layout.TASK3_CSV_HEADER)
        truth = pd.DataFrame([[float(v) for v in r[1:]] for r in rows], index=[r[0] for r in rows],
                             columns=header[1:])[list(layout.DIAGNOSES)]
        predicted = pd.read_csv(pred_csv, index_col=0).loc[truth.index, list(layout.DIAGNOSES)]
        overall, per_category = official_task3(truth, predicted)
        assert_close(isic["overall"], overall, "overall")
        assert sorted(isic["per_category"]) == sorted(per_category)
        for category, scores in per_category.items():
            assert_all_close(isic["per_category"][category], scores, f"per_category.{category}")
        macro = {k: float(pd.Series([s[k] for s in per_category.values()]).mean()) for k in TASK3_KEYS}
        assert_all_close(isic["macro_average"], macro, "macro_average")
        # Confusion matrix: rows are the true class, columns the argmax of the written probabilities.
        matrix = np.zeros((len(layout.DIAGNOSES),) * 2, int)
        for image_id in truth.index:
            matrix[int(np.argmax(truth.loc[image_id])), int(np.argmax(predicted.loc[image_id]))] += 1
        assert report["confusion_matrix"]["matrix"] == matrix.tolist()
        # The calibration block: per-class recall and ECE of the written rows.
        from isic.evaluation import calibration
        labels = truth.to_numpy().argmax(axis=1)
        block = report["task3_calibration"]
        assert block["per_class_recall"] == calibration.per_class_recall(predicted.to_numpy(), labels)
        assert_close(block["ece"], calibration.expected_calibration_error(predicted.to_numpy(), labels), "ece")

    names = {k: dataset.class_names[k] for k in range(1, len(dataset.class_names))}
    expected_map = coco_map(gt, dt, names)
    for key in ("mAP@0.5", "mAP@[.5:.95]"):
        assert_close(report["mask_map"][key], expected_map[key], key)
    assert sorted(report["mask_map"]["per_class"]) == sorted(expected_map["per_class"])
    for name, aps in expected_map["per_class"].items():
        assert_all_close(report["mask_map"]["per_class"][name], aps, f"per_class.{name}")
    assert_close(report["pooled_mask_ap50"], pooled_ap50(gt, dt), "pooled_mask_ap50")

    stats = report["dataset_statistics"]
    counts = {}
    for _, class_ids in gt:
        for k in class_ids:
            counts[names[int(k)]] = counts.get(names[int(k)], 0) + 1
    areas = [float(m[..., k].mean()) for m, _ in gt for k in range(m.shape[-1])]
    assert stats["images"] == len(ids) and stats["instances_per_class"] == counts
    assert stats["images_without_instances"] == sum(len(c) == 0 for _, c in gt)
    assert stats["image_height_range"] == [min(h for h, _ in sizes), max(h for h, _ in sizes)]
    assert stats["image_width_range"] == [min(w for _, w in sizes), max(w for _, w in sizes)]
    assert_close(stats["median_instance_area_fraction"], float(np.median(areas)), "median_instance_area_fraction")

    # The figures: ground truth vs prediction for the first FIGURES images, then the task's plots.
    plots = {"segmentation": ["jaccard_histogram.png"], "attributes": [],
             "classification": ["confusion_matrix.png", "reliability_diagram.png"]}[task] + ["precision_recall.png"]
    assert report["figures"] == [f"figures/{i}_gt_vs_pred.png" for i in ids[:FIGURES]] + \
        [f"figures/{name}" for name in plots]
    for figure in report["figures"]:
        assert (tmp_path / figure).stat().st_size > 0


def test_rerun_with_a_limit_leaves_only_its_own_predictions(synthetic_root, tmp_path, monkeypatch):
    """A second investigate into the same folder with --limit: predictions/ holds exactly the
    images metrics.json lists; a file investigate did not write stays."""
    import argparse

    import lesions
    monkeypatch.setattr(run_folders, "load_inference_model", lambda config, weights, logs: ContentDetector(2))
    out = tmp_path / "inv"
    config = lesions.make_config("segmentation", inference=True)

    def run(limit):
        args = argparse.Namespace(dataset=str(synthetic_root), weights="none", task="segmentation",
                                  logs=str(tmp_path / "logs"), subset="all", limit=limit, output=str(out))
        assert investigation.run(args, config) == 0
        return json.loads((out / "metrics.json").read_text())

    assert len(run(4)["image_ids"]) == 4
    (out / "predictions" / "notes.txt").write_text("mine")
    report = run(2)
    written = sorted(p.name for p in (out / "predictions").iterdir())
    assert written == sorted([f"{i}_segmentation.png" for i in report["image_ids"]] + ["notes.txt"])
    assert len(report["image_ids"]) == 2 == report["num_images"]
    assert "TASK1_MASK_REFINEMENT='fill'" in report["mask_sources"]["isic"]  # the model's own config
