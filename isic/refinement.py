"""Task 1 mask post-processing at the image's full resolution.

Mask R-CNN predicts a lesion's mask on a 28x28 (or MASK_SHAPE) grid inside its box, then
scales it up to the box: for one large lesion per image that grid is coarse at the real
size. Two optional steps, chosen with Config values so a run can be reproduced:

- TASK1_TTA_FLIPS: test-time flips. The top detection's mask of the image and of its
  horizontal, vertical and double flips, flipped back, vote pixel by pixel (>= half).
- TASK1_MASK_REFINEMENT = "grabcut": the mask seeds OpenCV's GrabCut at full resolution
  (sure lesion in its eroded core, sure skin beyond a dilated band, "probable" in between),
  which snaps the boundary to the image's colour edges; then the largest connected
  component with its holes filled. "fill" does only that last step. "none" keeps the mask.
"""
import logging

import cv2
import numpy as np
from scipy import ndimage as ndi

from isic import outputs

log = logging.getLogger(__name__)

FLIPS = ((False, False), (True, False), (False, True), (True, True))  # (horizontal, vertical)


def _flip(array, horizontal, vertical):
    if horizontal:
        array = array[:, ::-1]
    if vertical:
        array = array[::-1]
    return np.ascontiguousarray(array)


def flip_vote_mask(model, image, first_mask=None):
    """[H, W] bool: the per-pixel vote (>= 2 of 4) of the top lesion mask over the 4 flips.
    `first_mask` is the unflipped view's mask when already computed."""
    votes = np.zeros(image.shape[:2], np.int32)
    for horizontal, vertical in FLIPS:
        if first_mask is not None and not (horizontal or vertical):
            mask = first_mask
        else:
            result = model.detect([_flip(image, horizontal, vertical)])[0]
            mask = _flip(outputs.lesion_mask(result, image.shape), horizontal, vertical)
        votes += mask
    return votes * 2 >= len(FLIPS)


def largest_component_filled(mask):
    """The largest 8-connected component of a bool mask with its holes filled."""
    if not mask.any():
        return mask
    labels, count = ndi.label(mask, structure=np.ones((3, 3), bool))
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    return ndi.binary_fill_holes(mask)


def grabcut_refine(image, mask, band=0.15, iterations=5, max_side=None):
    """Snap a lesion mask's boundary to the image with GrabCut, seeded by the mask.

    band: width of the uncertain zone on each side of the boundary, as a fraction of the
    mask's equivalent diameter (at least 3 px). max_side: run GrabCut on the crop scaled
    down to this longer side (its cost grows with the pixel count) and scale the result
    back up smoothly; None keeps full resolution. Returns the refined [H, W] bool mask, or
    the input when GrabCut has nothing to work with (empty or tiny mask).
    """
    mask = np.asarray(mask, bool)
    area = int(mask.sum())
    if area < 64:
        return mask
    radius = max(3, int(round(band * np.sqrt(4.0 * area / np.pi))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    mask_u8 = mask.astype(np.uint8)
    core = cv2.erode(mask_u8, kernel).astype(bool)
    outer = cv2.dilate(mask_u8, kernel).astype(bool)
    if not core.any() or outer.all():
        return largest_component_filled(mask)

    # Work on the crop around the dilated mask (plus a margin of sure skin): GrabCut's cost
    # grows with the pixel count.
    ys, xs = np.nonzero(outer)
    h, w = mask.shape
    y1, y2 = max(0, ys.min() - radius), min(h, ys.max() + radius + 1)
    x1, x2 = max(0, xs.min() - radius), min(w, xs.max() + radius + 1)
    seeds = np.full((y2 - y1, x2 - x1), cv2.GC_BGD, np.uint8)
    seeds[outer[y1:y2, x1:x2]] = cv2.GC_PR_BGD
    seeds[mask[y1:y2, x1:x2]] = cv2.GC_PR_FGD
    seeds[core[y1:y2, x1:x2]] = cv2.GC_FGD
    if not (seeds == cv2.GC_BGD).any():  # the lesion fills the image: no sure skin to learn from
        return largest_component_filled(mask)
    crop = np.ascontiguousarray(image[y1:y2, x1:x2, ::-1], dtype=np.uint8)  # RGB -> BGR
    crop_h, crop_w = seeds.shape
    scale = 1.0 if not max_side else min(1.0, max_side / max(crop_h, crop_w))
    if scale < 1.0:
        size = (max(1, round(crop_w * scale)), max(1, round(crop_h * scale)))
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
        seeds = cv2.resize(seeds, size, interpolation=cv2.INTER_NEAREST)
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(crop, seeds, None, background, foreground, iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error as e:  # degenerate colour models; keep the network's mask
        log.debug("GrabCut failed (%s); keeping the mask", e)
        return largest_component_filled(mask)
    lesion = ((seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)).astype(np.float32)
    if scale < 1.0:
        lesion = cv2.resize(lesion, (crop_w, crop_h), interpolation=cv2.INTER_LINEAR)
    refined = np.zeros_like(mask)
    refined[y1:y2, x1:x2] = lesion >= 0.5
    return largest_component_filled(refined)


def task1_mask(model, image, result, config):
    """The Task 1 deliverable of one image with the config's TTA and refinement applied."""
    mask = outputs.lesion_mask(result, image.shape)
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
    return outputs.task_deliverable(task, result, image.shape)
