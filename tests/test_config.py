"""Config: Matterport defaults and derived values, validation, JSON round trip."""
import json

import numpy as np
import pytest

from mrcnn.config import Config, ConfigError


class TwoClassConfig(Config):
    NAME = "lesion"
    NUM_CLASSES = 2
    IMAGES_PER_GPU = 3
    GPU_COUNT = 2
    IMAGE_MIN_DIM = 512
    IMAGE_MAX_DIM = 512


def test_matterport_defaults():
    c = Config()
    assert c.BACKBONE == "resnet101"
    assert c.BACKBONE_STRIDES == [4, 8, 16, 32, 64]
    assert c.RPN_ANCHOR_SCALES == (32, 64, 128, 256, 512)
    assert c.IMAGE_MIN_DIM == 800 and c.IMAGE_MAX_DIM == 1024
    assert c.MASK_SHAPE == [28, 28] and c.POOL_SIZE == 7 and c.MASK_POOL_SIZE == 14
    assert c.DETECTION_MIN_CONFIDENCE == 0.7 and c.DETECTION_NMS_THRESHOLD == 0.3
    assert c.TRAIN_BN is False and c.GRADIENT_CLIP_NORM == 5.0
    assert c.RPN_CONV_CHANNELS == 512 and c.MASK_HEAD_CHANNELS == 256 and c.TOP_DOWN_PYRAMID_SIZE == 256
    np.testing.assert_allclose(c.MEAN_PIXEL, [123.7, 116.8, 103.9])


def test_derived_values_follow_subclass_attributes():
    c = TwoClassConfig()
    assert c.BATCH_SIZE == 6
    assert list(c.IMAGE_SHAPE) == [512, 512, 3]
    assert c.IMAGE_META_SIZE == 1 + 3 + 3 + 4 + 1 + 2


def test_crop_mode_uses_min_dim_for_image_shape():
    c = Config(IMAGE_RESIZE_MODE="crop", IMAGE_MIN_DIM=256, IMAGE_MAX_DIM=1024)
    assert list(c.IMAGE_SHAPE) == [256, 256, 3]


def test_keyword_overrides_and_unknown_attribute():
    c = TwoClassConfig(NUM_CLASSES=8, DETECTION_MIN_CONFIDENCE=0.5)
    assert c.NUM_CLASSES == 8 and c.IMAGE_META_SIZE == 20
    with pytest.raises(ConfigError, match="NUM_CLASES"):
        Config(NUM_CLASES=3)


@pytest.mark.parametrize("overrides, attr", [
    ({"IMAGE_MAX_DIM": 500, "IMAGE_MIN_DIM": 400}, "IMAGE_MAX_DIM"),
    ({"IMAGE_RESIZE_MODE": "crop", "IMAGE_MIN_DIM": 300}, "IMAGE_MIN_DIM"),
    ({"IMAGE_RESIZE_MODE": "stretch"}, "IMAGE_RESIZE_MODE"),
    ({"NUM_CLASSES": 0}, "NUM_CLASSES"),
    ({"BACKBONE": "vgg16"}, "BACKBONE"),
    ({"DETECTION_MIN_CONFIDENCE": 1.5}, "DETECTION_MIN_CONFIDENCE"),
    ({"LOSS_WEIGHTS": {"rpn_class_loss": 1.0}}, "LOSS_WEIGHTS"),
    ({"MEAN_PIXEL": [1.0, 2.0]}, "MEAN_PIXEL"),
    ({"MIXED_PRECISION": "float8"}, "MIXED_PRECISION"),
    ({"IMAGE_MIN_DIM": 1088}, "IMAGE_MIN_DIM"),
    ({"MASK_POOL_SIZE": 28}, "MASK_SHAPE"),
    ({"RPN_CONV_CHANNELS": 0}, "RPN_CONV_CHANNELS"),
    ({"MASK_HEAD_CHANNELS": 12.5}, "MASK_HEAD_CHANNELS"),
])
def test_invalid_values_name_the_attribute(overrides, attr):
    with pytest.raises(ConfigError) as err:
        Config(**overrides)
    assert f"Config.{attr}=" in str(err.value)
    assert "\n" not in str(err.value)


def test_json_round_trip(tmp_path):
    c = TwoClassConfig(DETECTION_MIN_CONFIDENCE=0.55, MINI_MASK_SHAPE=(64, 64))
    path = tmp_path / "config.json"
    c.save(path)
    data = json.loads(path.read_text())
    assert data["NAME"] == "lesion" and data["NUM_CLASSES"] == 2 and data["BATCH_SIZE"] == 6
    assert data["MEAN_PIXEL"] == [123.7, 116.8, 103.9]
    loaded = TwoClassConfig.load(path)
    assert loaded.to_dict() == c.to_dict()
    assert isinstance(loaded.MEAN_PIXEL, np.ndarray)
    assert loaded.MINI_MASK_SHAPE == (64, 64)
    assert not [p for p in tmp_path.iterdir() if p.name != "config.json"], "temp file left behind"


def test_display_prints_every_value(capsys):
    TwoClassConfig().display()
    out = capsys.readouterr().out
    assert "NUM_CLASSES" in out and "IMAGE_META_SIZE" in out and "BATCH_SIZE" in out


@pytest.mark.parametrize("attr, value, why", [
    ("DETECTION_MIN_CONFIDENCE", "abc", "must be a number in [0, 1]"),
    ("LEARNING_RATE", "abc", "must be a number > 0"),
    ("MEAN_PIXEL", "abc", "must be a list of 3 numbers"),
    ("RPN_ANCHOR_SCALES", 64, "must be a list of 5 positive numbers"),
    ("RPN_ANCHOR_RATIOS", ["a"], "must be a non-empty list of positive numbers"),
    ("BACKBONE_STRIDES", "abc", "must be a list of 5 positive integers"),
    ("SEED", -1, "must be an integer in [0, 2**32 - 1]"),
    ("TRAIN_BN", "maybe", "must be true or false"),
    ("KEEP_EMPTY_IMAGES", 2, "must be true or false"),
    ("IMAGES_PER_GPU", 1.5, "must be an integer >= 1"),
    ("BBOX_STD_DEV", [0.1, 0.1, 0.2], "must be a list of 4 positive numbers"),
    ("LOSS_WEIGHTS", dict.fromkeys(("rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss",
                                    "mrcnn_mask_loss"), "1"), "must map each loss to a number >= 0"),
])
def test_subclass_keyword_and_json_get_the_same_error(attr, value, why, tmp_path):
    """A Python subclass, a keyword override (--set) and a saved config.json are refused alike."""
    subclass = type("Custom", (Config,), {attr: value})
    with pytest.raises(ConfigError) as from_subclass:
        subclass()
    with pytest.raises(ConfigError) as from_keyword:
        Config(**{attr: value})
    data = Config().to_dict()
    data[attr] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as from_json:
        Config.load(path)
    expected = f"Config.{attr}={value!r}: {why}"
    assert str(from_subclass.value).startswith(expected)
    assert str(from_keyword.value) == str(from_subclass.value)
    assert str(from_json.value) == f"{path}: {from_subclass.value}"


def test_booleans_and_numbers_keep_their_types():
    with pytest.raises(ConfigError, match="Config.NUM_CLASSES=True"):
        Config(NUM_CLASSES=True)  # a bool is not a count
    with pytest.raises(ConfigError, match="Config.DETECTION_MIN_CONFIDENCE=nan"):
        Config(DETECTION_MIN_CONFIDENCE=float("nan"))
    c = Config(TRAIN_BN=True, USE_MINI_MASK=False, MEAN_PIXEL=(1, 2, 3), DETECTION_MIN_CONFIDENCE=1)
    assert c.TRAIN_BN is True and c.MEAN_PIXEL.dtype == np.float64


def test_malformed_config_json_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"NAME": "lesion", "BACKB')
    with pytest.raises(ConfigError, match="config.json is not a readable config JSON"):
        Config.load(path)
    path.write_bytes(b'{"NAME": "l\xe9sion"}')
    with pytest.raises(ConfigError, match="config.json is not a readable config JSON"):
        Config.load(path)
