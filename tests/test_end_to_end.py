"""All three tasks end to end through lesions.py (train a couple of steps, investigate,
predict), on the real ISIC sample in ../shared and on a small synthetic set. Checks every
output file; that metrics.json equals what the official scorer (isic-challenge-scoring
5.6.0) computes on the predictions/ that investigate wrote and the same ground truth; that
report.md states the headline numbers of metrics.json and links every figure investigate
drew; and that each predict overlay is the image with its detections drawn in: changed
inside the detections (masks and box outlines), the very image pixels everywhere else."""
import csv
import json
import pathlib
import re
import shutil

import numpy as np
import pytest
from PIL import Image

import lesions
from isic import layout
from isic.modes import predict
from isic.synthetic import generate_dataset
from tests.helpers import set_args, tiny_settings

# The tests' tiny network at 128 x 128, one image per step, every detection kept (up to 10).
SETTINGS = tiny_settings(IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=128, IMAGES_PER_GPU=1, DETECTION_MAX_INSTANCES=10,
                         DETECTION_MIN_CONFIDENCE=0.0, VALIDATION_STEPS=1, AUGMENTATION="none")
TASKS = ("segmentation", "attributes", "classification")


def cli(*args):
    """Run lesions.py in this process (saves the TensorFlow start-up per call)."""
    import keras
    keras.backend.clear_session()
    code = lesions.main([str(a) for a in args] + set_args(SETTINGS))
    assert code == 0, f"lesions.py {' '.join(map(str, args))} exited {code}"


def image_dir(root, task):
    folder = layout.TASK3_INPUT_DIR if task == "classification" else layout.TASK12_INPUT_DIR
    return pathlib.Path(root) / folder.format(split="Training")


def check_mask_file(path, shape):
    with Image.open(path) as im:
        assert im.mode == "L", f"{path.name} is {im.mode}, not single-channel"
        mask = np.asarray(im)
    assert mask.shape == tuple(shape), f"{path.name}: {mask.shape} != image {shape}"
    assert set(np.unique(mask)) <= {0, 255}, f"{path.name} holds values other than 0/255"


def image_shapes(folder):
    shapes = {}
    for path in sorted(pathlib.Path(folder).glob("*.jpg")):
        with Image.open(path) as im:
            shapes[path.stem] = (im.height, im.width)
    return shapes


def check_task3_csv(path, ids):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == layout.TASK3_CSV_HEADER
    assert sorted(r[0] for r in rows[1:]) == sorted(ids)
    probs = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    assert probs.shape == (len(ids), 7) and np.all(probs >= 0) and np.all(probs <= 1)


def check_predictions(task, folder, shapes):
    """Every image has its ISIC-format output(s) at its size, an overlay and a JSON."""
    folder = pathlib.Path(folder)
    for stem, shape in shapes.items():
        if task == "segmentation":
            check_mask_file(folder / layout.segmentation_name(stem), shape)
        elif task == "attributes":
            for attribute in layout.ATTRIBUTES:
                check_mask_file(folder / layout.attribute_name(stem, attribute), shape)
    if task == "classification":
        check_task3_csv(next(folder.glob("*.csv")), list(shapes))


def report_numbers(report, task):
    """What report.md promises from metrics.json, each number with 4 decimals as investigate
    writes it: the headline (official score, image count, mask mAP@0.5), the task's table rows
    (Task 1: the mean of every per-image metric; Task 2: overall and mean Jaccard, then
    Jaccard and Dice per attribute; Task 3: sensitivity, specificity and AUC per class) and
    the mask mAP@0.5, mAP@[.5:.95] and pooled AP@0.5."""
    isic, maps = report["isic"], report["mask_map"]
    fragments = [f": {isic['overall']:.4f} on {report['num_images']} images; mask mAP@0.5 {maps['mAP@0.5']:.4f}",
                 f"Mask mAP@0.5 {maps['mAP@0.5']:.4f}, mAP@[.5:.95] {maps['mAP@[.5:.95]']:.4f}",
                 f"pooled AP@0.5 (mask IoU) {report['pooled_mask_ap50']:.4f}"]
    rows = []
    if task == "segmentation":
        assert set(isic["macro_average"]) >= {"jaccard", "threshold_jaccard", "dice"}
        rows = [f"| {k} | {v:.4f} |" for k, v in isic["macro_average"].items()]
    elif task == "attributes":
        fragments += [f"Jaccard {isic['overall']:.4f}",
                      f"mean of per-attribute Jaccards {isic['mean_attribute_jaccard']:.4f}"]
        rows = [f"| {a} | {s['jaccard']:.4f} | {s['dice']:.4f} |" for a, s in isic["per_attribute"].items()]
    else:
        assert sorted(isic["per_category"]) == sorted(layout.DIAGNOSES)
        rows = [f"| {c} | {s['sensitivity']:.4f} | {s['specificity']:.4f} | {s['auc']:.4f} |"
                for c, s in isic["per_category"].items()]
    assert rows
    return fragments, rows


def check_report(out, report, task):
    """report.md holds metrics.json's headline numbers and links every figure in the folder."""
    text = (out / "report.md").read_text()
    fragments, rows = report_numbers(report, task)
    for fragment in fragments:
        assert fragment in text, f"report.md lacks {fragment!r}:\n{text}"
    lines = text.splitlines()
    for row in rows:
        assert row in lines, f"report.md lacks the row {row!r}:\n{text}"
    # Every image file in the output folder except the submission files is a figure, and
    # report.md shows each one (a Markdown image link relative to the report).
    links = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text)
    figures = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                     if p.suffix.lower() in (".png", ".jpg", ".jpeg") and p.relative_to(out).parts[0] != "predictions")
    assert figures and sorted(links) == figures
    assert links == report["figures"]


def written_masks(task, pred, stem, shape):
    """The union of the detection masks predict wrote as submission files (refinement is
    off, so they are the network's masks): Task 1 the top detection's, Task 2 every
    detection's (each has an attribute class); None for Task 3 (no mask files)."""
    if task == "segmentation":
        names = [layout.segmentation_name(stem)]
    elif task == "attributes":
        names = [layout.attribute_name(stem, a) for a in layout.ATTRIBUTES]
    else:
        return None
    union = np.zeros(shape, bool)
    for name in names:
        with Image.open(pred / name) as im:
            union |= np.asarray(im) > 128
    return union


def check_overlay(task, pred, image_path):
    """`<stem>_overlay.png` is the image (at its size: every input here is within
    predict.OVERLAY_MAX_SIDE) with each detection's mask tinted and its box outline drawn
    (2 px, inside the box): every pixel outside the boxes is the image's own, nearly every
    pixel of the detection masks is changed, and with Task 2's masks (all detections) the only
    other changed pixels are box outlines. Returns the number of detections."""
    stem = image_path.stem
    image = np.asarray(Image.open(image_path).convert("RGB"))
    height, width = image.shape[:2]
    summary = json.loads((pred / f"{stem}.json").read_text())
    assert max(height, width) <= predict.OVERLAY_MAX_SIDE and summary["overlay_scale"] == 1.0
    with Image.open(pred / f"{stem}_overlay.png") as im:
        overlay = np.asarray(im.convert("RGB"))
    assert overlay.shape == image.shape
    changed = (overlay != image).any(axis=-1)
    boxes, outlines = np.zeros((height, width), bool), np.zeros((height, width), bool)
    for detection in summary["detections"]:
        y1, x1, y2, x2 = detection["box"]
        y1, x1, y2, x2 = max(y1, 0), max(x1, 0), min(y2, height), min(x2, width)
        boxes[y1:y2, x1:x2] = True
        band = np.zeros((height, width), bool)
        band[y1:y2, x1:x2] = True
        band[y1 + 2:max(y2 - 2, y1 + 2), x1 + 2:max(x2 - 2, x1 + 2)] = False
        outlines |= band
        if y2 > y1 and x2 > x1:
            assert changed[y1:y2, x1:x2].sum() >= 0.95 * min(detection["mask_area"], (y2 - y1) * (x2 - x1))
    assert not changed[~boxes].any(), f"{stem}: {int(changed[~boxes].sum())} pixels changed outside every box"
    assert changed.any() == bool(summary["detections"])
    masks = written_masks(task, pred, stem, (height, width))
    if masks is not None and masks.any():
        assert changed[masks].mean() >= 0.95, f"{stem}: only {changed[masks].mean():.1%} of the mask is drawn"
    if task == "attributes":
        assert not changed[~masks & ~outlines].any(), f"{stem}: pixels changed outside masks and box outlines"
    return len(summary["detections"])


def scorer_numbers(task, dataset_root, pred_dir, ids, tmp_path):
    """The official scorer's numbers on the files investigate wrote (truth restricted to `ids`)."""
    split = "Training"
    if task == "segmentation":
        from isic_challenge_scoring import SegmentationScore
        truth = tmp_path / "truth1"
        truth.mkdir()
        for i in ids:
            shutil.copy(dataset_root / layout.TASK1_GT_DIR.format(split=split) / layout.segmentation_name(i), truth)
        score = SegmentationScore.from_dir(truth, pred_dir)
        return score.overall, {"jaccard": score.macro_average["jaccard"], "dice": score.macro_average["dice"]}
    if task == "attributes":
        from isic_challenge_scoring import task2
        truth = tmp_path / "truth2"
        truth.mkdir()
        for path in (dataset_root / layout.task2_gt_dir(split)).glob("*.png"):
            if layout.isic_id(path.name) in ids:
                shutil.copy(path, truth)
        result = task2.score(truth, pred_dir)
        return result["overall"], {}
    from isic_challenge_scoring import ClassificationMetric, ClassificationScore
    truth_csv = dataset_root / layout.TASK3_GT_DIR.format(split=split) / layout.TASK3_GT_CSV.format(split=split)
    with open(truth_csv, newline="") as f:
        rows = [r for r in csv.reader(f)]
    subset = tmp_path / "truth3.csv"
    subset.write_text("\n".join(",".join(r) for r in [rows[0]] + [r for r in rows[1:] if r[0] in ids]) + "\n")
    pred_csv = next(pathlib.Path(pred_dir).glob("*.csv"))
    score = ClassificationScore.from_file(subset, pred_csv, ClassificationMetric.BALANCED_ACCURACY)
    return score.overall, {}


def run_all_modes(task, dataset, tmp_path):
    logs = tmp_path / "logs"
    cli("--mode", "train", "--task", task, "--dataset", dataset, "--weights", "none", "--logs", logs,
        "--epochs", "1", "--steps-per-epoch", "2")
    runs_made = [p for p in logs.iterdir() if p.is_dir() and p.name.startswith(task)]
    assert len(runs_made) == 1
    run = runs_made[0]
    assert (run / "config.json").is_file() and (run / f"mask_rcnn_{task}_0001.h5").is_file()
    saved = json.loads((run / "config.json").read_text())
    assert saved["TASK1_MASK_REFINEMENT"] == "none" and saved["TASK1_TTA_FLIPS"] is False  # check_overlay relies on it

    out = tmp_path / "investigate"
    cli("--mode", "investigate", "--task", task, "--dataset", dataset, "--subset", "all", "--logs", logs,
        "--output", out)
    report = json.loads((out / "metrics.json").read_text())
    ids = sorted(image_shapes(image_dir(dataset, task)))
    assert report["num_images"] == len(ids)
    check_predictions(task, out / "predictions", image_shapes(image_dir(dataset, task)))
    check_report(out, report, task)
    for figure in report["figures"]:
        assert (out / figure).is_file() and (out / figure).stat().st_size > 0
    overall, extra = scorer_numbers(task, pathlib.Path(dataset), out / "predictions", ids, tmp_path)
    assert report["isic"]["overall"] == pytest.approx(overall, abs=1e-6)
    for key, value in extra.items():
        assert report["isic"]["macro_average"][key] == pytest.approx(value, abs=1e-6)

    pred = tmp_path / "predict"
    cli("--mode", "predict", "--task", task, "--image", image_dir(dataset, task), "--logs", logs, "--output", pred)
    shapes = image_shapes(image_dir(dataset, task))
    check_predictions(task, pred, shapes)
    for stem in shapes:
        summary = json.loads((pred / f"{stem}.json").read_text())
        assert {"detections", "height", "width"} <= set(summary)
        assert (summary["height"], summary["width"]) == shapes[stem]
        if task == "classification":
            assert set(summary["probabilities"]) == set(layout.DIAGNOSES)
    # Whether a model trained for two steps detects anything depends on the machine's float
    # rounding; test_overlay_shows_the_lesion_where_its_mask_is draws known detections.
    for stem in shapes:
        check_overlay(task, pred, image_dir(dataset, task) / f"{stem}.jpg")


@pytest.mark.parametrize("task", TASKS)
def test_real_sample_end_to_end(task, isic_sample, tmp_path):
    run_all_modes(task, isic_sample, tmp_path)


@pytest.fixture(scope="module")
def small_synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_e2e")
    generate_dataset(root, count=8, task3_count=8, image_size=(96, 96), seed=4, progress=False)
    return root


@pytest.mark.parametrize("task", TASKS)
def test_synthetic_end_to_end(task, small_synthetic, tmp_path):
    run_all_modes(task, small_synthetic, tmp_path)


def test_overlay_shows_the_lesion_where_its_mask_is(isic_sample, tmp_path):
    """predict.write_overlay on a real image with its ground-truth lesion mask as the one
    detection: the lesion is tinted (>= 95 % of its pixels changed), the box outline is drawn
    (2 px, inside the box), and every other pixel is the image's own."""
    from mrcnn.data.masks import extract_bboxes
    folder = pathlib.Path(isic_sample)
    mask_path = sorted((folder / layout.TASK1_GT_DIR.format(split="Training")).glob("*.png"))[0]
    stem = layout.isic_id(mask_path.name)
    image = np.asarray(Image.open(image_dir(folder, "segmentation") / f"{stem}.jpg").convert("RGB"))
    lesion = np.asarray(Image.open(mask_path)) > 128
    assert lesion.any() and not lesion.all()
    box = extract_bboxes(lesion[..., None])[0]
    result = {"masks": lesion[..., None], "rois": box[None], "scores": np.array([0.9]), "class_ids": np.array([1])}
    assert predict.write_overlay(tmp_path / "overlay.png", image, result, ["BG", "lesion"], max_side=None) == 1.0
    overlay = np.asarray(Image.open(tmp_path / "overlay.png").convert("RGB"))
    assert overlay.shape == image.shape
    changed = (overlay != image).any(axis=-1)
    y1, x1, y2, x2 = box
    outline = np.zeros_like(lesion)
    outline[y1:y2, x1:x2] = True
    outline[y1 + 2:y2 - 2, x1 + 2:x2 - 2] = False
    assert changed[lesion].mean() >= 0.95
    assert changed[outline].mean() >= 0.95
    assert not changed[~lesion & ~outline].any()
