"""Config.NORM: Group Normalization under BatchNorm's layer names in the backbone, the FPN
and the ROI heads; GN and BatchNorm checkpoints save and load by name, and a checkpoint of the
other normalisation is refused in one line with nothing loaded."""
import keras
import numpy as np
import pytest

from mrcnn.config import ConfigError
from mrcnn.io.weights_h5 import NormMismatchError
from mrcnn.model import MaskRCNN
from tests.helpers import tiny_config

GN = dict(NORM="gn", GN_GROUPS=8, BOX_HEAD_CONVS=2, IMAGES_PER_GPU=1)


def inner(layer):
    return layer.layer if isinstance(layer, keras.layers.TimeDistributed) else layer


def norm_layers(model):
    return {layer.name: inner(layer) for layer in model.keras_model.layers
            if isinstance(inner(layer), (keras.layers.BatchNormalization, keras.layers.GroupNormalization))}


def test_norm_follows_train_bn_when_unset_and_validates():
    assert tiny_config().norm() == "frozen_bn"
    assert tiny_config(TRAIN_BN=True).norm() == "bn"
    assert tiny_config(NORM="gn", TRAIN_BN=True).norm() == "gn"
    with pytest.raises(ConfigError, match=r"^Config.NORM='group': must be one of frozen_bn, bn, gn"):
        tiny_config(NORM="group")
    with pytest.raises(ConfigError, match=r"Config.GN_GROUPS=48: must divide TOP_DOWN_PYRAMID_SIZE=64"):
        tiny_config(NORM="gn", GN_GROUPS=48)
    tiny_config(GN_GROUPS=48)  # only checked when GN is used
    with pytest.raises(ConfigError, match="BOX_HEAD_CONVS"):
        tiny_config(BOX_HEAD_CONVS=-1)


@pytest.fixture(scope="module")
def gn_model(tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    model = MaskRCNN("inference", tiny_config(**GN), str(logs))
    rng = np.random.default_rng(0)
    for norm in norm_layers(model).values():  # non-trivial gamma/beta, so a round trip shows
        norm.gamma.assign(rng.uniform(0.5, 1.5, norm.gamma.shape).astype(np.float32))
        norm.beta.assign(rng.normal(0, 0.1, norm.beta.shape).astype(np.float32))
    path = logs / "gn.h5"
    model.save_weights(str(path))
    return model, path


def test_gn_replaces_every_norm_under_matterport_names(gn_model):
    model, _ = gn_model
    norms = norm_layers(model)
    assert all(isinstance(n, keras.layers.GroupNormalization) and n.groups == 8 for n in norms.values())
    names = set(norms)
    assert {"r18_bn_conv1", "r18_bn2a_branch2a", "r18_bn5b_branch2b", "mrcnn_class_bn1", "mrcnn_class_bn2",
            "mrcnn_mask_bn1", "mrcnn_mask_bn4", "mrcnn_box_conv1_norm", "mrcnn_box_conv2_norm"} <= names
    assert {f"fpn_{n}_norm" for n in ("c5p5", "c4p4", "c3p3", "c2p2", "p2", "p3", "p4", "p5")} <= names
    assert not any(n.startswith("rpn") for n in names)  # Matterport's RPN has no normalisation
    assert model.keras_model.get_layer("mrcnn_box_conv1").layer.filters == 64  # TOP_DOWN_PYRAMID_SIZE


def test_gn_checkpoint_loads_by_name_bit_exact(gn_model, tmp_path):
    model, path = gn_model
    other = MaskRCNN("training", tiny_config(**dict(GN, IMAGES_PER_GPU=2)), str(tmp_path))
    report = other.load_weights(str(path))
    assert report.skipped_mismatch == [] and report.missing_in_file == []
    for name, norm in norm_layers(model).items():
        loaded = inner(other.keras_model.get_layer(name))
        np.testing.assert_array_equal(np.asarray(loaded.gamma), np.asarray(norm.gamma))
        np.testing.assert_array_equal(np.asarray(loaded.beta), np.asarray(norm.beta))


def test_batchnorm_checkpoint_into_gn_model_is_refused_in_one_line(gn_model, tmp_path):
    model, gn_path = gn_model
    bn_model = MaskRCNN("inference", tiny_config(TRAIN_BN=True, IMAGES_PER_GPU=1), str(tmp_path))
    bn_path = tmp_path / "bn.h5"
    bn_model.save_weights(str(bn_path))
    before = [np.array(w) for w in model.keras_model.weights]
    with pytest.raises(NormMismatchError) as caught:
        model.load_weights(str(bn_path))
    message = str(caught.value)
    assert "\n" not in message and caught.value.layer is None  # lesions.py prints it as it is
    assert "holds BatchNorm layers (r18_bn_conv1 and" in message and "where the model has GroupNorm" in message
    assert "--set NORM=bn" in message and "nothing was loaded" in message
    assert all(np.array_equal(a, np.array(w)) for a, w in zip(before, model.keras_model.weights))

    with pytest.raises(NormMismatchError, match="holds GroupNorm layers .* where the model has BatchNorm.*NORM=gn"):
        bn_model.load_weights(str(gn_path))

    # Excluding every norm layer (what starting them afresh means) loads the rest.
    clashing = caught.value.mismatched_layers
    report = model.load_weights(str(bn_path), exclude=clashing)
    assert "r18_conv1" in report.loaded and "r18_bn_conv1" in report.excluded
