"""bench/real_segmentation.py on a few real HAM10000 images: the budgeted training run
leaves weights that lesions.py loads and that predict valid Task 1 masks."""
import csv
import json
import os
import pathlib
import subprocess
import sys

import cv2
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
IMAGES = "ISIC2018_Task1-2_Training_Input"
MASKS = "ISIC2018_Task1_Training_GroundTruth"
COUNT = 8


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", NO_ALBUMENTATIONS_UPDATE="1", MPLBACKEND="Agg")
    env.pop("PYTHONPATH", None)
    return env


@pytest.fixture(scope="module")
def few_real_images(ham10000_seg, tmp_path_factory):
    """A Task 1 folder with the first COUNT real images (symlinks) and their metadata rows."""
    root = tmp_path_factory.mktemp("ham_few")
    (root / IMAGES).mkdir()
    (root / MASKS).mkdir()
    ids = sorted(p.stem for p in (ham10000_seg / IMAGES).glob("ISIC_*.jpg"))[:COUNT]
    for image_id in ids:
        (root / IMAGES / f"{image_id}.jpg").symlink_to(ham10000_seg / IMAGES / f"{image_id}.jpg")
        name = f"{image_id}_segmentation.png"
        (root / MASKS / name).symlink_to(ham10000_seg / MASKS / name)
    with open(ham10000_seg / "HAM10000_metadata.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if r["image_id"] in ids]
        fields = reader.fieldnames
    with open(root / "HAM10000_metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return root, ids


@pytest.fixture(scope="module")
def one_minute_run(few_real_images, tmp_path_factory):
    data, _ = few_real_images
    out = tmp_path_factory.mktemp("real_out")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "real_segmentation.py"), "--data", str(data),
                           "--minutes", "1", "--output", str(out)],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_script_leaves_weights_and_config(one_minute_run):
    out, proc = one_minute_run
    last_line = proc.stdout.strip().splitlines()[-1]
    weights = pathlib.Path(last_line)
    assert weights.is_file() and weights.suffix == ".h5" and weights.parent == out
    saved = json.loads((out / "config.json").read_text())
    assert saved["BACKBONE"] == "resnet18" and saved["NUM_CLASSES"] == 2
    # The training really stopped on the clock, and command.txt reproduces it with lesions.py alone.
    assert "Time budget used" in proc.stderr
    command = (out / "command.txt").read_text()
    assert command.startswith("python lesions.py --mode train") and "--minutes 1" in command
    summary = json.loads((out / "summary.json").read_text())
    assert summary["weights"] == str(weights)


def test_weights_predict_valid_masks(one_minute_run, few_real_images, tmp_path):
    out, proc = one_minute_run
    data, ids = few_real_images
    weights = proc.stdout.strip().splitlines()[-1]
    pred = tmp_path / "pred"
    image = data / IMAGES / f"{ids[0]}.jpg"
    run = subprocess.run([sys.executable, "lesions.py", "--mode", "predict", "--task", "segmentation",
                          "--image", str(image), "--weights", weights, "--output", str(pred),
                          "--set", "TASK1_MASK_REFINEMENT=grabcut"],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "0 file layers unused" in run.stderr and "0 model layers missing" in run.stderr
    mask = cv2.imread(str(pred / f"{ids[0]}_segmentation.png"), cv2.IMREAD_UNCHANGED)
    source = cv2.imread(str(image))
    assert mask is not None and mask.dtype == np.uint8 and mask.ndim == 2
    assert mask.shape == source.shape[:2]
    assert set(np.unique(mask)) <= {0, 255}


def test_weights_score_with_investigate(one_minute_run, few_real_images, tmp_path):
    out, proc = one_minute_run
    data, _ = few_real_images
    run = subprocess.run([sys.executable, "lesions.py", "--mode", "investigate", "--dataset", str(data),
                          "--weights", proc.stdout.strip().splitlines()[-1], "--subset", "val",
                          "--output", str(tmp_path / "inv")],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((tmp_path / "inv" / "metrics.json").read_text())
    assert metrics["num_images"] == 2  # 20 % of 8 lesions, lesion-disjoint
    assert 0.0 <= metrics["isic"]["macro_average"]["threshold_jaccard"] <= 1.0
