"""Config.DETERMINISTIC (--deterministic): two trainings of the tiny network with the same
seed, each in its own process (augmentation and two feed threads on), end with every weight
array and every logged loss bit-identical; a process whose hash seed is random says so."""
import os
import pathlib
import subprocess
import sys

import numpy as np

from mrcnn.engine.determinism import hash_seed_warning

ROOT = pathlib.Path(__file__).resolve().parents[1]


def train(tmp_path, name, seed):
    out = tmp_path / f"{name}.npz"
    env = dict(os.environ, PYTHONHASHSEED="0", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "deterministic_train.py"), str(tmp_path / name),
                           str(out), str(seed)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Deterministic training: seed %d, TensorFlow op determinism on" % seed in done.stderr
    return np.load(out)


def test_two_deterministic_trainings_end_bit_identical(tmp_path):
    first, second = train(tmp_path, "a", 7), train(tmp_path, "b", 7)
    assert sorted(first.files) == sorted(second.files) and len(first.files) > 100
    differ = [key for key in first.files if not np.array_equal(first[key], second[key])]
    assert differ == []
    assert np.all(np.isfinite(first["history/loss"]))


def test_a_random_hash_seed_is_named_in_one_line():
    message = hash_seed_warning(1, None)
    assert message and "\n" not in message and "PYTHONHASHSEED=0" in message
    assert hash_seed_warning(1, "random") == message
    assert hash_seed_warning(1, "0") is None and hash_seed_warning(0, None) is None
