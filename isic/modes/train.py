"""Train mode: the task's datasets, the starting weights and the staged schedule
(heads first, then deeper layers, as Matterport's samples do), run through MaskRCNN.train.

The run folder (`logs/<task><YYYYmmddTHHMMSS>/`, created when training starts) gets
config.json, split.json (the split seed and the validation ids), one checkpoint per epoch,
TensorBoard events and a history CSV. Starting from a checkpoint of a run (`--weights last`
or its path) resumes that run at the next epoch, appending to its history and keeping its
config.json and split.json; any other start makes a new folder.

With a time budget (`--minutes M`) the schedule's epoch counts become shares of the wall
time: a stage ending at epoch e of a schedule ending at E ends after e/E of the budget
(counted from the start of the run, model building included), whatever the machine's speed.
"""
import logging
import os
import pathlib
import re
import time

from isic.errors import UserError
from isic.modes import run_folders
from mrcnn.engine import layer_sets
from mrcnn.io import run_dirs

log = logging.getLogger(__name__)

# The task-specific variants of mrcnn.data.augment.default_augmentation.
AUGMENTATION_TASKS = {"segmentation": "task1", "attributes": "task2", "classification": "task3"}


def schedule_for(config, epochs=None, layers=None):
    """[(layers, end epoch, learning rate)]: the config's SCHEDULE, or one stage when --layers
    is given. --epochs ends training there: the stage it falls in is cut short and later
    stages are dropped (logged), or the last stage runs on when it is beyond the schedule."""
    stages = [(str(s[0]), int(s[1]), float(s[2])) for s in config.SCHEDULE]
    if layers:
        stages = [(layers, stages[-1][1], stages[-1][2])]
    if epochs is None:
        return stages
    if epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {epochs}")
    cut = next((n for n, (_, end, _) in enumerate(stages) if end >= epochs), len(stages) - 1)
    name, end, learning_rate = stages[cut]
    if cut < len(stages) - 1:
        dropped = ", ".join(f"{later} to epoch {e}" for later, e, _ in stages[cut + 1:])
        log.warning("--epochs %d ends stage %d (%s to epoch %d) at epoch %d and skips the later stage(s): %s",
                    epochs, cut + 1, name, end, epochs, dropped)
    elif end != epochs:
        log.info("--epochs %d: the last stage (%s) runs to epoch %d instead of %d", epochs, name, epochs, end)
    return stages[:cut] + [(name, epochs, learning_rate)]


# Epoch cap of a stage under a time budget: the clock, not the count, ends it.
BUDGET_EPOCH_CAP = 100000


def stage_deadlines(stages, minutes, start):
    """time.monotonic() deadline of each stage when the run has `minutes` of wall time."""
    last_end = stages[-1][1]
    return [start + 60.0 * minutes * end_epoch / last_end for _, end_epoch, _ in stages]


# Layer names of the ResNet backbones (Matterport's, and resnet18's with its r18_ prefix).
BACKBONE_LAYER_RE = re.compile(r"^(r18_)?(conv1|bn_conv1|res\d|bn\d)")


def check_imagenet_load(report, backbone):
    """ImageNet weights cover only the backbone, and only a ResNet-50's layers: refuse a load
    that set no layer, and say at WARNING how many backbone layers kept their random start."""
    expected = [n for n in report.loaded + report.missing_in_file + report.skipped_mismatch
                if BACKBONE_LAYER_RE.match(n)]
    loaded = [n for n in report.loaded if BACKBONE_LAYER_RE.match(n)]
    if not loaded:
        raise UserError(f"--weights imagenet loaded nothing into the {backbone} backbone: {report.filepath} holds "
                        f"ImageNet ResNet-50 layers and none of its {len(expected)} layers; use BACKBONE resnet50 "
                        f"or resnet101, or --weights none/coco")
    skipped = [n for n in expected if n not in set(loaded)]
    if skipped:
        log.warning("ImageNet weights: loaded %d and skipped %d of the %d %s backbone layers with weights "
                    "(not in %s, they start from random values): %s%s", len(loaded), len(skipped), len(expected),
                    backbone, report.filepath, ", ".join(skipped[:5]), ", ..." if len(skipped) > 5 else "")
    else:
        log.info("ImageNet weights: loaded all %d %s backbone layers", len(loaded), backbone)


def load_start_weights(model, weights, config):
    """Load the chosen starting weights into a training model."""
    from mrcnn.io import download
    if weights == "none":
        log.info("Training from scratch (--weights none)")
        return
    if weights == "coco":
        path = download.download_coco_weights()
        exclude = [] if config.NUM_CLASSES == 81 else run_folders.COCO_HEADS
        model.load_weights(str(path), by_name=True, exclude=exclude)
    elif weights == "imagenet":
        report = model.load_weights(model.get_imagenet_weights(), by_name=True)
        check_imagenet_load(report, config.BACKBONE)
        return
    else:
        model.load_weights(str(weights), by_name=True)
    log.info("Starting from %s weights", weights)


def split_recorder(dataset_dir, train_set, val_set, weights=None):
    """A callback that writes the run's split.json and run.json once its folder exists (training start)."""
    import keras

    class RecordSplit(keras.callbacks.Callback):
        def __init__(self, maskrcnn):
            super().__init__()
            self.maskrcnn = maskrcnn

        def on_train_begin(self, logs=None):
            run_folders.write_split(self.maskrcnn.log_dir, dataset_dir, train_set, val_set)
            run_folders.write_run_record(self.maskrcnn.log_dir, weights, dataset_dir)

    return RecordSplit


def check_resume_split(weights, config):
    """Resuming a run keeps validating on its images: refuse another split seed."""
    split = run_folders.read_split(weights) if run_dirs.checkpoint_run(weights, config.NAME) else None
    if split is not None and split["split_seed"] != config.SPLIT_SEED:
        raise UserError(f"--weights {weights} resumes a run trained on the split of seed {split['split_seed']}; "
                        f"pass --split-seed {split['split_seed']} to continue it")


def run(args, config):
    from mrcnn import model as modellib
    from mrcnn.data.augment import default_augmentation
    from mrcnn.engine.trainer import NonFiniteLossError, WallClockLimit

    start = time.monotonic()
    minutes = getattr(args, "minutes", None)
    if minutes is not None and not minutes > 0:
        raise UserError(f"--minutes must be > 0, got {minutes}")
    if minutes is not None and os.environ.get("TF_CONFIG"):
        # Each machine's clock would stop its worker at another step, and the others would wait forever.
        raise UserError("--minutes cannot be used with TF_CONFIG (multi-worker training); use --epochs")

    synthetic = args.dataset == "synthetic"
    # SPLIT_SEED picks the synthetic images and the validation images; SEED the rest.
    dataset_dir = run_folders.resolve_dataset_dir(args.dataset, config.SPLIT_SEED)
    weights = run_folders.resolve_weights(args.weights, "train", synthetic, args.task, args.logs)
    if isinstance(weights, pathlib.Path):
        check_resume_split(weights, config)
    stages = schedule_for(config, args.epochs, args.layers)
    train_set = run_folders.load_dataset(args.task, dataset_dir, "train", config.SPLIT_SEED, args.limit)
    val_set = run_folders.load_dataset(args.task, dataset_dir, "val", config.SPLIT_SEED, args.limit)

    model = modellib.MaskRCNN(mode="training", config=config, model_dir=str(args.logs))
    for layers, _, _ in stages:  # a selection that trains nothing fails now, before anything is written
        layer_sets.check_matches(model.keras_model, layers)
    load_start_weights(model, weights, config)
    augmentation = None
    if config.AUGMENTATION in ("default", "geometric"):
        square = config.IMAGE_RESIZE_MODE in ("square", "crop")
        augmentation = default_augmentation(AUGMENTATION_TASKS[args.task], seed=config.SEED, square=square,
                                            colour=config.AUGMENTATION == "default")
    log.info("Training %s on %d images (validation %d), stages %s", args.task, train_set.num_images,
             val_set.num_images, stages)
    deadlines = stage_deadlines(stages, minutes, start) if minutes else [None] * len(stages)
    record_split = split_recorder(dataset_dir, train_set, val_set, weights)
    for (layers, end_epoch, learning_rate), deadline in zip(stages, deadlines):
        callbacks = [record_split(model)]
        if deadline is not None:
            if time.monotonic() >= deadline:
                continue
            end_epoch = model.epoch + BUDGET_EPOCH_CAP
            callbacks.append(WallClockLimit(deadline))
        elif model.epoch >= end_epoch:
            continue
        try:
            model.train(train_set, val_set, learning_rate=learning_rate, epochs=end_epoch, layers=layers,
                        augmentation=augmentation, custom_callbacks=callbacks)
        except NonFiniteLossError as e:
            raise UserError(str(e)) from e
    if minutes:
        log.info("Time budget %.1f min: used %.1f min", minutes, (time.monotonic() - start) / 60.0)
    from mrcnn.engine.trainer import is_chief
    where = f"run folder {model.log_dir}" if is_chief() else "the chief (worker 0) wrote the run folder"
    print(f"Training finished at epoch {model.epoch}; {where}")
    return 0
