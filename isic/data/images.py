"""Reading image files: the one place that turns an image file into RGB uint8 pixels
(`read_rgb`) and a mask file into its single-channel values (`read_mask`).

Predict and every dataset loader read through `read_rgb`, so an unusual file means the
same thing everywhere:
- 8-bit files (grey, palette, RGB, RGBA, CMYK, YCbCr) are converted to RGB by Pillow.
- 16-bit files (PNG/TIFF grey modes I;16*, and mode I with values in 0..65535) are scaled
  to 8 bits (value / 257, rounded), not clipped: a plain RGB conversion would clip every
  pixel above 255 and turn the image white. Said once per file in the log.
  (Pillow itself reads 16-bit RGB PNGs as 8-bit RGB from their high bytes.)
- Files that cannot be converted sensibly (32-bit float images, mode I beyond 16 bits,
  colour spaces Pillow cannot convert to RGB) and files over Pillow's decompression-bomb
  limit raise `ImageReadError`: a bad item that callers name and skip.
"""
import logging
import re
import threading

import numpy as np
from PIL import Image, UnidentifiedImageError

from isic.errors import UserError

log = logging.getLogger(__name__)

# Pillow refuses to open an image with more pixels than this (2 x Image.MAX_IMAGE_PIXELS,
# its decompression-bomb guard): 178,956,970 pixels, e.g. 16,000 x 11,000.
MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS
EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX",
                             "CMYK", "YCbCr"})
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)
_scaled_logged = set()
_scaled_lock = threading.Lock()


class ImageReadError(UserError):
    """One image file cannot be used; `kind` names the class of problem (for tallies)."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


def _open(path):
    """Image.open with Pillow's errors turned into ImageReadError."""
    try:
        return Image.open(path)
    except Image.DecompressionBombError as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(found.group(1)):,} pixels" if found else "more pixels than that"
        raise ImageReadError("image too large",
                             f"{path} is too large to read: {size}, over the limit of {MAX_PIXELS:,} "
                             f"(Pillow's decompression-bomb guard)") from None
    except UnidentifiedImageError:
        raise ImageReadError("not an image", f"{path} is not an image file PIL can read") from None
    except _DECODE_ERRORS as e:
        raise ImageReadError("corrupt image", f"{path} cannot be read ({e})") from None


def _check_mode(path, mode):
    if mode not in EIGHT_BIT_MODES and mode not in SIXTEEN_BIT_MODES:
        raise ImageReadError("unsupported image mode",
                             f"{path} has pixel mode {mode}, which has no defined conversion "
                             f"to 8-bit RGB (expected 8-bit or 16-bit grey or colour)")


def inspect_image(path, decode=True):
    """(height, width) of an image file that `read_rgb` can read; ImageReadError otherwise.

    decode=False reads the header only (size, pixel mode, the decompression-bomb guard).
    decode=True also decodes the pixels, JPEGs at 1/8 scale: that reads every entropy-coded
    block (so truncated or garbled files fail) at a fraction of a full decode's cost.
    """
    with _open(path) as im:
        width, height = im.size
        _check_mode(path, im.mode)
        if decode:
            try:
                if im.format == "JPEG":
                    im.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                im.load()
            except _DECODE_ERRORS as e:
                raise ImageReadError("corrupt image", f"{path} cannot be decoded ({e})") from None
    if width < 1 or height < 1:
        raise ImageReadError("corrupt image", f"{path} has size {width}x{height}")
    return height, width


def _sixteen_to_eight(path, im):
    """[H, W, 3] uint8 from a 16-bit grey image, value / 257 rounded."""
    values = np.asarray(im, dtype=np.int64)  # [H, W]
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ImageReadError("unsupported image mode",
                             f"{path} has 32-bit integer pixels outside 0..65535 "
                             f"({values.min()}..{values.max()}); no defined scaling to 8 bits")
    grey = ((values * 255 + 32767) // 65535).astype(np.uint8)
    with _scaled_lock:
        first = str(path) not in _scaled_logged
        _scaled_logged.add(str(path))
    if first:
        log.info("%s: %s image (16 bits per pixel), read scaled to 8 bits", path, im.mode)
    return np.repeat(grey[..., None], 3, axis=-1)


def read_rgb(path):
    """[H, W, 3] uint8 RGB pixels of an image file; ImageReadError when it cannot be used.

    EXIF orientation is deliberately ignored: masks are aligned to stored pixels.
    """
    with _open(path) as im:
        _check_mode(path, im.mode)
        try:
            im.load()
            if im.mode in SIXTEEN_BIT_MODES:
                return _sixteen_to_eight(path, im)
            return np.array(im.convert("RGB"), dtype=np.uint8)
        except _DECODE_ERRORS as e:
            raise ImageReadError("corrupt image", f"{path} cannot be decoded ({e})") from None


def read_mask(path):
    """A mask file as [H, W] uint8 values (the ISIC scorer's rules: Pillow mode L, or mode 1
    read as 0/255); ImageReadError for any other mode or an unreadable file. Callers
    threshold it (the scorer and the datasets use > 128)."""
    with _open(path) as im:
        try:
            im.load()
        except _DECODE_ERRORS as e:
            raise ImageReadError("corrupt mask", f"{path} cannot be read ({e})") from None
        if im.mode == "1":
            im = im.convert("L")
        if im.mode != "L":
            raise ImageReadError("mask not single-channel",
                                 f"{path} is not single-channel greyscale (PIL mode {im.mode}); "
                                 "save masks as 8-bit mode L PNGs")
        return np.array(im)
