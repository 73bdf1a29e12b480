"""The ROI heads' dense-as-convolution layers computed as matrix products: same outputs and
gradients as the convolution ops on a fixed batch, same weights files; and the mask loss
computed from float32 logits gives the same value under mixed precision as in float32."""
import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers as KL

from mrcnn.modeling import heads, layers
from mrcnn.io import weights_h5 as weights_io
from mrcnn.modeling.losses import mrcnn_mask_loss_graph
from mrcnn.model import MaskRCNN
from tests.helpers import tiny_config

RTOL = 1e-5
NUM_CLASSES = 3
ROIS = 6


def head_model(pool=7, mask_pool=6, channels=16, fc=32):
    """Both heads on fixed inputs: rois, image_meta and four feature maps."""
    rois = KL.Input((ROIS, 4), name="rois")
    meta = KL.Input((12 + NUM_CLASSES,), name="meta")
    maps = [KL.Input((32 // 2 ** i, 32 // 2 ** i, channels), name=f"p{i + 2}") for i in range(4)]
    _logits, probs, bbox = heads.fpn_classifier_graph(rois, maps, meta, pool, NUM_CLASSES, train_bn=False,
                                                      fc_layers_size=fc)
    masks, mask_logits = heads.build_fpn_mask_graph(rois, maps, meta, mask_pool, NUM_CLASSES, train_bn=False,
                                                    return_logits=True)
    return keras.Model([rois, meta] + maps, [probs, bbox, masks, mask_logits])


def head_inputs(channels=16, scale=1.0):
    rng = np.random.default_rng(3)
    y1x1 = rng.uniform(0.0, 0.6, (1, ROIS, 2))
    boxes = np.concatenate([y1x1, y1x1 + rng.uniform(0.1, 0.4, (1, ROIS, 2))], -1).astype(np.float32)
    meta = np.zeros((1, 12 + NUM_CLASSES), np.float32)
    meta[0, 4:7] = (512, 512, 3)  # molded image shape: these boxes sit on levels P2-P4
    meta[0, 12:] = 1
    maps = [scale * rng.normal(size=(1, 32 // 2 ** i, 32 // 2 ** i, channels)).astype(np.float32) for i in range(4)]
    return [tf.constant(boxes), tf.constant(meta)] + [tf.constant(m) for m in maps]


def outputs_and_gradients(model, inputs):
    """(outputs, gradients of a fixed scalar w.r.t. every weight and every feature map)."""
    with tf.GradientTape() as tape:
        tape.watch(inputs[2:])
        outputs = model(inputs, training=False)
        weights = [tf.constant(np.random.default_rng(i).normal(size=o.shape), tf.float32)
                   for i, o in enumerate(outputs)]
        scalar = tf.add_n([tf.reduce_sum(o * w) for o, w in zip(outputs, weights)])
    grads = tape.gradient(scalar, model.trainable_weights + inputs[2:])
    return [o.numpy() for o in outputs], [g.numpy() for g in grads]


def assert_close(got, want):
    scale = max(float(np.max(np.abs(want))), 1e-12)
    assert np.max(np.abs(got - want)) <= RTOL * scale


def test_matmul_and_convolution_paths_agree_on_outputs_and_gradients():
    keras.utils.set_random_seed(0)
    model = head_model()
    inputs = head_inputs()
    fast_out, fast_grads = outputs_and_gradients(model, inputs)
    with heads.reference_convolutions():
        ref_out, ref_grads = outputs_and_gradients(model, inputs)
    assert len(fast_grads) == len(model.trainable_weights) + 4
    for i, (got, want) in enumerate(zip(fast_out + fast_grads, ref_out + ref_grads)):
        assert got.shape == want.shape
        assert_close(got, want)
    # every output and weight gradient is non-zero; feature maps are only reached on the
    # pyramid levels these boxes map to
    assert all(np.max(np.abs(a)) > 0 for a in ref_out + ref_grads[:-4])
    assert sum(np.max(np.abs(a)) > 0 for a in ref_grads[-4:]) >= 2
    # the two paths really are different ops
    names = {op.type for op in tf.function(lambda x: model(x)).get_concrete_function(
        [tf.TensorSpec(t.shape, t.dtype) for t in inputs]).graph.get_operations()}
    assert "MatMul" in names


def test_head_layers_keep_conv2d_variables_and_outputs():
    """mrcnn_class_conv1 (7x7 valid) and conv2 (1x1) equal Keras' own Conv2D with the same weights."""
    rng = np.random.default_rng(1)
    for kernel, shape in (((7, 7), (5, 7, 7, 8)), ((1, 1), (5, 1, 1, 8))):
        fast = heads.MatmulConv2D(4, kernel, padding="valid", name="fast")
        plain = KL.Conv2D(4, kernel, padding="valid", name="plain")
        x = tf.constant(rng.normal(size=shape), tf.float32)
        fast.build(x.shape)
        plain.build(x.shape)
        assert [(w.name, tuple(w.shape)) for w in fast.weights] == [(w.name, tuple(w.shape)) for w in plain.weights]
        plain.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in plain.weights])
        fast.set_weights(plain.get_weights())
        assert_close(fast(x).numpy(), plain(x).numpy())


def small_config(**overrides):
    """The tests' tiny network with NUM_CLASSES classes, one image and narrower heads."""
    return tiny_config(**{"NAME": "matmulheads", "NUM_CLASSES": NUM_CLASSES, "IMAGES_PER_GPU": 1,
                          "TOP_DOWN_PYRAMID_SIZE": 32, "FPN_CLASSIF_FC_LAYERS_SIZE": 32, "PRE_NMS_LIMIT": 200,
                          **overrides})


def test_weights_files_unchanged_against_keras_conv_heads(tmp_path, monkeypatch):
    """A file saved by the matmul-head model loads into a model built with Keras' own Conv2D
    heads (Matterport's layers), by name and by position, and saving that model again writes
    the same layer names, weight names and bit-identical arrays."""
    keras.backend.clear_session()  # Keras' automatic layer names restart, as in a fresh process
    keras.utils.set_random_seed(2)
    fast = MaskRCNN("inference", small_config(), str(tmp_path))
    fast_file = tmp_path / "fast.h5"
    fast.save_weights(str(fast_file))
    monkeypatch.setattr(heads, "MatmulConv2D", KL.Conv2D)
    monkeypatch.setattr(heads, "MaskOutput", layers.TimeDistributed)
    keras.backend.clear_session()
    plain = MaskRCNN("inference", small_config(), str(tmp_path))
    assert type(plain.keras_model.get_layer("mrcnn_class_conv1").layer) is KL.Conv2D
    for by_name in (True, False):
        weights_io.load_weights_h5(plain.keras_model, str(fast_file), by_name=by_name)
        plain_file = tmp_path / f"plain_{by_name}.h5"
        plain.save_weights(str(plain_file))
        with h5py.File(fast_file, "r") as a, h5py.File(plain_file, "r") as b:
            assert list(a.attrs["layer_names"]) == list(b.attrs["layer_names"])
            for lname in a.attrs["layer_names"]:
                names = list(a[lname].attrs["weight_names"])
                assert names == list(b[lname].attrs["weight_names"])
                for w in names:
                    assert np.array_equal(a[lname][w][()], b[lname][w][()])
            assert "mrcnn_class_conv1/kernel:0" in a["mrcnn_class_conv1"].attrs["weight_names"].astype(str)
            assert a["mrcnn_class_conv1"]["mrcnn_class_conv1/kernel:0"].shape == (7, 7, 32, 32)


def mixed_policy():
    """mixed_bfloat16 where this CPU runs it, else mixed_float16."""
    try:
        tf.matmul(tf.ones((2, 2), tf.bfloat16), tf.ones((2, 2), tf.bfloat16)).numpy()
        return "mixed_bfloat16"
    except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError):
        return "mixed_float16"


def mask_head(policy):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        rois = KL.Input((ROIS, 4))
        meta = KL.Input((12 + NUM_CLASSES,))
        maps = [KL.Input((32 // 2 ** i, 32 // 2 ** i, 16)) for i in range(4)]
        masks, logits = heads.build_fpn_mask_graph(rois, maps, meta, 6, NUM_CLASSES, train_bn=False,
                                                   return_logits=True)
        return keras.Model([rois, meta] + maps, [masks, logits])
    finally:
        keras.config.set_dtype_policy(previous)


@pytest.mark.parametrize("policy", [mixed_policy()])
def test_mask_loss_from_logits_same_in_float32_and_mixed_precision(policy):
    keras.utils.set_random_seed(4)
    full = mask_head("float32")
    mixed = mask_head(policy)
    last = full.get_layer("mrcnn_mask").layer
    last.kernel.assign(last.kernel * 4000.0)  # a confident head: most |logits| far above 8
    mixed.set_weights(full.get_weights())
    inputs = head_inputs()
    rng = np.random.default_rng(6)
    targets = tf.constant(rng.integers(0, 2, (1, ROIS, 12, 12)), tf.float32)
    class_ids = tf.constant([[1, 2, 1, 0, 2, 1]], tf.int32)

    def loss_and_logit_grad(model, from_logits=True):
        """(logits, loss, gradient of the loss w.r.t. the logits of the positive ROIs' classes)."""
        _masks, logits = model(inputs, training=False)
        with tf.GradientTape() as tape:
            tape.watch(logits)
            # Matterport's form: the head's own-precision sigmoid, clipped, then logged
            pred = logits if from_logits else tf.cast(tf.sigmoid(tf.cast(logits, model.compute_dtype)), tf.float32)
            loss = mrcnn_mask_loss_graph(targets, class_ids, pred, from_logits=from_logits)
        return logits.numpy(), float(loss), tape.gradient(loss, logits).numpy()

    logits32, loss32, grad32 = loss_and_logit_grad(full)
    logits16, loss16, grad16 = loss_and_logit_grad(mixed)
    masks16 = mixed(inputs)[0]
    assert masks16.dtype == tf.float32 and float(tf.reduce_min(masks16)) >= 0 and float(tf.reduce_max(masks16)) <= 1
    assert np.mean(np.abs(logits32) > 8) > 0.3
    assert loss32 > 1.0
    # bfloat16 keeps 8 significant bits (unit roundoff 2**-9, about 2e-3) and AMX/oneDNN
    # machines compute its matmuls natively: 5e-3 there, 1e-3 for float16.
    tolerance = 5e-3 if "bfloat16" in policy else 1e-3
    assert abs(loss16 - loss32) <= tolerance * loss32
    # Matterport's clip-then-log of the mixed head's probabilities: another loss, and no
    # gradient at all on confidently wrong pixels
    _, clipped, clipped_grad = loss_and_logit_grad(mixed, from_logits=False)
    assert abs(clipped - loss32) > 1e-2 * loss32
    wrong = np.abs(grad32) > 0.5 * np.max(np.abs(grad32))
    assert wrong.sum() > 0 and np.all(np.abs(grad16[wrong]) > 0)
    assert np.mean(clipped_grad[wrong] == 0) > 0.5
