"""Reading inputs and writing predict outputs through lesions.py: one line for a fatal error,
a warning naming each bad item in a folder, nothing partial left behind, checks done before
the model is built, no two inputs writing one output, bounded overlays, and a re-run that
continues where an interrupted one stopped."""
import csv
import json
import logging
import os
import resource
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from isic import layout
from isic.synthetic import generate_dataset
from tests.helpers import ROOT, run_cli, tiny_task_config
from tests.test_cli_errors import TINY, assert_one_line_error, files_under
from tests.test_inputs import oversize_png, sixteen_bit_png


def make_checkpoint(run_dir, task):
    """An untrained checkpoint of `task` with its config.json, as a run folder holds them."""
    import keras
    from mrcnn import model as modellib
    keras.backend.clear_session()
    run_dir.mkdir(parents=True)
    config = tiny_task_config(task, inference=True, **TINY)
    model = modellib.MaskRCNN(mode="inference", config=config, model_dir=str(run_dir.parent))
    path = run_dir / f"mask_rcnn_{task}_0001.h5"
    model.save_weights(str(path))
    config.save(run_dir / "config.json")
    keras.backend.clear_session()
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    return {task: make_checkpoint(logs / f"{task}20260101T000000", task)
            for task in ("segmentation", "classification")}


def photo(path, size=(64, 64), seed=0):
    """A small RGB image with some texture, saved in the format its suffix says."""
    height, width = size
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def cli_probe(*args):
    """lesions.main(args) in a fresh interpreter: (exit code, stderr, whether the model code
    (mrcnn.model, TensorFlow) was imported), to see that an error comes before the model."""
    code = ("import json, sys, lesions\n"
            "rc = lesions.main(sys.argv[1:])\n"
            "print(json.dumps({'rc': rc, 'model': 'mrcnn.model' in sys.modules}))\n"
            "sys.exit(rc)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    last = (result.stdout.strip().splitlines() or ["{}"])[-1]
    return result, json.loads(last) if last.startswith("{") else {}  # {} after a crash: see stderr


# --------------------------------------------------------------------------- fatal errors, before the model

def test_oversize_image_alone_is_one_line(checkpoints, tmp_path):
    """Issue 16 Build 5: alone, an image over the decompression limit is the error."""
    big = oversize_png(tmp_path / "huge.png")
    out = tmp_path / "out"
    result, probe = cli_probe("--mode", "predict", "--image", big, "--weights", checkpoints["segmentation"],
                              "--output", out)
    line = assert_one_line_error(result, "huge.png", "178,956,970")
    assert "too large" in line and probe["rc"] != 0 and not probe["model"]
    assert not out.exists()


def test_output_that_is_an_existing_file(checkpoints, tmp_path):
    """Issue 16 Build 6: --output naming a file is one line, before the model."""
    image = photo(tmp_path / "ISIC_0000001.jpg")
    taken = tmp_path / "taken.txt"
    taken.write_text("keep me\n")
    result, probe = cli_probe("--mode", "predict", "--image", image, "--weights", checkpoints["segmentation"],
                              "--output", taken)
    assert_one_line_error(result, str(taken), "is a file")
    assert not probe["model"] and taken.read_text() == "keep me\n"


def test_lone_unreadable_input_fails_before_the_model_and_leaves_no_folder(checkpoints, tmp_path):
    """Issue 17 item 5: the input is checked first; the output folder is not created."""
    bogus = tmp_path / "ISIC_0000001.jpg"
    bogus.write_text("not an image")
    out = tmp_path / "out"
    result, probe = cli_probe("--mode", "predict", "--image", bogus, "--weights", checkpoints["segmentation"],
                              "--output", out)
    assert_one_line_error(result, "ISIC_0000001.jpg")
    assert not probe["model"] and not out.exists()


def test_coco_weights_refused_before_the_model(tmp_path):
    """Issue 17 item 5: --weights coco has no ISIC heads: said before building anything."""
    image = photo(tmp_path / "ISIC_0000001.jpg")
    out = tmp_path / "out"
    result, probe = cli_probe("--mode", "predict", "--image", image, "--weights", "coco", "--output", out)
    assert_one_line_error(result, "--weights coco")
    assert not probe["model"] and not out.exists()


def test_inputs_sharing_an_output_stem_are_refused_before_the_first_image(checkpoints, tmp_path):
    """Issue 13 item 3: three files that map to ISIC_0000001 would overwrite each other."""
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("ISIC_0000001.jpg", "ISIC_0000001.png", "ISIC_0000001_v2.jpg", "ISIC_0000002.jpg"):
        photo(folder / name)
    out = tmp_path / "out"
    result, probe = cli_probe("--mode", "predict", "--image", folder, "--weights", checkpoints["segmentation"],
                              "--output", out)
    line = assert_one_line_error(result, "ISIC_0000001.jpg", "ISIC_0000001.png", "ISIC_0000001_v2.jpg")
    assert "ISIC_0000002" not in line and not probe["model"] and not out.exists()


def test_latin1_task3_csv_is_one_line_naming_file_and_line(tmp_path):
    """Issue 16 Build 4: a ground-truth CSV saved as Latin-1 names the file and the line."""
    root = tmp_path / "data"
    generate_dataset(root, count=2, task3_count=3, image_size=(64, 64), seed=5, progress=False)
    path = root / layout.TASK3_GT_DIR.format(split="Training") / layout.TASK3_GT_CSV.format(split="Training")
    lines = path.read_text().splitlines()
    lines.insert(2, "ISIC_0000099_caf\xe9," + ",".join(["1.0"] + ["0.0"] * 6))
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    result = run_cli("--mode", "train", "--task", "classification", "--dataset", root, "--logs", tmp_path / "logs")
    assert_one_line_error(result, str(path), "line 3", "not UTF-8")
    assert not (tmp_path / "logs").exists()


# --------------------------------------------------------------------------- bad items in a folder

def predict_in_process(*args):
    """lesions.main in this process (saves the TensorFlow start-up of a subprocess)."""
    import keras
    import lesions
    keras.backend.clear_session()
    return lesions.main([str(a) for a in args])


def test_oversize_and_unconvertible_images_in_a_folder_are_skipped_and_16_bit_is_scaled(
        checkpoints, tmp_path, caplog):
    """Issue 16 Build 5 and issue 17 item 1, through predict on a folder."""
    folder = tmp_path / "images"
    folder.mkdir()
    photo(folder / "ISIC_0000001.jpg")
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    sixteen_bit_png(folder / "ISIC_0000002.png", ramp)
    oversize_png(folder / "ISIC_0000003.png")
    Image.fromarray(np.full((64, 64), 0.5, np.float32)).save(folder / "ISIC_0000004.tif")
    # At IMAGE_MAX_DIM 64 a 4000x3 strip would be under two pixels wide: a named bad item.
    # A 4000x100 one resizes to 64x2 and is predicted.
    photo(folder / "ISIC_0000005.png", size=(4000, 3))
    photo(folder / "ISIC_0000006.png", size=(4000, 100))
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        code = predict_in_process("--mode", "predict", "--image", folder, "--weights", checkpoints["segmentation"],
                                  "--output", out)
    assert code == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("ISIC_0000003.png" in w and "too large" in w for w in warnings), warnings
    assert any("ISIC_0000004.tif" in w and "mode F" in w for w in warnings), warnings
    assert any("ISIC_0000005.png" in w and "4000x3" in w and "under two pixels" in w for w in warnings), warnings
    assert any("ISIC_0000002.png" in r.getMessage() and "scaled to 8 bits" in r.getMessage()
               for r in caplog.records)
    written = files_under(out)
    for stem in ("ISIC_0000001", "ISIC_0000002", "ISIC_0000006"):
        assert {f"{stem}_segmentation.png", f"{stem}_overlay.png", f"{stem}.json"} <= set(written)
    assert not any(stem in n for n in written for stem in ("ISIC_0000003", "ISIC_0000004", "ISIC_0000005"))
    with Image.open(out / "ISIC_0000006_segmentation.png") as im:
        assert im.size == (100, 4000)  # the deliverable has the image's own size
    with Image.open(out / "ISIC_0000002_overlay.png") as im:
        overlay = np.asarray(im)
    assert overlay.shape == (64, 64, 3) and overlay.min() < 50  # the dark end of the ramp stays dark


# --------------------------------------------------------------------------- write errors

def test_write_error_is_one_line_naming_the_file_and_leaves_nothing_partial(checkpoints, tmp_path, capsys):
    """Issue 16 Build 6: a write that fails part-way (here the file-size limit, EFBIG; a full
    disk, ENOSPC, takes the same path) is one line naming the path; no temp file stays."""
    image = photo(tmp_path / "ISIC_0000001.png", size=(600, 600))  # noise: a ~1 MB overlay PNG
    out = tmp_path / "out"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, hard))  # Python ignores SIGXFSZ: writes fail
    try:
        code = predict_in_process("--mode", "predict", "--image", image, "--weights", checkpoints["segmentation"],
                                  "--output", out)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    stderr = capsys.readouterr().err
    result = subprocess.CompletedProcess([], code, "", stderr)
    line = assert_one_line_error(result, str(out / "ISIC_0000001_overlay.png"), "File too large")
    assert "cannot write" in line
    written = files_under(out)
    assert not any(name.endswith(".tmp") for name in written), written
    assert "ISIC_0000001_overlay.png" not in written and "ISIC_0000001.json" not in written


# --------------------------------------------------------------------------- large runs: overlays, resume

def task3_rows(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == layout.TASK3_CSV_HEADER
    return {r[0]: [float(v) for v in r[1:]] for r in rows[1:]}


def test_bounded_overlays_and_an_interrupted_run_continues(checkpoints, tmp_path, caplog):
    """Issue 12 Build 6: overlays at most 1024 px on the long side (--full-size-overlays for
    the image's size); a re-run keeps images whose outputs are all there (--overwrite redoes
    them), and Task 3's CSV still lists every image."""
    folder = tmp_path / "images"
    folder.mkdir()
    photo(folder / "ISIC_0000001.jpg", size=(1000, 1300), seed=1)
    photo(folder / "ISIC_0000002.jpg", seed=2)
    photo(folder / "ISIC_0000003.jpg", seed=3)
    out = tmp_path / "out"
    weights = checkpoints["classification"]
    common = ("--mode", "predict", "--task", "classification", "--image", folder, "--weights", weights,
              "--output", out)
    assert predict_in_process(*common) == 0
    with Image.open(out / "ISIC_0000001_overlay.png") as im:
        assert im.size == (1024, 788)
    summary = json.loads((out / "ISIC_0000001.json").read_text())
    assert summary["overlay_scale"] == pytest.approx(1024 / 1300) and summary["width"] == 1300
    first = task3_rows(out / "ISIC2018_Task3_predictions.csv")
    assert sorted(first) == ["ISIC_0000001", "ISIC_0000002", "ISIC_0000003"]

    # Interrupted while writing image 3: its JSON (written last) and the CSV are missing.
    (out / "ISIC_0000003.json").unlink()
    (out / "ISIC2018_Task3_predictions.csv").unlink()
    kept_mtime = (out / "ISIC_0000001_overlay.png").stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert predict_in_process(*common) == 0
    assert "2 of 3 images already have all their outputs" in caplog.text
    assert (out / "ISIC_0000001_overlay.png").stat().st_mtime_ns == kept_mtime
    assert (out / "ISIC_0000003.json").is_file()
    again = task3_rows(out / "ISIC2018_Task3_predictions.csv")
    assert sorted(again) == sorted(first)
    for stem in first:
        assert again[stem] == pytest.approx(first[stem], abs=1e-9)

    assert predict_in_process(*common, "--overwrite", "--full-size-overlays") == 0
    assert (out / "ISIC_0000001_overlay.png").stat().st_mtime_ns != kept_mtime
    with Image.open(out / "ISIC_0000001_overlay.png") as im:
        assert im.size == (1300, 1000)
    assert sorted(task3_rows(out / "ISIC2018_Task3_predictions.csv")) == sorted(first)


def test_outputs_from_other_weights_are_not_overwritten(checkpoints, tmp_path):
    """Issue 13 item 3 / issue 12 Build 6: a re-run into a folder holding another model's
    complete outputs refuses instead of mixing or overwriting them."""
    image = photo(tmp_path / "ISIC_0000001.jpg")
    out = tmp_path / "out"
    weights = checkpoints["segmentation"]
    other = tmp_path / "other" / weights.name
    other.parent.mkdir()
    shutil.copy(weights, other)
    shutil.copy(weights.parent / "config.json", other.parent / "config.json")
    assert predict_in_process("--mode", "predict", "--image", image, "--weights", weights, "--output", out) == 0
    before = {n: (out / n).read_bytes() for n in files_under(out)}
    result, probe = cli_probe("--mode", "predict", "--image", image, "--weights", other, "--output", out)
    assert_one_line_error(result, "other weights", "--overwrite")
    assert not probe["model"] and {n: (out / n).read_bytes() for n in files_under(out)} == before
