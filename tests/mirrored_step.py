"""One training step under MirroredStrategy on two logical CPU devices (GPU_COUNT=2), compared
with the update of the mean gradient of the two replica batches, computed by a plain
single-device copy of the model. Run as a script (logical devices must be configured before
TensorFlow initialises them); prints one JSON line. Used by tests/test_training.py (PYTHONPATH from tests.helpers.script_env)."""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from mrcnn.engine import trainer as training  # noqa: E402
from mrcnn.model import MaskRCNN  # noqa: E402
from test_training import BlobDataset  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402

LR = 0.01


def main(logs):
    keras.utils.set_random_seed(0)
    # Momentum 0 and no clipping: the update is exactly -LR * gradient. No random sampling:
    # more RPN training anchors than anchors (1023), and ROI_POSITIVE_RATIO 1 with room for
    # every proposal keeps all positive ROIs and no negatives.
    values = dict(GPU_COUNT=2, IMAGES_PER_GPU=1, LEARNING_MOMENTUM=0.0, GRADIENT_CLIP_NORM=None,
                  RPN_TRAIN_ANCHORS_PER_IMAGE=2048, ROI_POSITIVE_RATIO=1.0, TRAIN_ROIS_PER_IMAGE=100,
                  STEPS_PER_EPOCH=1, VALIDATION_STEPS=1)
    config = tiny_config(**values)
    dataset = BlobDataset(2, config.NUM_CLASSES)  # every batch holds both images
    model = MaskRCNN("training", config, logs)
    replicas = model.keras_model.distribute_strategy.num_replicas_in_sync

    ref_config = tiny_config(**dict(values, GPU_COUNT=1))
    ref = MaskRCNN("training", ref_config, logs)
    ref.keras_model.set_weights(model.keras_model.get_weights())

    train_feed, _ = training.make_feeds(model, dataset, dataset, workers=0)
    batch = train_feed[0][0]  # [2 images, ...]: every batch of the epoch has the same two
    training.compile_model(model, LR, "all")
    training.set_trainable(ref.keras_model, ".*")
    before = [keras.ops.convert_to_numpy(v) for v in model.keras_model.trainable_weights]
    model.keras_model.fit(train_feed, epochs=1, steps_per_epoch=1, verbose=0)
    after = [keras.ops.convert_to_numpy(v) for v in model.keras_model.trainable_weights]

    grads = []
    for i in range(2):
        x = tuple(a[i:i + 1] for a in batch)
        with tf.GradientTape() as tape:
            total, _ = ref.keras_model.compute_losses(x, training=True)
        grads.append([g.numpy() for g in tape.gradient(total, ref.keras_model.trainable_weights)])
    mean = [(a + b) / 2 for a, b in zip(*grads)]
    update = [a - b for a, b in zip(after, before)]

    def max_error(expected):
        return max(float(np.abs(u - (-LR * g)).max()) for u, g in zip(update, expected))

    scale = max(float(np.abs(u).max()) for u in update)
    print(json.dumps({"replicas": replicas, "update_max": scale,
                      "error_vs_mean_gradient": max_error(mean),
                      "error_vs_replica0_gradient": max_error(grads[0]),
                      "error_vs_replica1_gradient": max_error(grads[1]),
                      "error_vs_sum_gradient": max_error([a + b for a, b in zip(*grads)])}))


if __name__ == "__main__":
    main(sys.argv[1])
