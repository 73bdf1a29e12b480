"""Names fixed by the official ISIC 2018 release: folders, file patterns, classes."""
import re

# Where the official release is downloaded from.
DATA_URL = "https://challenge.isic-archive.com/data/#2018"

TASKS = ("segmentation", "attributes", "classification")

# Folders under the dataset root, the official ISIC 2018 layout (isic2018/README.md). Inputs
# exist per split; ground truth for training.
TASK12_INPUT_DIR = "ISIC2018_Task1-2_{split}_Input"
TASK1_GT_DIR = "ISIC2018_Task1_{split}_GroundTruth"
TASK2_GT_DIR = "ISIC2018_Task2_{split}_GroundTruth_v3"
TASK3_INPUT_DIR = "ISIC2018_Task3_{split}_Input"
TASK3_GT_DIR = "ISIC2018_Task3_{split}_GroundTruth"
TASK3_GT_CSV = "ISIC2018_Task3_{split}_GroundTruth.csv"
HAM10000_MASK_DIR = "HAM10000_segmentations_lesion_tschandl"
HAM10000_METADATA_CSV = "HAM10000_metadata.csv"
SPLITS = ("Training", "Validation", "Test")

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
