#!/usr/bin/env python3
"""Mask R-CNN on ISIC 2018: train, investigate and predict for the three challenge tasks.

    python lesions.py --mode train       [--task T] [--dataset D] [--weights W] [--logs DIR] [--epochs N]
    python lesions.py --mode investigate [--task T] [--dataset D] [--subset val|train|all] [--weights W]
    python lesions.py --mode predict --image PATH [--task T] [--weights W] [--output DIR]
    python lesions.py --mode export --output DIR [--task T] [--weights W]
    python lesions.py --mode score --predictions DIR [--task T] (--dataset ROOT --split S | --truth PATH)
    python lesions.py --mode runs [--logs DIR] [--task T] [--compare RUN_A RUN_B]

Installed (`pip install .`), the same is the `lesions` command. This file only wires a task's
Config and Dataset to a mode; the work lives in the `isic` and `mrcnn` packages (isic.modes.train,
.investigate, .predict, .export, .score, .runs; isic.modes.settings layers the Config values).
"""
import argparse
import ast
import json
import logging
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")  # see mrcnn/__init__.py

from isic import layout  # noqa: E402
from isic.errors import SubmissionError, UserError  # noqa: E402
from isic.modes import preflight  # noqa: E402
from mrcnn.config import Config, ConfigError, is_int, is_number  # noqa: E402
from mrcnn.engine import layer_sets  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent
# In a checkout the defaults sit next to lesions.py; installed (no pyproject.toml beside it, e.g.
# in site-packages), they are relative to the folder the command runs in.
HOME = ROOT if (ROOT / "pyproject.toml").is_file() else pathlib.Path(".")
DEFAULT_DATASET = HOME / "isic2018"
DEFAULT_LOGS = HOME / "logs"
DEFAULT_TASK = "segmentation"
MODES = ("train", "investigate", "predict", "export", "score", "runs")

log = logging.getLogger("lesions")


############################################################
#  Configurations
############################################################

# Values of Config.TASK1_MASK_REFINEMENT (implemented in isic.outputs.refinement.task1_mask; named
# here so that validating a Config does not import OpenCV and SciPy).
TASK1_REFINEMENTS = ("none", "fill", "grabcut")


class ISICConfig(Config):
    """Real-data defaults shared by the three tasks (GPU-sized: ResNet-101, COCO start,
    heads first, then all layers)."""
    BACKBONE = "resnet101"
    IMAGES_PER_GPU = 2
    IMAGE_RESIZE_MODE = "square"
    IMAGE_MIN_DIM = 512
    IMAGE_MAX_DIM = 512
    STEPS_PER_EPOCH = 500
    VALIDATION_STEPS = 50
    TRAIN_ROIS_PER_IMAGE = 128
    MAX_GT_INSTANCES = 20
    DETECTION_MIN_CONFIDENCE = 0.5
    DETECTION_MAX_INSTANCES = 20
    # Training stages: (layers, epochs up to, learning rate). Epoch counts are cumulative,
    # as in Matterport's train() calls.
    SCHEDULE = [["heads", 10, 0.001], ["all", 30, 0.0001]]
    # Augmentation for training: "default" (albumentations, isic-tuned: flips, rotations,
    # small affine, colour jitter), "geometric" (the same without colour jitter) or "none".
    AUGMENTATION = "default"
    # Task 1 post-processing (isic.outputs.refinement): test-time flips (4 views vote) and the
    # full-resolution refinement of the lesion mask: "none", "fill" or "grabcut".
    TASK1_TTA_FLIPS = False
    TASK1_MASK_REFINEMENT = "none"
    # Seed of the train/val split (and of the generated synthetic images), apart from SEED
    # (initialisation, augmentation, batch order): trainings with different SEEDs validate on
    # the same images. A run records it in split.json; investigate reuses the run's own.
    SPLIT_SEED = 42
    # detect(), investigate, predict and the export shrink images by area averaging, as the training
    # feed does (Matterport's "bilinear" stays the base Config's, for the fidelity reference).
    RESIZE_METHOD = "area"

    def validate(self):
        super().validate()
        need = self.require
        need(self.TASK1_MASK_REFINEMENT in TASK1_REFINEMENTS, "TASK1_MASK_REFINEMENT",
             f"expected one of {', '.join(TASK1_REFINEMENTS)}")
        need(self.AUGMENTATION in ("default", "geometric", "none"), "AUGMENTATION",
             "expected default, geometric or none")
        need(isinstance(self.TASK1_TTA_FLIPS, bool), "TASK1_TTA_FLIPS", "expected true or false")
        need(is_int(self.SPLIT_SEED) and self.SPLIT_SEED >= 0, "SPLIT_SEED", "expected a non-negative integer")
        need(isinstance(self.SCHEDULE, (list, tuple)) and len(self.SCHEDULE) > 0, "SCHEDULE",
             'expected a non-empty list of [layers, end epoch, learning rate] stages, e.g. [["heads", 10, 0.001]]')
        previous_end = 0
        for n, stage in enumerate(self.SCHEDULE, start=1):
            need(isinstance(stage, (list, tuple)) and len(stage) == 3, "SCHEDULE",
                 f'stage {n} is not [layers, end epoch, learning rate], e.g. ["heads", 10, 0.001]')
            layers, end_epoch, learning_rate = stage
            try:
                layer_sets.layer_regex(layers)
            except layer_sets.LayerSelectionError as e:
                need(False, "SCHEDULE", f"stage {n}: {e}")
            need(is_int(end_epoch) and end_epoch > previous_end, "SCHEDULE",
                 f"stage {n}: the end epoch must be an integer above {previous_end} (epochs count up across stages)")
            need(is_number(learning_rate) and learning_rate > 0, "SCHEDULE",
                 f"stage {n}: the learning rate must be a number > 0")
            previous_end = end_epoch


class SegmentationConfig(ISICConfig):
    """Task 1: one class, the lesion."""
    NAME = "segmentation"
    NUM_CLASSES = 1 + 1
    # One lesion per image: 300 proposals score as 1000 do (validation thresholded Jaccard
    # 0.765 with 100 or 300, 0.766 with 1000 on the real-image run) at a third of the
    # classifier's cost.
    POST_NMS_ROIS_INFERENCE = 300


class AttributesConfig(ISICConfig):
    """Task 2: five attribute classes; images without attributes train as negatives."""
    NAME = "attributes"
    NUM_CLASSES = 1 + len(layout.ATTRIBUTES)
    KEEP_EMPTY_IMAGES = True
    DETECTION_MIN_CONFIDENCE = 0.3


class ClassificationConfig(ISICConfig):
    """Task 3: the lesion instance carries one of seven diagnoses."""
    NAME = "classification"
    NUM_CLASSES = 1 + len(layout.DIAGNOSES)
    POST_NMS_ROIS_INFERENCE = 300  # one lesion per image, as Task 1
    DETECTION_MIN_CONFIDENCE = 0.05
    # Class-balanced sampling by each image's rarest class (mrcnn/data/balancing.py): HAM10000's NV
    # is in 67 % of the images, DF in 1.1 %; the metric is the mean recall over the seven classes.
    CLASS_BALANCING = "repeat_factor"
    REPEAT_FACTOR_THRESHOLD = 0.5


TASK_CONFIGS = {
    "segmentation": SegmentationConfig,
    "attributes": AttributesConfig,
    "classification": ClassificationConfig,
}

# CPU-sized values that `--dataset synthetic` applies on top of the task config, so the
# embedded default trains from scratch on a laptop in minutes.
SYNTHETIC_CPU_OVERRIDES = {
    "BACKBONE": "resnet18",
    "TRAIN_BN": True,  # from scratch, frozen BatchNorm leaves the network unnormalised
    # PreciseBN: the moving statistics recomputed over 150 unaugmented training batches after
    # training. Without it the quick start scored 0.12-0.78 over five runs (docs/benchmarks.md);
    # GroupNorm (NORM "gn") trained about twice as slowly per epoch on a CPU.
    "PRECISE_BN_BATCHES": 150,
    "IMAGES_PER_GPU": 2,
    "IMAGE_MIN_DIM": 256,
    "IMAGE_MAX_DIM": 256,
    "RPN_ANCHOR_SCALES": (16, 32, 64, 128, 256),
    # A narrow RPN and mask head: at Matterport's widths (512, 256) they cost about 3x ResNet-18's
    # arithmetic at this size (bench/profile_step.py). A 64-channel pyramid scored 0.71 instead of
    # 0.78 (docs/benchmarks.md), so the pyramid stays at 128.
    "TOP_DOWN_PYRAMID_SIZE": 128,
    "RPN_CONV_CHANNELS": 64,
    "MASK_HEAD_CHANNELS": 64,
    "FPN_CLASSIF_FC_LAYERS_SIZE": 256,
    "PRE_NMS_LIMIT": 1000,
    "POST_NMS_ROIS_TRAINING": 300,
    "POST_NMS_ROIS_INFERENCE": 100,
    "RPN_TRAIN_ANCHORS_PER_IMAGE": 128,
    "TRAIN_ROIS_PER_IMAGE": 32,
    "STEPS_PER_EPOCH": 50,
    "VALIDATION_STEPS": 10,
    "SCHEDULE": [["all", 16, 0.01]],
}


def parse_override(text):
    """'KEY=VALUE' with VALUE parsed as JSON when it is JSON (numbers, lists, null, true), else
    as a Python literal (True, None, tuples), else kept as a string; Config validates the type."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UserError(f"--set expects KEY=VALUE, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        pass
    try:
        return key.strip(), ast.literal_eval(value.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return key.strip(), value


def make_config(task, synthetic=False, overrides=(), inference=False, sources=None):
    """The task's Config with the synthetic CPU values (when asked) and user overrides applied.
    `sources` ({attribute: label}) names where each override came from (default "--set"); the
    config records every value's source in `value_sources` (written into a run's config.json)."""
    values = dict(SYNTHETIC_CPU_OVERRIDES) if synthetic else {}
    origin = dict.fromkeys(values, "synthetic CPU values (--dataset synthetic)")
    if inference:
        values.update(IMAGES_PER_GPU=1, GPU_COUNT=1)  # one image per detect() call unless --set says otherwise
        origin.update(IMAGES_PER_GPU="inference (one image per call)", GPU_COUNT="inference (one image per call)")
    for key, value in overrides:
        values[key] = value
        origin[key] = (sources or {}).get(key, "--set")
    if inference:
        values["GPU_COUNT"] = 1
        origin["GPU_COUNT"] = "inference (one image per call)"
    config_class = TASK_CONFIGS[task]
    config = config_class(**values)
    config.value_sources = {key: origin.get(key, f"{config_class.__name__} default")
                            for key in config_class.attribute_names()}
    return config


############################################################
#  Command line
############################################################

def build_parser():
    parser = argparse.ArgumentParser(
        prog="lesions.py",
        description="Mask R-CNN for the ISIC 2018 skin-lesion tasks: train, investigate, predict.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:\n"
               "  python lesions.py --mode train --dataset synthetic\n"
               "  python lesions.py --mode investigate --dataset synthetic\n"
               "  python lesions.py --mode predict --image 'photos/*.jpg' --output out/\n"
               "  python lesions.py --mode export --weights last --output exported/segmentation\n"
               "  python lesions.py --mode investigate --dataset isic2018 --split validation\n"
               "  python lesions.py --mode score --predictions out/ --dataset isic2018 --split test\n"
               "  python lesions.py --mode train --config logs/segmentation20261208T101500/config.json\n"
               "  python lesions.py --mode runs --compare logs/RUN_A logs/RUN_B\n")
    parser.add_argument("--mode", required=True, choices=MODES, help="what to do")
    parser.add_argument("--task", default=None, choices=layout.TASKS,
                        help="ISIC 2018 task: segmentation (1), attributes (2), classification (3); "
                             "default: the --config file's NAME, else segmentation (runs: every task)")
    parser.add_argument("--dataset", default=str(DEFAULT_DATASET),
                        help="dataset root in the official ISIC 2018 layout (default: isic2018/ next "
                             "to lesions.py), or 'synthetic' for the generated dataset")
    parser.add_argument("--weights", default=None,
                        help="coco, imagenet, last, none, a path to an .h5 file, or (predict) a folder "
                             "written by --mode export. Defaults: coco for train on real data, none for "
                             "train on synthetic, last otherwise")
    parser.add_argument("--logs", default=str(DEFAULT_LOGS),
                        help="folder for run folders and checkpoints (default logs/)")
    parser.add_argument("--split", choices=tuple(layout.SPLIT_OPTIONS),
                        help="investigate, score, predict: the official ISIC 2018 split of --dataset (default "
                             "training); validation and test are scored whole. predict without --image: that "
                             "split's input images")
    parser.add_argument("--subset", default=None, choices=("val", "train", "all"),
                        help="investigate on the training split: the run's val images (default), its train "
                             "images, or all")
    parser.add_argument("--predictions", help="score: the submission folder (Tasks 1, 2) or CSV (Task 3) to score")
    parser.add_argument("--truth", help="score: the ground-truth mask folder (Tasks 1, 2) or CSV (Task 3), "
                                        "instead of --dataset and --split")
    parser.add_argument("--config", help="a JSON (a run's config.json works as it is) or YAML file of Config "
                                         "values; --set values apply on top")
    parser.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"),
                        help="runs: the Config values that differ and the two histories side by side")
    parser.add_argument("--image", help="predict: an image file, a folder, or a glob (quote it); export: up to "
                                        "3 images to measure agreement with detect() on (default: synthetic)")
    parser.add_argument("--output", help="investigate/predict: output folder (default under the run "
                                         "folder of the weights); export: the SavedModel folder to write")
    parser.add_argument("--overwrite", action="store_true",
                        help="predict: redo images whose outputs are already in --output (by default "
                             "they are kept, so an interrupted run continues); export: replace a "
                             "non-empty --output folder")
    parser.add_argument("--full-size-overlays", action="store_true",
                        help="predict: draw overlays at the image's size (default: long side at most 1024 px)")
    parser.add_argument("--epochs", type=int, help="train: total epochs (overrides the schedule's end)")
    parser.add_argument("--minutes", type=float,
                        help="train: wall-time budget; the schedule's stages get their share of it "
                             "(epoch ends become time fractions) and training stops when it is used")
    parser.add_argument("--steps-per-epoch", type=int, help="train: steps per epoch")
    parser.add_argument("--layers", help="train: heads, 3+, 4+, 5+, all or a regex (one stage)")
    parser.add_argument("--limit", type=int, help="use at most N images of the dataset")
    parser.add_argument("--seed", type=int, help="train: seed for initialisation, augmentation and batch order")
    parser.add_argument("--split-seed", type=int,
                        help="seed of the train/val split and of the synthetic images (Config.SPLIT_SEED, default "
                             "42); investigate uses the run's own and refuses another unless --subset all")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any Config value, e.g. --set IMAGE_MAX_DIM=1024 "
                             "--set 'RPN_ANCHOR_SCALES=[16,32,64,128,256]' (repeatable)")
    parser.add_argument("--deterministic", action="store_true",
                        help="train: bit-identical weights and metrics for the same seed on the same machine "
                             "(Config.DETERMINISTIC: TensorFlow op determinism, a seeded feed order)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return parser


def reexec_with_fixed_hash_seed(argv):
    """--deterministic needs a fixed Python hash seed (some gradient sums are ordered by it), which
    only a new interpreter can take: the command re-runs itself once with PYTHONHASHSEED=0. Calls
    of main() from Python (argv given) are left alone; DETERMINISTIC then warns."""
    if argv is None and "--deterministic" in sys.argv[1:] and os.environ.get("PYTHONHASHSEED") is None:
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable] + sys.argv)


def main(argv=None):
    reexec_with_fixed_hash_seed(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return run(args)
    except KeyboardInterrupt:
        print("lesions.py: interrupted", file=sys.stderr)
        return 130
    except expected_errors() as e:
        message = preflight.weights_mismatch_message(e, args) or str(e).strip()
        message = message.splitlines()[0] if message else type(e).__name__
        print(f"lesions.py: error: {message}", file=sys.stderr)
        return 2


def expected_errors():
    """Error types that mean bad input, not a bug: shown as one line, no traceback.
    Read from the modules already imported, so that an early error does not pay for
    importing TensorFlow just to name the types it cannot have raised."""
    types = [UserError, SubmissionError, ConfigError, layer_sets.LayerSelectionError, FileNotFoundError,
             NotADirectoryError, PermissionError]
    for module, names in (("isic.data.datasets", ("DatasetError",)),
                          ("mrcnn.io.atomic", ("AtomicWriteError",)),
                          ("mrcnn.io.weights_file", ("WeightsFormatError",)),
                          ("isic.evaluation.metrics", ("MetricError",)),
                          ("mrcnn.io.download", ("DownloadError",)),
                          ("mrcnn.io.weights_h5", ("WeightsFormatError", "WeightsMismatchError"))):
        if module in sys.modules:
            types.extend(getattr(sys.modules[module], name) for name in names)
    return tuple(types)


def run(args):
    from isic.modes import settings
    file_values = settings.read_config_file(args.config) if args.config else {}
    if file_values:
        args.task = settings.task_of(file_values, args.task, args.config, layout.TASKS)
    if args.mode == "runs":
        from isic.modes import runs
        return runs.run(args)
    args.task = args.task or DEFAULT_TASK
    if args.mode == "score":
        from isic.modes import score
        return score.run(args)
    preflight.check_args(args, TASK_CONFIGS[args.task])
    config, overrides = config_for(args, file_values)
    if args.mode == "train":
        from isic.modes import train
        return train.run(args, config)
    if args.mode == "investigate":
        from isic.modes import investigate
        return investigate.run(args, config, overrides)
    if args.mode == "export":
        from isic.modes import export
        return export.run(args, config, overrides)
    from isic.modes import predict
    return predict.run(args, config, overrides)


def config_for(args, file_values=None):
    """(Config, overrides) of parsed arguments: the task's class, the synthetic CPU values, the
    --config file, --set and the value flags, each value's source recorded (isic.modes.settings)."""
    from isic.modes import settings
    if file_values is None:
        file_values = settings.read_config_file(args.config) if args.config else {}
    task = args.task or DEFAULT_TASK
    inference = args.mode != "train"
    values = settings.option_values(args, file_values, inference)
    settings.check_keys([key for key, _, source in values if source.startswith("config file")], TASK_CONFIGS[task],
                        f"--config {args.config}")
    settings.check_keys([key for key, _, source in values if source == "--set"], TASK_CONFIGS[task], "--set")
    overrides = [(key, value) for key, value, _ in values]
    sources = {key: source for key, _, source in values}
    return make_config(task, args.dataset == "synthetic", overrides, inference=inference, sources=sources), overrides


if __name__ == "__main__":
    sys.exit(main())
