"""On-disk cache of training images and masks, decoded and resized for a Config.

A full-size dermoscopy JPEG (30 megapixels) costs about 0.3 s to decode before any
resizing; the network sees it at IMAGE_MAX_DIM. The first time an image is loaded for a
training or validation batch, `load_resized` stores the resized image, its resized masks
and everything `load_image_gt` needs to place them (window, scale, padding, original
shape, class ids) in one .npz file; later epochs and later runs read that file instead.

Where: $MRCNN_IMAGE_CACHE_DIR, else $MRCNN_CACHE_DIR/images, else
~/.cache/isic-mrcnn/images. Off: Config.IMAGE_CACHE = False (`--set IMAGE_CACHE=false`).

Which images: those of a dataset that names the files its image and masks come from,
through `image_cache_sources(image_id) -> (paths, tag)` (the ISIC datasets do; the tag is
a JSON-able value for whatever else shapes load_image/load_mask, e.g. a Task 3 class id).
Datasets without that method, and IMAGE_RESIZE_MODE "crop" (a new random crop every
time, taken from an image that is not shrunk), are never cached.

Entry file name: a hash of the dataset class, the source paths and the resize settings
(IMAGE_MIN_DIM, IMAGE_MAX_DIM, IMAGE_MIN_SCALE, IMAGE_RESIZE_MODE, IMAGE_CHANNEL_COUNT),
so runs at other sizes keep their own entries. The entry also holds its full key (every
source file's size and mtime in ns, the tag, the settings); a key that differs (a source
file was replaced) or a file that does not read back whole (zip CRC, shapes) is rebuilt
and overwritten, never used. Writes go to a temporary file renamed into place, so
concurrent data threads or processes see either no entry or a complete one.
"""
import collections
import hashlib
import io
import json
import logging
import os
import pathlib
import threading
import zipfile

import numpy as np

from mrcnn.io import atomic, download

log = logging.getLogger(__name__)

CACHE_ENV_VAR = "MRCNN_IMAGE_CACHE_DIR"
FORMAT_VERSION = 3  # 2: masks and images resized by mrcnn.data.resize ("area"); 3: uint8 area in float64
# The Config values that decide the resized arrays.
RESIZE_SETTINGS = ("IMAGE_MIN_DIM", "IMAGE_MAX_DIM", "IMAGE_MIN_SCALE", "IMAGE_RESIZE_MODE",
                   "IMAGE_CHANNEL_COUNT")
_READ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError)

# What the cache did in this process: hits, writes, rebuilt (stale or corrupt), uncached.
STATS = collections.Counter()
_stats_lock = threading.Lock()
_warned_unwritable = set()


class ResizedItem(collections.namedtuple(
        "ResizedItem", "image mask class_ids original_shape window scale padding crop")):
    """One image ready for load_image_gt's augmentation step.
    image [H, W, C] uint8; mask [H, W, N] bool; class_ids [N] int32; original_shape
    (h, w, c) of the decoded source; window (y1, x1, y2, x2); scale float; padding
    [(top, bottom), (left, right), (0, 0)]; crop (y, x, h, w) or None."""


def cache_dir():
    """$MRCNN_IMAGE_CACHE_DIR, else $MRCNN_CACHE_DIR/images, else ~/.cache/isic-mrcnn/images."""
    env = os.environ.get(CACHE_ENV_VAR)
    return pathlib.Path(env).expanduser() if env else download.default_cache_dir() / "images"


def _count(name):
    with _stats_lock:
        STATS[name] += 1


def entry_key(dataset, config, image_id):
    """(file name, full key as JSON text) of an image's entry, or None when it is not cacheable."""
    if not getattr(config, "IMAGE_CACHE", False) or config.IMAGE_RESIZE_MODE == "crop":
        return None
    sources = getattr(dataset, "image_cache_sources", None)
    described = sources(image_id) if sources is not None else None
    if described is None:
        return None
    paths, tag = described
    files = []
    for path in paths:
        path = os.path.abspath(os.fspath(path))
        stat = os.stat(path)
        files.append([path, stat.st_size, stat.st_mtime_ns])
    settings = {name: _plain(getattr(config, name)) for name in RESIZE_SETTINGS}
    method = getattr(config, "RESIZE_METHOD", None) or "area"
    if method != "area":  # "area" entries keep the names they had before Config.RESIZE_METHOD
        settings["RESIZE_METHOD"] = method
    owner = f"{type(dataset).__module__}.{type(dataset).__qualname__}"
    name_fields = [FORMAT_VERSION, owner, [f[0] for f in files], settings]
    name = hashlib.sha256(json.dumps(name_fields, sort_keys=True).encode()).hexdigest()[:40] + ".npz"
    key = json.dumps({"version": FORMAT_VERSION, "dataset": owner, "files": files, "tag": tag,
                      "settings": settings}, sort_keys=True)
    return name, key


def load_resized(dataset, config, image_id, build):
    """The ResizedItem of `image_id`: read from the cache when a valid entry exists, else
    `build(dataset, config, image_id)` (and stored when the image is cacheable)."""
    keyed = entry_key(dataset, config, image_id)
    if keyed is None:
        _count("uncached")
        return build(dataset, config, image_id)
    name, key = keyed
    path = cache_dir() / name
    if path.is_file():
        try:
            item = read_entry(path, key)
        except StaleEntry as e:
            log.debug("image cache: rebuilding %s for %s (%s)", path.name, dataset.image_reference(image_id), e)
            item = None
        except _READ_ERRORS as e:
            log.warning("image cache: rebuilding unreadable %s for %s (%s: %s)", path.name,
                        dataset.image_reference(image_id), type(e).__name__, e)
            item = None
        if item is not None:
            _count("hits")
            return item
        _count("rebuilt")
    item = build(dataset, config, image_id)
    if item.crop is None:
        write_entry(path, key, item)
    return item


class StaleEntry(ValueError):
    """The entry was written for other source files or settings."""


def read_entry(path, key):
    """The ResizedItem stored at `path`; raises when it is stale (another key) or unreadable."""
    with np.load(path, allow_pickle=False) as z:
        if bytes(z["key"]).decode() != key:
            raise StaleEntry("source file or settings changed")
        image = z["image"]
        mask_shape = tuple(int(v) for v in z["mask_shape"])
        if len(mask_shape) != 3 or mask_shape[:2] != image.shape[:2]:
            raise ValueError(f"mask shape {mask_shape} does not fit image {image.shape}")
        count = int(np.prod(mask_shape))
        mask = np.unpackbits(z["mask_bits"], count=count).astype(bool).reshape(mask_shape)
        class_ids = z["class_ids"].astype(np.int32)
        if class_ids.shape != (mask_shape[2],):
            raise ValueError(f"{class_ids.size} class ids for {mask_shape[2]} masks")
        original_shape = tuple(int(v) for v in z["original_shape"])
        window = tuple(int(v) for v in z["window"])
        scale = float(z["scale"])
        padding = [tuple(int(v) for v in pair) for pair in z["padding"]]
    return ResizedItem(image, mask, class_ids, original_shape, window, scale, padding, None)


def write_entry(path, key, item):
    """Store `item` at `path` atomically (temporary file + rename); a cache folder that
    cannot be written is reported once and training goes on uncached."""
    mask = np.asarray(item.mask, dtype=bool)
    arrays = {"key": np.frombuffer(key.encode(), dtype=np.uint8),
              "image": np.ascontiguousarray(item.image),
              "mask_shape": np.array(mask.shape, np.int64),
              "mask_bits": np.packbits(mask, axis=None),
              "class_ids": np.asarray(item.class_ids, np.int32),
              "original_shape": np.array(item.original_shape, np.int64),
              "window": np.array(item.window, np.int64),
              "scale": np.array(item.scale, np.float64),
              "padding": np.array(item.padding, np.int64).reshape(-1, 2)}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    try:
        atomic.write_bytes(path, buffer.getbuffer(), durable=False)  # regenerable: no fsync
        _count("writes")
    except OSError as e:
        with _stats_lock:
            first = str(path.parent) not in _warned_unwritable
            _warned_unwritable.add(str(path.parent))
        if first:
            log.warning("image cache: cannot write into %s (%s); continuing without caching", path.parent, e)


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    return value
