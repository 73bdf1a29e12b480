"""One Task 3 row per image from the whole image (issue 24 item 2): detections combined by score,
the most confident proposal when nothing is detected, never the undecided uniform row from a model
with an opinion; detect() returns that proposal's probabilities; the TF twin agrees."""
import numpy as np
import pytest
import tensorflow as tf

from isic import layout
from isic.outputs import deliverables
from mrcnn.modeling.detection import best_proposal_logits_graph
from tests.helpers import tiny_task_config

NUM_CLASSES = 1 + len(layout.DIAGNOSES)


def softmax_rows(rng, n):
    logits = rng.normal(size=(n, NUM_CLASSES)) * 2
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def test_best_proposal_skips_padding_breaks_ties_low_and_is_zero_without_proposals():
    logits = np.zeros((2, 4, NUM_CLASSES), np.float32)
    logits[0, 0] = [2, 1, 0, 0, 0, 0, 0, 0]         # foreground log-probability about -1.5
    logits[0, 1] = [0, 0, 0, 3, 0, 0, 0, 0]         # the best real one (about -0.1)
    logits[0, 2] = [0, 0, 0, 0, 0, 3, 0, 0]         # a tie with row 1: row 1 wins
    logits[0, 3] = [0, 0, 0, 0, 0, 0, 0, 9]         # the most confident, but a padding row
    rois = np.zeros((2, 4, 4), np.float32)
    rois[0, :3] = [0.1, 0.1, 0.5, 0.5]
    logits[1] = logits[0]                           # image 1: padding only
    best = best_proposal_logits_graph(tf.constant(rois), tf.constant(logits)).numpy()  # [2, NUM_CLASSES]
    np.testing.assert_array_equal(best[0], logits[0, 1])
    np.testing.assert_array_equal(best[1], 0)
    # background-saturated logits (float32 softmax gives exactly 0 foreground) still rank
    sure = np.array([[[200, 1, 3, 2, 0, 0, 0, 0]]], np.float32)
    (row,) = best_proposal_logits_graph(tf.constant(rois[:1, :1]), tf.constant(sure)).numpy()
    assert tf.nn.softmax(sure[0, 0]).numpy()[1:].max() == 0.0
    result = {"scores": np.zeros(0, np.float32), "class_probs": np.zeros((0, NUM_CLASSES), np.float32),
              "best_proposal_logits": row}
    probs, source = deliverables.task3_row(result)
    assert source == "best proposal" and probs.argmax() == 1  # NV (logit 3) over MEL, AKIEC


def test_combined_row_is_the_score_weighted_mean_without_background():
    probs = np.array([[0.1, 0.6, 0.3, 0, 0, 0, 0, 0],
                      [0.5, 0.0, 0.5, 0, 0, 0, 0, 0]], np.float32)
    result = {"scores": np.array([0.6, 0.5], np.float32), "class_probs": probs,
              "best_proposal_logits": np.eye(NUM_CLASSES, dtype=np.float32)[7] * 5}
    row, source = deliverables.task3_row(result)
    mean = (0.6 * probs[0, 1:] + 0.5 * probs[1, 1:]) / 1.1
    np.testing.assert_allclose(row, mean / mean.sum(), rtol=1e-6)
    assert source == "detections" and row.argmax() == 1  # MEL: the top detection's NV is outvoted
    top, _ = deliverables.task3_row(result, rule="top_detection")
    np.testing.assert_allclose(top, probs[0, 1:] / probs[0, 1:].sum(), rtol=1e-6)
    # one detection: the combined rule is the old rule
    single = {**result, "scores": result["scores"][:1], "class_probs": probs[:1]}
    np.testing.assert_allclose(deliverables.task3_row(single)[0], top, rtol=1e-12)


def test_nothing_detected_falls_back_on_the_best_proposal_and_says_so():
    best = np.array([4.0, 0.1, 0.2, 1.5, 0.1, 0.2, -1.0, 0.0], np.float32)  # logits
    result = {"rois": np.zeros((0, 4), np.int32), "class_ids": np.zeros((0,), np.int32),
              "scores": np.zeros((0,), np.float32), "masks": np.zeros((4, 4, 0), bool),
              "class_probs": np.zeros((0, NUM_CLASSES), np.float32), "best_proposal_logits": best}
    row, source = deliverables.task3_row(result)
    assert source == "best proposal" and row.argmax() == 2  # BCC (logit 1.5), not a tie
    fg = np.exp(best[1:].astype(np.float64))
    np.testing.assert_allclose(row, fg / fg.sum(), rtol=1e-12)
    summary = deliverables.detections_json(result, ["BG"] + list(layout.DIAGNOSES), "classification")
    assert summary["probability_source"] == "best proposal" and summary["nothing_detected"]
    assert max(summary["probabilities"], key=summary["probabilities"].get) == "BCC"
    # a caller's row (e.g. temperature-scaled) replaces the probabilities and keeps the source
    scaled = deliverables.detections_json(result, ["BG"] + list(layout.DIAGNOSES), "classification",
                                          probabilities=np.full(7, 1 / 7) + np.eye(7)[0] * 0)
    assert scaled["probability_source"] == "best proposal" and scaled["probabilities"]["MEL"] == pytest.approx(1 / 7)
    # without any proposal (zero logits) or from the old rule: the uniform row, source "none"
    for changed, rule in (({"best_proposal_logits": np.zeros(NUM_CLASSES, np.float32)}, "combined"),
                          ({}, "top_detection")):
        row, source = deliverables.task3_row({**result, **changed}, rule=rule)
        np.testing.assert_array_equal(row, deliverables.UNIFORM_TASK3)
        assert source == "none"
    with pytest.raises(ValueError, match="unknown Task 3 rule"):
        deliverables.task3_row(result, rule="max")


@pytest.mark.parametrize("n", [0, 1, 4])
def test_graph_twin_equals_task3_row(n):
    rng = np.random.default_rng(n)
    result = {"scores": rng.uniform(0.05, 1, n).astype(np.float32), "class_probs": softmax_rows(rng, n),
              "best_proposal_logits": rng.normal(size=NUM_CLASSES).astype(np.float32) * 3}
    got = deliverables.task3_row_graph({k: tf.constant(v) for k, v in result.items()}).numpy()
    np.testing.assert_allclose(got, deliverables.task3_row(result)[0], rtol=0, atol=1e-7)


def test_prior_correction_divides_by_the_frequencies():
    rows = np.array([[0.5, 0.5, 0, 0, 0, 0, 0], [0.1, 0.6, 0.1, 0.05, 0.05, 0.05, 0.05]])
    flat = deliverables.prior_corrected(rows, np.ones(7))
    np.testing.assert_allclose(flat, rows, rtol=1e-12)
    prior = np.array([1113, 6705, 514, 327, 1099, 115, 142], float)
    corrected = deliverables.prior_corrected(rows, prior)
    np.testing.assert_allclose(corrected.sum(axis=1), 1.0)
    expected = rows[0] / prior
    np.testing.assert_allclose(corrected[0], expected / expected.sum())
    assert corrected[1].argmax() == 5  # NV's 0.6 is mostly its prior; DF's 0.05 is 58x its prior
    with pytest.raises(ValueError):
        deliverables.prior_corrected(rows, np.ones(6))


def test_detect_returns_the_best_proposal_when_nothing_passes_the_threshold(tmp_path):
    """A tiny random classification model whose classifier is shrunk to unsure (softmax rows far
    below 0.9) with DETECTION_MIN_CONFIDENCE 0.9: no detection, yet the image gets the best
    proposal's row (not uniform)."""
    import keras

    from mrcnn.model import MaskRCNN
    keras.utils.set_random_seed(0)
    config = tiny_task_config("classification", synthetic=True, inference=True, DETECTION_MIN_CONFIDENCE=0.9)
    model = MaskRCNN("inference", config, str(tmp_path))
    logits = model.keras_model.get_layer("mrcnn_class_logits")
    logits.set_weights([w * 1e-3 for w in logits.get_weights()])
    image = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    (result,) = model.detect([image])
    assert len(result["scores"]) == 0
    best = result["best_proposal_logits"]
    assert best.shape == (NUM_CLASSES,) and np.ptp(best) > 0
    row, source = deliverables.task3_row(result)
    assert source == "best proposal" and np.ptp(row) > 0
    fg = np.exp(best[1:].astype(np.float64) - best[1:].max())
    np.testing.assert_allclose(row, fg / fg.sum(), rtol=1e-6)
    keras.backend.clear_session()
