"""Helpers shared by the test modules: `from tests.helpers import ...` (fixtures stay in
conftest.py). The README's test command, `python -m pytest`, runs from the checkout, which
Python puts first on sys.path; the scripts in tests/ get it through PYTHONPATH (run_cli).

- TINY, tiny_settings, tiny_config, tiny_task_config: the one small network of the tests
  (resnet18 at 64 px with small heads and ROI budgets: a training step well under a second
  on a CPU), as settings, as a mrcnn Config and as a lesions.py task config; a test changes
  what it depends on with keyword overrides.
- set_args, run_cli: lesions.py in a fresh interpreter, with settings as `--set KEY=JSON`.
- mask_iou: intersection over union of two binary masks.

Nothing here imports TensorFlow.
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Config values of the tiny network. Plain Python values, so one dict serves Config(**...),
# lesions.make_config(overrides=...) and `--set KEY=JSON` (set_args) alike.
TINY = {
    "BACKBONE": "resnet18",
    "IMAGE_MIN_DIM": 64,
    "IMAGE_MAX_DIM": 64,
    "RPN_ANCHOR_SCALES": (8, 16, 32, 64, 128),
    "RPN_TRAIN_ANCHORS_PER_IMAGE": 32,
    "PRE_NMS_LIMIT": 500,
    "POST_NMS_ROIS_TRAINING": 100,
    "POST_NMS_ROIS_INFERENCE": 50,
    "TRAIN_ROIS_PER_IMAGE": 16,
    "MAX_GT_INSTANCES": 4,
    "MINI_MASK_SHAPE": (14, 14),
    "FPN_CLASSIF_FC_LAYERS_SIZE": 64,
    "TOP_DOWN_PYRAMID_SIZE": 64,
    "RPN_CONV_CHANNELS": 64,
    "MASK_HEAD_CHANNELS": 32,
    "PRECISE_BN_BATCHES": 0,  # the quick start's PreciseBN pass is tests/test_precise_bn.py's
}

# What tiny_config adds for a plain mrcnn Config (a task config has its own classes and name).
TINY_CONFIG_EXTRAS = {
    "NAME": "tiny",
    "NUM_CLASSES": 2,
    "GPU_COUNT": 1,
    "IMAGES_PER_GPU": 2,
    "DETECTION_MAX_INSTANCES": 10,
    "DETECTION_MIN_CONFIDENCE": 0.0,
    "STEPS_PER_EPOCH": 3,
    "VALIDATION_STEPS": 1,
}


def tiny_settings(**overrides):
    """TINY with `overrides` applied (a new dict; TINY itself never changes)."""
    return {**TINY, **overrides}


def tiny_config(**overrides):
    """A mrcnn Config of the tiny network (TINY and TINY_CONFIG_EXTRAS, then `overrides`)."""
    from mrcnn.config import Config
    return Config(**{**TINY_CONFIG_EXTRAS, **TINY, **overrides})


def tiny_task_config(task, synthetic=False, inference=False, **overrides):
    """lesions.make_config(task, ...) with the tiny network's settings and `overrides`."""
    import lesions
    return lesions.make_config(task, synthetic=synthetic, overrides=tiny_settings(**overrides).items(),
                               inference=inference)


def set_args(settings):
    """['--set', 'KEY=JSON', ...] for a dict of settings (tuples become JSON lists)."""
    return [arg for key, value in settings.items() for arg in ("--set", f"{key}={json.dumps(value)}")]


def script_env(**extra):
    """The environment of a script in tests/ run in a fresh interpreter: the checkout and tests/
    on PYTHONPATH (the scripts import the packages and the test modules), CPU only."""
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests")] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    env = dict(os.environ, PYTHONPATH=path, CUDA_VISIBLE_DEVICES="")
    env.update(extra)
    return env


def run_cli(*args, cwd=None, timeout=600):
    """`python lesions.py ARGS` in a fresh interpreter on the CPU, from `cwd` (default the
    checkout); the CompletedProcess with text stdout and stderr."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, str(ROOT / "lesions.py"), *map(str, args)], cwd=cwd or ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def mask_iou(a, b):
    """Intersection over union of two binary masks of one shape; 1.0 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
