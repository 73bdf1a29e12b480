"""Class-balanced sampling (issue 24 item 1): repeat factors r(c) = max(1, sqrt(t / f(c))), an
image's the largest of its classes', stochastic rounding per epoch, seeded; the training feed uses
them when Config.CLASS_BALANCING says so, and logs the class counts and sampling rates."""
import logging

import numpy as np
import pytest

from mrcnn import utils
from mrcnn.config import ConfigError
from mrcnn.data import balancing
from mrcnn.data.feed import MaskRCNNSequence
from tests.helpers import tiny_config


def test_repeat_factors_follow_the_formula():
    # 100 images: class 1 in 90, class 2 in 9, class 3 in 1 (that one also holds class 1), one empty
    classes = [[1]] * 89 + [[2]] * 9 + [[1, 3, 3]] + [[]]
    factors, counts, per_class = balancing.repeat_factors(classes, threshold=0.5)
    assert counts == {1: 90, 2: 9, 3: 1}
    assert per_class[1] == 1.0  # above the threshold: never thinned, never repeated
    assert per_class[2] == pytest.approx(np.sqrt(0.5 / 0.09))
    assert per_class[3] == pytest.approx(np.sqrt(0.5 / 0.01))
    assert factors[0] == 1.0 and factors[89] == pytest.approx(per_class[2])
    assert factors[98] == pytest.approx(per_class[3])  # the image's rarest class decides
    assert factors[99] == 1.0  # no instance
    with pytest.raises(ValueError):
        balancing.repeat_factors(classes, threshold=0.0)


def test_stochastic_rounding_is_unbiased_and_an_order_is_a_function_of_seed_and_epoch():
    factors = np.array([1.0, 2.5, 7.07])
    draws = np.array([balancing.epoch_repeats(factors, np.random.default_rng(s)) for s in range(4000)])
    assert set(draws[:, 0]) == {1} and set(draws[:, 1]) == {2, 3} and set(draws[:, 2]) == {7, 8}
    np.testing.assert_allclose(draws.mean(axis=0), factors, atol=0.03)
    ids = np.array([10, 11, 12])
    first = balancing.balanced_order(ids, factors, seed=3, epoch=0)
    np.testing.assert_array_equal(first, balancing.balanced_order(ids, factors, seed=3, epoch=0))
    assert not np.array_equal(first, balancing.balanced_order(ids, factors, seed=3, epoch=1))
    assert (first == 12).sum() in (7, 8) and (first == 10).sum() == 1


class ClassList(utils.Dataset):
    """Images known only by their class ids (the feed's balancing never decodes them)."""

    def __init__(self, classes):
        super().__init__()
        self.add_class("toy", 1, "common")
        self.add_class("toy", 2, "rare")
        for i, c in enumerate(classes):
            self.add_image("toy", i, None, classes=c)
        self.prepare()

    def image_class_ids(self, image_id):
        return self.image_info[image_id]["classes"]


def test_training_feed_repeats_rare_images_and_logs_the_rates(caplog):
    dataset = ClassList([[1]] * 48 + [[2]] * 2)
    config = tiny_config(NUM_CLASSES=3, CLASS_BALANCING="repeat_factor", REPEAT_FACTOR_THRESHOLD=0.5)
    with caplog.at_level(logging.INFO, logger="mrcnn.data.balancing"):
        feed = MaskRCNNSequence(dataset, config, shuffle=True, seed=1)
    rare = np.sqrt(0.5 / 0.04)  # 3.54
    np.testing.assert_allclose(feed.repeat_factors[48:], rare)
    orders = [feed.epoch_order(e) for e in range(200)]
    mean_rare = np.mean([np.isin(o, [48, 49]).sum() for o in orders])
    assert mean_rare == pytest.approx(2 * rare, abs=0.15)
    assert all(np.isin(np.arange(48), o).all() for o in orders[:5])  # every common image still shown
    summary = feed.sampling_summary
    assert summary["rare"]["images"] == 2 and summary["rare"]["share_uniform"] == pytest.approx(0.04)
    assert summary["rare"]["share_balanced"] == pytest.approx(2 * rare / (48 + 2 * rare))
    text = caplog.text
    assert "repeat factor" in text and "rare" in text and "common" in text and "3.54" in text
    # off by default, and never for an unshuffled (validation) feed
    assert MaskRCNNSequence(dataset, tiny_config(NUM_CLASSES=3), seed=1).repeat_factors is None
    assert MaskRCNNSequence(dataset, config, shuffle=False).repeat_factors is None
    plain = MaskRCNNSequence(dataset, tiny_config(NUM_CLASSES=3), seed=1)
    assert sorted(plain.epoch_order(0)) == list(range(50))


def test_config_values_are_checked():
    with pytest.raises(ConfigError, match="CLASS_BALANCING"):
        tiny_config(CLASS_BALANCING="oversample")
    with pytest.raises(ConfigError, match="REPEAT_FACTOR_THRESHOLD"):
        tiny_config(REPEAT_FACTOR_THRESHOLD=0)


def test_isic_datasets_know_their_image_classes(isic_sample):
    from isic.data.datasets import ISICAttributesDataset, ISICClassificationDataset
    task3 = ISICClassificationDataset()
    task3.load_isic(isic_sample, subset="all")
    task3.prepare()
    for image_id in task3.image_ids[:4]:
        assert balancing.image_classes(task3, image_id) == task3.load_mask(image_id)[1].tolist()
    task2 = ISICAttributesDataset()
    task2.load_isic(isic_sample, subset="all")
    task2.prepare()
    for image_id in task2.image_ids:
        assert balancing.image_classes(task2, image_id) == task2.load_mask(image_id)[1].tolist()
