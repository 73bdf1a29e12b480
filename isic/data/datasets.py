"""ISIC 2018 datasets for Mask R-CNN: one Matterport `utils.Dataset` subclass per task.

Every item is validated once, in `load_isic`, so that a bad file is named and skipped
before training starts instead of failing deep inside a data generator. Validation is
cheap: images are opened and decoded at 1/8 scale (JPEG DCT scaling), masks (small
binary PNGs) are decoded fully and checked through their histogram.
"""
import collections
import concurrent.futures
import os
import logging
import pathlib
import time

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from tqdm import tqdm

from isic import layout
from isic.data import csvfiles, images
from mrcnn import utils
from mrcnn.data import resize

log = logging.getLogger(__name__)

DATA_URL = layout.DATA_URL
SOURCE = "isic"
SUBSETS = ("train", "val", "all")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
MASK_THRESHOLD = 128  # the ISIC scorer binarises masks with `> 128`

# PIL errors that mean "this file is not a readable image".
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class DatasetError(ValueError):
    """The dataset as a whole cannot be used (missing folder, malformed CSV header)."""


class _BadItem(Exception):
    """One image (or its ground truth) cannot be used; it is skipped and listed."""

    def __init__(self, kind, detail):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


############################################################
#  Splits
############################################################

def split_ids(ids, groups=None, val_fraction=0.2, seed=42, labels=None):
    """Split ids into (train_ids, val_ids), deterministic for a seed.

    With `groups` (one key per id, e.g. the HAM10000 lesion_id) whole groups go to one
    side, so images of one lesion never straddle the split; `val_fraction` is then the
    fraction of groups. When there are at least two groups and 0 < val_fraction < 1,
    each side gets at least one group. Both lists keep the order of `ids`.

    With `labels` (one class per id, None for "no class"; e.g. the Task 3 diagnosis) the
    split is stratified: each class's groups are split on their own, so that a rare class is
    not left out of validation by chance (`stratified_split`). Without labels the split is
    the unstratified one of earlier versions, id for id.
    """
    ids = list(ids)
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    groups = ids if groups is None else list(groups)
    if len(groups) != len(ids):
        raise ValueError(f"{len(groups)} groups given for {len(ids)} ids")
    if labels is not None:
        return stratified_split(ids, groups, list(labels), val_fraction, seed)
    unique = sorted(set(groups))
    n_val = int(np.floor(val_fraction * len(unique) + 0.5))
    if 0.0 < val_fraction < 1.0 and len(unique) >= 2:
        n_val = min(max(n_val, 1), len(unique) - 1)
    order = np.random.default_rng(seed).permutation(len(unique))
    val_groups = {unique[i] for i in order[:n_val]}
    train = [i for i, g in zip(ids, groups) if g not in val_groups]
    val = [i for i, g in zip(ids, groups) if g in val_groups]
    return train, val


def _label_key(label):
    """Sort key that puts None (no class) after every class name."""
    return (label is None, "" if label is None else str(label))


def stratified_split(ids, groups, labels, val_fraction, seed):
    """(train_ids, val_ids): the groups of each class split on their own.

    A group's class is the rarest (fewest images overall) of its images' labels, so a lesion
    photographed as DF once and NV once counts as DF. Per class with n groups the validation
    side gets round(val_fraction * n) of them, but at least one and at most n - 1 when
    n >= 2 and 0 < val_fraction < 1: every class with two or more groups is on both sides. A
    class with a single group stays in training. Classes are visited in sorted order and
    each draws its own permutation from one seeded generator, so the split is a function of
    (ids, groups, labels, val_fraction, seed) alone.
    """
    if len(labels) != len(ids):
        raise ValueError(f"{len(labels)} labels given for {len(ids)} ids")
    image_counts = collections.Counter(labels)
    members = collections.defaultdict(list)
    for g, label in zip(groups, labels):
        members[g].append(label)
    by_class = collections.defaultdict(list)
    for g in sorted(members):
        rarest = min(members[g], key=lambda lab: (image_counts[lab],) + _label_key(lab))
        by_class[rarest].append(g)
    rng = np.random.default_rng(seed)
    val_groups = set()
    for label in sorted(by_class, key=_label_key):
        class_groups = by_class[label]
        n = len(class_groups)
        n_val = int(np.floor(val_fraction * n + 0.5))
        if 0.0 < val_fraction < 1.0 and n >= 2:
            n_val = min(max(n_val, 1), n - 1)
        elif n < 2 and val_fraction < 1.0:
            n_val = 0
        order = rng.permutation(n)
        val_groups.update(class_groups[i] for i in order[:n_val])
    if not val_groups and 0.0 < val_fraction < 1.0 and len(members) >= 2:
        # Only single-group classes: validate on one of them rather than on nothing.
        singles = sorted(members)
        val_groups.add(singles[int(rng.integers(len(singles)))])
    train = [i for i, g in zip(ids, groups) if g not in val_groups]
    val = [i for i, g in zip(ids, groups) if g in val_groups]
    return train, val


def rarest_labels(classes_per_id):
    """One stratification label per id: the rarest (fewest ids overall; ties by name) of the
    classes it has, or None when it has none. classes_per_id: a list of iterables."""
    frequency = collections.Counter(c for classes in classes_per_id for c in set(classes))
    return [min(classes, key=lambda c: (frequency[c], str(c))) if classes else None
            for classes in map(list, classes_per_id)]


def class_counts(ids, classes_of):
    """{class: number of ids that have it}, classes in sorted order; classes_of: {id: classes}."""
    counts = collections.Counter(c for i in ids for c in set(classes_of.get(i, ())))
    return {c: counts[c] for c in sorted(counts, key=str)}


def read_ham10000_metadata(path):
    """{image_id: {"lesion_id": ..., "dx": ...}} from HAM10000_metadata.csv (UTF-8, BOM accepted)."""
    path = pathlib.Path(path)
    rows = csvfiles.read_rows(path, DatasetError)
    fields = [c.strip() for c in rows[0]] if rows else []
    for column in ("image_id", "lesion_id"):
        if column not in fields:
            spoiled = csvfiles.lookalike(column, fields)
            hint = (f"; the header has {csvfiles.show_header_cell(spoiled)}, with invisible characters"
                    if spoiled else "")
            raise DatasetError(f"{path}: missing column '{column}' "
                               f"(HAM10000 metadata needs image_id and lesion_id){hint}")
    image_col, lesion_col = fields.index("image_id"), fields.index("lesion_id")
    dx_col = fields.index("dx") if "dx" in fields else None
    meta = {}
    for row in rows[1:]:
        if len(row) <= max(image_col, lesion_col):
            continue
        dx = row[dx_col].strip() if dx_col is not None and dx_col < len(row) else ""
        meta[row[image_col].strip()] = {"lesion_id": row[lesion_col].strip(), "dx": dx or None}
    return meta


############################################################
#  Per-file checks
############################################################

def check_image(path):
    """(height, width) of an image `load_image` can read; raises _BadItem otherwise.

    JPEGs are decoded at 1/8 scale, which reads every entropy-coded block (so truncated
    or garbled files fail) at a fraction of a full decode's cost.
    """
    try:
        return images.inspect_image(path, decode=True)
    except images.ImageReadError as e:
        raise _BadItem(e.kind, str(e)) from None


def check_mask(path, height, width):
    """Validate a mask against its image; returns True when it has foreground pixels.

    A mask must be a single-channel 8-bit (or 1-bit) image of the image's size holding
    only 0 and 255. Palette PNGs are refused: their stored indices need not match what
    they display (some HAM10000 copies have an inverted palette).
    """
    try:
        with Image.open(path) as im:
            im.load()
            mode, size = im.mode, im.size
            histogram = im.histogram() if mode in ("L", "1") else None
    except Image.UnidentifiedImageError:
        raise _BadItem("unreadable mask", f"{path} is not an image file PIL can read") from None
    except _PIL_ERRORS as e:
        raise _BadItem("unreadable mask", f"{path} cannot be decoded ({e})") from None
    if mode not in ("L", "1"):
        raise _BadItem("mask not single-channel",
                       f"{path} has mode {mode}; expected a single-channel 8-bit (L) PNG")
    if size != (width, height):
        raise _BadItem("mask wrong size",
                       f"{path} is {size[1]}x{size[0]} but its image is {height}x{width} (HxW)")
    if mode == "1":
        return histogram[255] > 0
    odd = [v for v in range(1, 255) if histogram[v]]
    if odd:
        raise _BadItem("mask values not 0/255",
                       f"{path} holds values other than 0 and 255 (e.g. {odd[0]})")
    return histogram[255] > 0


_FOREGROUND_MEMO = {}


def mask_has_foreground(path):
    """True when a mask file has a pixel above 0; False when it is empty, absent or unreadable
    (validation reports those). Memoised per (path, size, mtime)."""
    path = pathlib.Path(path)
    try:
        stat = path.stat()
    except OSError:
        return False
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _FOREGROUND_MEMO:
        try:
            with Image.open(path) as im:
                _FOREGROUND_MEMO[key] = im.convert("L").getbbox() is not None
        except _PIL_ERRORS + (Image.UnidentifiedImageError,):
            _FOREGROUND_MEMO[key] = False
    return _FOREGROUND_MEMO[key]


def read_mask(path):
    """A mask file that check_mask accepted, as a [H, W] bool array (the scorer's > 128)."""
    return images.read_mask(path) > MASK_THRESHOLD


############################################################
#  Whole-lesion approximation (Task 3 without HAM10000 masks)
############################################################

def centred_ellipse(height, width, fraction=0.35):
    """[H, W] bool: an ellipse at the image centre with semi-axes fraction*H, fraction*W."""
    yy, xx = np.mgrid[:height, :width]
    ry, rx = max(fraction * height, 1.0), max(fraction * width, 1.0)
    return ((yy + 0.5 - height / 2) / ry) ** 2 + ((xx + 0.5 - width / 2) / rx) ** 2 <= 1.0


def approximate_lesion_mask(image, work_size=256):
    """Rough whole-lesion mask of a dermoscopy image: ([H, W] bool, method).

    method is "otsu", or "ellipse" when thresholding finds no plausible blob.
    Steps, on a copy shrunk to `work_size` on its long side: darkest RGB channel per
    pixel (lesions are darker than skin in every channel, whether brown or red); grey
    closing to erase thin dark hairs; Gaussian blur; Otsu threshold over the pixels that
    are not near-black (the dermatoscope vignette); binary closing then opening; the
    connected component with the largest centre-weighted area (dermoscopy centres the
    lesion, while vignette shadows sit at the corners); holes filled; scaled back up.
    On 107 HAM10000 images with published masks this gives mean IoU 0.70.
    """
    height, width = image.shape[:2]
    scale = work_size / max(height, width)
    small = resize.resize_array(image, *resize.scaled_size(height, width, scale), "area").astype(np.float32)
    h, w = small.shape[:2]
    darkest = ndi.gaussian_filter(ndi.grey_closing(small.min(axis=-1), size=(7, 7)), sigma=2)
    luminance = ndi.gaussian_filter(small @ np.array([0.299, 0.587, 0.114], np.float32), 2)
    in_view = luminance > 40
    blob = None
    if in_view.sum() > 16 and np.ptp(darkest[in_view]) > 0:
        foreground = (darkest < threshold_otsu(darkest[in_view])) & in_view
        foreground = ndi.binary_opening(ndi.binary_closing(foreground, iterations=3), iterations=2)
        labels, count = ndi.label(foreground)
        if count:
            yy, xx = np.mgrid[:h, :w]
            radius = np.hypot((yy + 0.5 - h / 2) / (h / 2), (xx + 0.5 - w / 2) / (w / 2))
            index = np.arange(1, count + 1)
            score = ndi.sum(np.clip(1.0 - radius, 0.0, None), labels, index)
            blob = ndi.binary_fill_holes(labels == index[np.argmax(score)])
    if blob is not None and 0.005 <= blob.mean() <= 0.95:
        mask = resize.resize_masks(blob[:, :, None], height, width)[:, :, 0]
        if mask.any():
            return mask, "otsu"
    return centred_ellipse(height, width), "ellipse"


############################################################
#  Datasets
############################################################

class ISICDataset(utils.Dataset):
    """Shared loading, splitting and validation for the three ISIC 2018 tasks.

    After `load_isic`:
      skipped           list of (item, reason): items left out, one line each
      missing_masks     list of (item, reason): ground truth absent but treated as empty
      mask_fallback_ids isic ids whose mask is approximated from the image (Task 3)
      load_summary      counts and validation cost (wall clock), also logged

    Measured validation cost: about 10 ms per image for the 1022x767 and 600x450 sample
    images; about 0.3 s for a 6688x4459 image, mostly the full decode of its mask PNG.
    """

    TASK = None
    VALIDATION_THREADS = min(4, os.cpu_count() or 1)

    def __init__(self, class_map=None):
        super().__init__(class_map)
        self.skipped = []
        self.missing_masks = []
        self.mask_fallback_ids = []
        self.orphan_masks = []
        self.load_summary = {}
        self._skip_kinds = collections.Counter()

    # --- subclass hooks -------------------------------------------------------------

    def _required_dirs(self, root, split):
        """[(path, what it holds)] that must exist."""
        raise NotImplementedError

    def _candidates(self, root, split):
        """Sorted list of (isic_id, raw item dict) found in the folders."""
        raise NotImplementedError

    def _validate(self, isic_id, item):
        """image_info extras for a good item; raises _BadItem for a bad one."""
        raise NotImplementedError

    def _split_classes(self, candidates):
        """{isic_id: tuple of class names} the split is stratified by, or None for an
        unstratified split (Task 1: one class). Read before validation, so it must not fail
        on a bad item: an unreadable item has no classes (and is skipped later)."""
        return None

    # --- loading --------------------------------------------------------------------

    def load_isic(self, dataset_dir, subset="train", split="Training", val_fraction=0.2,
                  seed=42, limit=None):
        """Register the classes and the valid images of one subset of one split.

        subset: "train" or "val" (a seeded split of `split`, by lesion_id when
        HAM10000_metadata.csv is in the root), or "all". limit: keep at most this many
        valid images (the first ones in id order).
        """
        if subset not in SUBSETS:
            raise DatasetError(f"unknown subset '{subset}'; expected one of {', '.join(SUBSETS)}")
        if split not in layout.SPLITS:
            raise DatasetError(f"unknown split '{split}'; expected one of {', '.join(layout.SPLITS)}")
        root = pathlib.Path(dataset_dir)
        self._check_layout(root, split)
        self.root, self.split, self.subset = root, split, subset
        for class_id, name in enumerate(layout.CLASS_NAMES[self.TASK], start=1):
            self.add_class(SOURCE, class_id, name)

        metadata_path = root / layout.HAM10000_METADATA_CSV
        self.metadata = read_ham10000_metadata(metadata_path) if metadata_path.is_file() else {}
        candidates = self._candidates(root, split)
        ids = [isic_id for isic_id, _ in candidates]
        groups = [self._lesion_id(i) or i for i in ids] if self.metadata else None
        classes = self._split_classes(candidates)
        labels = None if classes is None else rarest_labels([classes[i] for i in ids])
        train_ids, val_ids = split_ids(ids, groups, val_fraction, seed, labels=labels)
        # What a run records of its split (isic.modes.run_folders.write_split).
        self.split_seed, self.val_fraction, self.split_val_ids = seed, val_fraction, list(val_ids)
        self.split_stratified = classes is not None
        # Images per class on each side of the split, counted over the candidates (before
        # validation skips any): {"train": {class: n}, "val": {class: n}}, or None (Task 1).
        self.split_class_counts = None if classes is None else {
            "train": class_counts(train_ids, classes), "val": class_counts(val_ids, classes)}
        chosen = {"train": set(train_ids), "val": set(val_ids), "all": set(ids)}[subset]
        selected = [(i, item) for i, item in candidates if i in chosen]

        started = time.perf_counter()
        loaded = 0
        progress = tqdm(total=len(selected), desc=f"Checking {self.TASK} images", unit="img",
                        leave=False, disable=True if len(selected) < 100 else None)
        for isic_id, item, outcome in self._validate_all(selected):
            progress.update()
            if limit is not None and loaded >= limit:
                break
            if isinstance(outcome, _BadItem):
                self._skip(item.get("image_path") or isic_id, outcome)
                continue
            self._record(isic_id, outcome)
            path = outcome.pop("path")
            self.add_image(SOURCE, isic_id, str(path), isic_id=isic_id,
                           lesion_id=self._lesion_id(isic_id), **outcome)
            loaded += 1
        progress.close()
        self._summarise(loaded, len(candidates), time.perf_counter() - started)

    def _validate_all(self, selected, chunk=32):
        """Yield (isic_id, item, extras or _BadItem) in order, validating on threads.

        PIL releases the GIL while decoding, so a few threads overlap the file reads and
        decodes; results are consumed in order, so the outcome does not depend on timing.
        Work goes out in chunks, so that a small `limit` does not validate everything.
        """
        def validate(pair):
            try:
                return self._validate(*pair)
            except _BadItem as bad:
                return bad

        with concurrent.futures.ThreadPoolExecutor(self.VALIDATION_THREADS) as pool:
            for start in range(0, len(selected), chunk):
                part = selected[start:start + chunk]
                for (isic_id, item), outcome in zip(part, pool.map(validate, part)):
                    yield isic_id, item, outcome

    def _record(self, isic_id, extras):
        """Bookkeeping for an accepted item (runs on the main thread, in id order)."""

    def _check_layout(self, root, split):
        if not root.is_dir():
            raise DatasetError(
                f"dataset folder {root} not found: expected the official ISIC 2018 layout "
                f"({', '.join(str(d) for d, _ in self._required_dirs(pathlib.Path(), split))}); "
                f"download the ISIC 2018 data from {DATA_URL}")
        for path, what in self._required_dirs(root, split):
            if not path.exists():
                raise DatasetError(
                    f"{path} not found: the {self.TASK} task needs {what} of the {split} split "
                    f"in the official ISIC 2018 layout (isic2018/README.md); download it from {DATA_URL}")

    def _lesion_id(self, isic_id):
        return self.metadata.get(isic_id, {}).get("lesion_id")

    def _skip(self, item, bad):
        self.skipped.append((str(item), str(bad)))
        self._skip_kinds[bad.kind] += 1
        log.warning("Skipped %s", bad)

    def _summarise(self, loaded, found, seconds):
        per_image = seconds / max(1, loaded + sum(self._skip_kinds.values()))
        self.load_summary = {
            "task": self.TASK, "split": self.split, "subset": self.subset,
            "found": found, "loaded": loaded,
            "skipped": dict(self._skip_kinds),
            "missing_masks": len(self.missing_masks),
            "mask_fallback": len(self.mask_fallback_ids),
            "validation_seconds": round(seconds, 3),
            "validation_ms_per_image": round(1000 * per_image, 2),
        }
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(self._skip_kinds.items())) or "none"
        log.info("ISIC %s %s/%s: loaded %d images, skipped %d (%s); validation %.1f ms/image (wall)",
                 self.TASK, self.split, self.subset, loaded, sum(self._skip_kinds.values()),
                 skipped, 1000 * per_image)

    # --- Matterport API -------------------------------------------------------------

    def load_image(self, image_id):
        """[H, W, 3] uint8 RGB through `isic.data.images.read_rgb` (grey, palette and RGBA
        converted; 16-bit scaled to 8 bits). EXIF orientation is ignored: masks are
        aligned to stored pixels."""
        return images.read_rgb(self.image_info[image_id]["path"])

    def image_reference(self, image_id):
        return self.image_info[image_id]["path"]

    def image_cache_sources(self, image_id):
        """(files, tag) that decide load_image and load_mask (mrcnn.data.image_cache's key)."""
        info = self.image_info[image_id]
        return [info["path"]] + self._mask_files(info), {"task": self.TASK, **self._mask_tag(info)}

    def _mask_files(self, info):
        return []

    def _mask_tag(self, info):
        return {}

    def image_class_ids(self, image_id):
        """The class ids of an image's instances without decoding its masks (for class-balanced
        sampling, mrcnn.data.balancing): Task 1 [1] (or [] for an empty mask), Task 2 the present
        attributes, Task 3 [diagnosis]."""
        info = self.image_info[image_id]
        if self.TASK == "classification":
            return [info["class_id"]]
        if self.TASK == "attributes":
            return [layout.ATTRIBUTES.index(a) + 1 for a in info["attributes"]]
        return [] if info.get("mask_empty") else [1]

    def _no_instances(self, image_id):
        info = self.image_info[image_id]
        return (np.zeros((info["height"], info["width"], 0), bool), np.zeros((0,), np.int32))


def _scan_images(folder):
    """{isic_id: path} of the images in a folder, plus [(file, reason)] for odd names.

    Files without an image extension (ATTRIBUTION.txt, LICENSE.txt in the official
    zips) are ignored.
    """
    found, odd = {}, []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if not layout.ISIC_ID_RE.fullmatch(path.stem):
            odd.append((path, _BadItem("bad file name", f"{path.name} is not named ISIC_<7 digits>"
                                       f"{path.suffix}")))
        elif path.stem in found:
            odd.append((path, _BadItem("duplicate image",
                                       f"{path.name} repeats id {path.stem} ({found[path.stem].name})")))
        else:
            found[path.stem] = path
    return found, odd


class _Task12Dataset(ISICDataset):
    """Tasks 1 and 2 share the input folder ISIC2018_Task1-2_<split>_Input."""

    def _input_dir(self, root, split):
        return root / layout.TASK12_INPUT_DIR.format(split=split)

    def _gt_dir(self, root, split):
        raise NotImplementedError

    def _candidates(self, root, split):
        found, odd = _scan_images(self._input_dir(root, split))
        for path, bad in odd:
            self._skip(path, bad)
        self._warn_orphan_masks(self._gt_dir(root, split), self._input_dir(root, split),
                                set(found) | {layout.isic_id(p.name) for p, _ in odd})
        return [(i, {"image_path": p}) for i, p in sorted(found.items())]

    def _warn_orphan_masks(self, gt_dir, input_dir, image_ids, shown=10):
        """Warn, naming each file, about ground-truth masks whose image is not in the input
        folder: they are not used, which is rarely what was meant."""
        self.orphan_masks = [p for p in sorted(gt_dir.glob("*.png"))
                             if layout.isic_id(p.name) not in image_ids]
        for path in self.orphan_masks[:shown]:
            log.warning("Mask %s has no image %s.* in %s; it is not used", path,
                        layout.isic_id(path.name) or path.stem, input_dir)
        if len(self.orphan_masks) > shown:
            log.warning("... and %d more masks without an image in %s", len(self.orphan_masks) - shown,
                        gt_dir)


class ISICSegmentationDataset(_Task12Dataset):
    """Task 1: one instance of class `lesion` per image (none when the mask is empty)."""

    TASK = "segmentation"

    def _required_dirs(self, root, split):
        return [(self._input_dir(root, split), "the input images"),
                (self._gt_dir(root, split), "the lesion masks")]

    def _gt_dir(self, root, split):
        return root / layout.TASK1_GT_DIR.format(split=split)

    def _record(self, isic_id, extras):
        if extras["mask_empty"]:
            log.warning("Mask %s is all black (no lesion): the Task 1 score counts this image as "
                        "Jaccard 0 against any prediction", extras["mask_path"])

    def _validate(self, isic_id, item):
        height, width = check_image(item["image_path"])
        mask_path = (self.root / layout.TASK1_GT_DIR.format(split=self.split)
                     / layout.segmentation_name(isic_id))
        if not mask_path.is_file():
            raise _BadItem("missing mask", f"{mask_path} not found for {item['image_path'].name}")
        non_empty = check_mask(mask_path, height, width)
        meta = self.metadata.get(isic_id, {})
        return {"path": item["image_path"], "height": height, "width": width,
                "mask_path": str(mask_path), "mask_empty": not non_empty,
                "diagnosis": meta.get("dx")}

    def _mask_files(self, info):
        return [] if info["mask_empty"] else [info["mask_path"]]

    def _mask_tag(self, info):
        return {"mask_empty": info["mask_empty"]}

    def load_mask(self, image_id):
        """([H, W, N] bool, [N] int32): the lesion, N = 1, or N = 0 for an empty mask."""
        info = self.image_info[image_id]
        if info["mask_empty"]:
            return self._no_instances(image_id)
        mask = read_mask(info["mask_path"])
        return mask[..., None], np.ones((1,), np.int32)


class ISICAttributesDataset(_Task12Dataset):
    """Task 2: the five dermoscopic attributes as instances, class ids 1..5.

    ATTRIBUTE_INSTANCES = "per_attribute" (default): each non-empty attribute mask is
    one instance. The attributes are textures spread over the lesion (a pigment network
    is a mesh, globules are dozens of dots), the ISIC deliverable and metric are one
    mask per attribute per image, and splitting into connected components gives many
    instances of a few pixels: below the smallest anchors, unlearnable by a 28x28 mask
    head and able to exceed MAX_GT_INSTANCES. "components" gives one instance per
    8-connected component of at least MIN_COMPONENT_PIXELS pixels, for experiments.
    Images without any attribute have zero instances and are kept as negatives.
    A missing attribute file counts as an empty mask and is listed in `missing_masks`.
    """

    TASK = "attributes"
    ATTRIBUTE_INSTANCES = "per_attribute"
    MIN_COMPONENT_PIXELS = 16

    def _required_dirs(self, root, split):
        return [(self._input_dir(root, split), "the input images"),
                (self._gt_dir(root, split), "the attribute masks")]

    def _gt_dir(self, root, split):
        return root / layout.task2_gt_dir(split)

    def _split_classes(self, candidates):
        """{isic_id: attributes whose mask has foreground}: the split is stratified by each
        image's rarest attribute (streaks and negative network are in 4-7 % of the images).
        Reading every mask costs about as much as validating them; results are memoised per
        file (path, size, mtime), so the train and val loads of one process read each once."""
        gt_dir = self._gt_dir(self.root, self.split)
        paths = [(isic_id, a, gt_dir / layout.attribute_name(isic_id, a))
                 for isic_id, _ in candidates for a in layout.ATTRIBUTES]
        present = {isic_id: [] for isic_id, _ in candidates}
        with concurrent.futures.ThreadPoolExecutor(self.VALIDATION_THREADS) as pool:
            flags = pool.map(lambda t: mask_has_foreground(t[2]), paths, chunksize=16)
            for (isic_id, attribute, _), flag in tqdm(zip(paths, flags), total=len(paths), leave=False,
                                                      desc="Reading attribute masks for the split",
                                                      unit="mask", disable=True if len(paths) < 500 else None):
                if flag:
                    present[isic_id].append(attribute)
        return {isic_id: tuple(found) for isic_id, found in present.items()}

    def _validate(self, isic_id, item):
        height, width = check_image(item["image_path"])
        gt_dir = self.root / layout.task2_gt_dir(self.split)
        mask_paths, present, missing = {}, [], []
        for attribute in layout.ATTRIBUTES:
            path = gt_dir / layout.attribute_name(isic_id, attribute)
            if not path.is_file():
                missing.append((str(path), attribute))
                continue
            if check_mask(path, height, width):
                mask_paths[attribute] = str(path)
                present.append(attribute)
        meta = self.metadata.get(isic_id, {})
        return {"path": item["image_path"], "height": height, "width": width,
                "mask_paths": mask_paths, "attributes": present,
                "missing_attributes": [a for _, a in missing], "diagnosis": meta.get("dx")}

    def _record(self, isic_id, extras):
        gt_dir = self.root / layout.task2_gt_dir(self.split)
        for attribute in extras["missing_attributes"]:
            self.missing_masks.append((str(gt_dir / layout.attribute_name(isic_id, attribute)),
                                       f"missing {attribute} mask, treated as empty"))

    def _summarise(self, loaded, found, seconds):
        super()._summarise(loaded, found, seconds)
        if self.missing_masks:
            per_attribute = collections.Counter(
                a for info in self.image_info for a in info["missing_attributes"])
            log.warning("ISIC attributes: %d attribute masks missing, treated as empty (%s)",
                        len(self.missing_masks),
                        ", ".join(f"{a} {n}" for a, n in per_attribute.items()))

    def _mask_files(self, info):
        return [info["mask_paths"][a] for a in info["attributes"]]

    def _mask_tag(self, info):
        return {"attributes": info["attributes"], "instances": self.ATTRIBUTE_INSTANCES,
                "min_component_pixels": self.MIN_COMPONENT_PIXELS}

    def load_mask(self, image_id):
        """([H, W, N] bool, [N] int32); N = 0 for an image without attributes."""
        if self.ATTRIBUTE_INSTANCES not in ("per_attribute", "components"):
            raise ValueError(f"ATTRIBUTE_INSTANCES must be 'per_attribute' or 'components', "
                             f"got {self.ATTRIBUTE_INSTANCES!r}")
        info = self.image_info[image_id]
        masks, class_ids = [], []
        for attribute in info["attributes"]:
            class_id = layout.ATTRIBUTES.index(attribute) + 1
            mask = read_mask(info["mask_paths"][attribute])
            if self.ATTRIBUTE_INSTANCES == "per_attribute":
                masks.append(mask)
                class_ids.append(class_id)
                continue
            labels, count = ndi.label(mask, structure=np.ones((3, 3), bool))
            sizes = np.bincount(labels.ravel(), minlength=count + 1)
            for label in range(1, count + 1):
                if sizes[label] >= self.MIN_COMPONENT_PIXELS:
                    masks.append(labels == label)
                    class_ids.append(class_id)
        if not masks:
            return self._no_instances(image_id)
        return np.stack(masks, axis=-1), np.array(class_ids, np.int32)


def _one_hot_diagnosis(values):
    """[diagnosis] of a one-hot Task 3 row, [] for anything else (validation names the problem)."""
    try:
        numbers = [float(v) for v in values or ()]
    except ValueError:
        return []
    if len(numbers) != len(layout.DIAGNOSES) or sorted(numbers) != [0.0] * (len(numbers) - 1) + [1.0]:
        return []
    return [layout.DIAGNOSES[numbers.index(1.0)]]


def _csv_label(values):
    """A Task 3 row's diagnosis for messages: the class name of a one-hot row, else its values."""
    if values is None:
        return "(malformed row)"
    ones = [name for name, v in zip(layout.DIAGNOSES, values) if v in ("1", "1.0")]
    return ones[0] if len(ones) == 1 else ",".join(values)


class ISICClassificationDataset(ISICDataset):
    """Task 3: one lesion instance per image carrying its diagnosis, class ids 1..7.

    The mask is the HAM10000 lesion segmentation when it is in the root; otherwise
    (folder or file absent, or an empty mask) it is approximated from the image by
    `approximate_lesion_mask`, and the image id is listed in `mask_fallback_ids`.
    """

    TASK = "classification"

    def _required_dirs(self, root, split):
        return [(root / layout.TASK3_INPUT_DIR.format(split=split), "the input images"),
                (self._csv_path(root, split), "the ground-truth CSV")]

    @staticmethod
    def _csv_path(root, split):
        return (root / layout.TASK3_GT_DIR.format(split=split)
                / layout.TASK3_GT_CSV.format(split=split))

    def _read_csv(self, path):
        """{isic_id: Task3Row} (csvfiles.read_task3_truth). A repeated id keeps its first row;
        the repeat is skipped with a warning naming the file, both lines and, when they
        disagree, both labels."""
        table, repeats = csvfiles.read_task3_truth(path, DatasetError)
        for row, isic_id, first in repeats:
            if row.values == first.values:
                bad = _BadItem("duplicate CSV row", f"{path} line {row.line}: {isic_id} repeats "
                               f"line {first.line}; the repeat is ignored")
            else:
                bad = _BadItem("conflicting CSV rows", f"{path} line {row.line}: {isic_id} is "
                               f"labelled {_csv_label(row.values)} here but {_csv_label(first.values)} "
                               f"on line {first.line}; keeping line {first.line}")
            self._skip(f"{path.name} line {row.line}", bad)
        return table

    def _candidates(self, root, split):
        csv_path = self._csv_path(root, split)
        table = self._read_csv(csv_path)
        images, odd = _scan_images(root / layout.TASK3_INPUT_DIR.format(split=split))
        for path, bad in odd:
            self._skip(path, bad)
        items = {}
        for isic_id, row in table.items():
            items[isic_id] = {"image_path": images.get(isic_id), "row": row.values,
                              "line": f"{csv_path.name} line {row.line}"}
        for isic_id, path in images.items():
            if isic_id not in items:
                items[isic_id] = {"image_path": path, "row": None, "line": None}
        self._mask_dir = root / layout.HAM10000_MASK_DIR
        return sorted(items.items())

    def _split_classes(self, candidates):
        """{isic_id: (diagnosis,)} from the CSV's one-hot rows (no class for a bad row)."""
        return {isic_id: tuple(_one_hot_diagnosis(item.get("row"))) for isic_id, item in candidates}

    def _validate(self, isic_id, item):
        if item["line"] is None:
            raise _BadItem("no CSV row", f"{item['image_path'].name} has no row in "
                           f"{layout.TASK3_GT_CSV.format(split=self.split)}")
        values = item["row"]
        if values is None:
            raise _BadItem("malformed CSV row", f"{item['line']} ({isic_id}) does not have "
                           f"{len(layout.TASK3_CSV_HEADER)} fields")
        try:
            numbers = [float(v) for v in values]
        except ValueError:
            numbers = None
        if numbers is None or sorted(numbers) != [0.0] * (len(numbers) - 1) + [1.0]:
            raise _BadItem("CSV row not one-hot",
                           f"{item['line']} ({isic_id}) is not one-hot: {','.join(values)}")
        diagnosis = layout.DIAGNOSES[numbers.index(1.0)]
        if item["image_path"] is None:
            raise _BadItem("image file missing", f"{item['line']} names {isic_id}, which is not in "
                           f"{layout.TASK3_INPUT_DIR.format(split=self.split)}")
        height, width = check_image(item["image_path"])
        mask_path = self._mask_dir / layout.segmentation_name(isic_id)
        mask_source = "ham10000"
        if not mask_path.is_file() or not check_mask(mask_path, height, width):
            mask_path, mask_source = None, "approximation"
        return {"path": item["image_path"], "height": height, "width": width,
                "diagnosis": diagnosis, "class_id": layout.DIAGNOSES.index(diagnosis) + 1,
                "mask_path": None if mask_path is None else str(mask_path),
                "mask_source": mask_source}

    def _record(self, isic_id, extras):
        if extras["mask_source"] == "approximation":
            self.mask_fallback_ids.append(isic_id)

    def _summarise(self, loaded, found, seconds):
        super()._summarise(loaded, found, seconds)
        if self.mask_fallback_ids:
            where = ("folder absent" if not self._mask_dir.is_dir() else "files absent or empty")
            log.warning("ISIC classification: %d of %d images have no HAM10000 lesion mask "
                        "(%s: %s); their masks are approximated from the image "
                        "(see mask_fallback_ids)", len(self.mask_fallback_ids), loaded,
                        layout.HAM10000_MASK_DIR, where)

    def _mask_files(self, info):
        return [] if info["mask_path"] is None else [info["mask_path"]]

    def _mask_tag(self, info):
        return {"class_id": info["class_id"], "mask_source": info["mask_source"]}

    def load_mask(self, image_id):
        """([H, W, 1] bool, [1] int32): the lesion with its diagnosis class id."""
        info = self.image_info[image_id]
        if info["mask_path"] is not None:
            mask = read_mask(info["mask_path"])
        else:
            mask, method = approximate_lesion_mask(self.load_image(image_id))
            if method != "otsu" and info.get("approximation") != method:
                log.info("%s: no plausible lesion blob, using a centred ellipse", info["id"])
            info["approximation"] = method
        return mask[..., None], np.array([info["class_id"]], np.int32)


TASK_DATASETS = {
    "segmentation": ISICSegmentationDataset,
    "attributes": ISICAttributesDataset,
    "classification": ISICClassificationDataset,
}


def dataset_for_task(task):
    """The Dataset class of a task name ('segmentation', 'attributes', 'classification')."""
    try:
        return TASK_DATASETS[task]
    except KeyError:
        raise DatasetError(f"unknown task '{task}'; expected one of "
                           f"{', '.join(layout.TASKS)}") from None
