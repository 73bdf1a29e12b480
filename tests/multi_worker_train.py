"""One worker of a two-process MultiWorkerMirroredStrategy run (TF_CONFIG set by the caller):
trains the synthetic segmentation config (64 px) for 1 epoch of 2 steps through
MaskRCNN.train, then writes its final weights and a summary outside the run folder.
Each worker seeds Keras with its own index, so identical final weights mean the strategy
synchronised them. Usage: multi_worker_train.py DATASET LOGS OUT.npz. Used by tests/test_training.py."""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import lesions  # noqa: E402
from isic import runs  # noqa: E402
from mrcnn import training  # noqa: E402
from mrcnn.model import MaskRCNN  # noqa: E402

SETTINGS = {"IMAGE_MIN_DIM": 64, "IMAGE_MAX_DIM": 64, "IMAGES_PER_GPU": 1, "RPN_ANCHOR_SCALES": (8, 16, 32, 64, 128),
            "RPN_TRAIN_ANCHORS_PER_IMAGE": 32, "PRE_NMS_LIMIT": 500, "POST_NMS_ROIS_TRAINING": 100,
            "TRAIN_ROIS_PER_IMAGE": 16, "MAX_GT_INSTANCES": 4, "MINI_MASK_SHAPE": (14, 14),
            "FPN_CLASSIF_FC_LAYERS_SIZE": 64, "TOP_DOWN_PYRAMID_SIZE": 64, "STEPS_PER_EPOCH": 2,
            "VALIDATION_STEPS": 1, "AUGMENTATION": "none", "IMAGE_CACHE": False}


def main(dataset_dir, logs, out):
    workers, index = training.cluster_workers()
    keras.utils.set_random_seed(index)  # different initial weights on each worker
    config = lesions.make_config("segmentation", synthetic=True, overrides=SETTINGS.items())
    train_set = runs.load_dataset("segmentation", dataset_dir, "train", config.SEED)
    val_set = runs.load_dataset("segmentation", dataset_dir, "val", config.SEED)
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
