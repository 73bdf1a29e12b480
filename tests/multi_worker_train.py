"""One worker of a two-process MultiWorkerMirroredStrategy run (TF_CONFIG set by the caller):
trains the synthetic segmentation config (64 px) for 1 epoch of 2 steps through
MaskRCNN.train, then writes its final weights and a summary outside the run folder.
Each worker seeds Keras with its own index, so identical final weights mean the strategy
synchronised them. Usage: multi_worker_train.py DATASET LOGS OUT.npz. Used by tests/test_training.py (PYTHONPATH from tests.helpers.script_env)."""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from isic.modes import run_folders  # noqa: E402
from mrcnn.engine import trainer as training  # noqa: E402
from mrcnn.model import MaskRCNN  # noqa: E402
from tests.helpers import tiny_task_config  # noqa: E402


def main(dataset_dir, logs, out):
    workers, index = training.cluster_workers()
    keras.utils.set_random_seed(index)  # different initial weights on each worker
    # The synthetic segmentation config with the tests' tiny network, 2 steps, no image cache.
    config = tiny_task_config("segmentation", synthetic=True, IMAGES_PER_GPU=1, STEPS_PER_EPOCH=2,
                              VALIDATION_STEPS=1, AUGMENTATION="none", IMAGE_CACHE=False)
    train_set = run_folders.load_dataset("segmentation", dataset_dir, "train", config.SEED)
    val_set = run_folders.load_dataset("segmentation", dataset_dir, "val", config.SEED)
    model = MaskRCNN("training", config, logs)
    strategy = model.keras_model.distribute_strategy
    history = model.train(train_set, val_set, learning_rate=0.01, epochs=1, layers="all", workers=0, verbose=0)
    weights = [keras.ops.convert_to_numpy(v) for v in model.keras_model.weights]
    np.savez(out, *weights)
    print(json.dumps({"workers": workers, "index": index, "chief": training.is_chief(),
                      "replicas": strategy.num_replicas_in_sync, "strategy": type(strategy).__name__,
                      "global_batch": training.global_batch_size(config), "epoch": model.epoch,
                      "loss": history.history["loss"]}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
