"""Run folders, weights choices and the inference model, shared by the three modes.

A run folder is `logs/<task><YYYYmmddTHHMMSS>/` (`_2`, `_3`, ... when taken; see
mrcnn/io/run_dirs.py) with `config.json`, `split.json` (the split seed and the validation image
ids the run held out) and checkpoints `mask_rcnn_<task>_<epoch:04d>.h5` (Matterport's
naming). Investigate and predict rebuild the model from the `config.json` beside the
checkpoint, so the architecture always matches the weights, and refuse a checkpoint of
another task.
"""
import hashlib
import json
import logging
import pathlib

from isic import layout
from isic.errors import UserError
from mrcnn.config import HEAD_LAYERS
from mrcnn.io import atomic, run_dirs
from mrcnn.io.weights_file import CARD_NAME, is_exported_model

log = logging.getLogger(__name__)

WEIGHT_CHOICES = ("coco", "imagenet", "last", "none")
CHECKPOINT_RE = run_dirs.CHECKPOINT_RE
SPLIT_FILE = "split.json"
RUN_RECORD = "run.json"  # when the run started, from which weights, the command (--mode runs reads it)
# Matterport's class-dependent heads: excluded when COCO weights meet another class count.
COCO_HEADS = list(HEAD_LAYERS)


def default_weights(mode, synthetic):
    """coco for train on real data (the heads are retrained), none for train on synthetic
    (trains from scratch in minutes), last otherwise."""
    if mode == "train":
        return "none" if synthetic else "coco"
    return "last"


def find_last_checkpoint(logs_dir, name):
    """The newest checkpoint of the newest run folder of `name` under `logs_dir`."""
    try:
        return run_dirs.find_last(logs_dir, name)
    except FileNotFoundError:
        raise UserError(f"no '{name}' checkpoint under {logs_dir}: train first "
                        f"(python lesions.py --mode train --task {name}) or pass --weights PATH") from None


def resolve_weights(choice, mode, synthetic, task, logs_dir):
    """Turn --weights into 'coco' | 'imagenet' | 'none' | an existing .h5 path."""
    choice = choice or default_weights(mode, synthetic)
    if choice in ("coco", "imagenet", "none"):
        return choice
    if choice == "last":
        return find_last_checkpoint(logs_dir, task)
    path = pathlib.Path(choice).expanduser()
    if path.is_dir() and is_exported_model(path):
        if mode in ("predict", "investigate"):
            return path
        raise UserError(f"--weights {choice}: an exported model (SavedModel) can only predict or investigate; "
                        f"--mode {mode} needs an .h5 checkpoint (the card names its source_checkpoint)")
    if not path.is_file():
        raise UserError(f"--weights {choice}: no such file (expected coco, imagenet, last, none, "
                        f"a path to an .h5 weights file or a folder written by --mode export)")
    return path


def _saved_config(weights_path):
    """The dict in the config.json beside a checkpoint, or None."""
    saved = pathlib.Path(weights_path).parent / "config.json"
    if not saved.is_file():
        return None
    with open(saved, encoding="utf-8") as f:
        return json.load(f)


def check_task(weights_path, config, task=None):
    """Refuse a checkpoint trained for another task than `task` (default config.NAME): its
    config.json's NAME/NUM_CLASSES, or the task in its file name when it has no config.json."""
    task = task or config.NAME
    saved = _saved_config(weights_path)
    m = CHECKPOINT_RE.search(pathlib.Path(weights_path).name)
    if saved is not None:
        name, classes = saved.get("NAME"), saved.get("NUM_CLASSES")
    elif m:
        name, classes = m.group("name"), config.NUM_CLASSES if m.group("name") == config.NAME else None
    else:
        return
    if name != config.NAME or classes != config.NUM_CLASSES:
        found = f"'{name}' model" + (f" (NUM_CLASSES {classes})" if classes is not None else "")
        raise UserError(f"--weights {weights_path} is a {found} but --task {task} needs a '{config.NAME}' model "
                        f"(NUM_CLASSES {config.NUM_CLASSES}); pass --task {name} or a {task} checkpoint")


def run_config_for(weights_path, config, overrides=(), task=None):
    """The config saved beside a checkpoint, so the model matches its weights, with one
    image per batch for inference and the user's --set/--seed values on top; `config`
    itself when the checkpoint has no config.json. A checkpoint of another task is refused."""
    if not isinstance(weights_path, pathlib.Path):
        return config
    if is_exported_model(weights_path):
        return exported_config(weights_path, config, overrides)
    check_task(weights_path, config, task)
    saved = _saved_config(weights_path)
    if saved is None:
        return config
    values = type(config).from_dict(saved).to_dict()
    if "SPLIT_SEED" not in saved and "SEED" in saved and hasattr(config, "SPLIT_SEED"):
        values["SPLIT_SEED"] = saved["SEED"]  # runs from before SPLIT_SEED split with SEED
    values.update(GPU_COUNT=1, IMAGES_PER_GPU=1)
    values.update(dict(overrides))
    log.info("Using the training config saved with the weights: %s", pathlib.Path(weights_path).parent / "config.json")
    return type(config).from_dict(values)


############################################################
#  The run's train/val split
############################################################

def ids_digest(ids):
    """SHA-256 of the ids joined by newlines (a short fingerprint of a split)."""
    return hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()


def write_split(run_dir, dataset_dir, train_set, val_set):
    """Write `split.json` into a run folder (once: a resumed run keeps the one it has): the split
    seed, the validation fraction and the validation ids the split held out."""
    path = pathlib.Path(run_dir) / SPLIT_FILE
    if path.exists():
        return path
    val_ids = list(val_set.split_val_ids)
    record = {"split_seed": int(val_set.split_seed), "val_fraction": float(val_set.val_fraction),
              "dataset": str(dataset_dir), "split": val_set.split,
              "train_images_used": train_set.num_images, "val_images_used": val_set.num_images,
              "val_ids_sha256": ids_digest(val_ids), "val_ids": val_ids}
    counts = getattr(val_set, "split_class_counts", None)
    if counts is not None:  # images per class on each side (before validation skips), Tasks 2 and 3
        record["class_counts"] = counts
    atomic.write_json(path, record)
    return path


def write_run_record(run_dir, weights, dataset_dir, argv=None):
    """Write `run.json` into a new run folder (once: a resumed run keeps the first): when it
    started, the weights it started from, the dataset and the command line."""
    import datetime
    import sys
    path = pathlib.Path(run_dir) / RUN_RECORD
    if path.exists():
        return path
    record = {"started": datetime.datetime.now().isoformat(timespec="seconds"), "weights": str(weights),
              "dataset": str(dataset_dir), "command": list(sys.argv if argv is None else argv)}
    atomic.write_json(path, record)
    return path


def read_split(weights_path):
    """The run's split.json beside a checkpoint as a dict, or None."""
    if not isinstance(weights_path, pathlib.Path):
        return None
    path = weights_path.parent / SPLIT_FILE
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def run_split_seed(weights_path, config, overrides, subset):
    """The split seed to load `subset` with: the run's own (split.json, else its config.json)
    for a trained run; asking for another one is refused unless every image is scored
    (--subset all), since the other split's 'val' holds images the run trained on."""
    asked = dict(overrides).get("SPLIT_SEED")
    split = read_split(weights_path)
    saved = _saved_config(weights_path) if isinstance(weights_path, pathlib.Path) else None
    if split is not None:
        recorded = split["split_seed"]
    elif saved is not None:
        recorded = saved.get("SPLIT_SEED", saved.get("SEED"))
    else:
        recorded = None
    if recorded is None or (asked is not None and subset == "all"):
        return config.SPLIT_SEED
    if asked is not None and asked != recorded:
        raise UserError(f"--split-seed {asked}: {weights_path} was trained on the split of seed {recorded}, so "
                        f"the '{subset}' images of seed {asked} include images it trained on; drop --split-seed "
                        f"to use the run's own split, or score every image with --subset all")
    return recorded


def check_run_split(weights_path, dataset, subset):
    """Refuse to score as 'val' images that the run's split.json does not list as held out."""
    split = read_split(weights_path)
    if split is None or subset != "val":
        return
    held_out = set(split["val_ids"])
    outside = [info["id"] for info in dataset.image_info if info["id"] not in held_out]
    if outside:
        raise UserError(f"{len(outside)} of the {dataset.num_images} 'val' images (first: {outside[0]}) are not in "
                        f"the validation split recorded in {weights_path.parent / SPLIT_FILE}: the run may have "
                        f"trained on them; use --subset all to score every image")


def exported_config(directory, config, overrides=()):
    """The Config recorded in an exported model's card (the post-processing settings that
    predict applies on top of it), with --set values on top."""
    import json
    card = json.loads((pathlib.Path(directory) / CARD_NAME).read_text())
    task = type(config).NAME
    if card.get("task") != task:
        raise UserError(f"--weights {directory}: exported for task {card.get('task')!r}, not {task!r} "
                        f"(pass --task {card.get('task')})")
    values = dict(card["config"])
    values.update(dict(overrides))
    log.info("Using the config recorded in the exported model's card: %s", directory)
    return type(config).from_dict(values)


def check_inference_weights(weights):
    """Refuse, before the model is built, weights that have no heads for an ISIC task."""
    if weights in ("coco", "imagenet"):
        raise UserError(f"--weights {weights} has no heads trained for this task; train first and "
                        f"use --weights last or a checkpoint path")


def load_inference_model(config, weights, model_dir):
    """A MaskRCNN in inference mode with the chosen weights loaded, or, for a folder
    written by --mode export, the SavedModel behind the same detect() interface."""
    if isinstance(weights, pathlib.Path) and is_exported_model(weights):
        from mrcnn.io.saved_model import ExportedModel
        log.info("Loading exported model %s", weights)
        return ExportedModel(weights, config)
    check_inference_weights(weights)
    from mrcnn import model as modellib
    model = modellib.MaskRCNN(mode="inference", config=config, model_dir=str(model_dir))
    if weights == "none":
        log.warning("Running with untrained weights (--weights none): detections are meaningless.")
    else:
        model.load_weights(str(weights), by_name=True)
        log.info("Loaded weights %s", weights)
    return model


def check_dataset_dir(dataset):
    """Fail early, before any model work, when a dataset folder does not exist."""
    if dataset != "synthetic" and not pathlib.Path(dataset).expanduser().is_dir():
        raise UserError(f"dataset folder {dataset} not found: expected the official ISIC 2018 layout "
                        f"(see isic2018/README.md; download from {layout.DATA_URL}), or use --dataset synthetic")


def resolve_dataset_dir(dataset, seed):
    """--dataset as a folder path; 'synthetic' generates (once, cached) the embedded dataset."""
    check_dataset_dir(dataset)
    if dataset == "synthetic":
        from isic import synthetic
        return pathlib.Path(synthetic.ensure_synthetic_dataset(seed=seed))
    return pathlib.Path(dataset).expanduser()


def load_dataset(task, dataset_dir, subset, seed, limit=None, split="Training"):
    """The task's ISIC dataset for one subset of one official split, validated and prepared."""
    from isic.data.datasets import dataset_for_task
    dataset = dataset_for_task(task)()
    dataset.load_isic(dataset_dir, subset=subset, split=split, seed=seed, limit=limit)
    dataset.prepare()
    if dataset.num_images == 0:
        raise UserError(f"no usable {task} images in the '{subset}' subset of the {split} split of {dataset_dir}")
    return dataset
