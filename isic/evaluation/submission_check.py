"""The format check of a submission before it is scored: every problem, each naming its file.

The official scorer stops at the first bad file with a terse message; a researcher fixing a
collaborator's folder wants the whole list. The rules are the ISIC 2018 submission rules, a
little stricter than the scorer where the scorer would silently score nonsense:
- masks (Tasks 1, 2): one file per ground-truth mask, matched as the scorer matches (the id's
  seven digits, and the attribute name for Task 2, in the file stem); readable; single-channel
  (PIL mode L, or 1-bit); the ground truth's height and width; only the values 0 and 255 (a 0/1
  mask passes the scorer but reads as empty under its `> 128`, so it is refused here);
- the Task 3 CSV: an `image` column and exactly the seven diagnosis columns; one row per
  ground-truth image and no other; every value a number within [0, 1]; floating point columns
  (the scorer refuses a column of integers).
Files the scorer ignores (predictions without ground truth) are reported as notes, not problems.
"""
import collections
import csv
import io
import math
import pathlib

from PIL import Image
from tqdm import tqdm

from isic import layout
from isic.data import csvfiles
from isic.errors import SubmissionError
from isic.evaluation.submission_files import IGNORED_TRUTH_FILES, parse_truth_name

SHOWN_PER_KIND = 20  # problems of one kind listed one by one; the rest are counted
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)

FormatReport = collections.namedtuple("FormatReport", "problems notes checked")


class _Problems:
    """Problems grouped by kind, each kind shown up to SHOWN_PER_KIND times."""

    def __init__(self):
        self.lines, self.counts = [], collections.Counter()

    def add(self, kind, line):
        self.counts[kind] += 1
        if self.counts[kind] <= SHOWN_PER_KIND:
            self.lines.append(line)

    def result(self):
        hidden = {k: n - SHOWN_PER_KIND for k, n in self.counts.items() if n > SHOWN_PER_KIND}
        return self.lines + [f"... and {n} more: {kind}" for kind, n in sorted(hidden.items())]


def expected_mask_name(image_id, attribute):
    """The ISIC submission name of the prediction for a ground-truth mask."""
    return layout.segmentation_name(image_id) if attribute is None else layout.attribute_name(image_id, attribute)


def truth_mask_files(truth_dir):
    """[(path, image_id, attribute or None)] of a ground-truth mask folder, in the scorer's order."""
    truth_dir = pathlib.Path(truth_dir)
    if not truth_dir.is_dir():
        raise SubmissionError(f"ground-truth folder {truth_dir} does not exist or is not a folder")
    found = []
    for path in sorted(truth_dir.iterdir()):
        if path.name in IGNORED_TRUTH_FILES or not path.is_file():
            continue
        image_id, attribute = parse_truth_name(path)
        found.append((path, image_id, attribute))
    if not found:
        raise SubmissionError(f"no ground-truth masks in {truth_dir}")
    return found


def _mask_header(path):
    """(mode, (width, height)) of an image file, without decoding its pixels."""
    with Image.open(path) as im:
        return im.mode, im.size


def _check_prediction_mask(path, truth_size, truth_name, problems):
    """Append the problems of one prediction mask; True when it can be scored."""
    try:
        with Image.open(path) as im:
            mode, size = im.mode, im.size
            if mode not in ("L", "1"):
                bands = len(im.getbands())
                problems.add("not single-channel", f"{path.name}: {bands}-channel image (PIL mode {mode}); a mask "
                                                   f"is single-channel 8-bit greyscale (mode L)")
                return False
            if size != truth_size:
                problems.add("wrong size", f"{path.name}: {size[1]}x{size[0]} (HxW), but its ground truth "
                                           f"{truth_name} is {truth_size[1]}x{truth_size[0]}")
                return False
            histogram = im.convert("L").histogram()
    except Image.UnidentifiedImageError:
        problems.add("unreadable", f"{path.name}: not an image file PIL can read")
        return False
    except _PIL_ERRORS as e:
        problems.add("unreadable", f"{path.name}: cannot be decoded ({e})")
        return False
    odd = [v for v in range(1, 255) if histogram[v]]
    if odd:
        if set(odd) == {1}:
            why = "0/1 values: the scorer thresholds at > 128, so this mask would count as empty; write 0 and 255"
        else:
            why = f"values other than 0 and 255 (e.g. {', '.join(map(str, odd[:4]))}); write a binary 0/255 mask"
        problems.add("not 0/255", f"{path.name}: {why}")
        return False
    return True


def check_mask_submission(truth_dir, pred_dir, task):
    """FormatReport of a Task 1 or Task 2 prediction folder against its ground-truth folder."""
    pred_dir = pathlib.Path(pred_dir)
    if not pred_dir.is_dir():
        raise SubmissionError(f"prediction folder {pred_dir} does not exist or is not a folder")
    truths = truth_mask_files(truth_dir)
    wrong_task = [p.name for p, _, attribute in truths if (attribute is None) != (task == "segmentation")]
    if wrong_task:
        raise SubmissionError(f"{truth_dir} holds {wrong_task[0]}, not a Task {1 if task == 'segmentation' else 2} "
                              f"ground-truth mask: check --task and --truth")
    pred_files = sorted(p for p in pred_dir.iterdir() if p.is_file())
    problems, notes, used, checked = _Problems(), [], set(), 0
    for truth_path, image_id, attribute in tqdm(truths, desc="checking the submission", unit="mask", leave=False,
                                                disable=len(truths) < 50):
        number = image_id.split("_")[1]
        expected = expected_mask_name(image_id, attribute)
        candidates = [p for p in pred_files if number in p.stem and (attribute is None or attribute in p.stem)]
        if not candidates:
            problems.add("missing", f"{expected}: missing from {pred_dir} (ground truth {truth_path.name})")
            continue
        if len(candidates) > 1:
            problems.add("ambiguous", f"{expected}: {len(candidates)} files match its id "
                                      f"({', '.join(p.name for p in candidates[:4])}); keep one")
            continue
        pred = candidates[0]
        used.add(pred)
        if pred.name != expected:
            notes.append(f"{pred.name} is scored as {expected} (the scorer matches by the id's digits)")
        try:
            _, truth_size = _mask_header(truth_path)
        except (Image.UnidentifiedImageError, *_PIL_ERRORS) as e:
            raise SubmissionError(f"ground truth {truth_path} cannot be read ({e})") from None
        checked += _check_prediction_mask(pred, truth_size, truth_path.name, problems)
    unused = [p.name for p in pred_files if p not in used]
    if unused:
        notes.append(f"{len(unused)} file(s) in {pred_dir} match no ground-truth mask and are not scored "
                     f"(first: {', '.join(unused[:3])})")
    return FormatReport(problems.result(), notes, checked)


def _is_float_text(text):
    """True for a cell pandas reads as a float even in a column of its own: '0.5', '1.0', '1e-3'."""
    return any(c in text for c in ".eE") or text.strip().lower() in ("nan", "inf", "-inf")


def check_task3_submission(truth_ids, pred_csv):
    """FormatReport of a Task 3 prediction CSV, given the ground truth's image ids."""
    pred_csv = pathlib.Path(pred_csv)
    if not pred_csv.is_file():
        raise SubmissionError(f"prediction CSV {pred_csv} does not exist")
    try:
        text = csvfiles.read_text(pred_csv, SubmissionError)
    except OSError as e:
        raise SubmissionError(f"{pred_csv}: cannot be read ({e})") from None
    rows = list(csv.reader(io.StringIO(text)))
    name = pred_csv.name
    problems, notes = _Problems(), []
    if not rows or not any(cell.strip() for cell in rows[0]):
        return FormatReport([f"{name}: empty (expected the header {','.join(layout.TASK3_CSV_HEADER)})"], [], 0)
    header = [c.strip() for c in rows[0]]
    if "image" not in header:
        problems.add("header", f"{name}: no 'image' column in the header {','.join(header)}")
    for column in layout.DIAGNOSES:
        if column not in header:
            problems.add("header", f"{name}: missing column {column}")
    for column in header:
        if column != "image" and column not in layout.DIAGNOSES:
            problems.add("header", f"{name}: extra column {column!r} (expected image,{','.join(layout.DIAGNOSES)})")
    repeated = [c for c, n in collections.Counter(header).items() if n > 1]
    for column in repeated:
        problems.add("header", f"{name}: column {column} appears {header.count(column)} times")
    if problems.counts:
        return FormatReport(problems.result(), notes, 0)

    image_col = header.index("image")
    columns = {c: header.index(c) for c in layout.DIAGNOSES}
    seen, float_seen = {}, dict.fromkeys(layout.DIAGNOSES, False)
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            problems.add("row length", f"{name} line {line}: {len(row)} fields, the header has {len(header)}")
            continue
        image = row[image_col].strip()
        if image.lower().endswith(".jpg"):
            image = image[:-4]
        if image in seen:
            problems.add("duplicate", f"{name} line {line}: {image} repeats line {seen[image]}")
            continue
        seen[image] = line
        for column, k in columns.items():
            cell = row[k].strip()
            try:
                value = float(cell)
            except ValueError:
                problems.add("not a number", f"{name} line {line} ({image}): {column} is {cell!r}, not a number")
                continue
            if math.isnan(value):
                problems.add("not a number", f"{name} line {line} ({image}): {column} is missing (NaN)")
            elif not 0.0 <= value <= 1.0:
                problems.add("out of range", f"{name} line {line} ({image}): {column} = {cell} is outside [0, 1]")
            float_seen[column] |= _is_float_text(cell)
    for column, has_float in float_seen.items():
        if seen and not has_float:
            problems.add("integer column", f"{name}: column {column} holds only integers; the scorer needs "
                                           f"floating point values (write 1.0, not 1)")
    truth_ids = list(truth_ids)
    truth_set = set(truth_ids)
    for image in truth_ids:
        if image not in seen:
            problems.add("missing row", f"{name}: no row for {image}")
    for image, line in seen.items():
        if image not in truth_set:
            problems.add("extra row", f"{name} line {line}: {image} is not in the ground truth")
    return FormatReport(problems.result(), notes, len(seen))
