"""Streaming investigate: metrics.json is the same, to the last digit, as the implementation
that kept every image's masks until the end (its output on the same predictions is stored
in tests/data/investigate_fixture.json), and the new provenance fields say what was scored.

The detections come from a deterministic stand-in for the network (dark regions of the
image at three thresholds, with scores and class probabilities from the image's colours),
so the fixture does not depend on TensorFlow's numerics and the test takes seconds.
Regenerate the fixture only on purpose: `python tests/test_investigation_streaming.py --write [SAMPLE_DIR]`.
"""
import json
import math
import pathlib
import sys

import numpy as np
import pytest
from scipy import ndimage

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from isic import investigation, runs  # noqa: E402
from isic.synthetic import generate_dataset  # noqa: E402
from mrcnn import utils  # noqa: E402

FIXTURE = pathlib.Path(__file__).with_name("data") / "investigate_fixture.json"
TASKS = ("segmentation", "attributes", "classification")
NEW_FIELDS = ("image_ids", "mask_sources")  # added with streaming; not in the fixture
QUANTILES = (0.12, 0.25, 0.4)
IMAGES, FIGURES = 5, 2


class StandInConfig:
    TASK1_TTA_FLIPS = False
    TASK1_MASK_REFINEMENT = "fill"


class ContentDetector:
    """A deterministic `detect` from image content: masks of the darkest 12/25/40 % of the
    smoothed image (blobs, not speckle), class ids cycling through the classes, scores and
    class probabilities from the image's mean colour."""

    def __init__(self, num_classes):
        self.num_classes = num_classes
        self.config = StandInConfig()

    def detect(self, images, verbose=0):
        image = images[0]
        gray = image.astype(np.float64).mean(axis=-1)
        gray = ndimage.uniform_filter(gray, size=max(3, min(gray.shape) // 12))
        masks = np.stack([gray <= np.quantile(gray, q) for q in QUANTILES], axis=-1)  # [H, W, 3]
        mean_rgb = image.reshape(-1, 3).mean(axis=0) / 255.0
        base = float(mean_rgb.mean())
        scores = np.array([0.55 + 0.4 * base, 0.3 + 0.5 * mean_rgb[0], 0.2 + 0.3 * mean_rgb[2]], np.float32)
        class_ids = np.array([1 + (k + int(255 * base)) % (self.num_classes - 1) for k in range(3)], np.int32)
        logits = np.outer(np.arange(1, 4), np.cos(np.arange(self.num_classes) * (1 + 3 * mean_rgb[1])))
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        return [{"rois": utils.extract_bboxes(masks), "class_ids": class_ids, "scores": scores,
                 "masks": masks, "class_probs": probs.astype(np.float32)}]


def _sample_dataset(task, root):
    return runs.load_dataset(task, root, "all", 42, limit=IMAGES)


def investigate_report(task, root, out):
    dataset = _sample_dataset(task, root)
    model = ContentDetector(len(dataset.class_names))
    pred_dir, fig_dir = out / "predictions", out / "figures"
    pred_dir.mkdir(parents=True, exist_ok=True)
    fig_dir.mkdir(parents=True, exist_ok=True)
    saved, investigation.FIGURE_IMAGES = investigation.FIGURE_IMAGES, FIGURES  # fewer figures to draw
    try:
        report = investigation.investigate(model, dataset, task, pred_dir, fig_dir)
    finally:
        investigation.FIGURE_IMAGES = saved
    return json.loads(json.dumps(report, default=float))


def _synthetic_root(base):
    root = base / "synthetic"
    if not root.exists():
        generate_dataset(root, count=6, task3_count=6, image_size=(80, 96), seed=11, progress=False)
    return root


def _same(expected, actual, where="metrics"):
    """Exact equality of nested JSON values (NaN equals NaN)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), where
        assert sorted(expected) == sorted(actual), f"{where}: keys {sorted(expected)} != {sorted(actual)}"
        for key in expected:
            _same(expected[key], actual[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(expected) == len(actual), where
        for i, (e, a) in enumerate(zip(expected, actual)):
            _same(e, a, f"{where}[{i}]")
    elif isinstance(expected, float) and math.isnan(expected):
        assert isinstance(actual, float) and math.isnan(actual), f"{where}: {actual} is not NaN"
    else:
        assert expected == actual, f"{where}: {actual!r} != {expected!r}"


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return _synthetic_root(tmp_path_factory.mktemp("stream"))


@pytest.mark.parametrize("source", ["real", "synthetic"])
@pytest.mark.parametrize("task", TASKS)
def test_metrics_json_unchanged_by_streaming(task, source, request, tmp_path):
    root = request.getfixturevalue("isic_sample" if source == "real" else "synthetic_root")
    expected = json.loads(FIXTURE.read_text())[source][task]
    report = investigate_report(task, root, tmp_path)
    assert len(report["image_ids"]) == expected["num_images"] == len(set(report["image_ids"]))
    assert set(report["mask_sources"]) == {"isic", "mask_map", "pooled_box_ap50"}
    assert "network's instance masks" in report["mask_sources"]["mask_map"]
    for field in NEW_FIELDS:
        report.pop(field)
    _same(expected, report)


def test_rerun_with_a_limit_leaves_only_its_own_predictions(synthetic_root, tmp_path, monkeypatch):
    """A second investigate into the same folder with --limit: predictions/ holds exactly the
    images metrics.json lists; a file investigate did not write stays."""
    import argparse

    import lesions
    monkeypatch.setattr(runs, "load_inference_model", lambda config, weights, logs: ContentDetector(2))
    out = tmp_path / "inv"
    config = lesions.make_config("segmentation", inference=True)

    def run(limit):
        args = argparse.Namespace(dataset=str(synthetic_root), weights="none", task="segmentation",
                                  logs=str(tmp_path / "logs"), subset="all", limit=limit, output=str(out))
        assert investigation.run(args, config) == 0
        return json.loads((out / "metrics.json").read_text())

    assert len(run(4)["image_ids"]) == 4
    (out / "predictions" / "notes.txt").write_text("mine")
    report = run(2)
    written = sorted(p.name for p in (out / "predictions").iterdir())
    assert written == sorted([f"{i}_segmentation.png" for i in report["image_ids"]] + ["notes.txt"])
    assert len(report["image_ids"]) == 2 == report["num_images"]
    assert "TASK1_MASK_REFINEMENT='fill'" in report["mask_sources"]["isic"]  # the model's own config


def _write_fixture(sample):
    import tempfile
    fixture = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        roots = {"real": pathlib.Path(sample), "synthetic": _synthetic_root(tmp)}
        for source, root in roots.items():
            fixture[source] = {}
            for task in TASKS:
                report = investigate_report(task, root, tmp / f"{source}_{task}")
                for field in NEW_FIELDS:
                    report.pop(field, None)
                fixture[source][task] = report
    FIXTURE.write_text(json.dumps(fixture, indent=1, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")


if __name__ == "__main__" and "--write" in sys.argv:
    _write_fixture(sys.argv[-1] if len(sys.argv) > 2 else ROOT.parent / "shared" / "isic2018-sample")
