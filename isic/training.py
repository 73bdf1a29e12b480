"""Train mode: the task's datasets, the starting weights and the staged schedule
(heads first, then deeper layers, as Matterport's samples do), run through MaskRCNN.train.

The run folder (`logs/<task><YYYYMMDDTHHMM>/`) gets config.json, one checkpoint per epoch,
TensorBoard events and a history CSV (written by the model's training loop). Starting from
a checkpoint of a run (`--weights last` or its path) resumes that run at the next epoch.

With a time budget (`--minutes M`) the schedule's epoch counts become shares of the wall
time: a stage ending at epoch e of a schedule ending at E ends after e/E of the budget
(counted from the start of the run, model building included), whatever the machine's speed.
"""
import logging
import time

from isic import runs
from isic.errors import UserError
from mrcnn import layer_sets

log = logging.getLogger(__name__)

# The task-specific variants of mrcnn.augment.default_augmentation.
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


def load_start_weights(model, weights, config):
    """Load the chosen starting weights into a training model."""
    from mrcnn import download
    if weights == "none":
        log.info("Training from scratch (--weights none)")
        return
    if weights == "coco":
        path = download.download_coco_weights()
        exclude = [] if config.NUM_CLASSES == 81 else runs.COCO_HEADS
        model.load_weights(str(path), by_name=True, exclude=exclude)
    elif weights == "imagenet":
        model.load_weights(model.get_imagenet_weights(), by_name=True)
    else:
        model.load_weights(str(weights), by_name=True)
    log.info("Starting from %s weights", weights)


def run(args, config):
    from mrcnn import model as modellib
    from mrcnn.augment import default_augmentation
    from mrcnn.training import NonFiniteLossError, WallClockLimit

    start = time.monotonic()
    minutes = getattr(args, "minutes", None)
    if minutes is not None and not minutes > 0:
        raise UserError(f"--minutes must be > 0, got {minutes}")

    synthetic = args.dataset == "synthetic"
    dataset_dir = runs.resolve_dataset_dir(args.dataset, config.SEED)
    train_set = runs.load_dataset(args.task, dataset_dir, "train", config.SEED, args.limit)
    val_set = runs.load_dataset(args.task, dataset_dir, "val", config.SEED, args.limit)
    weights = runs.resolve_weights(args.weights, "train", synthetic, args.task, args.logs)
    stages = schedule_for(config, args.epochs, args.layers)

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
    for (layers, end_epoch, learning_rate), deadline in zip(stages, deadlines):
        callbacks = []
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
    print(f"Training finished at epoch {model.epoch}; run folder {model.log_dir}")
    return 0
