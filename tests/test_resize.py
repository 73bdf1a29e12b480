"""The one resize (mrcnn.data.resize): its two methods, the masks, the TensorFlow copy the
exported graph uses, and that training, detect() and the export all take it from there."""
import numpy as np
import pytest
import tensorflow as tf

from mrcnn.data import feed, molding, resize
from mrcnn.data.dataset import Dataset
from mrcnn.io import saved_model
from tests.helpers import tiny_config


def small_config(**overrides):
    """The tests' tiny network, one image, molded to 128 x 128."""
    return tiny_config(**{"NAME": "t", "IMAGE_MIN_DIM": 128, "IMAGE_MAX_DIM": 128, "IMAGES_PER_GPU": 1, **overrides})


class OneImage(Dataset):
    """One in-memory image with one instance (a block in its middle)."""

    def __init__(self, image):
        super().__init__()
        self.image = image
        self.add_class("t", 1, "lesion")
        self.add_image("t", 0, path=None)
        self.prepare()

    def load_image(self, image_id):
        return self.image

    def load_mask(self, image_id):
        h, w = self.image.shape[:2]
        mask = np.zeros((h, w, 1), bool)
        mask[h // 4:3 * h // 4, w // 4:3 * w // 4] = True
        return mask, np.array([1], np.int32)


def textured(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, shape).astype(np.uint8)


def test_training_detect_and_export_take_their_resize_from_the_one_module():
    assert feed.resize_image is resize.resize_image and feed.resize_mask is resize.resize_mask
    assert molding.resize_image is resize.resize_image
    assert saved_model.resize_bilinear_tf is resize.resize_bilinear_tf
    assert saved_model.resize_scale_tf is resize.resize_scale_tf


@pytest.mark.parametrize("shape", [(300, 411, 3), (90, 120, 3), (40, 200, 3)])
def test_training_detect_and_export_agree_on_one_image_and_method(shape, monkeypatch):
    config = small_config()
    image = textured(shape)
    reference, window, scale, _, _ = resize.resize_image(image, min_dim=128, max_dim=128, mode="square",
                                                         method="bilinear")
    # detect(): molding gives the reference pixels minus the mean.
    molded, metas, windows = molding.mold_inputs([image], config)
    np.testing.assert_array_equal(molded[0], molding.mold_image(reference, config).astype(molded.dtype))
    assert tuple(windows[0]) == window
    # The exported graph: the same window and meta; a grey level may differ where the float
    # result sits on an integer (truncation after float64 arithmetic in another order).
    got, meta, got_window = (t.numpy() for t in saved_model.mold_image_graph(tf.constant(image), config))
    np.testing.assert_array_equal(got_window, window)
    np.testing.assert_allclose(meta, metas[0], rtol=1e-6)
    assert np.abs(got - molded[0]).max() <= 1.0 and (got != molded[0]).mean() < 1e-3
    # Training, given the same method, stores the same pixels.
    monkeypatch.setattr(feed, "TRAINING_RESIZE_METHOD", "bilinear")
    item = feed.resize_for_training(OneImage(image), config, 0)
    np.testing.assert_array_equal(item.image, reference)
    assert item.window == window and item.scale == scale
    # And with its own method ("area") it stores exactly what resize_image gives for "area".
    monkeypatch.setattr(feed, "TRAINING_RESIZE_METHOD", "area")
    item = feed.resize_for_training(OneImage(image), config, 0)
    area, area_window, _, padding, _ = resize.resize_image(image, min_dim=128, max_dim=128, mode="square",
                                                           method="area")
    np.testing.assert_array_equal(item.image, area)
    expected_mask = resize.resize_mask(OneImage(image).load_mask(0)[0], scale, padding)
    np.testing.assert_array_equal(item.mask, expected_mask)


def test_area_shrinks_by_averaging_and_bilinear_aliases():
    # Alternating one-pixel columns halved: area averaging gives their mean everywhere,
    # Matterport's bilinear (no anti-aliasing) samples between them and keeps the contrast
    # only at the zero-padded border.
    stripes = np.tile(np.array([0, 200], np.uint8), (8, 4))[..., None].repeat(3, axis=2)  # [8, 8, 3]
    area = resize.resize_array(stripes, 4, 4, "area")
    np.testing.assert_array_equal(area, np.full((4, 4, 3), 100, np.uint8))
    bilinear = resize.resize_array(stripes, 4, 4, "bilinear")
    assert bilinear.dtype == np.uint8 and bilinear.shape == (4, 4, 3)
    np.testing.assert_array_equal(bilinear[1:3, 1:3], np.full((2, 2, 3), 100, np.uint8))
    with pytest.raises(ValueError, match="unknown resize method 'nearest'"):
        resize.resize_array(stripes, 4, 4, "nearest")


def test_a_strip_never_shrinks_below_one_pixel():
    strip = textured((4000, 3, 3))
    config = small_config(IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=256)
    scale = resize.config_scale(strip.shape, config)
    assert resize.scaled_size(4000, 3, scale) == (256, 1)
    image, window, _, _, _ = resize.resize_image(strip, min_dim=64, max_dim=256, mode="square")
    assert image.shape == (256, 256, 3) and window[2] - window[0] == 256 and window[3] - window[1] == 1
    h, w = resize.scaled_size_tf(4000, 3, resize.resize_scale_tf(4000, 3, config))
    assert (int(h), int(w)) == (256, 1)
    got, _, got_window = (t.numpy() for t in saved_model.mold_image_graph(tf.constant(strip), config))
    np.testing.assert_array_equal(got_window, window)
    with pytest.raises(ValueError, match="empty"):
        resize.resize_image(np.zeros((0, 5, 3), np.uint8), min_dim=64, max_dim=256)


def test_tf_bilinear_equals_numpy_bilinear():
    rng = np.random.default_rng(0)
    for in_shape, out_shape in [((77, 102), (31, 41)), ((20, 30), (57, 85)), ((28, 28), (5, 40))]:
        image = rng.random(in_shape + (3,)) * 255
        np.testing.assert_allclose(resize.resize_bilinear_tf(tf.constant(image), *out_shape).numpy(),
                                   resize.resize(image, out_shape, preserve_range=True), atol=1e-9)


def test_resize_masks_averages_areas_when_shrinking():
    # A 2x2 checkerboard of 2-pixel cells, halved: each output pixel covers one whole cell.
    cells = np.kron(np.array([[1, 0], [0, 1]], bool), np.ones((2, 2), bool))
    small = resize.resize_masks(cells[..., None], 2, 2)
    np.testing.assert_array_equal(small[..., 0], [[True, False], [False, True]])
    # One full row of an 8x8 mask shrunk to 2x2 covers a quarter of each top pixel: gone;
    # of a 4x4 mask, half of each top pixel: kept (inside means >= 0.5).
    line = np.zeros((8, 8, 1), bool)
    line[0] = True
    assert not resize.resize_masks(line, 2, 2).any()
    np.testing.assert_array_equal(resize.resize_masks(line[:4, :4], 2, 2)[..., 0], [[True, True], [False, False]])
    # Enlarging keeps a block where it was, and 600 instances pass OpenCV's channel limit.
    many = np.zeros((4, 4, 600), bool)
    many[:2, :2] = True
    big = resize.resize_masks(many, 8, 8)
    assert big.shape == (8, 8, 600) and big.dtype == bool
    np.testing.assert_array_equal(big[..., 599], np.kron(many[..., 0], np.ones((2, 2), bool)))
    assert resize.resize_masks(np.zeros((4, 4, 0), bool), 2, 2).shape == (2, 2, 0)
    # Shrinking many instances by a non-integer factor (OpenCV's area mode takes 4 at a time).
    blocks = np.zeros((100, 130, 7), bool)
    blocks[:50, :, 3] = True
    small = resize.resize_masks(blocks, 30, 39)
    assert small.shape == (30, 39, 7) and small[:15, :, 3].all() and not small[15:, :, 3].any()
    assert not small[..., [0, 1, 2, 4, 5, 6]].any()
