"""Trains the tiny network for a few steps with Config.DETERMINISTIC and a given seed, with
augmentation and two feed threads, then writes every weight array (and the logged losses) to
an .npz. Run as a script, one fresh process per training, as two user runs would be; used by
tests/test_determinism.py.

usage: python tests/deterministic_train.py LOGS OUT.npz SEED [KEY=JSON ...]
"""
import json
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from mrcnn.data.augment import default_augmentation  # noqa: E402
from mrcnn.model import MaskRCNN  # noqa: E402
from test_training import BlobDataset, layer_weights  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402


def main(logs, out, seed, *settings):
    overrides = dict(item.split("=", 1) for item in settings)
    overrides = {key: json.loads(value) for key, value in overrides.items()}
    config = tiny_config(**{"DETERMINISTIC": True, "SEED": int(seed), "STEPS_PER_EPOCH": 3, **overrides})
    dataset = BlobDataset(6, config.NUM_CLASSES)
    model = MaskRCNN("training", config, logs)
    history = model.train(dataset, dataset, learning_rate=0.01, epochs=1, layers="all", verbose=0, workers=2,
                          augmentation=default_augmentation("task1", seed=config.SEED))
    arrays = {f"{name}/{i}": value for name, values in layer_weights(model.keras_model).items()
              for i, value in enumerate(values)}
    arrays["history/loss"] = np.asarray(history.history["loss"])
    np.savez(out, **arrays)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(*sys.argv[1:])
