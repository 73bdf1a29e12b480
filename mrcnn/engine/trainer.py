"""The training loop behind Matterport's MaskRCNN.train: layer freezing, the compiled model,
the data feeds, the run-folder callbacks (checkpoint per epoch, history.csv, NaN guard,
wall-clock limit) and `train()`.

The graph it trains is built by mrcnn.modeling.training_graph; this module never imports
mrcnn.model (the model calls in here, not the reverse).
"""
import logging
import math
import os
import re
import shutil
import sys
import time

import keras
import numpy as np
from keras import layers as KL

from mrcnn.data import image_cache
from mrcnn.data.feed import MaskRCNNSequence
from mrcnn.engine.distribute import cluster_workers, global_batch_size, is_chief
from mrcnn.engine.layer_sets import LAYER_REGEX, check_matches, layer_regex  # noqa: F401 (LAYER_REGEX: Matterport's name)
from mrcnn.engine.precise_bn import PreciseBatchNorm
from mrcnn.io import weights_h5

log = logging.getLogger(__name__)

HISTORY_CSV = "history.csv"
DEFAULT_WORKERS = 2


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss and was stopped."""


############################################################
#  Layer selection and callbacks
############################################################

def set_trainable(keras_model, regex, verbose=0, _indent=0):
    """Make the layers whose name fully matches `regex` trainable and freeze the others,
    looking inside nested models and TimeDistributed wrappers. Layers without weights are
    left alone. Returns the names of the trainable layers."""
    trainable = []
    if _indent == 0:
        log.info("Selecting layers to train (regex %s)", regex)
    for layer in keras_model.layers:
        if isinstance(layer, keras.Model):
            trainable += set_trainable(layer, regex, verbose, _indent + 4)
            continue
        if not layer.weights:
            continue
        on = bool(re.fullmatch(regex, layer.name))
        layer.trainable = on
        if isinstance(layer, KL.TimeDistributed):
            layer.layer.trainable = on
        if on:
            trainable.append(layer.name)
            if verbose:
                log.info("%s%-20s (%s)", " " * _indent, layer.name, type(layer).__name__)
    return trainable


############################################################
#  Callbacks
############################################################

class NonFiniteGuard(keras.callbacks.Callback):
    """Stops training at the first batch whose loss (or any of the five) is NaN or infinite,
    and remembers where, so no checkpoint is written for that epoch."""

    def __init__(self):
        super().__init__()
        self.failure = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        for name, value in (logs or {}).items():
            value = float(value)
            if not math.isfinite(value):
                self.failure = (self._epoch + 1, batch + 1, name, value)
                self.model.stop_training = True
                return


class WallClockLimit(keras.callbacks.Callback):
    """Stops training after the first batch that ends past `deadline` (a time.monotonic()
    value). Keras still ends that (shortened) epoch, so its checkpoint is written: a time
    budget never loses the work done."""

    def __init__(self, deadline):
        super().__init__()
        self.deadline = float(deadline)

    def on_train_batch_end(self, batch, logs=None):
        if time.monotonic() >= self.deadline:
            log.info("Time budget used: stopping after batch %d", batch + 1)
            self.model.stop_training = True


class EpochCheckpoint(keras.callbacks.Callback):
    """After each finished epoch: the weights in the Keras-2 layout at
    checkpoint_path.format(epoch=epoch + 1), written atomically, unless a loss went bad."""

    def __init__(self, checkpoint_path, guard, write=True):
        super().__init__()
        self.checkpoint_path = checkpoint_path
        self.guard = guard
        self.write = write  # False on multi-worker workers other than the chief
        self.last_saved = None

    def on_epoch_end(self, epoch, logs=None):
        bad = [k for k, v in (logs or {}).items() if not math.isfinite(float(v))]
        if self.guard.failure is not None or bad:
            if self.guard.failure is None:
                self.guard.failure = (epoch + 1, None, bad[0], float(logs[bad[0]]))
            self.model.stop_training = True
            return
        if not self.write:
            return
        path = self.checkpoint_path.format(epoch=epoch + 1)
        weights_h5.save_weights_h5(self.model, path)
        self.last_saved = path


class CountingCSVLogger(keras.callbacks.CSVLogger):
    """CSVLogger that skips epochs whose losses are not finite (they get no checkpoint)."""

    def __init__(self, filename, guard, **kwargs):
        super().__init__(filename, **kwargs)
        self.guard = guard

    def on_epoch_end(self, epoch, logs=None):
        if self.guard.failure is None and all(math.isfinite(float(v)) for v in (logs or {}).values()):
            super().on_epoch_end(epoch, logs)


############################################################
#  Data feeds
############################################################

class TrainingFeed(MaskRCNNSequence):
    """MaskRCNNSequence with a fixed number of batches per Keras epoch (STEPS_PER_EPOCH or
    VALIDATION_STEPS); batch indices past the dataset wrap around its epoch order."""

    def __init__(self, *args, steps=1, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps = int(steps)

    @property
    def num_batches(self):
        return self.steps

    def __len__(self):
        return self.steps

    def __getitem__(self, index):
        # gt_masks as uint8: Keras reduces a first distributed batch with a MEAN, which bool cannot take.
        (inputs,) = super().__getitem__(index)
        return (inputs[:-1] + (inputs[-1].view(np.uint8),),)


def make_feeds(model, train_dataset, val_dataset, augmentation=None, workers=None, use_multiprocessing=False):
    """(train feed, validation feed). Validation is not augmented and visits images in order."""
    config = model.config
    workers = DEFAULT_WORKERS if workers is None else int(workers)
    # Under TF_CONFIG every worker builds the same global batch (batches are a pure function of
    # seed, epoch and index) and tf.distribute hands each replica its slice.
    batch = global_batch_size(config)
    train_feed = TrainingFeed(train_dataset, config, shuffle=True, augmentation=augmentation, batch_size=batch,
                              steps=config.STEPS_PER_EPOCH, workers=workers, use_multiprocessing=use_multiprocessing)
    train_feed.set_epoch(model.epoch)
    val_feed = TrainingFeed(val_dataset, config, shuffle=False, batch_size=batch, steps=config.VALIDATION_STEPS,
                            workers=workers, use_multiprocessing=use_multiprocessing)
    return train_feed, val_feed


############################################################
#  train()
############################################################

def synchronize_batch_norm(keras_model):
    """Make every BatchNormalization layer (nested models and TimeDistributed included) take
    its training statistics over the global batch (Keras' `synchronized`, read when train_step
    is traced). With TRAIN_BN each replica then updates the moving averages alike, so all
    workers keep identical weights. Frozen BatchNorm (TRAIN_BN False) is unaffected."""
    for layer in keras_model.layers:
        if isinstance(layer, keras.Model):
            synchronize_batch_norm(layer)
            continue
        inner = layer.layer if isinstance(layer, KL.TimeDistributed) else layer
        if isinstance(inner, KL.BatchNormalization):
            inner.synchronized = True


def compile_model(model, learning_rate, layers):
    """Freeze per `layers`, then compile with SGD(momentum, clipnorm); mixed_float16 adds
    dynamic loss scaling. Recompiling retraces train_step for the new trainable set; a stage
    that trains the same layers as the compiled one (a learning-rate drop) only sets the new
    rate on the same optimizer, so its momentum carries over and nothing is retraced."""
    config = model.config
    keras_model = model.keras_model
    trainable = tuple(set_trainable(keras_model, layer_regex(layers)))
    if getattr(keras_model, "compiled_trainable", None) == trainable and keras_model.optimizer is not None:
        keras_model.optimizer.learning_rate.assign(learning_rate)
        return keras_model
    if keras_model.distribute_strategy.num_replicas_in_sync > 1:
        synchronize_batch_norm(keras_model)
    with keras_model.distribute_strategy.scope():
        clip = config.GRADIENT_CLIP_NORM
        optimizer = keras.optimizers.SGD(learning_rate=learning_rate, momentum=config.LEARNING_MOMENTUM,
                                         clipnorm=float(clip) if clip else None)
        if config.MIXED_PRECISION == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        keras_model.compile(optimizer=optimizer, jit_compile=False)
    keras_model.compiled_trainable = trainable
    return keras_model


def train(model, train_dataset, val_dataset, learning_rate, epochs, layers, augmentation=None,
          custom_callbacks=None, workers=None, use_multiprocessing=False,
          verbose=None):
    """Train `model` (a MaskRCNN in training mode) from model.epoch up to `epochs`.

    layers: heads, 3+, 4+, 5+, all, or a regex of layer names to train.
    augmentation: an albumentations transform or imgaug augmenter (None: none).
    workers: data-loading threads (or processes with use_multiprocessing); default 2.
    Writes into model.log_dir: config.json, mask_rcnn_<name>_<epoch:04d>.h5 after every
    epoch (atomic, Keras-2 layout), TensorBoard events and history.csv. With TF_CONFIG set
    (MultiWorkerMirroredStrategy) each step trains on IMAGES_PER_GPU x GPU_COUNT x workers
    images and only the chief (worker 0) writes into log_dir. Raises
    NonFiniteLossError when a loss becomes NaN or infinite (earlier checkpoints stay).
    verbose: Keras' fit verbosity; default a progress bar on a terminal, one line per epoch otherwise.
    Returns the Keras History.
    """
    config = model.config
    check_matches(model.keras_model, layers)  # a typo ('head') fails here, before anything is written
    if model.epoch >= epochs:
        log.info("Already at epoch %d >= %d: nothing to train", model.epoch, epochs)
        return None
    train_feed, val_feed = make_feeds(model, train_dataset, val_dataset, augmentation, workers,
                                      use_multiprocessing)
    # Everything that can refuse the request runs before the run folder exists.
    keras_model = compile_model(model, learning_rate, layers)
    chief = is_chief()
    new_run = model.open_log_dir() if chief else False
    guard = NonFiniteGuard()
    checkpoint = EpochCheckpoint(model.checkpoint_path, guard, write=chief)
    precise_bn = precise_bn_callback(model, train_dataset, guard)
    # PreciseBN before the checkpoint: an epoch's checkpoint holds the epoch's recomputed statistics.
    callbacks = [guard] + ([precise_bn] if precise_bn else []) + [checkpoint]
    if chief:  # under TF_CONFIG the other workers write nothing into the run folder
        callbacks += [CountingCSVLogger(os.path.join(model.log_dir, HISTORY_CSV), guard, append=True),
                      keras.callbacks.TensorBoard(log_dir=model.log_dir, histogram_freq=0, write_graph=False)]
    else:
        log.info("Worker %d of %d: training without writing (the chief writes the run folder)",
                 *reversed(cluster_workers()))
    callbacks += list(custom_callbacks or [])

    log.info("Starting at epoch %d, LR=%s; checkpoints: %s", model.epoch, learning_rate, model.checkpoint_path)
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    try:
        # shuffle=False: the feed already visits the images in a (seed, epoch) order; Keras'
        # shuffle would also permute the batch indices with Python's unseeded `random`.
        history = keras_model.fit(train_feed, initial_epoch=model.epoch, epochs=epochs,
                                  steps_per_epoch=config.STEPS_PER_EPOCH, callbacks=callbacks,
                                  validation_data=val_feed, validation_steps=config.VALIDATION_STEPS,
                                  verbose=verbose, shuffle=False)
    except BaseException as e:
        if config.DETERMINISTIC and _is_determinism_error(e):
            log.error("--deterministic: an op of this model has no deterministic implementation on this "
                      "device: %s", str(e).strip().splitlines()[0])
        if new_run and checkpoint.last_saved is None:
            _remove_empty_run(model)
        raise
    stats = train_feed.stats()
    log.info("Training data: %d images without instances served, %d skipped, %d failed to load, %d truncated",
             stats["empty_served"], stats["empty_skipped"], stats["failed"], stats["truncated"])
    model.train_stats = stats
    cache = image_cache.STATS
    log.info("Image cache (%s), this process so far: %d entries read, %d written, %d rebuilt, %d images not cacheable",
             image_cache.cache_dir() if config.IMAGE_CACHE else "off", cache["hits"], cache["writes"],
             cache["rebuilt"], cache["uncached"])
    if guard.failure is not None:
        epoch, batch, name, value = guard.failure
        where = f"epoch {epoch}" + (f", batch {batch}" if batch else "")
        kept = checkpoint.last_saved or _last_checkpoint_or_none(model)
        raise NonFiniteLossError(f"training stopped: {name} became {value} at {where}; last good checkpoint: "
                                 f"{kept or 'none'} (lower the learning rate or check the data)")
    # A callback (time budget) may stop before `epochs`: continue from the last epoch run.
    model.epoch = max(model.epoch, history.epoch[-1] + 1 if history.epoch else model.epoch)
    if precise_bn is not None and checkpoint.last_saved and precise_bn.done_epoch != model.epoch - 1:
        # After training: the statistics of the final weights, into the run's last checkpoint.
        precise_bn.recompute(keras_model, model.epoch)
        if chief:
            weights_h5.save_weights_h5(keras_model, checkpoint.last_saved)
    return history


def precise_bn_callback(model, train_dataset, guard):
    """The PreciseBatchNorm callback for Config.PRECISE_BN_BATCHES > 0 (unaugmented batches of
    the training set, the same seed), else None."""
    config = model.config
    if not config.PRECISE_BN_BATCHES:
        return None
    if config.norm() != "bn":
        log.info("PRECISE_BN_BATCHES=%d ignored: NORM is %r, whose statistics do not come from training batches",
                 config.PRECISE_BN_BATCHES, config.norm())
        return None
    feed = TrainingFeed(train_dataset, config, shuffle=True, augmentation=None, batch_size=global_batch_size(config),
                        steps=config.PRECISE_BN_BATCHES, workers=1)
    return PreciseBatchNorm(feed, config.PRECISE_BN_BATCHES, every_epoch=config.PRECISE_BN_EVERY_EPOCH, guard=guard)


def _is_determinism_error(error):
    """TensorFlow's error for an op without a deterministic kernel under op determinism."""
    import tensorflow as tf
    return isinstance(error, (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError)) and \
        "determinis" in str(error).lower()


def _remove_empty_run(model):
    """A run that failed before its first checkpoint leaves no folder that `--weights last`
    would have to pass over (the folder was created by this training, so all of it is ours)."""
    log.info("Removing %s: training stopped before its first checkpoint", model.log_dir)
    shutil.rmtree(model.log_dir, ignore_errors=True)
    model._resuming_run = False


def _last_checkpoint_or_none(model):
    try:
        return model.find_last()
    except FileNotFoundError:
        return None
