"""Bad input through the command line (docs/bad-input.md): one clear line, a non-zero exit, no
traceback and no half-written output; bad items are skipped and named, the rest goes on."""
import json
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

from isic import layout
from isic.synthetic import generate_dataset
from tests.helpers import run_cli, set_args, tiny_settings, tiny_task_config

# The tests' tiny network; at most 5 detections, all kept whatever their score.
TINY = tiny_settings(DETECTION_MAX_INSTANCES=5, DETECTION_MIN_CONFIDENCE=0.0)


def assert_one_line_error(result, *fragments):
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("lesions.py: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    return lines[-1]


def files_under(folder):
    return sorted(p.relative_to(folder).as_posix() for p in pathlib.Path(folder).rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_isic")
    generate_dataset(root, count=6, task3_count=7, image_size=(64, 64), seed=1, progress=False)
    return root


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """An untrained Task 1 checkpoint with its config.json, as a run folder holds them."""
    from mrcnn import model as modellib
    run_dir = tmp_path_factory.mktemp("logs") / "segmentation20260101T0000"
    run_dir.mkdir()
    config = tiny_task_config("segmentation", inference=True, **TINY)
    model = modellib.MaskRCNN(mode="inference", config=config, model_dir=str(run_dir.parent))
    path = run_dir / "mask_rcnn_segmentation_0001.h5"
    model.save_weights(str(path))
    config.save(run_dir / "config.json")
    return path


def copy_dataset(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_dataset_folder(tmp_path):
    result = run_cli("--mode", "train", "--dataset", tmp_path / "nowhere")
    assert_one_line_error(result, "not found", "ISIC 2018 layout", "--dataset synthetic")


def test_missing_subfolder_names_the_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli("--mode", "train", "--task", "attributes", "--dataset", tmp_path / "empty")
    assert_one_line_error(result, "ISIC2018_Task1-2_Training_Input", "not found")


def test_unknown_class_column_in_task3_csv(tiny_data, tmp_path):
    root = copy_dataset(tiny_data, tmp_path / "data")
    csv = root / layout.TASK3_GT_DIR.format(split="Training") / layout.TASK3_GT_CSV.format(split="Training")
    text = csv.read_text().replace("VASC", "VASCULAR", 1)
    csv.write_text(text)
    result = run_cli("--mode", "train", "--task", "classification", "--dataset", root)
    assert_one_line_error(result, "VASCULAR")


def test_bad_config_value_is_one_line():
    result = run_cli("--mode", "train", "--dataset", "synthetic", "--set", "IMAGE_MAX_DIM=500")
    assert_one_line_error(result, "IMAGE_MAX_DIM", "multiple of 64")


def test_missing_image_path(tmp_path):
    result = run_cli("--mode", "predict", "--image", tmp_path / "none.jpg", "--weights", "none")
    assert_one_line_error(result, "no such file")


def test_weights_that_do_not_match_the_model(tiny_checkpoint, tmp_path):
    image = tmp_path / "ISIC_0000001.jpg"
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(image)
    lone = tmp_path / "lone" / "seg.h5"  # no config.json beside it: the task config is used
    lone.parent.mkdir()
    shutil.copy(tiny_checkpoint, lone)
    out = tmp_path / "out"
    result = run_cli("--mode", "predict", "--task", "classification", "--image", image, "--weights", lone,
                     "--output", out, *set_args(TINY))
    assert_one_line_error(result, "mrcnn_")
    assert not out.exists() or files_under(out) == []


def test_weights_file_that_is_not_hdf5(tmp_path):
    bogus = tmp_path / "weights.h5"
    bogus.write_text("not weights")
    image = tmp_path / "a.jpg"
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(image)
    result = run_cli("--mode", "predict", "--image", image, "--weights", bogus, "--output", tmp_path / "out",
                     *set_args(TINY))
    assert_one_line_error(result, "weights.h5")
    assert not (tmp_path / "out").exists() or files_under(tmp_path / "out") == []


def test_corrupt_image_in_predict_folder_is_skipped_and_named(tiny_checkpoint, tiny_data, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    inputs = sorted((tiny_data / layout.TASK12_INPUT_DIR.format(split="Training")).glob("*.jpg"))[:2]
    for path in inputs:
        shutil.copy(path, folder)
    (folder / "ISIC_0099999.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    (folder / "notes.png").write_text("not an image")
    out = tmp_path / "out"
    result = run_cli("--mode", "predict", "--image", folder, "--weights", tiny_checkpoint, "--output", out)
    assert result.returncode == 0, result.stderr
    assert "ISIC_0099999.jpg" in result.stderr and "notes.png" in result.stderr
    written = files_under(out)
    for path in inputs:
        stem = path.stem
        assert f"{stem}_segmentation.png" in written
        assert f"{stem}_overlay.png" in written and f"{stem}.json" in written
    assert not any("ISIC_0099999" in name or name.startswith("notes") for name in written)
    assert not any(name.endswith(".tmp") for name in written)


def test_bad_items_in_dataset_are_skipped_and_listed(tiny_checkpoint, tiny_data, tmp_path):
    root = copy_dataset(tiny_data, tmp_path / "data")
    gt_dir = root / layout.TASK1_GT_DIR.format(split="Training")
    Image.fromarray(np.zeros((32, 48), np.uint8)).save(gt_dir / layout.segmentation_name("ISIC_0000002"))
    (root / layout.TASK12_INPUT_DIR.format(split="Training") / "ISIC_0000004.jpg").write_bytes(b"garbage")
    out = tmp_path / "investigate"
    result = run_cli("--mode", "investigate", "--dataset", root, "--subset", "all", "--weights", tiny_checkpoint,
                     "--output", out)
    assert result.returncode == 0, result.stderr
    assert "ISIC_0000002" in result.stderr and "ISIC_0000004" in result.stderr
    report = json.loads((out / "metrics.json").read_text())
    assert report["num_images"] == 4
    skipped = " ".join(item for item, _ in report["dataset_statistics"]["skipped"])
    assert "ISIC_0000002" in skipped and "ISIC_0000004" in skipped
    predicted = files_under(out / "predictions")
    assert len(predicted) == 4 and "ISIC_0000002_segmentation.png" not in predicted
