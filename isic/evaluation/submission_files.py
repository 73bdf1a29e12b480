"""Readers of ISIC 2018 submission and ground-truth files, with the official scorer's acceptance
rules (isic-challenge-scoring 5.6.0), so a file that passes here is scored there: the metrics
(isic/evaluation/metrics.py) and the submission format check (submission_check.py) read
through them.
"""
import io
import os
import pathlib
import re

import numpy as np
import pandas as pd

from isic import layout
from isic.data import csvfiles, images
from isic.errors import SubmissionError

# Files the official ground-truth folders carry next to the masks; the scorer skips them.
IGNORED_TRUTH_FILES = frozenset({"ATTRIBUTION.txt", "LICENSE.txt"})
_ATTRIBUTE_IN_STEM_RE = re.compile(r"attribute_([a-z_]+)")

__all__ = ["SubmissionError", "IGNORED_TRUTH_FILES", "read_mask", "parse_truth_name", "match_mask_files",
           "read_mask_pair", "read_task3_truth_csv", "read_task3_csv"]


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
