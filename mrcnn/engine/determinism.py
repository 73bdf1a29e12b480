"""Config.DETERMINISTIC (lesions.py --deterministic): two trainings with the same SEED on the
same machine give bit-identical weights.

What varies otherwise: the initial weights (Keras draws them unseeded), the random ops of
the graph (ROI sampling), and the order of TensorFlow's parallel reductions. The data feed
is already a pure function of (seed, epoch, batch index), whatever the worker threads do,
and mrcnn.engine.trainer turns Keras' own batch shuffling off.

One thing a running process cannot change: Python's string-hash seed. The order in which the
graph sums some gradients follows it, so two processes with random hash seeds end a few
float32 ulps apart in the backbone and RPN weights (measured: up to 7e-9 after 6 steps).
PYTHONHASHSEED set before Python starts removes that; `enable` logs a warning without it.
"""
import logging
import os
import sys

log = logging.getLogger(__name__)


def enable(seed):
    """Seed Python, NumPy, TensorFlow and Keras from `seed` and turn on TensorFlow's op
    determinism (process-wide, as TensorFlow allows). Call before the model is built."""
    import keras
    import tensorflow as tf
    keras.utils.set_random_seed(int(seed))
    tf.config.experimental.enable_op_determinism()
    gpus = tf.config.list_physical_devices("GPU")
    log.info("Deterministic training: seed %d, TensorFlow op determinism on%s", seed,
             f" ({len(gpus)} GPU(s))" if gpus else "")
    warning = hash_seed_warning(sys.flags.hash_randomization, os.environ.get("PYTHONHASHSEED"))
    if warning:
        log.warning("%s", warning)
    if gpus:
        log.warning("Deterministic training on GPU: an op without a deterministic GPU kernel stops the first "
                    "step with an error that names it (logged as one line)")


def hash_seed_warning(hash_randomization, pythonhashseed):
    """The one-line warning for a process whose string hashes are randomised, else None."""
    if not hash_randomization or (pythonhashseed or "").isdigit():
        return None
    return ("Deterministic training: PYTHONHASHSEED is not set, so Python's hash seed (which orders some gradient "
            "sums) differs between runs and weights can differ in their last bits; start Python with "
            "PYTHONHASHSEED=0 for bit-identical runs")
