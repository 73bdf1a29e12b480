"""Config.RESIZE_METHOD: one resize for the training feed, detect() and the exported graph.
The exported graph's "area" twin (tf.image.resize "area") agrees with the NumPy/OpenCV
INTER_AREA resize within one grey level."""
import numpy as np
import pytest
import tensorflow as tf

from mrcnn.config import ConfigError
from mrcnn.data import feed, image_cache, molding, resize
from mrcnn.io.saved_model import mold_image_graph
from tests.helpers import tiny_config


def images(h, w, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = 127 + 120 * np.sin(yy / 7.0) * np.cos(xx / 11.0)
    return [rng.integers(0, 256, (h, w, 3)).astype(np.uint8), np.stack([smooth] * 3, -1).astype(np.uint8)]


@pytest.mark.parametrize("shape, out", [((300, 430), (89, 128)), ((256, 256), (128, 128)), ((50, 65), (98, 128))])
def test_area_twin_matches_opencv_within_one_grey_level(shape, out):
    for image in images(*shape):
        expected = resize.resize_array(image, *out, "area").astype(int)
        area = resize.resize_area_tf(tf.constant(image, tf.float64), *out).numpy()
        got = np.floor(np.clip(area, 0, 255) + 0.5).astype(int)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1
        assert np.mean(got != expected) < (0.01 if out[0] < shape[0] else 0.2)  # enlarging: OpenCV's fixed point
        if shape == (256, 256):  # a 2x reduction: bit-exact
            assert np.array_equal(got, expected)


def test_config_picks_one_method_for_feed_and_detect():
    assert (feed.training_resize_method(tiny_config()), molding.inference_resize_method(tiny_config())) == \
        ("area", "bilinear")  # None: the reference's split
    for method in ("area", "bilinear"):
        config = tiny_config(RESIZE_METHOD=method)
        assert feed.training_resize_method(config) == molding.inference_resize_method(config) == method
    with pytest.raises(ConfigError, match=r"^Config.RESIZE_METHOD='nearest': must be one of area, bilinear"):
        tiny_config(RESIZE_METHOD="nearest")


def test_mold_inputs_and_export_graph_use_the_method():
    image = images(150, 200)[1]
    for method in ("area", "bilinear"):
        config = tiny_config(RESIZE_METHOD=method, IMAGES_PER_GPU=1)
        molded, metas, windows = molding.mold_inputs([image], config)
        resized, window = resize.resize_image(image, min_dim=64, max_dim=64, mode="square", method=method)[:2]
        np.testing.assert_array_equal(molded[0], molding.mold_image(resized, config).astype(np.float32))
        graph, meta, graph_window = mold_image_graph(tf.constant(image), config)
        assert np.abs(graph.numpy() - molded[0]).max() <= (1.0 if method == "area" else 0.0)
        np.testing.assert_array_equal(graph_window.numpy(), windows[0])
    area = molding.mold_inputs([image], tiny_config(RESIZE_METHOD="area", IMAGES_PER_GPU=1))[0]
    bilinear = molding.mold_inputs([image], tiny_config(IMAGES_PER_GPU=1))[0]
    assert not np.array_equal(area, bilinear)  # None detects with bilinear


def test_image_cache_names_change_only_for_a_non_area_training_resize(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(b"x")

    class Files:
        def image_cache_sources(self, image_id):
            return [path], "tag"

    names = {m: image_cache.entry_key(Files(), tiny_config(RESIZE_METHOD=m), 0)[0] for m in (None, "area", "bilinear")}
    assert names[None] == names["area"] != names["bilinear"]
