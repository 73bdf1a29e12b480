"""Bad settings, options, weights files and output folders through the command line: one line
`lesions.py: error: ...` naming the value or file, a non-zero exit, no traceback, nothing written.

Most of these fail before TensorFlow is imported, so each run takes about a second; the two
that need the network's layer names (a --layers typo, weights that do not fit) build a tiny model.
"""
import os
import pathlib
import subprocess

import h5py
import numpy as np
import pytest
from PIL import Image

from tests.helpers import run_cli, set_args, tiny_settings, tiny_task_config

# The tests' tiny network, one image per step, at most 5 detections, no augmentation.
TINY = tiny_settings(IMAGES_PER_GPU=1, DETECTION_MAX_INSTANCES=5, AUGMENTATION="none")


def assert_error(result, *fragments, only_line=True):
    """Non-zero exit, no traceback, exactly one `lesions.py: error:` line (the last), holding
    every fragment; with only_line, nothing else on stderr (the error came before any logging)."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("lesions.py: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    if only_line:
        assert lines == errors, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def files_under(folder):
    folder = pathlib.Path(folder)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) if folder.exists() else []


def write_keras2_weights(path, layers):
    """A Keras-2 layout weights file as Matterport's save_weights writes it: {layer: {weight: array}}."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([name.encode() for name in layers])
        for name, weights in layers.items():
            group = f.create_group(name)
            group.attrs["weight_names"] = np.array([w.encode() for w in weights])
            for weight, value in weights.items():
                group.create_dataset(weight, data=value)
    return path


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "ISIC_0000001.jpg"
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(path)
    return path


@pytest.fixture
def checkpoint(tmp_path):
    """A 2 MB weights file in a run folder (no config.json yet)."""
    run = tmp_path / "run"
    run.mkdir()
    rng = np.random.default_rng(0)
    return write_keras2_weights(run / "mask_rcnn_segmentation_0001.h5", {
        "conv1": {"conv1/kernel:0": rng.random((7, 7, 3, 64), np.float32),
                  "conv1/bias:0": np.zeros(64, np.float32)},
        "res2a_branch2a": {"res2a_branch2a/kernel:0": rng.random((1, 1, 64, 8192), np.float32)}})


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nobody can write in, root included: a read-only tmpfs when this user may mount
    (root), a folder without write permission otherwise, /sys as the last resort."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    mounted = False
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
                                 capture_output=True).returncode == 0
        if not mounted:
            folder = pathlib.Path("/sys")
    else:
        folder.chmod(0o555)
    with pytest.raises(OSError):  # the folder really refuses a write
        (folder / "probe").write_text("x")
    try:
        yield folder
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)
        elif folder != pathlib.Path("/sys"):
            folder.chmod(0o755)


# --- Config values (issue 16 Build 1; issue 17: BACKBONE_STRIDES, booleans) ---

@pytest.mark.parametrize("setting, fragments", [
    ("DETECTION_MIN_CONFIDENCE=abc", ["Config.DETECTION_MIN_CONFIDENCE='abc'", "number in [0, 1]"]),
    ("LEARNING_RATE=abc", ["Config.LEARNING_RATE='abc'", "number > 0"]),
    ("MEAN_PIXEL=abc", ["Config.MEAN_PIXEL='abc'", "3 numbers"]),
    ("RPN_ANCHOR_SCALES=64", ["Config.RPN_ANCHOR_SCALES=64", "list of 5 positive numbers"]),
    ('RPN_ANCHOR_RATIOS=["a"]', ["Config.RPN_ANCHOR_RATIOS=['a']", "positive numbers"]),
    ("SEED=abc", ["Config.SEED='abc'", "integer"]),
    ("SCHEDULE=[]", ["Config.SCHEDULE=[]", "non-empty list of [layers, end epoch, learning rate]"]),
    ('SCHEDULE=[["heads"]]', ["Config.SCHEDULE=", "stage 1 is not [layers, end epoch, learning rate]"]),
    ('SCHEDULE=[["heads", 2, "fast"]]', ["Config.SCHEDULE=", "stage 1", "learning rate must be a number"]),
    ('SCHEDULE=[["heads", 4, 0.01], ["all", 3, 0.001]]', ["stage 2", "end epoch must be an integer above 4"]),
    ('SCHEDULE=[["res(", 4, 0.01]]', ["stage 1", "'res('", "not a valid regular expression"]),
    ("BACKBONE_STRIDES=abc", ["Config.BACKBONE_STRIDES='abc'", "5 positive integers"]),
    ("TRAIN_BN=maybe", ["Config.TRAIN_BN='maybe'", "true or false"]),
    ("KEEP_EMPTY_IMAGES=2", ["Config.KEEP_EMPTY_IMAGES=2", "true or false"]),
])
def test_bad_setting_is_one_line_naming_the_attribute(setting, fragments, tmp_path):
    logs = tmp_path / "logs"
    result = run_cli("--mode", "train", "--dataset", "synthetic", "--logs", logs, "--set", setting)
    message = assert_error(result, *fragments)
    assert "RPN_ANCHOR_SCALES" not in message or setting.startswith("RPN_ANCHOR_SCALES")
    assert not logs.exists()


def test_bad_setting_in_predict_is_one_line(tmp_path, image):
    out = tmp_path / "out"
    result = run_cli("--mode", "predict", "--image", image, "--weights", "none", "--output", out,
                     "--set", "DETECTION_MIN_CONFIDENCE=1.5")
    assert_error(result, "Config.DETECTION_MIN_CONFIDENCE=1.5", "number in [0, 1]")
    assert not out.exists()


def test_python_literals_are_accepted_as_settings(tmp_path):
    """--set TRAIN_BN=True (Python spelling) is a boolean, not the string 'True', and (28, 28) a
    tuple: the run fails on MIXED_PRECISION, which Config checks after both."""
    result = run_cli("--mode", "train", "--dataset", "synthetic", "--logs", tmp_path / "logs",
                     "--set", "TRAIN_BN=True", "--set", "MINI_MASK_SHAPE=(28, 28)", "--set", "MIXED_PRECISION=float8")
    assert_error(result, "Config.MIXED_PRECISION='float8'")


# --- Options ---

@pytest.mark.parametrize("options, fragments", [
    (["--seed", "-1"], ["--seed", "-1"]),
    (["--limit", "0"], ["--limit must be a positive integer, got 0"]),
    (["--limit", "-2"], ["--limit must be a positive integer, got -2"]),
    (["--epochs", "0"], ["--epochs must be a positive integer, got 0"]),
    (["--steps-per-epoch", "-1"], ["--steps-per-epoch"]),
    (["--layers", "res("], ["--layers 'res('", "not a valid regular expression", "heads, 3+, 4+, 5+, all"]),
])
def test_bad_option_value_is_refused_itself(options, fragments, tmp_path):
    logs = tmp_path / "logs"
    result = run_cli("--mode", "train", "--dataset", "synthetic", "--logs", logs, *options)
    assert_error(result, *fragments)
    assert not logs.exists()


def test_limit_zero_in_investigate_names_the_option(tmp_path):
    result = run_cli("--mode", "investigate", "--dataset", "synthetic", "--weights", "none", "--limit", "0",
                     "--output", tmp_path / "out")
    assert_error(result, "--limit")
    assert not (tmp_path / "out").exists()


# --- Output folders (issue 16 Build 6, the up-front check) ---

def test_logs_that_is_a_file(tmp_path):
    file = tmp_path / "logs.txt"
    file.write_text("notes\n")
    result = run_cli("--mode", "train", "--dataset", "synthetic", "--logs", file)
    assert_error(result, f"--logs {file}", "is a file, not a folder")
    assert file.read_text() == "notes\n"


@pytest.mark.parametrize("below", [False, True], ids=["the_file", "below_the_file"])
def test_output_that_is_a_file(tmp_path, image, below):
    file = tmp_path / "report.txt"
    file.write_text("notes\n")
    result = run_cli("--mode", "predict", "--image", image, "--weights", "none",
                     "--output", file / "out" if below else file)
    assert_error(result, "--output", f"{file} is a file, not a folder")
    assert file.read_text() == "notes\n"


def test_logs_on_a_read_only_folder(read_only_dir):
    result = run_cli("--mode", "train", "--dataset", "synthetic", "--logs", read_only_dir / "logs")
    assert_error(result, f"--logs {read_only_dir / 'logs'}", "cannot write in", str(read_only_dir))


def test_output_on_a_read_only_folder(read_only_dir, image):
    for mode in ("predict", "investigate"):
        result = run_cli("--mode", mode, "--image", image, "--dataset", "synthetic", "--weights", "none",
                         "--output", read_only_dir / "out")
        assert_error(result, "--output", "cannot write in", str(read_only_dir))


# --- Weights and run files (issue 16 Build 3) ---

@pytest.mark.parametrize("with_config", [False, True], ids=["alone", "with_config_json"])
@pytest.mark.parametrize("mode", ["predict", "train"])
def test_truncated_weights_file(checkpoint, with_config, mode, image, tmp_path):
    data = checkpoint.read_bytes()
    assert len(data) > 2 ** 21
    checkpoint.write_bytes(data[:2 ** 20])  # the first 1 MB of a checkpoint
    if with_config:
        tiny_task_config("segmentation", **TINY).save(checkpoint.parent / "config.json")
    out, logs = tmp_path / "out", tmp_path / "logs"
    result = run_cli("--mode", mode, "--image", image, "--dataset", "synthetic", "--weights", checkpoint,
                     "--output", out, "--logs", logs)
    assert_error(result, str(checkpoint), "damaged HDF5 weights file", "truncated")
    assert not out.exists() and not logs.exists()


def test_weights_file_that_is_not_hdf5(tmp_path, image):
    bogus = tmp_path / "weights.h5"
    bogus.write_bytes(b"PK\x03\x04 a zip archive, not weights")
    result = run_cli("--mode", "predict", "--image", image, "--weights", bogus, "--output", tmp_path / "out")
    assert_error(result, str(bogus), "not an HDF5 file")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, fragments", [
    ('{"NAME": "segmentation", "BACKBONE": "resn', ["is not a readable config JSON"]),
    ('["segmentation"]', ["holds a JSON list"]),
    ('{"DETECTION_MIN_CONFIDENCE": "abc"}', ["Config.DETECTION_MIN_CONFIDENCE='abc'", "number in [0, 1]"]),
    ('{"SCHEDULE": [["heads"]]}', ["Config.SCHEDULE="]),
], ids=["truncated_json", "not_an_object", "bad_value", "bad_schedule"])
def test_bad_config_json_beside_the_weights(checkpoint, text, fragments, image, tmp_path):
    saved = checkpoint.parent / "config.json"
    saved.write_text(text)
    for mode in ("predict", "investigate"):
        out = tmp_path / f"out_{mode}"
        result = run_cli("--mode", mode, "--image", image, "--dataset", "synthetic", "--weights", checkpoint,
                         "--output", out)
        assert_error(result, str(saved), *fragments)
        assert not out.exists()
    assert saved.read_text() == text


# --- Errors that need the network (a tiny one) ---

def test_layers_matching_no_layer_lists_the_choices(tmp_path):
    from isic.synthetic import generate_dataset
    data = tmp_path / "data"
    generate_dataset(data, count=4, image_size=(64, 64), seed=1, progress=False)
    logs = tmp_path / "logs"
    result = run_cli("--mode", "train", "--dataset", data, "--weights", "none", "--logs", logs,
                     "--layers", "head", "--epochs", "1", "--steps-per-epoch", "1", *set_args(TINY))
    assert_error(result, "'head' matches no layer of the model", "heads, 3+, 4+, 5+, all", only_line=False)
    assert files_under(logs) == []


def test_weights_without_config_json_that_do_not_fit(tmp_path, image):
    """Issue 17: advice for the command line (config.json missing, --set), not the Python API's."""
    width = TINY["FPN_CLASSIF_FC_LAYERS_SIZE"]  # the class head's input; 2 classes in the model, 8 in the file
    lone = write_keras2_weights(tmp_path / "classification.h5", {"mrcnn_class_logits": {
        "mrcnn_class_logits/kernel:0": np.zeros((width, 8), np.float32),
        "mrcnn_class_logits/bias:0": np.zeros(8, np.float32)}})
    out = tmp_path / "out"
    result = run_cli("--mode", "predict", "--image", image, "--weights", lone, "--output", out, *set_args(TINY))
    message = assert_error(result, str(lone), "mrcnn_class_logits", f"[{width}, 2] in the model, [{width}, 8] in the file",
                           "no config.json beside the weights", "--set KEY=VALUE", only_line=False)
    assert "exclude=" not in message and "skip_mismatch" not in message
    assert not out.exists()
