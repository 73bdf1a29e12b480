"""Checks of the command line's options before any model work: bad values, output folders
that cannot be written, weights files that cannot be read, each refused in one line naming
the option or file (lesions.py prints it) before TensorFlow is imported or anything is written.
"""
import os
import pathlib
import sys
import tempfile

from isic.errors import UserError
from mrcnn.engine import layer_sets

WEIGHT_NAMES = ("coco", "imagenet", "last", "none")


def weights_mismatch_message(error, args):
    """For weights that do not fit the model, what to do on the command line (the error's own
    advice, exclude= and skip_mismatch=, is for the Python API); None for other errors."""
    weights_h5 = sys.modules.get("mrcnn.io.weights_h5")
    if weights_h5 is None or not isinstance(error, weights_h5.WeightsMismatchError) or error.layer is None:
        return None
    if error.weight:
        what = (f"layer {error.layer} weight {error.weight} is {list(error.model_shape)} in the model, "
                f"{list(error.file_shape)} in the file")
    else:
        what = f"layer {error.layer} has another number of weights in the file"
    choice = args.weights or ("last" if args.mode != "train" else "coco")
    if choice == "last":
        from isic.modes import run_folders
        try:
            path = run_folders.find_last_checkpoint(args.logs, args.task)
        except UserError:
            return None
    else:
        path = pathlib.Path(choice).expanduser()
    if not path.is_file():
        return f"the {choice} weights do not fit the {args.task} model: {what}"
    saved = path.parent / "config.json"
    if args.mode == "train":
        return (f"{path} does not fit the {args.task} model built from the task's settings and --set values: {what}; "
                f"start from a checkpoint of this task, or pass the settings it was trained with "
                f"(see its run's config.json) as --set KEY=VALUE")
    if saved.is_file():
        return (f"{path} does not fit the model built from {saved} and the --set values: {what}; "
                f"drop the --set values that change the network, or check --task")
    return (f"{path} does not fit the {args.task} model built from the task's defaults: {what}; there is no "
            f"config.json beside the weights (the run's settings: the training run folder holds one): copy it "
            f"next to the weights, or pass the settings the weights were trained with as --set KEY=VALUE "
            f"(e.g. --set BACKBONE=resnet50 --set IMAGE_MAX_DIM=1024), or check --task")


def check_args(args, config_class):
    """Refuse bad option values in one line before anything is loaded, built or written;
    `config_class` is the task's Config class (to read a config.json beside --weights)."""
    for option, value in (("--limit", args.limit), ("--epochs", args.epochs),
                          ("--steps-per-epoch", args.steps_per_epoch)):
        if value is not None and value < 1:
            raise UserError(f"{option} must be a positive integer, got {value}")
    if args.seed is not None and not 0 <= args.seed < 2 ** 32:
        raise UserError(f"--seed must be an integer in [0, 2**32 - 1], got {args.seed}")
    if args.layers is not None:
        try:
            layer_sets.layer_regex(args.layers)
        except layer_sets.LayerSelectionError as e:
            raise UserError(f"--{e}") from e
    if args.mode == "train":
        check_writable_folder(args.logs, "--logs")
    elif args.output:
        check_writable_folder(args.output, "--output")
    check_weights_path(args, config_class)


def check_writable_folder(path, option):
    """`path` is a folder, or can be made one, that this user can write in. Creates nothing:
    the folder is made only when there is something to put in it."""
    folder = pathlib.Path(path).expanduser()
    existing = folder
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "a file" if existing.exists() else "a broken link"
        raise UserError(f"{option} {path}: {existing} is {what}, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise UserError(f"{option} {path}: cannot write in {existing} ({e.strerror or e})") from e


def check_weights_path(args, config_class):
    """A weights file given by path opens as HDF5, and the config.json beside it (read by
    investigate and predict to rebuild the network) is valid: one line naming the file, before
    TensorFlow is imported and the model is built."""
    if args.weights is None or args.weights in WEIGHT_NAMES:
        return
    path = pathlib.Path(args.weights).expanduser()
    if not path.is_file():
        return  # resolving --weights names a missing path
    from mrcnn.io.weights_file import open_weights_file
    with open_weights_file(path):
        pass
    saved = path.parent / "config.json"
    if args.mode != "train" and saved.is_file():
        config_class.load(saved)
