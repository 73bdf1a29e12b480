"""Task 1 mask post-processing, at a bounded cost per image whatever its size.

Mask R-CNN predicts a lesion's mask on a 28x28 (or MASK_SHAPE) grid inside its box, then
scales it up to the box: for one large lesion per image that grid is coarse at the real
size. Two optional steps, chosen with Config values so a run can be reproduced:

- TASK1_TTA_FLIPS: test-time flips. The top detection's mask of the image and of its
  horizontal, vertical and double flips, flipped back, vote pixel by pixel (>= half). The
  network never sees more than IMAGE_MAX_DIM pixels a side, so the flipped views are
  detected on a copy at most FLIP_MAX_SIDE (or IMAGE_MAX_DIM) a side and the vote is
  brought back to full resolution.
- TASK1_MASK_REFINEMENT = "grabcut": the mask seeds OpenCV's GrabCut (sure lesion in its
  core, sure skin beyond a band around it, "probable" in between), which snaps the
  boundary to the image's colour edges; then the largest connected component with its
  holes filled. GrabCut works on the lesion's bounding region with a margin, at a scale
  chosen from the lesion's size (its equivalent diameter at most GRABCUT_DIAMETER pixels),
  and is seeded from the pixels it works on, so a result depends on the image alone.
  "fill" does only the last step. "none" keeps the mask.
"""
import logging
import zlib

import cv2
import numpy as np
from scipy import ndimage as ndi

from isic.outputs import deliverables
from mrcnn.data.resize import resize_array

log = logging.getLogger(__name__)

FLIPS = ((False, False), (True, False), (False, True), (True, True))  # (horizontal, vertical)
FLIP_MAX_SIDE = 1024  # longer side of the copy the flipped views are detected on
GRABCUT_DIAMETER = 400  # lesion's equivalent diameter (px) GrabCut works at, at most


def resize_area(array, shape):
    """`array` resized to shape (height, width) by the one resize's "area" method."""
    return resize_array(array, int(shape[0]), int(shape[1]), "area")


def _flip(array, horizontal, vertical):
    if horizontal:
        array = array[:, ::-1]
    if vertical:
        array = array[::-1]
    return np.ascontiguousarray(array)


def flip_vote_mask(model, image, first_mask=None, max_side=None):
    """[H, W] bool: the per-pixel vote (>= 2 of 4) of the top lesion mask over the 4 flips.

    The views are detected on a copy whose longer side is at most `max_side` (default:
    FLIP_MAX_SIDE or the model's IMAGE_MAX_DIM, whichever is larger); the vote fraction is
    scaled back to the image's size with linear interpolation. `first_mask` is the
    unflipped view's full-size mask when already computed.
    """
    height, width = image.shape[:2]
    if max_side is None:
        max_side = max(FLIP_MAX_SIDE, int(getattr(getattr(model, "config", None), "IMAGE_MAX_DIM", 0) or 0))
    scale = min(1.0, max_side / max(height, width))
    small_shape = (max(1, round(height * scale)), max(1, round(width * scale)))
    small = image if scale == 1.0 else resize_area(image, small_shape)
    votes = np.zeros(small_shape, np.float32)  # [h, w] sum of the views' masks
    for horizontal, vertical in FLIPS:
        if first_mask is not None and not (horizontal or vertical):
            mask = first_mask if scale == 1.0 else resize_area(
                np.asarray(first_mask, np.float32), small_shape)
        else:
            result = model.detect([_flip(small, horizontal, vertical)])[0]
            mask = _flip(deliverables.lesion_mask(result, small.shape), horizontal, vertical)
        votes += mask
    fraction = votes / len(FLIPS)
    if scale < 1.0:
        fraction = resize_area(fraction, (height, width))
    return fraction >= 0.5 - 1e-6


def largest_component_filled(mask):
    """The largest 8-connected component of a bool mask with its holes filled (worked out
    inside the mask's bounding box, so its cost follows the lesion, not the image)."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return mask
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    y1, y2, x1, x2 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    crop = mask[y1:y2, x1:x2]
    labels, count = ndi.label(crop, structure=np.ones((3, 3), bool))
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        crop = labels == int(np.argmax(sizes))
    out = np.zeros_like(mask)
    out[y1:y2, x1:x2] = ndi.binary_fill_holes(crop)
    return out


def content_seed(*arrays):
    """A 31-bit seed from the bytes of the arrays GrabCut works on: the same pixels give
    the same result, whatever ran before in the process."""
    crc = 0
    for array in arrays:
        crc = zlib.crc32(np.ascontiguousarray(array).data, crc)
    return crc & 0x7FFFFFFF


def grabcut_refine(image, mask, band=0.15, iterations=5, diameter=GRABCUT_DIAMETER):
    """Snap a lesion mask's boundary to the image with GrabCut, seeded by the mask.

    band: width of the uncertain zone on each side of the boundary, as a fraction of the
    mask's equivalent diameter (at least 3 px at the working scale). GrabCut runs on the
    bounding region of the mask plus the band and a margin of sure skin, scaled down so the
    lesion's equivalent diameter is at most `diameter` px (None: full resolution); the
    bands come from distance transforms at that scale, and the result is scaled back up
    with linear interpolation. Returns the refined [H, W] bool mask, or the input when
    GrabCut has nothing to work with (empty or tiny mask).
    """
    mask = np.asarray(mask, bool)
    area = int(mask.sum())
    if area < 64:
        return mask
    height, width = mask.shape
    full_diameter = np.sqrt(4.0 * area / np.pi)
    scale = 1.0 if not diameter else min(1.0, diameter / full_diameter)
    # Band radius in full-resolution px (at least 3 px at the working scale); the region is
    # the mask's bounding box grown by the band plus a margin of sure skin of the same width.
    radius_full = max(3.0 / scale, float(round(band * full_diameter)))
    reach = int(np.ceil(2 * radius_full))
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    y1, y2 = max(0, rows[0] - reach), min(height, rows[-1] + 1 + reach)
    x1, x2 = max(0, cols[0] - reach), min(width, cols[-1] + 1 + reach)
    crop_shape = (y2 - y1, x2 - x1)
    crop = np.ascontiguousarray(image[y1:y2, x1:x2, ::-1], dtype=np.uint8)  # RGB -> BGR
    crop_mask = mask[y1:y2, x1:x2]
    if scale < 1.0:
        work_shape = (max(1, round(crop_shape[0] * scale)), max(1, round(crop_shape[1] * scale)))
        crop = resize_area(crop, work_shape)
        work_mask = resize_area(crop_mask.astype(np.float32), work_shape) >= 0.5
    else:
        work_shape, work_mask = crop_shape, crop_mask
    radius = radius_full * scale
    mask_u8 = work_mask.astype(np.uint8)
    inside = cv2.distanceTransform(mask_u8, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)  # [h, w] px to skin
    outside = cv2.distanceTransform(1 - mask_u8, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)  # [h, w] px to lesion
    core, outer = inside > radius, outside <= radius
    seeds = np.full(work_shape, cv2.GC_BGD, np.uint8)
    seeds[outer] = cv2.GC_PR_BGD
    seeds[work_mask] = cv2.GC_PR_FGD
    seeds[core] = cv2.GC_FGD
    if not core.any() or not (seeds == cv2.GC_BGD).any():  # no sure lesion, or no sure skin
        return largest_component_filled(mask)
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(content_seed(crop, seeds))
    try:
        cv2.grabCut(crop, seeds, None, background, foreground, iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error as e:  # degenerate colour models; keep the network's mask
        log.debug("GrabCut failed (%s); keeping the mask", e)
        return largest_component_filled(mask)
    lesion = largest_component_filled((seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD))
    if scale < 1.0:
        lesion = resize_area(lesion.astype(np.float32), crop_shape) >= 0.5
    refined = np.zeros_like(mask)
    refined[y1:y2, x1:x2] = lesion
    return largest_component_filled(refined)


def task1_mask(model, image, result, config):
    """The Task 1 deliverable of one image with the config's TTA and refinement applied."""
    mask = deliverables.lesion_mask(result, image.shape)
    if getattr(config, "TASK1_TTA_FLIPS", False):
        mask = flip_vote_mask(model, image, first_mask=mask)
    refinement = getattr(config, "TASK1_MASK_REFINEMENT", "none")
    if refinement == "grabcut":
        mask = grabcut_refine(image, mask)
    elif refinement == "fill":
        mask = largest_component_filled(mask)
    return mask


def task_deliverable(task, model, image, result):
    """outputs.task_deliverable, with Task 1 going through `task1_mask` (the model's config)."""
    if task == "segmentation":
        return task1_mask(model, image, result, model.config)
    return deliverables.task_deliverable(task, result, image.shape)
