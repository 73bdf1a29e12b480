"""Investigate mode: score a trained model on a dataset split the way the ISIC challenge
scores it, and leave what a researcher wants to look at.

The split is an official one (--split training|validation|test): on the training split the
run's own train/val carving applies (--subset, default val); the validation and test splits
are scored whole, and metrics.json and report.md say which split was scored.

Writes to the output folder:
  predictions/   the task's ISIC submission files for every scored image (those of an
                 earlier run are removed first)
  metrics.json   official ISIC scores (overall and per image/attribute/class), mask mAP,
                 dataset statistics, the scored image ids and what masks each number
                 was computed from (mask_sources)
  figures/       ground truth vs prediction for the first images, per-image Jaccard
                 histogram, precision-recall curve, confusion matrix (Task 3)
  report.md      the headline numbers and the figures
"""
import logging
import pathlib

import numpy as np
from tqdm import tqdm

from isic import layout
from isic.errors import UserError
from isic.evaluation import calibration, metrics
from isic.modes import run_folders
from isic.outputs import deliverables, refinement
from mrcnn import utils, visualize
from mrcnn.evaluation.ap import average_precision
from mrcnn.io import atomic

log = logging.getLogger(__name__)

FIGURE_IMAGES = 8  # ground truth vs prediction figures for the first N images


def pooled_precision_recall(scores, matched, num_gt):
    """Precision-recall over all detections of a split, pooled and sorted by score
    (detections matched to the ground truth by mask IoU), and its AP (mrcnn.evaluation.ap)."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    return average_precision(np.asarray(matched, bool)[order], num_gt)


def _gt_deliverable(task, gt_masks, gt_class_ids, info, shape):
    """The ground truth in the form of the task's deliverable."""
    if task == "segmentation":
        return gt_masks.any(axis=-1) if gt_masks.shape[-1] else np.zeros(shape[:2], bool)
    if task == "attributes":
        return {name: (gt_masks[..., gt_class_ids == k].any(axis=-1) if (gt_class_ids == k).any()
                       else np.zeros(shape[:2], bool))
                for k, name in enumerate(layout.ATTRIBUTES, start=1)}
    onehot = np.zeros(len(layout.DIAGNOSES))
    onehot[layout.DIAGNOSES.index(info["diagnosis"])] = 1.0
    return onehot


def dataset_statistics(dataset, instance_counts, areas, empty):
    """Counts a reader checks first: images, instances per class, empty images, sizes."""
    heights = [info["height"] for info in dataset.image_info]
    widths = [info["width"] for info in dataset.image_info]
    return {
        "images": int(dataset.num_images),
        "instances_per_class": {dataset.class_names[k]: int(v) for k, v in sorted(instance_counts.items())},
        "images_without_instances": int(empty),
        "image_height_range": [int(min(heights)), int(max(heights))],
        "image_width_range": [int(min(widths)), int(max(widths))],
        "median_instance_area_fraction": float(np.median(areas)) if areas else None,
        "skipped": [list(s) for s in getattr(dataset, "skipped", [])],
        "missing_masks": len(getattr(dataset, "missing_masks", [])),
        "mask_fallback": len(getattr(dataset, "mask_fallback_ids", [])),
    }


def is_prediction_file(name):
    """True for the file names investigate writes into predictions/ (any task)."""
    if name == deliverables.TASK3_CSV_NAME or name.endswith("_segmentation.png"):
        return True
    return any(name.endswith(f"_attribute_{a}.png") for a in layout.ATTRIBUTES)


def clear_previous_predictions(pred_dir):
    """Remove the submission files an earlier investigate left in `pred_dir`, so the folder
    holds this run's predictions only (a re-run with --limit must not leave old masks that a
    later scoring of the folder would count). Other files are left alone, with a warning."""
    pred_dir = pathlib.Path(pred_dir)
    if not pred_dir.is_dir():
        return
    removed, others = 0, []
    for path in sorted(pred_dir.iterdir()):
        if path.is_file() and is_prediction_file(path.name):
            path.unlink()
            removed += 1
        else:
            others.append(path.name)
    if removed:
        log.info("Removed %d prediction files of an earlier run from %s", removed, pred_dir)
    if others:
        log.warning("%s holds %d files investigate did not write (left alone): %s", pred_dir, len(others),
                    ", ".join(others[:5]) + (" ..." if len(others) > 5 else ""))


def split_and_subset(args):
    """(official split, subset) to score: --split (default training) and --subset (default val on
    the training split, whose train/val carving is the run's; the validation and test splits are
    scored whole)."""
    split = layout.SPLIT_OPTIONS[getattr(args, "split", None) or "training"]
    subset = getattr(args, "subset", None)
    if split == "Training":
        return split, subset or "val"
    if subset not in (None, "all"):
        raise UserError(f"--subset {subset} carves the training split; the {split.lower()} split is scored whole "
                        f"(drop --subset)")
    return split, "all"


def default_output_dir(weights, logs, task, split, subset):
    """investigate_<subset> (training split) or investigate_<split> beside the checkpoint."""
    name = f"investigate_{subset}" if split == "Training" else f"investigate_{split.lower()}"
    if isinstance(weights, pathlib.Path):
        return weights.parent / name
    return pathlib.Path(logs) / f"investigate_{task}_{name.split('_', 1)[1]}"


def run(args, config, overrides=()):
    split, subset = split_and_subset(args)
    run_folders.check_dataset_dir(args.dataset)
    weights = run_folders.resolve_weights(args.weights, "investigate", args.dataset == "synthetic", args.task,
                                          args.logs)
    config = run_folders.run_config_for(weights, config, overrides)
    if split == "Training":
        split_seed = run_folders.run_split_seed(weights, config, overrides, subset)
    else:
        split_seed = config.SPLIT_SEED  # no carving: the run never saw the validation or test images
    dataset_dir = run_folders.resolve_dataset_dir(args.dataset, split_seed)
    dataset = run_folders.load_dataset(args.task, dataset_dir, subset, split_seed, args.limit, split=split)
    if split == "Training":
        run_folders.check_run_split(weights, dataset, subset)
    out_dir = pathlib.Path(args.output) if args.output else default_output_dir(weights, args.logs, args.task,
                                                                                split, subset)
    model = run_folders.load_inference_model(config, weights, args.logs)
    if args.task == "classification":
        model.task3_temperature = calibration.run_temperature(weights)
    pred_dir, fig_dir = out_dir / "predictions", out_dir / "figures"
    clear_previous_predictions(pred_dir)
    pred_dir.mkdir(parents=True, exist_ok=True)
    fig_dir.mkdir(parents=True, exist_ok=True)
    report = investigate(model, dataset, args.task, pred_dir, fig_dir)
    if (args.task == "classification" and split == "Training" and subset == "val" and not args.limit
            and isinstance(weights, pathlib.Path) and weights.is_file()):
        # The run's own validation images fit its temperature (calibration.json, used by predict).
        diagnoses = {info.get("isic_id") or info["id"]: info["diagnosis"] for info in dataset.image_info}
        report["task3_calibration_fit"] = calibration.fit_run_from_predictions(
            weights.parent, pred_dir / deliverables.TASK3_CSV_NAME, diagnoses, f"{split}/val of {dataset_dir}")
    report["weights"] = str(weights)
    report["dataset"] = str(dataset_dir)
    report["split"] = split
    report["subset"] = subset
    atomic.write_json(out_dir / "metrics.json", report)
    write_report(out_dir / "report.md", report, args.task)
    print(f"{headline(report, args.task)} ({split} split, subset {subset})\n"
          f"Wrote metrics.json, report.md, predictions/ and figures/ to {out_dir}")
    return 0


def mask_sources(task, config):
    """What each number of metrics.json was computed from (the deliverables may differ from
    the network's masks by test-time flips and refinement)."""
    if task == "segmentation":
        isic = ("the Task 1 deliverables written to predictions/: the top detection's mask with "
                f"TASK1_TTA_FLIPS={bool(getattr(config, 'TASK1_TTA_FLIPS', False))} and "
                f"TASK1_MASK_REFINEMENT={getattr(config, 'TASK1_MASK_REFINEMENT', 'none')!r} applied")
    elif task == "attributes":
        isic = "the Task 2 deliverables written to predictions/: per attribute, the union of its detections' masks"
    else:
        isic = "the Task 3 probabilities written to predictions/: the top detection's class probabilities"
    network = "the network's instance masks (every detection, before test-time flips and refinement)"
    return {"isic": isic, "mask_map": network,
            "pooled_mask_ap50": network + ", matched to the ground truth at mask IoU 0.5"}


class StreamingScores:
    """What the final metrics need, kept as each image passes: per-image Task 1 records,
    per-(attribute, image) normalised Task 2 confusion sums, Task 3 probability rows, COCO
    run-length encodings for mask mAP and the pooled score/match lists. No image's masks
    outlive its own step."""

    def __init__(self, task):
        self.task = task
        self.ids = []
        self.task1_records, self.task2_confusions = {}, {}
        self.task3_truth, self.task3_pred = [], []
        self.coco = metrics.CocoMaskAccumulator()
        self.pooled_scores, self.pooled_matched, self.num_gt = [], [], 0
        self.instance_counts, self.areas, self.empty = {}, [], 0

    def add(self, isic, info, gt_masks, gt_class_ids, result, truth, deliverable):
        """Score one image. gt_masks [H, W, N] bool, gt_class_ids [N]; result: detect()'s dict."""
        self.ids.append(isic)
        for k in gt_class_ids:
            self.instance_counts[int(k)] = self.instance_counts.get(int(k), 0) + 1
        self.areas.extend(float(gt_masks[..., i].mean()) for i in range(gt_masks.shape[-1]))
        self.empty += gt_masks.shape[-1] == 0

        if self.task == "segmentation":
            try:
                self.task1_records[isic] = metrics.segmentation_record(truth, deliverable)
            except metrics.MetricError as e:
                raise metrics.MetricError(f"{isic}: {e}") from None
        elif self.task == "attributes":
            # Like the official scorer, an attribute without a ground-truth file is not scored.
            for attribute in layout.ATTRIBUTES:
                if attribute not in info.get("missing_attributes", ()):
                    try:
                        self.task2_confusions[(attribute, str(isic))] = metrics.normalized_confusion(
                            truth[attribute], deliverable[attribute])
                    except metrics.MetricError as e:
                        raise metrics.MetricError(f"{isic}/{attribute}: {e}") from None
        else:
            self.task3_truth.append(truth)
            self.task3_pred.append(deliverable)

        self.coco.add(gt_masks, gt_class_ids, result["masks"], result["class_ids"], result["scores"])
        if len(result["scores"]):
            _, pred_match, _ = utils.compute_matches(
                utils.extract_bboxes(gt_masks), gt_class_ids, gt_masks, result["rois"], result["class_ids"],
                result["scores"], result["masks"], iou_threshold=0.5)
            order = np.argsort(-result["scores"], kind="stable")
            self.pooled_scores.extend(result["scores"][order].tolist())
            self.pooled_matched.extend((pred_match > -1).tolist())
        self.num_gt += len(gt_class_ids)


def investigate(model, dataset, task, pred_dir, fig_dir):
    """Detect on every image of `dataset`, write the submission files, score them as they
    pass (memory does not grow with the number of images beyond a few numbers each)."""
    class_names = dataset.class_names
    scores = StreamingScores(task)
    figures = []
    for n, image_id in enumerate(tqdm(dataset.image_ids, desc=f"investigate {task}", unit="img")):
        info = dataset.image_info[image_id]
        image = dataset.load_image(image_id)
        gt_masks, gt_class_ids = dataset.load_mask(image_id)
        result = model.detect([image])[0]
        isic = info.get("isic_id") or info["id"]

        deliverable = refinement.task_deliverable(task, model, image, result)
        truth = _gt_deliverable(task, gt_masks, gt_class_ids, info, image.shape)
        deliverables.write_deliverable(task, pred_dir, isic, deliverable)
        scores.add(isic, info, gt_masks, gt_class_ids, result, truth, deliverable)

        if n < FIGURE_IMAGES:
            path = fig_dir / f"{isic}_gt_vs_pred.png"
            visualize.display_differences(
                image, utils.extract_bboxes(gt_masks), gt_class_ids, gt_masks, result["rois"],
                result["class_ids"], result["scores"], result["masks"], class_names,
                title=f"{isic}: ground truth (green) vs prediction (red)", save_path=path)
            figures.append(path.name)
        del image, gt_masks, result, deliverable, truth

    ids = scores.ids
    report = {"task": task, "num_images": len(ids)}
    report["dataset_statistics"] = dataset_statistics(dataset, scores.instance_counts, scores.areas, scores.empty)
    if task == "segmentation":
        report["isic"] = metrics.summarise_task1(scores.task1_records)
        jaccards = [r["jaccard"] for r in report["isic"]["per_image"].values()]
        visualize.plot_histogram(jaccards, bins=20, title="Per-image Jaccard (Task 1)", xlabel="Jaccard",
                                 save_path=fig_dir / "jaccard_histogram.png")
        figures.append("jaccard_histogram.png")
    elif task == "attributes":
        report["isic"] = metrics.summarise_task2(scores.task2_confusions)
    else:
        task3_truth, task3_pred = np.array(scores.task3_truth), np.array(scores.task3_pred)
        report["isic"] = metrics.score_task3(task3_truth, task3_pred, image_ids=ids)
        cm = metrics.task3_confusion_matrix(task3_truth, task3_pred)
        report["confusion_matrix"] = cm
        visualize.plot_confusion_matrix(np.array(cm["matrix"]), list(layout.DIAGNOSES),
                                        title="Task 3 confusion matrix (rows: truth)",
                                        save_path=fig_dir / "confusion_matrix.png")
        figures.append("confusion_matrix.png")
        deliverables.write_task3_predictions(pred_dir, ids, scores.task3_pred)
        # --- Task 3 calibration (issue 24; isic.evaluation.calibration) ---------------------
        # Per-class recall, ECE and the reliability diagram of the rows as written; with a
        # temperature (model.task3_temperature, from the run's calibration.json) also after it.
        report["task3_calibration"] = calibration.investigation_block(
            task3_truth, task3_pred, fig_dir, temperature=getattr(model, "task3_temperature", None))
        figures.append(calibration.RELIABILITY_FIGURE)
        # --- end of the Task 3 calibration block -------------------------------------------

    names = {k: class_names[k] for k in range(1, len(class_names))}
    report["mask_map"] = scores.coco.result(class_names=names)
    ap, precisions, recalls = pooled_precision_recall(scores.pooled_scores, scores.pooled_matched, scores.num_gt)
    report["pooled_mask_ap50"] = ap
    visualize.plot_precision_recall(ap, precisions, recalls, save_path=fig_dir / "precision_recall.png")
    figures.append("precision_recall.png")
    report["figures"] = [f"figures/{f}" for f in figures]
    report["image_ids"] = list(ids)
    report["mask_sources"] = mask_sources(task, getattr(model, "config", None))
    return report


# The name of each task's official score, as the headlines print it.
SCORE_NAMES = {"segmentation": "Task 1 thresholded Jaccard", "attributes": "Task 2 Jaccard (micro average)",
               "classification": "Task 3 balanced accuracy"}


def headline(report, task):
    """One line with the task's official score and mask mAP."""
    return (f"{SCORE_NAMES[task]}: {report['isic']['overall']:.4f} on {report['num_images']} images; "
            f"mask mAP@0.5 {report['mask_map']['mAP@0.5']:.4f}")


def official_table_lines(task, isic, task3_keys=("sensitivity", "specificity", "auc")):
    """report.md's Markdown lines of the official numbers (investigate's and score's alike);
    `task3_keys`: the per-class columns of the Task 3 table."""
    if task == "segmentation":
        return (["| metric (mean over images) | value |", "|---|---|"]
                + [f"| {k} | {v:.4f} |" for k, v in isic["macro_average"].items()])
    if task == "attributes":
        return ([f"Overall (official, micro average) Jaccard {isic['overall']:.4f}, "
                 f"mean of per-attribute Jaccards {isic['mean_attribute_jaccard']:.4f}", "",
                 "| attribute | Jaccard | Dice |", "|---|---|---|"]
                + [f"| {a} | {s['jaccard']:.4f} | {s['dice']:.4f} |" for a, s in isic["per_attribute"].items()])
    names = {"sensitivity": "sensitivity", "specificity": "specificity", "auc": "AUC", "ap": "AP"}
    return (["| class | " + " | ".join(names[k] for k in task3_keys) + " |", "|---" * (len(task3_keys) + 1) + "|"]
            + ["| " + " | ".join([c] + [f"{s[k]:.4f}" for k in task3_keys]) + " |"
               for c, s in isic["per_category"].items()])


def write_report(path, report, task):
    """A short Markdown report with the headline numbers and the figures."""
    isic = report["isic"]
    lines = [f"# Investigation: {task}", "",
             f"- weights: `{report['weights']}`",
             f"- dataset: `{report['dataset']}`, {report.get('split', 'Training')} split "
             f"(subset `{report['subset']}`, {report['num_images']} images)",
             f"- **{headline(report, task)}**", ""]
    lines += official_table_lines(task, isic)
    if "task3_calibration" in report:  # Task 3 calibration block (isic.evaluation.calibration)
        lines += calibration.report_lines(report["task3_calibration"])
    lines += ["", f"Mask mAP@0.5 {report['mask_map']['mAP@0.5']:.4f}, "
                  f"mAP@[.5:.95] {report['mask_map']['mAP@[.5:.95]']:.4f}; pooled AP@0.5 (mask IoU) "
                  f"{report['pooled_mask_ap50']:.4f}", ""]
    sources = report.get("mask_sources")
    if sources:
        lines += [f"ISIC score computed from {sources['isic']}; mask mAP and pooled AP from {sources['mask_map']}.", ""]
    lines += [f"![{f}]({f})" for f in report["figures"]]
    text = "\n".join(lines) + "\n"
    atomic.write_text(path, text)
