"""PreciseBN (Config.PRECISE_BN_BATCHES): recomputed BatchNorm statistics are the mean of the
per-batch means and of the per-batch (biased) variances of each layer's input, the network
run as in training; the run's last checkpoint carries them."""
import h5py
import keras
import numpy as np
from keras import layers as KL

from mrcnn.engine import precise_bn
from mrcnn.engine.trainer import TrainingFeed
from mrcnn.modeling.layers import BN_EPSILON, BatchNorm, TimeDistributed
from mrcnn.model import MaskRCNN
from tests.helpers import tiny_config
from tests.test_training import BlobDataset


def tiny_bn_model():
    """x [b, 3, 4] -> BatchNorm (trained) -> Dense -> frozen BatchNorm -> per-item BatchNorm (trained)."""
    x = KL.Input((3, 4), name="x")
    a = BatchNorm(train_bn=True, name="bn_a")(x)
    d = KL.Dense(5, use_bias=False, name="dense")(a)
    f = BatchNorm(train_bn=False, name="bn_frozen")(d)
    y = TimeDistributed(BatchNorm(train_bn=True, name="bn_td"), name="bn_td")(f)
    return keras.Model(x, y)


def test_recomputed_statistics_are_the_mean_batch_moments_of_the_activations():
    model = tiny_bn_model()
    rng = np.random.default_rng(1)
    gamma, beta = rng.uniform(0.5, 2, 4).astype(np.float32), rng.normal(0, 1, 4).astype(np.float32)
    a_layer, frozen, td = (model.get_layer(n) for n in ("bn_a", "bn_frozen", "bn_td"))
    a_layer.gamma.assign(gamma)
    a_layer.beta.assign(beta)
    frozen.moving_mean.assign(rng.normal(0, 1, 5).astype(np.float32))
    frozen.moving_variance.assign(rng.uniform(0.5, 2, 5).astype(np.float32))
    frozen_before = [np.array(frozen.moving_mean), np.array(frozen.moving_variance)]
    weights_before = [np.array(w) for w in model.trainable_weights]
    batches = [[(rng.normal(3, 2, (2, 3, 4)) * (k + 1)).astype(np.float32)] for k in range(4)]

    layers = precise_bn.recompute_batch_norm_statistics(model, batches)

    # Independently in NumPy: each batch through the network as training runs it.
    kernel = np.asarray(model.get_layer("dense").kernel, np.float64)
    f_mean, f_var = (np.asarray(v, np.float64) for v in frozen_before)
    a_moments, td_moments = [], []
    for (x,) in batches:
        x = x.astype(np.float64)
        mean, var = x.mean(axis=(0, 1)), x.var(axis=(0, 1))
        a_moments.append((mean, var))
        a = (x - mean) / np.sqrt(var + BN_EPSILON) * gamma + beta
        f = (a @ kernel - f_mean) / np.sqrt(f_var + BN_EPSILON)  # frozen: moving statistics, gamma 1, beta 0
        td_moments.append((f.mean(axis=(0, 1)), f.var(axis=(0, 1))))
    assert layers == 2
    for layer, moments in ((a_layer, a_moments), (td.layer, td_moments)):
        np.testing.assert_allclose(np.asarray(layer.moving_mean), np.mean([m for m, _ in moments], 0), rtol=1e-5,
                                   atol=1e-5)
        np.testing.assert_allclose(np.asarray(layer.moving_variance), np.mean([v for _, v in moments], 0),
                                   rtol=1e-5)
    # Frozen statistics and every weight stay as they were.
    np.testing.assert_array_equal(np.asarray(frozen.moving_mean), frozen_before[0])
    np.testing.assert_array_equal(np.asarray(frozen.moving_variance), frozen_before[1])
    assert all(np.array_equal(b, np.array(w)) for b, w in zip(weights_before, model.trainable_weights))


def bn_statistics(keras_model):
    return {layer.name: (np.array(bn.moving_mean), np.array(bn.moving_variance))
            for layer, bn in precise_bn.trained_batch_norms(keras_model)}


def test_training_writes_the_recomputed_statistics_into_the_last_checkpoint(tmp_path):
    keras.utils.set_random_seed(3)
    config = tiny_config(NORM="bn", PRECISE_BN_BATCHES=3, STEPS_PER_EPOCH=2)
    dataset = BlobDataset(4, config.NUM_CLASSES)
    model = MaskRCNN("training", config, str(tmp_path))
    model.train(dataset, dataset, learning_rate=0.01, epochs=1, layers="all", verbose=0)
    trained = bn_statistics(model.keras_model)
    assert len(trained) > 20

    # The same unaugmented batches (the feed's order of the epoch after the last) again give
    # the backbone the same numbers: the statistics are PreciseBN's, not the moving averages
    # of the training steps.
    feed = TrainingFeed(dataset, config, shuffle=True, augmentation=None, steps=3, workers=1)
    feed.set_epoch(1)
    precise_bn.recompute_batch_norm_statistics(model.keras_model, list(precise_bn.feed_batches(feed, 3)))
    recomputed = bn_statistics(model.keras_model)
    backbone = [name for name in trained if name.startswith("r18_")]  # the heads' ROIs are sampled at random
    assert len(backbone) == 20
    for name in backbone:
        mean, var = trained[name]
        np.testing.assert_allclose(recomputed[name][0], mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(recomputed[name][1], var, rtol=1e-5, atol=1e-6)

    with h5py.File(model.checkpoint_path.format(epoch=1), "r") as f:
        for name, (mean, var) in trained.items():
            np.testing.assert_array_equal(f[name][f"{name}/moving_mean:0"][()], mean)
            np.testing.assert_array_equal(f[name][f"{name}/moving_variance:0"][()], var)
