"""The optimised inference path (mask head on surviving detections only) gives the same
detections as the plain path (keras_model's graph, mask head on every slot), and batched
detect() equals one image at a time.

Tolerances: rois and class_ids must be equal; scores within 1e-6 and soft masks within 1e-5
(absolute), which covers the last-bit differences a convolution may show when it runs on a
different number of ROIs; unmolded boolean masks may differ only in pixels whose soft value
sits within that tolerance of the 0.5 threshold, so they are compared by IoU >= 0.999.
"""
import keras
import numpy as np
import pytest

from mrcnn.config import Config, ConfigError
from mrcnn.model import MaskRCNN
from tests.helpers import mask_iou, tiny_config

SIZE = 128
MAX_INSTANCES = 12
SCORE_ATOL = 1e-6
MASK_ATOL = 1e-5


# The tests' tiny network at SIZE px with 3 classes and MAX_INSTANCES detections.
SETTINGS = dict(NAME="speedpaths", NUM_CLASSES=3, IMAGE_MIN_DIM=SIZE, IMAGE_MAX_DIM=SIZE, POST_NMS_ROIS_INFERENCE=100,
                FPN_CLASSIF_FC_LAYERS_SIZE=128, DETECTION_MAX_INSTANCES=MAX_INSTANCES)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(fast, plain): the same seeded weights, DETECT_MASKS_ON_SURVIVORS True / False."""
    logs = str(tmp_path_factory.mktemp("logs"))
    keras.utils.set_random_seed(11)
    fast = MaskRCNN("inference", tiny_config(**SETTINGS), logs)
    plain = MaskRCNN("inference", tiny_config(**SETTINGS, DETECT_MASKS_ON_SURVIVORS=False), logs)
    # Random weights saturate the softmax (every score 1.0); smaller logits spread the scores
    # so that a threshold can leave images with different detection counts.
    logits = fast.keras_model.get_layer("mrcnn_class_logits")
    kernel, bias = logits.get_weights()
    logits.set_weights([kernel * 0.01, bias])
    plain.keras_model.set_weights(fast.keras_model.get_weights())
    return fast, plain


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, size=(SIZE, SIZE, 3)).astype(np.uint8),
            rng.integers(0, 256, size=(96, 160, 3)).astype(np.uint8),
            np.full((SIZE, SIZE, 3), 120, np.uint8)]


def assert_same_results(got, want):
    assert set(got) == set(want)
    np.testing.assert_array_equal(got["rois"], want["rois"])
    np.testing.assert_array_equal(got["class_ids"], want["class_ids"])
    np.testing.assert_allclose(got["scores"], want["scores"], rtol=0, atol=SCORE_ATOL)
    np.testing.assert_allclose(got["class_probs"], want["class_probs"], rtol=0, atol=SCORE_ATOL)
    assert got["masks"].shape == want["masks"].shape
    for i in range(want["masks"].shape[-1]):
        assert mask_iou(got["masks"][..., i], want["masks"][..., i]) >= 0.999, f"mask {i}"


def set_min_confidence(model, value):
    model.keras_model.get_layer("mrcnn_detection").min_confidence = value
    model._predict_fns.clear()  # the layer's attribute is read when the graph is traced


def raw_outputs(model, images):
    molded, metas, _ = model.mold_inputs(images)
    anchors = model.get_anchors(molded.shape[1:])
    return model._predict(molded, metas, np.broadcast_to(anchors, (len(images),) + anchors.shape))


def test_config_option_is_validated():
    assert Config().DETECT_MASKS_ON_SURVIVORS is True
    with pytest.raises(ConfigError, match="DETECT_MASKS_ON_SURVIVORS"):
        Config(DETECT_MASKS_ON_SURVIVORS="yes")


def test_fast_and_plain_raw_outputs_agree_on_surviving_slots(models, images):
    """A batch of two images with different detection counts: detections and class_probs are
    the same arrays; masks agree on every slot that holds a detection of its image, and the
    fast path's slots beyond the batch's largest count are zeros."""
    fast, plain = models
    # Pick the threshold between the two images' scores so they get different counts.
    set_min_confidence(plain, 0.0)
    dets = raw_outputs(plain, images[:2])[0]
    scores = np.sort(dets[:, :, 5].ravel())[::-1]
    threshold = float(scores[MAX_INSTANCES // 2])
    for model in models:
        set_min_confidence(model, threshold)
    fast_out = raw_outputs(fast, images[:2])
    plain_out = raw_outputs(plain, images[:2])
    np.testing.assert_array_equal(fast_out[0], plain_out[0])  # detections
    np.testing.assert_array_equal(fast_out[2], plain_out[2])  # class_probs
    np.testing.assert_array_equal(fast_out[3], plain_out[3])  # best_proposal_logits
    counts = (plain_out[0][:, :, 4] > 0).sum(axis=1)
    assert counts.max() >= 1 and counts[0] != counts[1], counts
    assert counts.max() < MAX_INSTANCES  # so the fast path has padding to skip
    for k, n in enumerate(counts):
        np.testing.assert_allclose(fast_out[1][k, :n], plain_out[1][k, :n], rtol=0, atol=MASK_ATOL)
    assert not fast_out[1][:, counts.max():].any()


def test_fast_and_plain_detect_agree_including_an_image_without_detections(models, images):
    fast, plain = models
    for model in models:
        set_min_confidence(model, 0.0)
    plain_all = plain.detect(images)
    assert all(len(r["class_ids"]) == MAX_INSTANCES for r in plain_all)
    # A threshold that keeps about half of the first image's detections and none of the flat image's.
    scores = plain_all[0]["scores"]
    threshold = float(scores[MAX_INSTANCES // 2 - 1] + scores[MAX_INSTANCES // 2]) / 2
    assert threshold > float(plain_all[2]["scores"].max())
    for model in models:
        set_min_confidence(model, threshold)
    want = plain.detect(images)
    got = fast.detect(images)
    assert len(want[0]["class_ids"]) == MAX_INSTANCES // 2
    assert len(want[2]["class_ids"]) == 0 and want[2]["masks"].shape == (SIZE, SIZE, 0)
    for g, w in zip(got, want):
        assert_same_results(g, w)
    # The same at threshold 0, where every slot holds a detection.
    for model in models:
        set_min_confidence(model, 0.0)
    for g, w in zip(fast.detect(images), plain_all):
        assert_same_results(g, w)


def test_batched_detect_equals_one_image_at_a_time(models, images):
    fast, _ = models
    set_min_confidence(fast, 0.0)
    (first,) = fast.detect(images[:1])
    set_min_confidence(fast, float(first["scores"][MAX_INSTANCES // 2]))
    batched = fast.detect(images)  # a batch of 2 (different counts), then 1 padded
    assert len(batched[0]["class_ids"]) > 0
    assert len({len(r["class_ids"]) for r in batched}) > 1
    for image, want in zip(images, batched):
        (alone,) = fast.detect([image])
        assert_same_results(alone, want)
    assert fast._predict_fns["static"].experimental_get_tracing_count() == 1
