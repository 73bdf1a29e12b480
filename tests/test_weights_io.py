"""Keras-2 HDF5 weights layout: load Matterport-layout files into Keras 3 models, save them back.

The toy model reuses layer names and weight shapes of mrcnn_coco_layout.json (backbone stem,
one ResNet block, FPN, the nested rpn_model, TimeDistributed heads), so files written by
the independent reference writer make_reference_h5.py load into it.
"""
import json
import os
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest
from keras import layers as KL
from keras import ops

from mrcnn.io import weights_h5 as weights_io
from mrcnn.io.weights_h5 import (WeightsFormatError, WeightsMismatchError, layer_names,
                                 load_weights_h5, model_weight_layout, save_weights_h5)

HEADS = ["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"]
NUM_ROIS = 2


class ToyROIAlign(KL.Layer):
    """Stands in for PyramidROIAlign: a weightless custom layer making per-ROI feature maps."""

    def __init__(self, pool_size, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = pool_size

    def call(self, feature_map):
        pooled = ops.image.resize(feature_map, (self.pool_size, self.pool_size))
        # [batch, num_rois, pool, pool, channels]
        return ops.repeat(ops.expand_dims(pooled, 1), NUM_ROIS, axis=1)


def build_rpn_model():
    feature_map = KL.Input((None, None, 256), name="input_rpn_feature_map")
    shared = KL.Conv2D(512, 3, padding="same", activation="relu",
                       name="rpn_conv_shared")(feature_map)
    class_raw = KL.Conv2D(6, 1, name="rpn_class_raw")(shared)
    bbox = KL.Conv2D(12, 1, name="rpn_bbox_pred")(shared)
    return keras.Model(feature_map, [class_raw, bbox], name="rpn_model")


def TD(layer, name):
    return KL.TimeDistributed(layer, name=name)


def build_toy_model(num_classes=81):
    image = KL.Input((32, 32, 3), name="input_image")
    x = KL.ZeroPadding2D(3, name="zero_padding2d_1")(image)
    x = KL.Conv2D(64, 7, strides=2, name="conv1")(x)
    x = KL.BatchNormalization(name="bn_conv1")(x)
    x = KL.Activation("relu", name="activation_1")(x)
    c1 = KL.MaxPooling2D(3, strides=2, padding="same", name="max_pooling2d_1")(x)
    x = KL.Conv2D(64, 1, name="res2a_branch2a")(c1)
    x = KL.BatchNormalization(name="bn2a_branch2a")(x)
    x = KL.Activation("relu", name="activation_2")(x)
    x = KL.Conv2D(64, 3, padding="same", name="res2a_branch2b")(x)
    x = KL.BatchNormalization(name="bn2a_branch2b")(x)
    x = KL.Activation("relu", name="activation_3")(x)
    x = KL.Conv2D(256, 1, name="res2a_branch2c")(x)
    shortcut = KL.Conv2D(256, 1, name="res2a_branch1")(c1)
    x = KL.BatchNormalization(name="bn2a_branch2c")(x)
    shortcut = KL.BatchNormalization(name="bn2a_branch1")(shortcut)
    x = KL.Add(name="add_1")([x, shortcut])
    c2 = KL.Activation("relu", name="res2a_out")(x)
    p2 = KL.Conv2D(256, 1, name="fpn_c2p2")(c2)
    p2 = KL.Conv2D(256, 3, padding="same", name="fpn_p2")(p2)
    rpn_class_raw, rpn_bbox = build_rpn_model()(p2)

    rois = ToyROIAlign(7, name="roi_align_classifier")(p2)
    x = TD(KL.Conv2D(1024, 7), "mrcnn_class_conv1")(rois)
    x = TD(KL.BatchNormalization(), "mrcnn_class_bn1")(x)
    x = KL.Activation("relu", name="activation_72")(x)
    x = TD(KL.Conv2D(1024, 1), "mrcnn_class_conv2")(x)
    x = TD(KL.BatchNormalization(), "mrcnn_class_bn2")(x)
    x = KL.Activation("relu", name="activation_73")(x)
    shared = KL.Lambda(lambda t: ops.squeeze(ops.squeeze(t, 3), 2), name="pool_squeeze")(x)
    logits = TD(KL.Dense(num_classes), "mrcnn_class_logits")(shared)
    probs = KL.Activation("softmax", name="mrcnn_class")(logits)
    bbox = TD(KL.Dense(4 * num_classes), "mrcnn_bbox_fc")(shared)
    bbox = KL.Reshape((NUM_ROIS, num_classes, 4), name="mrcnn_bbox")(bbox)

    mrois = ToyROIAlign(14, name="roi_align_mask")(p2)
    m = TD(KL.Conv2D(256, 3, padding="same"), "mrcnn_mask_conv1")(mrois)
    m = TD(KL.BatchNormalization(), "mrcnn_mask_bn1")(m)
    m = KL.Activation("relu", name="activation_71")(m)
    m = TD(KL.Conv2DTranspose(256, 2, strides=2, activation="relu"), "mrcnn_mask_deconv")(m)
    m = TD(KL.Conv2D(num_classes, 1, activation="sigmoid"), "mrcnn_mask")(m)
    return keras.Model(image, [rpn_class_raw, rpn_bbox, probs, bbox, m], name="mask_rcnn")


def snapshot(model):
    return [np.array(v) for v in model.weights]


def randomize(model, seed):
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(rng.standard_normal(tuple(v.shape)).astype(np.float32))


def write_reference(mrcnn_ref, out, names, *extra):
    cmd = [sys.executable, str(mrcnn_ref / "make_reference_h5.py"),
           str(mrcnn_ref / "mrcnn_coco_layout.json"), str(out), "--layers", *names, *extra]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def coco_layout(mrcnn_ref):
    return json.loads((mrcnn_ref / "mrcnn_coco_layout.json").read_text())


@pytest.fixture(scope="module")
def toy_names():
    return layer_names(build_toy_model(81))


@pytest.fixture(scope="module")
def ref_file(mrcnn_ref, toy_names, tmp_path_factory):
    """Reference-writer file holding exactly the toy model's layers (81 classes)."""
    return write_reference(mrcnn_ref, tmp_path_factory.mktemp("ref") / "toy_ref.h5", toy_names)


def file_value(f, layer, weight):
    return f[layer][weight][()]


def test_layout_names_and_shapes_match_matterport_file_layout(coco_layout, toy_names):
    model = build_toy_model(81)
    assert layer_names(model) == toy_names
    assert {"input_image", "zero_padding2d_1", "add_1", "pool_squeeze", "mrcnn_bbox"} <= set(
        toy_names)
    expected = {entry["name"]: entry for entry in coco_layout["layers"]}
    layout = model_weight_layout(model)
    assert [e["name"] for e in layout] == [n for n in toy_names if n in expected]
    for entry in layout:
        assert entry == {"name": entry["name"], "weights": expected[entry["name"]]["weights"]}
    rpn = next(e for e in layout if e["name"] == "rpn_model")
    assert [w["name"] for w in rpn["weights"]][0] == "rpn_conv_shared/kernel:0"


def test_layout_trainable_is_variable_kind_not_freeze_state():
    model = build_toy_model(81)
    model.get_layer("bn_conv1").trainable = False
    model.get_layer("mrcnn_class_bn1").trainable = False
    layout = {e["name"]: e for e in model_weight_layout(model)}
    for name in ("bn_conv1", "mrcnn_class_bn1"):
        weights = layout[name]["weights"]
        assert [w["name"].split("/")[-1] for w in weights] == [
            "gamma:0", "beta:0", "moving_mean:0", "moving_variance:0"]
        assert [w["trainable"] for w in weights] == [True, True, False, False]


def test_load_reference_subset_bit_exact(ref_file):
    model = build_toy_model(81)
    report = load_weights_h5(model, ref_file, by_name=True)
    weighted = [e["name"] for e in model_weight_layout(model)]
    assert sorted(report.loaded) == sorted(weighted) and len(weighted) == 23
    assert report.missing_in_file == [] and report.unused_in_file == []
    with h5py.File(ref_file, "r") as f:
        n_checked = 0
        for entry in model_weight_layout(model):
            layer = model.get_layer(entry["name"])
            values = [np.array(v) for v in layer.weights]
            file_values = [file_value(f, entry["name"], w["name"]) for w in entry["weights"]]
            assert len(values) == len(file_values)
            for got, want in zip(values, file_values):
                assert got.dtype == np.float32 and np.array_equal(got, want)
                n_checked += 1
        assert n_checked == report.num_weights
        # Spot checks through Keras attributes, independent of the Keras-2 naming code.
        rpn = model.get_layer("rpn_model")
        assert np.array_equal(np.array(rpn.get_layer("rpn_class_raw").kernel),
                              file_value(f, "rpn_model", "rpn_class_raw/kernel:0"))
        assert np.array_equal(np.array(rpn.get_layer("rpn_bbox_pred").bias),
                              file_value(f, "rpn_model", "rpn_bbox_pred/bias:0"))
        bn = model.get_layer("mrcnn_class_bn1").layer
        assert np.array_equal(np.array(bn.moving_variance),
                              file_value(f, "mrcnn_class_bn1", "mrcnn_class_bn1/moving_variance:0"))
        assert np.array_equal(np.array(model.get_layer("bn_conv1").moving_mean),
                              file_value(f, "bn_conv1", "bn_conv1/moving_mean:0"))
        assert np.array_equal(np.array(model.get_layer("mrcnn_mask_deconv").layer.kernel),
                              file_value(f, "mrcnn_mask_deconv", "mrcnn_mask_deconv/kernel:0"))


def test_load_agrees_with_keras_legacy_loader(ref_file):
    ours = build_toy_model(81)
    load_weights_h5(ours, ref_file)
    theirs = build_toy_model(81)
    theirs.load_weights(str(ref_file), by_name=True)
    for a, b in zip(ours.weights, theirs.weights):
        assert np.array_equal(np.array(a), np.array(b)), a.path


def test_other_class_count_loads_with_heads_excluded(ref_file):
    model = build_toy_model(2)
    before = {v.path: np.array(v) for v in model.weights}
    report = load_weights_h5(model, ref_file, exclude=HEADS)
    assert set(report.excluded) == set(HEADS)
    assert not set(report.loaded) & set(HEADS)
    head_kernel = model.get_layer("mrcnn_class_logits").layer.kernel
    assert tuple(head_kernel.shape) == (1024, 2)
    changed = 0
    with h5py.File(ref_file, "r") as f:
        for entry in model_weight_layout(model):
            layer = model.get_layer(entry["name"])
            for v, w in zip(layer.weights, entry["weights"]):
                if entry["name"] in HEADS:
                    assert np.array_equal(np.array(v), before[v.path]), v.path
                else:
                    assert np.array_equal(np.array(v), file_value(f, entry["name"], w["name"]))
                    changed += not np.array_equal(np.array(v), before[v.path])
    assert changed > 0


def test_other_class_count_without_exclude_raises_and_changes_nothing(ref_file):
    model = build_toy_model(2)
    before = snapshot(model)
    with pytest.raises(WeightsMismatchError) as info:
        load_weights_h5(model, ref_file)
    message = str(info.value)
    assert "\n" not in message
    assert "mrcnn_class_logits" in message or "mrcnn_bbox_fc" in message
    assert "exclude=" in message and "(1024, 324)" in message
    assert set(info.value.mismatched_layers) == {"mrcnn_class_logits", "mrcnn_bbox_fc",
                                                 "mrcnn_mask"}
    for got, want in zip(snapshot(model), before):
        assert np.array_equal(got, want)


def test_skip_mismatch_skips_whole_layers(ref_file):
    model = build_toy_model(2)
    before = model.get_layer("mrcnn_mask").layer.bias.numpy().copy()
    report = load_weights_h5(model, ref_file, skip_mismatch=True)
    assert set(report.skipped_mismatch) == {"mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_mask"}
    assert np.array_equal(model.get_layer("mrcnn_mask").layer.bias.numpy(), before)
    assert "rpn_model" in report.loaded


def test_by_name_reports_missing_and_unused(mrcnn_ref, tmp_path):
    kept = ["conv1", "bn_conv1", "rpn_model", "res2b_branch2a", "activation_1"]
    path = write_reference(mrcnn_ref, tmp_path / "partial.h5", kept)
    model = build_toy_model(81)
    fpn_before = np.array(model.get_layer("fpn_p2").kernel)
    report = load_weights_h5(model, path)
    assert report.loaded == ["conv1", "bn_conv1", "rpn_model"]
    assert report.unused_in_file == ["res2b_branch2a"]
    assert "fpn_p2" in report.missing_in_file and "mrcnn_mask" in report.missing_in_file
    assert "conv1" not in report.missing_in_file and "activation_1" not in report.missing_in_file
    assert np.array_equal(np.array(model.get_layer("fpn_p2").kernel), fpn_before)


def test_save_then_load_round_trips_bit_exact(tmp_path):
    source = build_toy_model(81)
    randomize(source, seed=3)
    path = tmp_path / "ckpt.h5"
    save_weights_h5(source, path)
    target = build_toy_model(81)
    report = load_weights_h5(target, path)
    assert report.missing_in_file == [] and report.unused_in_file == []
    for a, b in zip(source.weights, target.weights):
        assert np.array_equal(np.array(a), np.array(b)), a.path
    # Keras 3's own Keras-2 (legacy h5) loader reads our file the same way.
    legacy = build_toy_model(81)
    legacy.load_weights(str(path), by_name=True)
    for a, b in zip(source.weights, legacy.weights):
        assert np.array_equal(np.array(a), np.array(b)), a.path
    # Topological (by_name=False) load pairs the same layers.
    ordered = build_toy_model(81)
    load_weights_h5(ordered, path, by_name=False)
    for a, b in zip(source.weights, ordered.weights):
        assert np.array_equal(np.array(a), np.array(b)), a.path


def test_by_name_false_needs_same_weighted_layer_count(mrcnn_ref, tmp_path):
    path = write_reference(mrcnn_ref, tmp_path / "two.h5", ["conv1", "bn_conv1"])
    with pytest.raises(WeightsMismatchError, match="by_name=True"):
        load_weights_h5(build_toy_model(81), path, by_name=False)


def _structure(path):
    """Everything a Keras-2 loader looks at, with attr types, but no values."""
    out = {}
    with h5py.File(path, "r") as f:
        out["/"] = {k: (type(v).__name__, getattr(v, "dtype", None).kind
                        if hasattr(v, "dtype") else None) for k, v in f.attrs.items()}
        out["layer_names"] = [x.decode() for x in f.attrs["layer_names"]]

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = ("dataset", obj.dtype.str, obj.shape)
            else:
                attrs = {}
                for k, v in obj.attrs.items():
                    attrs[k] = (v.dtype.str if v.dtype.kind != "S" else "S", v.shape)
                    if v.dtype.kind == "S":
                        attrs[k + ":values"] = [x.decode() for x in v]
                out[name] = ("group", attrs)
        f.visititems(visit)
    return out


def test_saved_file_structure_matches_reference_writer(ref_file, tmp_path):
    model = build_toy_model(81)
    load_weights_h5(model, ref_file)
    ours = tmp_path / "ours.h5"
    save_weights_h5(model, ours)
    got, want = _structure(ours), _structure(ref_file)
    assert sorted(got["layer_names"]) == sorted(want["layer_names"])
    got.pop("layer_names"), want.pop("layer_names")
    assert got == want
    with h5py.File(ours, "r") as f, h5py.File(ref_file, "r") as r:
        assert f.attrs["layer_names"].dtype.kind == "S"
        assert f.attrs["backend"] == b"tensorflow" and f.attrs["keras_version"] == b"2.0.8"
        assert isinstance(f.attrs["backend"], bytes)
        empty = f["activation_1"].attrs["weight_names"]
        assert empty.dtype == np.float64 and empty.shape == (0,)
        n = 0

        def same(name, obj):
            nonlocal n
            if isinstance(obj, h5py.Dataset):
                assert np.array_equal(obj[()], r[name][()]), name
                n += 1
        f.visititems(same)
        assert n == sum(len(e["weights"]) for e in model_weight_layout(model))


def test_atomic_save_leaves_no_temp_and_failure_keeps_old_file(tmp_path, monkeypatch):
    model = build_toy_model(2)
    path = tmp_path / "ckpt.h5"
    save_weights_h5(model, path)
    assert os.listdir(tmp_path) == ["ckpt.h5"]
    old_bytes = path.read_bytes()

    real_value = weights_io._variable_value
    calls = {"n": 0}

    def failing_value(variable):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("simulated disk failure")
        return real_value(variable)

    monkeypatch.setattr(weights_io, "_variable_value", failing_value)
    randomize(model, seed=1)
    with pytest.raises(OSError, match="simulated"):
        save_weights_h5(model, path)
    assert calls["n"] == 5
    assert os.listdir(tmp_path) == ["ckpt.h5"]
    assert path.read_bytes() == old_bytes


def test_non_keras2_files_raise_format_error(tmp_path):
    model = build_toy_model(2)
    keras3 = tmp_path / "model.weights.h5"
    model.save_weights(str(keras3))
    with pytest.raises(WeightsFormatError, match="layer_names.*Keras 3"):
        load_weights_h5(model, keras3)
    text = tmp_path / "notes.h5"
    text.write_text("not weights\n")
    with pytest.raises(WeightsFormatError, match="not an HDF5 file"):
        load_weights_h5(model, text)
    with pytest.raises(FileNotFoundError):
        load_weights_h5(model, tmp_path / "absent.h5")


def test_model_weights_wrapper_group_is_accepted(mrcnn_ref, toy_names, tmp_path):
    path = write_reference(mrcnn_ref, tmp_path / "full_model.h5", toy_names,
                           "--model-weights-group")
    model = build_toy_model(81)
    report = load_weights_h5(model, path)
    assert report.missing_in_file == []
    with h5py.File(path, "r") as f:
        assert "layer_names" not in f.attrs
        want = file_value(f["model_weights"], "rpn_model", "rpn_conv_shared/kernel:0")
    got = np.array(model.get_layer("rpn_model").get_layer("rpn_conv_shared").kernel)
    assert np.array_equal(got, want)


def test_chunked_name_attrs_and_renamed_weights_load_by_position(tmp_path):
    """Keras 2.2+ splits long name lists into attrs layer_names0, layer_names1, ...; files from
    other ports may name weights differently (here 'conv2d_7/...'), paired by position then."""
    image = KL.Input((8, 8, 3), name="input_image")
    x = KL.Conv2D(4, 3, name="conv1")(image)
    keras_bn = KL.BatchNormalization(name="bn_conv1")
    model = keras.Model(image, keras_bn(x))
    rng = np.random.default_rng(0)
    values = {"conv1": [rng.random((3, 3, 3, 4), dtype=np.float32),
                        rng.random(4, dtype=np.float32)],
              "bn_conv1": [rng.random(4, dtype=np.float32) for _ in range(4)]}
    names = {"conv1": ["conv2d_7/kernel:0", "conv2d_7/bias:0"],
             "bn_conv1": ["batch_normalization_3/%s:0" % n
                          for n in ("gamma", "beta", "moving_mean", "moving_variance")]}
    path = tmp_path / "chunked.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names0"] = np.array([b"input_image", b"conv1"])
        f.attrs["layer_names1"] = np.array([b"bn_conv1"])
        f.create_group("input_image").attrs["weight_names"] = np.zeros((0,))
        for lname in ("conv1", "bn_conv1"):
            g = f.create_group(lname)
            g.attrs["weight_names"] = np.array([n.encode() for n in names[lname]])
            for wname, value in zip(names[lname], values[lname]):
                g.create_dataset(wname, data=value)
    report = load_weights_h5(model, path)
    assert report.loaded == ["conv1", "bn_conv1"]
    assert np.array_equal(np.array(model.get_layer("conv1").kernel), values["conv1"][0])
    assert np.array_equal(np.array(keras_bn.moving_mean), values["bn_conv1"][2])
    assert np.array_equal(np.array(keras_bn.moving_variance), values["bn_conv1"][3])
