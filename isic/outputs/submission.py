"""ISIC 2018 submission files: writers in the official format and the readers the metrics use.

Writers are atomic (temp file in the target folder, then os.replace), so a failed write
never leaves a partial mask or CSV behind. Readers apply the same acceptance rules as the
official scorer (isic-challenge-scoring 5.6.0), so a file that passes here is scored there.
"""
import csv
import io
import logging
import math
import os
import pathlib
import re

import numpy as np
import pandas as pd
from PIL import Image

from isic import layout
from isic.data import csvfiles, images
from mrcnn.io import atomic

logger = logging.getLogger(__name__)

# Files the official ground-truth folders carry next to the masks; the scorer skips them.
IGNORED_TRUTH_FILES = frozenset({"ATTRIBUTION.txt", "LICENSE.txt"})
_ATTRIBUTE_IN_STEM_RE = re.compile(r"attribute_([a-z_]+)")


class SubmissionError(ValueError):
    """A submission or ground-truth file breaks the official format."""


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


# --------------------------------------------------------------------------- readers

def read_mask(path):
    """A submission or ground-truth mask as [H, W] uint8 (isic.data.images.read_mask, the
    scorer's rules); a missing or unusable file is a SubmissionError naming it."""
    path = pathlib.Path(path)
    if not path.exists():
        raise SubmissionError(f"mask file {path} does not exist")
    try:
        return images.read_mask(path)
    except images.ImageReadError as e:
        raise SubmissionError(str(e)) from None

def parse_truth_name(path):
    """(image_id, attribute or None) of a ground-truth mask file, as the scorer parses it."""
    stem = pathlib.Path(path).stem
    image_id = layout.isic_id(stem)
    if image_id is None:
        raise SubmissionError(
            f"unknown ground truth file {pathlib.Path(path).name}: its name has no ISIC_<7 digits> id")
    m = _ATTRIBUTE_IN_STEM_RE.search(stem)
    return image_id, (m.group(1) if m else None)


def match_mask_files(truth_dir, pred_dir):
    """Pair every ground-truth mask with its prediction the way the scorer does.

    Truth files are taken in sorted order (ATTRIBUTION.txt / LICENSE.txt skipped); each
    must name an ISIC_<7 digits> id. The prediction is the one file in pred_dir whose
    stem contains the 7 digits (and the attribute name for Task 2 files).
    Returns [(image_id, attribute or None, truth_path, pred_path)].
    """
    truth_dir, pred_dir = pathlib.Path(truth_dir), pathlib.Path(pred_dir)
    for d, what in ((truth_dir, "ground-truth"), (pred_dir, "prediction")):
        if not d.is_dir():
            raise SubmissionError(f"{what} folder {d} does not exist or is not a folder")
    pred_files = sorted(pred_dir.iterdir())
    pairs = []
    for truth_file in sorted(truth_dir.iterdir()):
        if truth_file.name in IGNORED_TRUTH_FILES:
            continue
        image_id, attribute = parse_truth_name(truth_file)
        number = image_id.split("_")[1]
        candidates = [p for p in pred_files
                      if number in p.stem and (attribute is None or attribute in p.stem)]
        if not candidates:
            raise SubmissionError(f"no prediction in {pred_dir} matches {truth_file.name}")
        if len(candidates) > 1:
            raise SubmissionError(
                f"several predictions match {truth_file.name}: {[p.name for p in candidates]}")
        pairs.append((image_id, attribute, truth_file, candidates[0]))
    if not pairs:
        raise SubmissionError(f"no ground-truth masks in {truth_dir}")
    return pairs


def read_mask_pair(truth_path, pred_path):
    """Load a truth mask and its prediction; the prediction must have the truth's HxW."""
    truth = read_mask(truth_path)
    pred = read_mask(pred_path)
    if pred.shape[:2] != truth.shape[:2]:
        raise SubmissionError(
            f"{pathlib.Path(pred_path).name} is {pred.shape[0]}x{pred.shape[1]} (HxW); "
            f"its ground truth is {truth.shape[0]}x{truth.shape[1]}")
    return truth, pred


def read_task3_truth_csv(path_or_stream):
    """Ground-truth CSV -> (probabilities DataFrame indexed by image, weights DataFrame), read
    by the one ground-truth reader (isic.data.csvfiles.read_task3_truth) and then held to the
    scorer's needs: every row whole, every cell a number, no image twice.

    Weights are `score_weight` / `validation_weight` (1.0 when absent); ISIC_0035068 gets
    weight 0, as in the official scorer.
    """
    try:
        table, repeats = csvfiles.read_task3_truth(path_or_stream, SubmissionError)
    except OSError as e:
        raise SubmissionError(f"cannot read Task 3 ground-truth CSV: {e}") from None
    if repeats:
        raise SubmissionError("Task 3 ground-truth CSV has duplicate image rows: "
                              f"{sorted({isic_id for _row, isic_id, _first in repeats})}")
    if not table:
        raise SubmissionError("Task 3 ground-truth CSV has no image rows")
    values, weights = [], []
    for isic_id, row in table.items():
        if row.values is None:
            raise SubmissionError(f"Task 3 ground-truth CSV line {row.line} ({isic_id}) does not have "
                                  "the header's number of fields")
        try:
            values.append([float(v) for v in row.values])
            weights.append([float(w) if w else 1.0 for w in (row.weights or ("", ""))])
        except ValueError:
            raise SubmissionError(f"Task 3 ground-truth CSV line {row.line} ({isic_id}) holds a value "
                                  "that is not a number") from None
    index = pd.Index(list(table), name="image")
    probabilities = pd.DataFrame(values, index=index, columns=list(layout.DIAGNOSES), dtype=np.float64)
    weights = pd.DataFrame(weights, index=index, columns=list(csvfiles.TASK3_WEIGHT_COLUMNS), dtype=np.float64)
    if "ISIC_0035068" in weights.index:
        weights.loc["ISIC_0035068"] = 0.0
    return probabilities, weights


def read_task3_csv(path_or_stream, categories=layout.DIAGNOSES):
    """Prediction CSV -> probabilities DataFrame indexed by image, columns in `categories` order.

    Same checks as the scorer: an 'image' column, '.jpg' dropped, no duplicate rows, exactly
    the category columns, no missing values, float columns only, values within [0, 1].
    """
    if isinstance(path_or_stream, (str, os.PathLike)):
        try:
            text = csvfiles.read_text(path_or_stream, SubmissionError)
        except OSError as e:
            raise SubmissionError(f"cannot read Task 3 CSV: {e}") from None
    else:
        text = path_or_stream.read()
    if text[:2000].count("\n") < 2:
        raise SubmissionError("Task 3 CSV has fewer than two lines (header and one row)")
    try:
        table = pd.read_csv(io.StringIO(text), header=0, index_col=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise SubmissionError(f"cannot parse Task 3 CSV: {e}") from None
    if "image" not in table.columns:
        raise SubmissionError("Task 3 CSV has no 'image' column")
    table["image"] = table["image"].astype(str).str.replace(r"\.jpg$", "", case=False, regex=True)
    duplicated = table["image"][table["image"].duplicated()].unique().tolist()
    if duplicated:
        raise SubmissionError(f"Task 3 CSV has duplicate image rows: {duplicated}")
    table = table.set_index("image", drop=True)
    categories = list(categories)
    missing = sorted(set(categories) - set(table.columns))
    if missing:
        raise SubmissionError(f"Task 3 CSV lacks columns {missing}")
    extra = sorted(set(table.columns) - set(categories))
    if extra:
        raise SubmissionError(f"Task 3 CSV has unknown columns {extra}; expected {categories}")
    table = table[categories]
    missing_rows = table.index[table.isnull().any(axis=1)].tolist()
    if missing_rows:
        raise SubmissionError(f"Task 3 CSV has missing values for images {missing_rows}")
    non_float = [c for c in categories if table[c].dtype != np.float64]
    if non_float:
        raise SubmissionError(
            f"Task 3 CSV columns {non_float} are not floating point (write 1.0, not 1)")
    out_of_range = table.index[((table < 0.0) | (table > 1.0)).any(axis=1)].tolist()
    if out_of_range:
        raise SubmissionError(f"Task 3 CSV has values outside [0, 1] for images {out_of_range}")
    return table
