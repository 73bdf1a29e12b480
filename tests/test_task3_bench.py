"""bench/task3_balance.py's table and bench/real_classification.py's Task 3 layout of
../shared/ham10000-seg: the 107 real images load as Task 3 with their HAM10000 masks, and the
lesion-disjoint stratified split validates every diagnosis."""
import collections
import sys

import pytest

from isic import layout
from isic.data.datasets import ISICClassificationDataset
from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import real_classification  # noqa: E402
import task3_balance  # noqa: E402


def metrics(overall, recall):
    return {"isic": {"overall": overall, "per_category": {c: {"sensitivity": 0.0} for c in layout.DIAGNOSES}},
            "task3_calibration": {"per_class_recall": recall, "ece": 0.1}, "num_images": 7,
            "confusion_matrix": {"matrix": [[1 if i == j else 0 for j in range(7)] for i in range(7)]}}


def test_table_has_a_row_per_run_and_the_spread_per_setting():
    recall = dict.fromkeys(layout.DIAGNOSES, 0.5)
    rows = [task3_balance.result_row(metrics(0.6, recall), 1, 61.0, "on"),
            task3_balance.result_row(metrics(0.8, dict(recall, DF=None)), 2, 59.0, "on"),
            task3_balance.result_row(metrics(0.3, recall), 1, 60.0, "off")]
    summary = task3_balance.summarise(rows)
    assert summary["on"]["balanced_accuracy"] == {"min": 0.6, "median": pytest.approx(0.7), "max": 0.8}
    assert summary["on"]["recall"]["DF"] == {"min": 0.5, "median": 0.5, "max": 0.5}  # None skipped
    assert summary["off"]["balanced_accuracy"]["median"] == 0.3
    table = task3_balance.markdown(rows, summary, 1.23, "title")
    lines = table.splitlines()
    assert "| on | 1 | 1 min 01 s | 0.600 |" in table and "| off | **median** |" in table
    assert sum(line.startswith("| on |") for line in lines) == 2 + 3
    assert "1.23 s" in table and "Confusion matrix, balancing off, seed 1" in table
    # without the calibration block the scorer's sensitivities stand in
    plain = metrics(0.5, recall)
    del plain["task3_calibration"]
    assert task3_balance.result_row(plain, 1, 1.0, "on")["recall"]["MEL"] == 0.0


def test_real_task3_layout_loads_and_splits_every_class(ham10000_seg, tmp_path):
    data = real_classification.task3_layout(ham10000_seg, tmp_path / "data")
    assert real_classification.task3_layout(ham10000_seg, tmp_path / "data") == data  # idempotent
    val = ISICClassificationDataset()
    val.load_isic(data, subset="val")
    train = ISICClassificationDataset()
    train.load_isic(data, subset="train")
    assert len(train.image_info) + len(val.image_info) == 107 and not val.mask_fallback_ids
    counts = collections.Counter(info["diagnosis"] for info in val.image_info)
    assert set(counts) == set(layout.DIAGNOSES)  # AKIEC has 6 images, DF and VASC 7
    assert {info["lesion_id"] for info in val.image_info}.isdisjoint({info["lesion_id"] for info in train.image_info})
    assert val.split_class_counts["val"] == dict(sorted(counts.items()))
