"""Calibration of the Task 3 rows (issue 24 item 3): the temperature fit recovers a known
temperature, ECE follows its definition, temperature scaling lowers ECE of an over-confident
model without moving an argmax, and a run's T round-trips through calibration.json."""
import json

import numpy as np
import pytest
from PIL import Image

from isic.evaluation import calibration


def sampled(rng, n, classes, true_temperature, scale=3.0):
    """Logits and labels drawn from softmax(logits / true_temperature)."""
    logits = rng.normal(size=(n, classes)) * scale
    p = calibration.softmax(logits / true_temperature)
    labels = (rng.random((n, 1)) > p.cumsum(axis=1)).sum(axis=1)
    return logits, np.minimum(labels, classes - 1)


@pytest.mark.parametrize("true_temperature", [0.5, 2.5])
def test_fit_recovers_a_known_temperature(true_temperature):
    logits, labels = sampled(np.random.default_rng(1), 20000, 7, true_temperature)
    fitted = calibration.fit_temperature(logits, labels, from_probabilities=False)
    assert abs(fitted / true_temperature - 1) < 0.05
    # the same from probabilities (log p = logits - a per-row constant)
    from_probs = calibration.fit_temperature(calibration.softmax(logits), labels)
    assert abs(from_probs - fitted) < 1e-3
    # and T is the NLL's minimum: nudging it either way costs
    nll = lambda t: calibration.negative_log_likelihood(logits, labels, t)  # noqa: E731
    assert nll(fitted) < nll(fitted * 1.1) and nll(fitted) < nll(fitted / 1.1)


def test_ece_and_reliability_bins_by_hand():
    # confidences 0.5 (bin 1 of 2: (0, 0.5]) right, 0.9 wrong, 0.8 right, 0.6 right
    probs = np.array([[0.5, 0.5], [0.1, 0.9], [0.8, 0.2], [0.4, 0.6]])
    labels = np.array([0, 0, 0, 1])
    data = calibration.reliability(probs, labels, bins=2)
    assert data["counts"] == [1, 3]
    assert data["accuracy"] == [1.0, pytest.approx(2 / 3)]
    assert data["mean_confidence"] == [0.5, pytest.approx((0.9 + 0.8 + 0.6) / 3)]
    expected = 1 / 4 * abs(1.0 - 0.5) + 3 / 4 * abs(2 / 3 - 2.3 / 3)
    assert calibration.expected_calibration_error(probs, labels, bins=2) == pytest.approx(expected)
    onehot = np.eye(2)[labels]
    assert calibration.expected_calibration_error(probs, onehot, bins=2) == pytest.approx(expected)
    assert calibration.expected_calibration_error(np.zeros((0, 2)), np.zeros(0, int)) == 0.0


def test_temperature_scaling_lowers_ece_of_an_overconfident_model_and_keeps_the_argmax():
    logits, labels = sampled(np.random.default_rng(2), 4000, 7, 3.0)
    overconfident = calibration.softmax(logits)  # the truth is 3x softer
    temperature = calibration.fit_temperature(overconfident[:2000], labels[:2000])
    scaled = calibration.apply_temperature(overconfident[2000:], temperature)
    before = calibration.expected_calibration_error(overconfident[2000:], labels[2000:])
    after = calibration.expected_calibration_error(scaled, labels[2000:])
    assert temperature > 2 and after < before / 3
    np.testing.assert_array_equal(scaled.argmax(axis=1), overconfident[2000:].argmax(axis=1))
    np.testing.assert_allclose(calibration.apply_temperature(overconfident, 1.0), overconfident, atol=1e-9)


def test_per_class_recall():
    probs = np.eye(3)[[0, 1, 1, 2]]
    recall = calibration.per_class_recall(probs, np.array([0, 1, 2, 2]), class_names=["a", "b", "c"])
    assert recall == {"a": 1.0, "b": 1.0, "c": 0.5}
    assert calibration.per_class_recall(probs, np.array([0, 0, 0, 0]), class_names="abc")["b"] is None


def test_run_calibration_round_trip_and_investigation_block(tmp_path):
    logits, labels = sampled(np.random.default_rng(3), 500, 7, 2.0)
    rows = calibration.softmax(logits)
    record = calibration.write_run_calibration(tmp_path, rows, labels, "test rows")
    saved = json.loads((tmp_path / calibration.CALIBRATION_FILE).read_text())
    assert saved == record and saved["num_images"] == 500 and saved["ece_after"] < saved["ece_before"]
    (tmp_path / "mask_rcnn_x_0001.h5").write_bytes(b"")
    assert calibration.run_temperature(tmp_path / "mask_rcnn_x_0001.h5") == pytest.approx(record["temperature"])
    assert calibration.run_temperature(tmp_path / "elsewhere" / "w.h5") is None
    assert calibration.run_temperature("none") is None
    assert calibration.run_temperature(None) is None
    np.testing.assert_array_equal(calibration.calibrated_rows(rows, None), rows)

    block = calibration.investigation_block(np.eye(7)[labels], rows, tmp_path, record["temperature"])
    assert block["ece"] == pytest.approx(record["ece_before"])
    assert block["ece_temperature_scaled"] == pytest.approx(record["ece_after"])
    assert set(block["per_class_recall"]) == {"MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"}
    figure = Image.open(tmp_path / calibration.RELIABILITY_FIGURE)
    assert figure.size[0] > 100 and np.asarray(figure.convert("L")).std() > 0
    text = "\n".join(calibration.report_lines(block))
    assert f"{block['ece']:.4f}" in text and "T = " in text and calibration.RELIABILITY_FIGURE in text
    json.dumps(block)  # JSON-ready for metrics.json


def test_fit_from_the_submission_csv_investigate_wrote(tmp_path):
    from isic import layout
    from isic.outputs import submission
    logits, labels = sampled(np.random.default_rng(4), 300, 7, 2.0)
    rows = calibration.softmax(logits)
    ids = [f"ISIC_{i:07d}" for i in range(300)]
    csv_path = submission.write_task3_csv(tmp_path / "pred.csv", list(zip(ids, rows)))
    diagnoses = {i: layout.DIAGNOSES[k] for i, k in zip(ids, labels)}
    del diagnoses[ids[0]]  # an image without a diagnosis is left out
    record = calibration.fit_run_from_predictions(tmp_path, csv_path, diagnoses, "val rows")
    assert record["num_images"] == 299 and record["fitted_on"] == "val rows"
    assert record["temperature"] == pytest.approx(calibration.fit_temperature(rows[1:], labels[1:]), rel=1e-4)
    with pytest.raises(ValueError, match="diagnosis"):
        calibration.fit_run_from_predictions(tmp_path, csv_path, {}, "none")
