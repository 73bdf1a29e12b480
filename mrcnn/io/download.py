"""Downloading pretrained weights: streamed with a progress bar, verified (size, checksum,
content), written atomically, and cached so each file is fetched once.

The cache folder is `$MRCNN_CACHE_DIR`, else `~/.cache/isic-mrcnn`.
"""
import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from mrcnn.io import atomic

log = logging.getLogger(__name__)

# Matterport's COCO-trained Mask R-CNN (ResNet-101, 81 classes). No checksum is published,
# so the size and the Keras HDF5 layout are checked instead.
COCO_MODEL_URL = "https://github.com/matterport/Mask_RCNN/releases/download/v2.0/mask_rcnn_coco.h5"
COCO_MODEL_FILENAME = "mask_rcnn_coco.h5"
COCO_MODEL_SIZE = 257_557_808

# The ImageNet ResNet-50 backbone weights (no top) that Matterport's get_imagenet_weights uses.
IMAGENET_RESNET50_URL = ("https://github.com/fchollet/deep-learning-models/releases/download/v0.2/"
                         "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
IMAGENET_RESNET50_FILENAME = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_RESNET50_MD5 = "a268eb855778b3df3c7506639542a6af"

CACHE_ENV_VAR = "MRCNN_CACHE_DIR"
_CHUNK_BYTES = 1 << 20


class DownloadError(RuntimeError):
    """A file could not be downloaded, or the file found is not the expected one."""


def default_cache_dir():
    """The weights cache folder: $MRCNN_CACHE_DIR, else ~/.cache/isic-mrcnn."""
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "isic-mrcnn"


def file_digest(path, algorithm):
    """Hex digest of a file (algorithm: a hashlib name such as "sha256" or "md5")."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_keras_h5(path):
    """Raise DownloadError unless `path` is an HDF5 file in the Keras-2 weights layout
    (a root attribute `layer_names`)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            has_layers = "layer_names" in f.attrs
    except OSError as e:
        raise DownloadError(f"{path} is not a readable HDF5 file ({e}); delete it and retry") from e
    if not has_layers:
        raise DownloadError(f"{path} is an HDF5 file without the Keras 'layer_names' attribute, "
                            f"so it is not a Keras weights file; delete it and retry")


def verify_file(path, sha256=None, expected_size=None, md5=None, check=None):
    """Raise DownloadError if the file's size, SHA-256, MD5 or content check disagree.

    Only the given criteria are checked; `check` is a callable(path) that raises
    DownloadError for a wrong file (for example `check_keras_h5`).
    """
    path = Path(path)
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise DownloadError(f"{path} has {size} bytes, expected {expected_size}")
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected is not None:
            actual = file_digest(path, algorithm)
            if actual.lower() != expected.lower():
                raise DownloadError(f"{path} has {algorithm} {actual}, expected {expected}")
    if check is not None:
        check(path)


def _unreachable(url, dest, reason):
    return DownloadError(f"could not reach {url} ({reason}); download it on a machine with "
                         f"internet access and place it at {dest}")


def download_file(url, dest_path, sha256=None, expected_size=None, md5=None, progress=True,
                  timeout=60, check=None):
    """Download `url` to `dest_path` atomically and verify it.

    The body is streamed into a temporary file in the destination folder (tqdm progress bar
    unless progress=False), checked against the server's Content-Length and the given
    expected_size / sha256 / md5 / check(path), then renamed over dest_path. On any failure
    the temporary file is removed, dest_path is left as it was, and DownloadError is raised.
    Returns: dest_path as a Path.
    """
    dest = Path(dest_path).expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A fresh opener reads the proxy settings of the moment (urlopen caches its opener).
    opener = urllib.request.build_opener()
    try:
        response = opener.open(url, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise DownloadError(f"{url} answered HTTP {e.code} {e.reason}; check the URL, or download "
                            f"the file by hand and place it at {dest}") from e
    except urllib.error.URLError as e:
        raise _unreachable(url, dest, e.reason) from e
    except (OSError, ValueError, http.client.HTTPException) as e:
        raise _unreachable(url, dest, e) from e

    with atomic.atomic_path(dest) as tmp:
        with response, open(tmp, "wb") as out:
            header_length = response.headers.get("Content-Length")
            total = int(header_length) if header_length and header_length.isdigit() else None
            hashes = {name: hashlib.new(name) for name, want in (("sha256", sha256), ("md5", md5))
                      if want is not None}
            written = 0
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=dest.name, disable=not progress, leave=False) as bar:
                while True:
                    try:
                        chunk = response.read(_CHUNK_BYTES)
                    except (OSError, http.client.HTTPException) as e:
                        raise _unreachable(url, dest, f"connection lost after {written} bytes: {e}") from e
                    if not chunk:
                        break
                    out.write(chunk)
                    for digest in hashes.values():
                        digest.update(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
        if total is not None and written != total:
            raise DownloadError(f"{url} sent {written} of {total} bytes; the download was cut short, retry")
        if expected_size is not None and written != expected_size:
            raise DownloadError(f"{url} gave {written} bytes, expected {expected_size}; "
                                f"the file is not the expected one")
        for name, expected in (("sha256", sha256), ("md5", md5)):
            if expected is not None:
                actual = hashes[name].hexdigest()
                if actual.lower() != expected.lower():
                    raise DownloadError(f"{url} gave a file with {name} {actual}, expected {expected}")
        if check is not None:
            check(tmp)
    log.info("Downloaded %s to %s (%d bytes)", url, dest, written)
    return dest


def _ensure_file(url, dest, progress=True, timeout=60, **verify):
    """dest if it exists and passes `verify`, else a fresh download to dest."""
    if dest.is_file():
        try:
            verify_file(dest, **verify)
            log.debug("Using cached %s", dest)
            return dest
        except DownloadError as e:
            log.warning("Cached file is not valid (%s); downloading it again", e)
    return download_file(url, dest, progress=progress, timeout=timeout, **verify)


def cached_download(url, filename, cache_dir=None, **verify):
    """The file `filename` in the cache folder, downloaded from `url` if it is missing or
    fails verification.

    cache_dir: defaults to `default_cache_dir()`.
    verify: sha256, expected_size, md5, check (applied to cached and new files alike),
    and progress, timeout (passed to `download_file`).
    Returns: the file's Path.
    """
    unknown = set(verify) - {"sha256", "expected_size", "md5", "check", "progress", "timeout"}
    if unknown:
        raise TypeError(f"cached_download: unknown argument(s) {', '.join(sorted(unknown))}")
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return _ensure_file(url, folder / filename, **verify)


def download_coco_weights(dest_path=None, progress=True, url=COCO_MODEL_URL,
                          expected_size=COCO_MODEL_SIZE):
    """Matterport's mask_rcnn_coco.h5 at dest_path (default: in the cache folder),
    downloaded unless a valid copy is already there. Checked by size and Keras HDF5 layout.
    """
    verify = dict(expected_size=expected_size, check=check_keras_h5)
    if dest_path is None:
        return cached_download(url, COCO_MODEL_FILENAME, progress=progress, **verify)
    return _ensure_file(url, Path(dest_path).expanduser(), progress=progress, **verify)


def imagenet_resnet50_weights_path(cache_dir=None, progress=True):
    """Path of the ImageNet ResNet-50 no-top weights (Matterport's get_imagenet_weights),
    downloaded into the cache on first use and checked by MD5."""
    return cached_download(IMAGENET_RESNET50_URL, IMAGENET_RESNET50_FILENAME, cache_dir=cache_dir,
                           md5=IMAGENET_RESNET50_MD5, progress=progress)


def download_trained_weights(coco_model_path, verbose=1):
    """Download Matterport's COCO-trained weights to `coco_model_path` (atomically, with
    a progress bar when verbose, and checked for size and HDF5 layout).
    Raises mrcnn.io.download.DownloadError when offline or the file is wrong.
    """
    path = download_coco_weights(coco_model_path, progress=verbose > 0)
    if verbose > 0:
        log.info("COCO weights ready at %s", path)
    return path
