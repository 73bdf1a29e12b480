"""ISIC 2018 submission files: writers in the official format.

Writers are atomic (temp file in the target folder, then os.replace), so a failed write
never leaves a partial mask or CSV behind. The readers the metrics use, with the official
scorer's acceptance rules, are in isic/evaluation/submission_files.py.
"""
import csv
import logging
import math
import pathlib

import numpy as np
from PIL import Image

from isic import layout
from isic.errors import SubmissionError
from mrcnn.io import atomic

logger = logging.getLogger(__name__)




# --------------------------------------------------------------------------- names

def submission_stem(image_id):
    """The stem used in submission names: the ISIC id inside the name, else the file stem.

    'ISIC_0012345.jpg' -> 'ISIC_0012345'; 'mole.jpg' -> 'mole'.
    """
    name = pathlib.PurePath(str(image_id)).name
    found = layout.isic_id(name)
    if found:
        return found
    stem = pathlib.PurePath(name).stem if pathlib.PurePath(name).suffix else name
    if not stem:
        raise SubmissionError(f"cannot derive a submission name from image id {image_id!r}")
    return stem


# --------------------------------------------------------------------------- writers

def mask_to_uint8(mask):
    """A binary mask (bool, or numbers in {0,1} or {0,255}) as an HxW uint8 array of 0/255."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    if mask.ndim != 2 or mask.size == 0:
        raise SubmissionError(f"a mask must be a non-empty HxW array, got shape {mask.shape}")
    if mask.dtype == bool:
        return mask.astype(np.uint8) * 255
    if not (np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.floating)):
        raise SubmissionError(f"a mask must be bool or numeric, got dtype {mask.dtype}")
    values = np.unique(mask)
    if set(values.tolist()) <= {0, 1}:
        return (mask == 1).astype(np.uint8) * 255
    if set(values.tolist()) <= {0, 255}:
        return (mask == 255).astype(np.uint8) * 255
    raise SubmissionError(
        f"mask values must be bool, 0/1 or 0/255, got {values[:6].tolist()}...; threshold it first")


def _write_png(path, mask_uint8):
    image = Image.fromarray(np.ascontiguousarray(mask_uint8), mode="L")
    return atomic.atomic_write(path, lambda f: image.save(f, format="PNG"))


def write_task1_mask(out_dir, image_id, mask):
    """Write the Task 1 lesion mask as `<stem>_segmentation.png` (8-bit, 0/255); returns its path."""
    path = pathlib.Path(out_dir) / layout.segmentation_name(submission_stem(image_id))
    return _write_png(path, mask_to_uint8(mask))


def write_task2_masks(out_dir, image_id, masks, shape=None):
    """Write all five Task 2 attribute masks for one image; absent attributes are all zero.

    masks: {attribute: HxW mask}; shape: (H, W), needed only when `masks` is empty.
    Returns {attribute: path} in layout.ATTRIBUTES order.
    """
    unknown = sorted(set(masks) - set(layout.ATTRIBUTES))
    if unknown:
        raise SubmissionError(f"unknown Task 2 attributes {unknown}; expected {list(layout.ATTRIBUTES)}")
    converted = {name: mask_to_uint8(m) for name, m in masks.items()}
    shapes = {m.shape for m in converted.values()}
    if shape is not None:
        shapes.add(tuple(int(s) for s in shape[:2]))
    if len(shapes) != 1:
        raise SubmissionError(
            f"Task 2 masks of {image_id} must share one HxW, got {sorted(shapes)}"
            if shapes else f"write_task2_masks({image_id!r}) needs masks or shape=(H, W)")
    (hw,) = shapes
    stem = submission_stem(image_id)
    paths = {}
    for attribute in layout.ATTRIBUTES:
        mask = converted.get(attribute)
        if mask is None:
            mask = np.zeros(hw, np.uint8)
        path = pathlib.Path(out_dir) / layout.attribute_name(stem, attribute)
        paths[attribute] = _write_png(path, mask)
    return paths


def _format_probability(value, image_id):
    value = float(value)
    if math.isnan(value):
        raise SubmissionError(f"probability for {image_id} is NaN")
    # repr keeps full precision and always has a '.' or exponent, so pandas reads a float.
    return repr(min(1.0, max(0.0, value)))


def write_task3_csv(path, rows, categories=layout.DIAGNOSES):
    """Write the Task 3 CSV `image,MEL,NV,BCC,AKIEC,BKL,DF,VASC`; probabilities clipped to [0,1].

    rows: iterable of (image_id, probabilities[len(categories)]). Returns the path.
    """
    header = ["image"] + list(categories)
    lines = []
    seen = set()
    for image_id, probs in rows:
        stem = submission_stem(image_id)
        if stem in seen:
            raise SubmissionError(f"image {stem} appears twice in the Task 3 rows")
        seen.add(stem)
        probs = np.asarray(probs, dtype=np.float64).ravel()
        if probs.shape[0] != len(categories):
            raise SubmissionError(
                f"{stem}: expected {len(categories)} probabilities, got {probs.shape[0]}")
        lines.append([stem] + [_format_probability(p, stem) for p in probs])

    def write(f):
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(lines)

    return atomic.atomic_write(path, write, binary=False)
