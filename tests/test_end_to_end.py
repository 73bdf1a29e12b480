"""All three tasks end to end through lesions.py (train a couple of steps, investigate,
predict), on the real ISIC sample in ../shared and on a small synthetic set. Checks every
output file, and that metrics.json equals what the official scorer (isic-challenge-scoring
5.6.0) computes on the predictions/ that investigate wrote and the same ground truth."""
import csv
import json
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

import lesions
from isic import layout
from isic.synthetic import generate_dataset

TINY = {"BACKBONE": "resnet18", "IMAGE_MIN_DIM": 128, "IMAGE_MAX_DIM": 128, "IMAGES_PER_GPU": 1,
        "RPN_ANCHOR_SCALES": [8, 16, 32, 64, 128], "PRE_NMS_LIMIT": 600, "POST_NMS_ROIS_TRAINING": 100,
        "POST_NMS_ROIS_INFERENCE": 50, "TRAIN_ROIS_PER_IMAGE": 16, "RPN_TRAIN_ANCHORS_PER_IMAGE": 32,
        "DETECTION_MAX_INSTANCES": 10, "DETECTION_MIN_CONFIDENCE": 0.0, "VALIDATION_STEPS": 1,
        "AUGMENTATION": "none"}
TASKS = ("segmentation", "attributes", "classification")


def cli(*args):
    """Run lesions.py in this process (saves the TensorFlow start-up per call)."""
    import keras
    keras.backend.clear_session()
    settings = []
    for key, value in TINY.items():
        settings += ["--set", f"{key}={json.dumps(value)}"]
    code = lesions.main([str(a) for a in args] + settings)
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
        for path in (dataset_root / layout.TASK2_GT_DIR.format(split=split)).glob("*.png"):
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

    out = tmp_path / "investigate"
    cli("--mode", "investigate", "--task", task, "--dataset", dataset, "--subset", "all", "--logs", logs,
        "--output", out)
    report = json.loads((out / "metrics.json").read_text())
    ids = sorted(image_shapes(image_dir(dataset, task)))
    assert report["num_images"] == len(ids)
    check_predictions(task, out / "predictions", image_shapes(image_dir(dataset, task)))
    assert (out / "report.md").is_file()
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
        assert (pred / f"{stem}_overlay.png").is_file()
        summary = json.loads((pred / f"{stem}.json").read_text())
        assert {"detections", "height", "width"} <= set(summary)
        if task == "classification":
            assert set(summary["probabilities"]) == set(layout.DIAGNOSES)


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
