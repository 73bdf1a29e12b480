"""Run folders, weights choices and the inference model, shared by the three modes.

A run folder is `logs/<task><YYYYMMDDTHHMM>/` with `config.json` and checkpoints
`mask_rcnn_<task>_<epoch:04d>.h5` (Matterport's naming). Investigate and predict rebuild
the model from the `config.json` beside the checkpoint, so the architecture always
matches the weights.
"""
import logging
import pathlib
import re

from isic import layout
from isic.errors import UserError

log = logging.getLogger(__name__)

WEIGHT_CHOICES = ("coco", "imagenet", "last", "none")
CHECKPOINT_RE = re.compile(r"mask_rcnn_(?P<name>.+)_(?P<epoch>\d{4})\.h5$")
# Matterport's class-dependent heads: excluded when COCO weights meet another class count.
COCO_HEADS = ["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"]


def default_weights(mode, synthetic):
    """SPEC §3: coco for train on real data, none for train on synthetic, last otherwise."""
    if mode == "train":
        return "none" if synthetic else "coco"
    return "last"


def find_last_checkpoint(logs_dir, name):
    """The newest checkpoint of the newest run folder of `name` under `logs_dir`."""
    logs_dir = pathlib.Path(logs_dir)
    name = name.lower()
    runs = sorted(p for p in logs_dir.glob(f"{name}*") if p.is_dir()) if logs_dir.is_dir() else []
    for run in reversed(runs):
        checkpoints = sorted(p for p in run.glob(f"mask_rcnn_{name}_*.h5") if CHECKPOINT_RE.search(p.name))
        if checkpoints:
            return checkpoints[-1]
    raise UserError(f"no '{name}' checkpoint under {logs_dir}: train first "
                    f"(python lesions.py --mode train --task {name}) or pass --weights PATH")


def checkpoint_epoch(path):
    """The epoch number in a checkpoint's file name, or 0 when it has none."""
    m = CHECKPOINT_RE.search(pathlib.Path(path).name)
    return int(m.group("epoch")) if m else 0


def resolve_weights(choice, mode, synthetic, task, logs_dir):
    """Turn --weights into 'coco' | 'imagenet' | 'none' | an existing .h5 path."""
    choice = choice or default_weights(mode, synthetic)
    if choice in ("coco", "imagenet", "none"):
        return choice
    if choice == "last":
        return find_last_checkpoint(logs_dir, task)
    path = pathlib.Path(choice).expanduser()
    if not path.is_file():
        raise UserError(f"--weights {choice}: no such file (expected coco, imagenet, last, none or "
                        f"a path to an .h5 weights file)")
    return path


def run_config_for(weights_path, config, overrides=()):
    """The config saved beside a checkpoint, so the model matches its weights, with one
    image per batch for inference and the user's --set/--seed values on top; `config`
    itself when the checkpoint has no config.json."""
    if not isinstance(weights_path, pathlib.Path):
        return config
    saved = weights_path.parent / "config.json"
    if not saved.is_file():
        return config
    values = type(config).load(saved).to_dict()
    values.update(GPU_COUNT=1, IMAGES_PER_GPU=1)
    values.update(dict(overrides))
    log.info("Using the training config saved with the weights: %s", saved)
    return type(config).from_dict(values)


def check_inference_weights(weights):
    """Refuse, before the model is built, weights that have no heads for an ISIC task."""
    if weights in ("coco", "imagenet"):
        raise UserError(f"--weights {weights} has no heads trained for this task; train first and "
                        f"use --weights last or a checkpoint path")


def load_inference_model(config, weights, model_dir):
    """A MaskRCNN in inference mode with the chosen weights loaded."""
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


def load_dataset(task, dataset_dir, subset, seed, limit=None):
    """The task's ISIC dataset for one subset, validated and prepared."""
    from isic.datasets import dataset_for_task
    dataset = dataset_for_task(task)()
    dataset.load_isic(dataset_dir, subset=subset, seed=seed, limit=limit)
    dataset.prepare()
    if dataset.num_images == 0:
        raise UserError(f"no usable {task} images in the '{subset}' subset of {dataset_dir}")
    return dataset
