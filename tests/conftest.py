"""Shared test fixtures: where the read-only real data in ../shared lives.

Tests that need ../shared skip only when it is absent AND the CI variable is unset;
in CI a missing ../shared is a failure, never a silent skip. The packages import as installed
(`pip install -e .`) or from the checkout that `python -m pytest` runs in: no sys.path change.
"""
import atexit
import os
import pathlib
import shutil
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
import mrcnn  # noqa: E402,F401  before any test module loads TensorFlow: its CPU allocator (mrcnn/__init__.py)
# Training feeds cache decoded images (mrcnn.data.image_cache): keep the tests' entries out of ~/.cache,
# one folder per pytest process (pytest-xdist workers inherit the controller's environment, and
# tests count their own cache reads and writes).
if os.environ.get("MRCNN_IMAGE_CACHE_DIR", "") in ("", os.environ.get("ISIC_TESTS_IMAGE_CACHE_DIR")):
    os.environ["MRCNN_IMAGE_CACHE_DIR"] = tempfile.mkdtemp(prefix="isic-test-image-cache-")
    os.environ["ISIC_TESTS_IMAGE_CACHE_DIR"] = os.environ["MRCNN_IMAGE_CACHE_DIR"]
    atexit.register(shutil.rmtree, os.environ["MRCNN_IMAGE_CACHE_DIR"], True)


def _shared_path(*parts):
    path = SHARED.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing: CI must have ../shared beside the checkout")
        pytest.skip(f"{path} is absent (outside CI)")
    return path


@pytest.fixture(scope="session")
def shared_dir():
    """../shared (the read-only data and references beside the checkout)."""
    return _shared_path()


@pytest.fixture(scope="session")
def isic_sample():
    """../shared/isic2018-sample: a few real ISIC 2018 images in the official layout."""
    return _shared_path("isic2018-sample")


@pytest.fixture(scope="session")
def ham10000_seg():
    """../shared/ham10000-seg: 107 real HAM10000 images with masks, Task 1 layout."""
    return _shared_path("ham10000-seg")


@pytest.fixture(scope="session")
def mrcnn_ref():
    """../shared/mrcnn-ref: Matterport weight layouts, weight writers, reference detections."""
    return _shared_path("mrcnn-ref")

