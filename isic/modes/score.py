"""Score mode: score any ISIC 2018 submission (another model's, a collaborator's, an older run's)
against the ground truth of an official split, with the project's official metrics.

    python lesions.py --mode score --task T --predictions DIR_OR_CSV
                      (--dataset ROOT [--split training|validation|test] | --truth DIR_OR_CSV) [--output DIR]

The submission's format is checked first (isic.evaluation.submission_check): every problem is
listed, one line each naming its file, and nothing is scored or written. Then the numbers are
those of isic-challenge-scoring 5.6.0 on the same files (Task 1 and 3 `score`, Task 2's
`task2.score`, which the official command line does not expose), written as investigate writes
them: metrics.json, figures/ and report.md in --output (default: `score_<split>` beside the
prediction folder). The ground truth decides which images are scored, as for the scorer.
"""
import io
import logging
import pathlib
import sys

import numpy as np
from PIL import Image
from tqdm import tqdm

from isic import layout
from isic.data import images
from isic.errors import UserError
from isic.evaluation import metrics, submission_check, submission_files
from isic.modes import preflight, run_folders
from isic.modes.investigate import SCORE_NAMES, official_table_lines
from isic.outputs import deliverables
from mrcnn import visualize
from mrcnn.data import resize
from mrcnn.io import atomic

log = logging.getLogger(__name__)

FIGURE_IMAGES = 8  # ground truth vs prediction overlays for the first N images
OVERLAY_MAX_SIDE = 1024
TRUTH_COLOUR, PREDICTION_COLOUR = (0.1, 0.8, 0.1), (0.9, 0.1, 0.1)


def resolve_truth(args):
    """(truth path, split name or None, dataset root or None): --truth as given, else the
    ground truth of --split (default training) in --dataset."""
    if args.truth:
        if args.split:
            raise UserError("--truth names the ground truth itself; drop --split (or drop --truth and use "
                            "--dataset with --split)")
        path = pathlib.Path(args.truth).expanduser()
        if not path.exists():
            raise UserError(f"--truth {args.truth}: no such file or folder")
        return path, None, None
    split = layout.SPLIT_OPTIONS[args.split or "training"]
    run_folders.check_dataset_dir(args.dataset)
    root = run_folders.resolve_dataset_dir(args.dataset, args.split_seed if args.split_seed is not None else 42)
    path = root / layout.truth_path(args.task, split)
    if not path.exists():
        raise UserError(f"{path} not found: the {split} ground truth of the {args.task} task in the official ISIC "
                        f"2018 layout (isic2018/README.md); download it from {layout.DATA_URL}, or pass --truth")
    return path, split, root


def task3_csv(path, what):
    """A Task 3 CSV given as the file or as a folder holding exactly one CSV (investigate's and
    predict's ISIC2018_Task3_predictions.csv first)."""
    path = pathlib.Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        preferred = path / deliverables.TASK3_CSV_NAME
        if preferred.is_file():
            return preferred
        found = sorted(path.glob("*.csv"))
        if len(found) == 1:
            return found[0]
        raise UserError(f"{what} {path}: a folder with {len(found)} CSV files; name the CSV itself")
    raise UserError(f"{what} {path}: no such file or folder")


def run(args):
    if not args.predictions:
        raise UserError("--mode score needs --predictions DIR (Tasks 1, 2) or CSV (Task 3)")
    predictions = pathlib.Path(args.predictions).expanduser()
    if not predictions.exists():
        raise UserError(f"--predictions {args.predictions}: no such file or folder")
    truth, split, root = resolve_truth(args)
    where = split.lower() if split else "truth"
    base = predictions if predictions.is_dir() else predictions.parent
    out_dir = pathlib.Path(args.output) if args.output else base.parent / f"score_{where}"
    preflight.check_writable_folder(out_dir, "--output")
    if args.task == "classification":
        truth = task3_csv(truth, "--truth")
        predictions = task3_csv(predictions, "--predictions")
        truth_ids = list(submission_files.read_task3_truth_csv(truth)[0].index)
        check = submission_check.check_task3_submission(truth_ids, predictions)
    else:
        if not truth.is_dir():
            raise UserError(f"--truth {truth}: the {args.task} ground truth is a folder of masks")
        check = submission_check.check_mask_submission(truth, predictions, args.task)
    for note in check.notes:
        log.info("%s", note)
    if check.problems:
        for problem in check.problems:
            print(f"  {problem}", file=sys.stderr)
        raise UserError(f"the submission {predictions} breaks the ISIC format in {len(check.problems)} place(s), "
                        f"listed above; nothing was scored")

    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    report = {"task": args.task, "predictions": str(predictions), "truth": str(truth), "split": split,
              "dataset": str(root) if root else None, "format_notes": check.notes}
    figures = []
    if args.task == "segmentation":
        report["isic"] = metrics.score_task1_folders(truth, predictions)
        jaccards = [r["jaccard"] for r in report["isic"]["per_image"].values()]
        visualize.plot_histogram(jaccards, bins=20, title="Per-image Jaccard (Task 1)", xlabel="Jaccard",
                                 save_path=fig_dir / "jaccard_histogram.png")
        figures.append("jaccard_histogram.png")
        figures += overlay_figures(truth, predictions, root, split, args.task, fig_dir)
    elif args.task == "attributes":
        report["isic"] = metrics.score_task2_folders(truth, predictions)
        figures += overlay_figures(truth, predictions, root, split, args.task, fig_dir)
    else:
        report["isic"] = metrics.score_task3_files(truth, predictions)
        truth_table, _ = submission_files.read_task3_truth_csv(truth)
        pred_table = submission_files.read_task3_csv(predictions).loc[truth_table.index]
        cm = metrics.task3_confusion_matrix(truth_table.to_numpy(), pred_table.to_numpy())
        report["confusion_matrix"] = cm
        visualize.plot_confusion_matrix(np.array(cm["matrix"]), list(layout.DIAGNOSES),
                                        title="Task 3 confusion matrix (rows: truth)",
                                        save_path=fig_dir / "confusion_matrix.png")
        figures.append("confusion_matrix.png")
    report["num_images"] = report["isic"]["num_images"]
    report["figures"] = [f"figures/{f}" for f in figures]
    atomic.write_json(out_dir / "metrics.json", report)
    write_report(out_dir / "report.md", report)
    print(f"{headline(report)}\nWrote metrics.json, report.md and figures/ to {out_dir}")
    return 0


def overlay_figures(truth_dir, pred_dir, root, split, task, fig_dir):
    """Ground truth (green) and prediction (red) over the image (over grey when the image is not
    in the dataset), for the first FIGURE_IMAGES images, shrunk to OVERLAY_MAX_SIDE."""
    by_image = {}
    for image_id, attribute, truth_path, pred_path in submission_files.match_mask_files(truth_dir, pred_dir):
        by_image.setdefault(image_id, []).append((attribute, truth_path, pred_path))
    names = []
    for image_id in tqdm(list(by_image)[:FIGURE_IMAGES], desc="score figures", unit="img", leave=False):
        masks = []
        for _, truth_path, pred_path in by_image[image_id]:
            truth, pred = submission_files.read_mask_pair(truth_path, pred_path)
            masks += [truth > 128, pred > 128]
        image = None
        if root is not None:
            found = sorted((root / layout.input_dir(task, split)).glob(f"{image_id}.*"))
            if found:
                try:
                    image = images.read_rgb(found[0])
                except images.ImageReadError:
                    image = None
        shape = masks[0].shape
        if image is None or image.shape[:2] != shape:
            image = np.full(shape + (3,), 128, np.uint8)
        height, width = shape
        scale = min(1.0, OVERLAY_MAX_SIDE / max(height, width))
        stack = np.stack(masks, axis=-1)  # [H, W, 2 * attributes]: truth, prediction, ...
        if scale < 1.0:
            size = resize.scaled_size(height, width, scale)
            image = resize.resize_array(image, *size, "area")
            stack = resize.resize_masks(stack, *size)
        colours = [TRUTH_COLOUR, PREDICTION_COLOUR] * (stack.shape[-1] // 2)
        overlay = visualize.overlay_masks(image, stack, colors=colours, alpha=0.3)
        buffer = io.BytesIO()
        Image.fromarray(overlay).save(buffer, format="PNG")
        name = f"{image_id}_truth_vs_prediction.png"
        atomic.write_bytes(fig_dir / name, buffer.getvalue())
        names.append(name)
    return names


def headline(report):
    """One line with the task's official score."""
    where = f"the {report['split']} split" if report["split"] else report["truth"]
    return f"{SCORE_NAMES[report['task']]}: {report['isic']['overall']:.4f} on {report['num_images']} images of {where}"


def write_report(path, report):
    """A short Markdown report: what was scored against what, the numbers and the figures."""
    isic, task = report["isic"], report["task"]
    lines = [f"# Score: {task}", "",
             f"- predictions: `{report['predictions']}`",
             f"- ground truth: `{report['truth']}`" + (f" ({report['split']} split)" if report["split"] else ""),
             f"- **{headline(report)}**", ""]
    lines += official_table_lines(task, isic, task3_keys=("sensitivity", "specificity", "auc", "ap"))
    if report["format_notes"]:
        lines += ["", "Format notes:", ""] + [f"- {n}" for n in report["format_notes"]]
    lines += [""] + [f"![{f}]({f})" for f in report["figures"]]
    atomic.write_text(path, "\n".join(lines) + "\n")
