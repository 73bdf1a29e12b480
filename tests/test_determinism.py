"""Config.DETERMINISTIC (--deterministic): two trainings of the tiny network with the same seed,
each `python lesions.py --mode train --deterministic` in its own process (augmentation on, the
hash seed not set by the caller: the command re-runs itself with PYTHONHASHSEED=0), end with
every weight array of the checkpoint and every logged number bit-identical; a process whose hash
seed is random says so in one line."""
import os

import h5py
import numpy as np
import pytest

from isic.synthetic import generate_dataset
from mrcnn.engine.determinism import hash_seed_warning
from tests.helpers import run_cli, set_args, tiny_settings

SETTINGS = tiny_settings(VALIDATION_STEPS=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("isic_synthetic")
    generate_dataset(root, count=10, image_size=(64, 64), seed=0, progress=False)
    return root


def train(data, logs, seed):
    saved = os.environ.pop("PYTHONHASHSEED", None)
    try:
        done = run_cli("--mode", "train", "--dataset", data, "--logs", logs, "--epochs", 1, "--steps-per-epoch", 3,
                       "--weights", "none", "--seed", seed, "--deterministic", *set_args(SETTINGS))
    finally:
        if saved is not None:
            os.environ["PYTHONHASHSEED"] = saved
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Deterministic training: seed {seed}, TensorFlow op determinism on" in done.stderr
    assert "PYTHONHASHSEED is not set" not in done.stderr  # the re-run fixed it
    (run_dir,) = [p for p in logs.iterdir() if p.is_dir()]
    return run_dir


def checkpoint_arrays(path):
    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return arrays


def test_two_deterministic_trainings_end_bit_identical(data, tmp_path):
    first, second = train(data, tmp_path / "a", 7), train(data, tmp_path / "b", 7)
    a = checkpoint_arrays(first / "mask_rcnn_segmentation_0001.h5")
    b = checkpoint_arrays(second / "mask_rcnn_segmentation_0001.h5")
    assert sorted(a) == sorted(b) and len(a) > 100
    assert [key for key in a if not np.array_equal(a[key], b[key])] == []
    assert (first / "history.csv").read_text() == (second / "history.csv").read_text()
    third = train(data, tmp_path / "c", 8)  # another seed: other weights, so the check can fail
    c = checkpoint_arrays(third / "mask_rcnn_segmentation_0001.h5")
    assert any(not np.array_equal(a[key], c[key]) for key in a)


def test_a_random_hash_seed_is_named_in_one_line():
    message = hash_seed_warning(1, None)
    assert message and "\n" not in message and "PYTHONHASHSEED=0" in message
    assert hash_seed_warning(1, "random") == message
    assert hash_seed_warning(1, "0") is None and hash_seed_warning(0, None) is None
