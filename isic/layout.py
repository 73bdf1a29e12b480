"""Names fixed by the official ISIC 2018 release: folders, file patterns, classes."""
import re

# Where the official release is downloaded from.
DATA_URL = "https://challenge.isic-archive.com/data/#2018"

TASKS = ("segmentation", "attributes", "classification")

# Folders under the dataset root, the official ISIC 2018 layout (isic2018/README.md), one set
# per split. Only the Task 2 training ground truth carries `_v3` (its third release); the
# validation and test archives are ISIC2018_Task2_Validation_GroundTruth and ..._Test_GroundTruth.
TASK12_INPUT_DIR = "ISIC2018_Task1-2_{split}_Input"
TASK1_GT_DIR = "ISIC2018_Task1_{split}_GroundTruth"
TASK2_GT_DIR_TRAINING = "ISIC2018_Task2_Training_GroundTruth_v3"
TASK2_GT_DIR_OTHER = "ISIC2018_Task2_{split}_GroundTruth"
TASK3_INPUT_DIR = "ISIC2018_Task3_{split}_Input"
TASK3_GT_DIR = "ISIC2018_Task3_{split}_GroundTruth"
TASK3_GT_CSV = "ISIC2018_Task3_{split}_GroundTruth.csv"
HAM10000_MASK_DIR = "HAM10000_segmentations_lesion_tschandl"
HAM10000_METADATA_CSV = "HAM10000_metadata.csv"
SPLITS = ("Training", "Validation", "Test")
# The command line's names of the splits (--split).
SPLIT_OPTIONS = {"training": "Training", "validation": "Validation", "test": "Test"}

# Task 2 attribute names, in the order used for class ids 1..5.
ATTRIBUTES = ("pigment_network", "negative_network", "streaks", "milia_like_cyst", "globules")
# Task 3 diagnosis columns, in the official CSV order (class ids 1..7).
DIAGNOSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
TASK3_CSV_HEADER = ("image",) + DIAGNOSES

CLASS_NAMES = {
    "segmentation": ("lesion",),
    "attributes": ATTRIBUTES,
    "classification": DIAGNOSES,
}



def task2_gt_dir(split):
    """The Task 2 ground-truth folder name of a split (`_v3` for Training only)."""
    return TASK2_GT_DIR_TRAINING if split == "Training" else TASK2_GT_DIR_OTHER.format(split=split)


def input_dir(task, split):
    """The folder of a task's input images in a split."""
    return (TASK3_INPUT_DIR if task == "classification" else TASK12_INPUT_DIR).format(split=split)


def truth_path(task, split):
    """The ground truth of a task in a split, relative to the dataset root: the Task 1 or Task 2
    mask folder, or the Task 3 CSV."""
    if task == "segmentation":
        return TASK1_GT_DIR.format(split=split)
    if task == "attributes":
        return task2_gt_dir(split)
    return f"{TASK3_GT_DIR.format(split=split)}/{TASK3_GT_CSV.format(split=split)}"


ISIC_ID_RE = re.compile(r"ISIC_\d{7}")


def isic_id(name):
    """The 'ISIC_xxxxxxx' id inside a file name, or None when there is none."""
    m = ISIC_ID_RE.search(name)
    return m.group(0) if m else None


def segmentation_name(image_id):
    """Task 1 mask file name for an image id (also the submission name)."""
    return f"{image_id}_segmentation.png"


def attribute_name(image_id, attribute):
    """Task 2 mask file name for an image id and attribute (also the submission name)."""
    return f"{image_id}_attribute_{attribute}.png"
