"""Matterport's `visualize` API: figures of images, detections, ROIs and evaluation results.

Every figure is built without pyplot on a `FigureCanvasAgg`, so drawing works headless,
leaves nothing registered in pyplot's figure list and never calls `plt.show()`.
Each plotting function returns its `matplotlib.figure.Figure`; with `save_path` it also
writes that figure as a PNG (atomically, parent folders created) of exactly
figsize x dpi pixels. When the caller passes `ax`, the drawing goes into the caller's
figure, which is returned (and saved when asked) but otherwise left to the caller.
In Jupyter the returned Figure displays as the cell's value.

`overlay_masks` and `draw_box` work on NumPy arrays only (no matplotlib), for per-image
overlay PNGs written by the tools.

Conventions (as in Matterport): boxes are [N, (y1, x1, y2, x2)] in pixels with y2, x2
exclusive; masks are [height, width, N] bool; colors are RGB(A) floats in [0, 1].
"""
import colorsys
import itertools
import logging
import pathlib
import random

import cv2
import matplotlib
import matplotlib.colors
import numpy as np
from matplotlib import lines, patches
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from skimage.measure import find_contours

from mrcnn import utils
from mrcnn.data.masks import unmold_mask
from mrcnn.io import atomic

log = logging.getLogger(__name__)


############################################################
#  Figure plumbing
############################################################

def _new_figure(figsize=None):
    """A pyplot-free Figure on the Agg canvas."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _figure_and_axes(ax, figsize):
    """The caller's axes and its figure, or a new single-axes figure."""
    if ax is not None:
        return ax.figure, ax
    fig = _new_figure(figsize)
    return fig, fig.add_subplot(1, 1, 1)


def _save_png(fig, save_path):
    """Write `fig` as a PNG at its own dpi, atomically (`mrcnn.io.atomic`)."""
    path = pathlib.Path(save_path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"save_path must end in .png, got {str(save_path)!r}")
    with atomic.atomic_open(path, "wb") as f, matplotlib.rc_context({"savefig.bbox": "standard"}):
        fig.savefig(f, format="png", dpi=fig.dpi)


def _finish(fig, save_path):
    if save_path is not None:
        _save_png(fig, save_path)
    return fig


############################################################
#  Input checks
############################################################

def _as_rgb(image):
    """[H, W, 3] copy of an RGB or grayscale image (alpha dropped)."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"image must be [H, W], [H, W, 3] or [H, W, 4], got shape {image.shape}")
    return image[..., :3].copy()


def _as_boxes(boxes, name="boxes"):
    """[N, 4] array; None or an empty list gives [0, 4]."""
    if boxes is None:
        return np.zeros((0, 4))
    boxes = np.asarray(boxes)
    if boxes.size == 0:
        return np.zeros((0, 4))
    if boxes.ndim != 2 or boxes.shape[1] < 4:
        raise ValueError(f"{name} must be [N, (y1, x1, y2, x2)], got shape {boxes.shape}")
    return boxes[:, :4]


def _as_masks(masks, image_shape, count, name="masks"):
    """[H, W, count] bool, checked against the image size and the instance count."""
    height, width = image_shape[:2]
    if masks is None:
        return None
    masks = np.asarray(masks)
    if masks.ndim == 2:
        masks = masks[..., np.newaxis]
    if masks.size == 0 and count == 0:
        return np.zeros((height, width, 0), dtype=bool)
    if masks.ndim != 3 or masks.shape[:2] != (height, width):
        raise ValueError(f"{name} must be [{height}, {width}, N] like the image, "
                         f"got shape {masks.shape}")
    if masks.shape[-1] != count:
        raise ValueError(f"{name} has {masks.shape[-1]} instances but there are {count} boxes")
    return masks.astype(bool)


def _check_length(values, count, name):
    if values is not None and len(values) != count:
        raise ValueError(f"{name} has {len(values)} entries but there are {count} instances")


def _class_name(class_names, class_id):
    class_id = int(class_id)
    if not 0 <= class_id < len(class_names):
        raise ValueError(f"class id {class_id} is outside class_names "
                         f"({len(class_names)} names)")
    return class_names[class_id]


def _to_uint8(image):
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _outline_box(ax, box, color, linewidth=2, **style):
    """Unfilled rectangle for a (y1, x1, y2, x2) box (matplotlib wants x, y, width, height)."""
    top, left, bottom, right = box[:4]
    ax.add_patch(patches.Rectangle((left, top), right - left, bottom - top, linewidth=linewidth,
                                   edgecolor=color, facecolor="none", **style))


def _join_corners(ax, box, refined, color):
    """A line from a box's top-left corner to its refinement's."""
    ax.add_line(lines.Line2D([box[1], refined[1]], [box[0], refined[0]], color=color))


def _draw_mask_outline(ax, mask, color):
    """Outline a mask with polygons; padding closes contours at the image edges."""
    padded = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), dtype=np.uint8)
    padded[1:-1, 1:-1] = mask
    for verts in find_contours(padded, 0.5):
        # [n, (row, col)] in padded coordinates -> [n, (x, y)] in image coordinates
        xy = np.fliplr(verts) - 1
        ax.add_patch(patches.Polygon(xy, facecolor="none", edgecolor=color))


############################################################
#  Colors and masks on arrays
############################################################

def random_colors(N, bright=True, seed=None):
    """N visually distinct RGB colors (evenly spaced hues) in random order.

    With `seed` the order is reproducible; without it Python's global `random`
    decides, as in Matterport.
    """
    value = 1.0 if bright else 0.7
    hues = np.arange(N) / N                 # evenly spaced around the colour wheel
    palette = [colorsys.hsv_to_rgb(float(hue), 1.0, value) for hue in hues]
    shuffler = random if seed is None else random.Random(seed)
    shuffler.shuffle(palette)
    return palette


def apply_mask(image, mask, color, alpha=0.5):
    """Blend `color` (RGB floats in [0, 1]) into `image` where `mask` is set.

    Modifies `image` in place and returns it, as Matterport does; values are
    image * (1 - alpha) + alpha * color * 255, cast to the image's dtype.
    """
    mask = np.asarray(mask)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} differs from image size {image.shape[:2]}")
    inside = mask == 1
    # Float images blend in their own precision, integer ones in float64.
    work = image.dtype.type if np.issubdtype(image.dtype, np.floating) else np.float64
    tint = (alpha * np.asarray(color[:3], dtype=np.float64) * 255).astype(work)   # [3]
    blended = image[inside, :3] * work(1 - alpha) + tint                          # [pixels, 3]
    image[inside, :3] = blended.astype(image.dtype)
    return image


def draw_box(image, box, color, thickness=2):
    """Draw a box outline of `thickness` pixels into `image` in place and return it.

    box: (y1, x1, y2, x2), y2 and x2 exclusive; the outline lies inside the box and is
    clipped to the image. color: one value per channel, in the image's own range.
    """
    height, width = image.shape[:2]
    y1, x1, y2, x2 = (int(round(v)) for v in box[:4])
    y1, x1 = max(y1, 0), max(x1, 0)
    y2, x2 = min(y2, height), min(x2, width)
    if y2 <= y1 or x2 <= x1:
        return image
    t = max(int(thickness), 1)
    color = np.asarray(color, dtype=image.dtype)
    image[y1:min(y1 + t, y2), x1:x2] = color
    image[max(y2 - t, y1):y2, x1:x2] = color
    image[y1:y2, x1:min(x1 + t, x2)] = color
    image[y1:y2, max(x2 - t, x1):x2] = color
    return image


def overlay_masks(image, masks, colors=None, alpha=0.45, outline=True):
    """uint8 RGB copy of `image` with each mask filled in its color (and outlined).

    masks: [H, W, N] or [H, W]. colors: N RGB floats in [0, 1]; default
    `random_colors(N, seed=0)` so repeated runs give the same picture. The outline is
    drawn inside each mask (about 1/256 of the shorter side thick), so only pixels
    inside masks change. Float images with values <= 1 are taken as [0, 1] and scaled.
    """
    canvas = _as_rgb(image).astype(np.float32)
    if np.issubdtype(np.asarray(image).dtype, np.floating) and canvas.size and canvas.max() <= 1.0:
        canvas *= 255.0
    height, width = canvas.shape[:2]
    masks = np.asarray(masks)
    count = masks.shape[-1] if masks.ndim == 3 else 1
    masks = _as_masks(masks, canvas.shape, count)
    colors = random_colors(count, seed=0) if colors is None else list(colors)
    _check_length(colors, count, "colors")
    thickness = max(1, min(height, width) // 256)
    kernel = np.ones((2 * thickness + 1, 2 * thickness + 1), np.uint8)
    for i in range(count):
        color = np.asarray(matplotlib.colors.to_rgb(colors[i]), dtype=np.float32)
        mask = masks[:, :, i]
        if not mask.any():
            continue
        canvas[mask] = canvas[mask] * (1 - alpha) + alpha * 255.0 * color
        if outline:
            # Erosion with a zero border treats pixels on the image edge as mask edge.
            inner = cv2.erode(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT,
                              borderValue=0).astype(bool)
            canvas[mask & ~inner] = 255.0 * color
    return _to_uint8(canvas)


############################################################
#  Figures
############################################################

def display_images(images, titles=None, cols=4, cmap=None, norm=None,
                   interpolation=None, save_path=None):
    """Grid of images (HWC RGB or 2-D with `cmap`), optionally titled."""
    images = list(images)
    titles = list(titles) if titles is not None else [""] * len(images)
    _check_length(titles, len(images), "titles")
    cols = max(int(cols), 1)
    rows = max(1, -(-len(images) // cols))
    # Whole tenths of an inch keep the saved PNG a whole number of pixels.
    fig = _new_figure((14, round(14 * rows / cols, 1)))
    for i, (image, title) in enumerate(zip(images, titles)):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
        image = np.asarray(image)
        if image.ndim == 3:
            image = _to_uint8(image)
        ax.imshow(image, cmap=cmap, norm=norm, interpolation=interpolation)
    return _finish(fig, save_path)


def display_instances(image, boxes, masks, class_ids, class_names,
                      scores=None, title="",
                      figsize=(16, 16), ax=None,
                      show_mask=True, show_bbox=True,
                      colors=None, captions=None, save_path=None):
    """Image with each instance's mask, outline, dashed box and caption.

    boxes: [N, (y1, x1, y2, x2)] pixels. masks: [H, W, N] bool. class_ids: [N] ints
    into class_names. scores: optional [N]. Default captions are "class score".
    All-zero boxes (padding) are skipped. Returns the Figure.
    """
    image = _as_rgb(image)
    boxes = _as_boxes(boxes)
    count = boxes.shape[0]
    class_ids = np.asarray(class_ids).reshape(-1)
    _check_length(class_ids, count, "class_ids")
    _check_length(scores, count, "scores")
    _check_length(captions, count, "captions")
    masks = _as_masks(masks, image.shape, count)
    colors = random_colors(count) if colors is None else list(colors)
    if len(colors) < count:
        raise ValueError(f"colors has {len(colors)} entries but there are {count} instances")
    if count == 0:
        log.info("No instances to display")

    fig, ax = _figure_and_axes(ax, figsize)
    height, width = image.shape[:2]
    # A margin around the image keeps boxes and captions at its edges visible.
    ax.set_ylim(height + 10, -10)
    ax.set_xlim(-10, width + 10)
    ax.axis("off")
    ax.set_title(title)

    canvas = image.astype(np.float32)
    for i in range(count):
        color = colors[i]
        if not np.any(boxes[i]):
            continue
        y1, x1 = boxes[i][:2]
        if show_bbox:
            _outline_box(ax, boxes[i], color, alpha=0.7, linestyle="dashed")
        if captions is None:
            label = _class_name(class_names, class_ids[i])
            caption = f"{label} {scores[i]:.3f}" if scores is not None else label
        else:
            caption = captions[i]
        if caption:
            ax.text(x1, y1 + 8, caption, color="w", size=11,
                    bbox={"facecolor": color, "alpha": 0.5, "pad": 1, "edgecolor": "none"})
        if masks is not None:
            if show_mask:
                apply_mask(canvas, masks[:, :, i], color)
            _draw_mask_outline(ax, masks[:, :, i], color)
    ax.imshow(_to_uint8(canvas))
    return _finish(fig, save_path)


def display_differences(image,
                        gt_box, gt_class_id, gt_mask,
                        pred_box, pred_class_id, pred_score, pred_mask,
                        class_names, title="", ax=None,
                        show_mask=True, show_box=True,
                        iou_threshold=0.5, score_threshold=0.5, save_path=None):
    """Ground truth (green) and predictions (red) on one image.

    Predictions are captioned "score / IoU": the IoU with the matched ground truth, or
    the best IoU with any ground truth when unmatched (`utils.compute_matches`).
    """
    gt_box = _as_boxes(gt_box, "gt_box")
    pred_box = _as_boxes(pred_box, "pred_box")
    gt_class_id = np.asarray(gt_class_id).reshape(-1)
    pred_class_id = np.asarray(pred_class_id).reshape(-1)
    pred_score = np.asarray(pred_score, dtype=np.float64).reshape(-1)
    _check_length(pred_class_id, len(pred_box), "pred_class_id")
    _check_length(pred_score, len(pred_box), "pred_score")
    if gt_mask is None or pred_mask is None:
        raise ValueError("display_differences needs gt_mask and pred_mask ([H, W, N] bool)")
    gt_mask = _as_masks(gt_mask, np.shape(image), len(gt_box), "gt_mask")
    pred_mask = _as_masks(pred_mask, np.shape(image), len(pred_box), "pred_mask")
    # compute_matches drops all-zero (padding) boxes and ranks predictions by score
    # (stable); doing both here first keeps its rows aligned with ours.
    keep = np.any(gt_box != 0, axis=1)
    gt_box, gt_class_id, gt_mask = gt_box[keep], gt_class_id[keep], gt_mask[:, :, keep]
    keep = np.any(pred_box != 0, axis=1)
    pred_box, pred_class_id = pred_box[keep], pred_class_id[keep]
    pred_score, pred_mask = pred_score[keep], pred_mask[:, :, keep]
    order = np.argsort(-pred_score, kind="stable")
    pred_box, pred_class_id = pred_box[order], pred_class_id[order]
    pred_score, pred_mask = pred_score[order], pred_mask[:, :, order]

    gt_match, pred_match, overlaps = utils.compute_matches(
        gt_box, gt_class_id, gt_mask,
        pred_box, pred_class_id, pred_score, pred_mask,
        iou_threshold=iou_threshold, score_threshold=score_threshold)
    # [num_pred, num_gt]
    overlaps = np.asarray(overlaps).reshape(len(pred_box), len(gt_box))

    num_gt, num_pred = len(gt_box), len(pred_box)
    colors = [(0, 1, 0, 0.8)] * num_gt + [(1, 0, 0, 1)] * num_pred
    captions = [""] * num_gt
    for i in range(num_pred):
        j = int(pred_match[i])
        if j > -1:
            iou = overlaps[i, j]
        else:
            iou = overlaps[i].max() if num_gt else 0.0
        captions.append(f"{pred_score[i]:.2f} / {iou:.2f}")
    title = title or "Ground Truth and Detections\n GT=green, pred=red, captions: score/IoU"
    return display_instances(
        image,
        np.concatenate([gt_box, pred_box]),
        np.concatenate([gt_mask, pred_mask], axis=-1),
        np.concatenate([gt_class_id, pred_class_id]).astype(np.int64),
        class_names,
        np.concatenate([np.zeros(num_gt), pred_score]),
        title=title, ax=ax, show_bbox=show_box, show_mask=show_mask,
        colors=colors, captions=captions, save_path=save_path)


def _paste_roi_mask(roi_mask, box, image_shape):
    """Full-image bool mask from a small [h, w] float mask of the box (threshold 0.5)."""
    return unmold_mask(np.asarray(roi_mask, np.float32), [int(round(v)) for v in box[:4]], image_shape)

def draw_rois(image, rois, refined_rois, mask, class_ids, class_names, limit=10,
              save_path=None):
    """ROIs (dashed; gray for background) with their refined boxes and masks.

    rois, refined_rois: [N, (y1, x1, y2, x2)]. mask: [N, h, w] per-ROI masks (e.g. 28x28).
    class_ids: [N], 0 = background. Shows at most `limit` ROIs chosen with np.random.
    """
    image = _as_rgb(image)
    rois = _as_boxes(rois, "rois")
    refined_rois = _as_boxes(refined_rois, "refined_rois")
    class_ids = np.asarray(class_ids).reshape(-1)
    count = rois.shape[0]
    _check_length(refined_rois, count, "refined_rois")
    _check_length(class_ids, count, "class_ids")
    _check_length(mask, count, "mask")

    ids = np.arange(count)
    if count > limit:
        ids = np.random.choice(ids, limit, replace=False)
    fig, ax = _figure_and_axes(None, (12, 12))
    if count > limit:
        ax.set_title(f"Showing {len(ids)} random ROIs out of {count}")
    else:
        ax.set_title(f"{len(ids)} ROIs")
    ax.set_ylim(image.shape[0] + 20, -20)
    ax.set_xlim(-50, image.shape[1] + 20)
    ax.axis("off")

    canvas = image.astype(np.float32)
    colors = random_colors(len(ids))
    for color, i in zip(colors, ids):
        class_id = int(class_ids[i])
        _outline_box(ax, rois[i], color if class_id else "gray", linestyle="dashed")
        if not class_id:
            continue  # background: no refinement, no mask
        _outline_box(ax, refined_rois[i], color)
        _join_corners(ax, rois[i], refined_rois[i], color)
        ax.text(refined_rois[i][1], refined_rois[i][0] + 8, _class_name(class_names, class_id),
                color="w", size=11)
        apply_mask(canvas, _paste_roi_mask(mask[i], rois[i], image.shape), color)
    ax.imshow(_to_uint8(canvas))

    positive = int(np.sum(class_ids > 0))
    log.info("Positive ROIs: %d, negative ROIs: %d, positive ratio: %.2f",
             positive, count - positive, positive / count if count else 0.0)
    return _finish(fig, save_path)


def display_top_masks(image, mask, class_ids, class_names, limit=4, save_path=None):
    """The image next to the union masks of its `limit` largest classes."""
    image = np.asarray(image)
    class_ids = np.asarray(class_ids).reshape(-1)
    mask = _as_masks(mask, image.shape, len(class_ids))
    panels = [image]
    titles = [f"H x W={image.shape[0]}x{image.shape[1]}"]
    unique_ids = np.unique(class_ids)
    areas = [np.sum(mask[:, :, class_ids == c]) for c in unique_ids]
    ranked = sorted(zip(unique_ids, areas), key=lambda r: r[1], reverse=True)
    top_ids = [int(c) for c, area in ranked if area > 0]
    for k in range(limit):
        class_id = top_ids[k] if k < len(top_ids) else -1
        # Instances of one class, numbered 1..n so they stay distinguishable.
        m = mask[:, :, class_ids == class_id]
        panels.append(np.sum(m * np.arange(1, m.shape[-1] + 1), axis=-1))
        titles.append(_class_name(class_names, class_id) if class_id != -1 else "-")
    return display_images(panels, titles=titles, cols=limit + 1, cmap="Blues_r",
                          save_path=save_path)


def plot_precision_recall(AP, precisions, recalls, ax=None, save_path=None):
    """Precision-recall curve titled with AP@50."""
    fig, ax = _figure_and_axes(ax, None)
    ax.set_title(f"Precision-Recall Curve. AP@50 = {AP:.3f}")
    ax.set_ylim(0, 1.1)
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision")
    ax.plot(np.asarray(recalls), np.asarray(precisions))
    return _finish(fig, save_path)


def plot_overlaps(gt_class_ids, pred_class_ids, pred_scores,
                  overlaps, class_names, threshold=0.5, save_path=None):
    """Grid of IoU between predictions (rows) and ground truth (columns).

    Cells above `threshold` say "match" when the classes agree, else "wrong".
    Class id 0 (padding) is dropped from both id lists, as in Matterport.
    overlaps: [num_pred, num_gt].
    """
    gt_class_ids = np.asarray(gt_class_ids).reshape(-1)
    pred_class_ids = np.asarray(pred_class_ids).reshape(-1)
    pred_scores = np.asarray(pred_scores).reshape(-1)
    _check_length(pred_scores, len(pred_class_ids), "pred_scores")
    gt_class_ids = gt_class_ids[gt_class_ids != 0]
    pred_scores = pred_scores[pred_class_ids != 0]
    pred_class_ids = pred_class_ids[pred_class_ids != 0]
    overlaps = np.asarray(overlaps, dtype=np.float64).reshape(-1, len(gt_class_ids)) \
        if np.size(overlaps) else np.zeros((len(pred_class_ids), len(gt_class_ids)))
    if overlaps.shape != (len(pred_class_ids), len(gt_class_ids)):
        raise ValueError(f"overlaps must be [{len(pred_class_ids)} predictions, "
                         f"{len(gt_class_ids)} ground truth], got shape {overlaps.shape}")

    fig = _new_figure((12, 10))
    ax = fig.add_subplot(1, 1, 1)
    ax.set_xlabel("Ground Truth")
    ax.set_ylabel("Predictions")
    if overlaps.size == 0:
        ax.text(0.5, 0.5, "no overlaps to show", ha="center", va="center",
                transform=ax.transAxes)
        return _finish(fig, save_path)
    ax.imshow(overlaps, interpolation="nearest", cmap="Blues", vmin=0)
    ax.set_yticks(np.arange(len(pred_class_ids)),
                  [f"{_class_name(class_names, c)} ({pred_scores[i]:.2f})"
                   for i, c in enumerate(pred_class_ids)])
    ax.set_xticks(np.arange(len(gt_class_ids)),
                  [_class_name(class_names, c) for c in gt_class_ids], rotation=90)
    half = overlaps.max() / 2.0
    for i, j in itertools.product(range(overlaps.shape[0]), range(overlaps.shape[1])):
        verdict = ""
        if overlaps[i, j] > threshold:
            verdict = "match" if gt_class_ids[j] == pred_class_ids[i] else "wrong"
        color = ("white" if overlaps[i, j] > half
                 else "black" if overlaps[i, j] > 0 else "grey")
        ax.text(j, i, f"{overlaps[i, j]:.3f}\n{verdict}", ha="center", va="center",
                fontsize=9, color=color)
    fig.tight_layout()
    return _finish(fig, save_path)


def draw_boxes(image, boxes=None, refined_boxes=None,
               masks=None, captions=None, visibilities=None,
               title="", ax=None, save_path=None):
    """Boxes, refined boxes (solid, joined to their box), masks and captions.

    boxes, refined_boxes: [N, (y1, x1, y2, x2)]; at least one is required.
    masks: [H, W, N]. visibilities: N values, 0 = faint gray, 1 = dotted, 2 = solid.
    """
    if boxes is None and refined_boxes is None:
        raise ValueError("draw_boxes needs boxes or refined_boxes")
    image = _as_rgb(image)
    boxes = None if boxes is None else _as_boxes(boxes)
    refined_boxes = None if refined_boxes is None else _as_boxes(refined_boxes, "refined_boxes")
    count = len(boxes) if boxes is not None else len(refined_boxes)
    _check_length(refined_boxes, count, "refined_boxes")
    _check_length(captions, count, "captions")
    _check_length(visibilities, count, "visibilities")
    masks = _as_masks(masks, image.shape, count)

    fig, ax = _figure_and_axes(ax, (12, 12))
    colors = random_colors(count)
    margin = image.shape[0] // 10
    ax.set_ylim(image.shape[0] + margin, -margin)
    ax.set_xlim(-margin, image.shape[1] + margin)
    ax.axis("off")
    ax.set_title(title)

    styles = {0: ("dotted", 0.5), 1: ("dotted", 1.0), 2: ("solid", 1.0)}
    canvas = image.astype(np.float32)
    for i in range(count):
        visibility = int(visibilities[i]) if visibilities is not None else 1
        if visibility not in styles:
            raise ValueError(f"visibilities must be 0, 1 or 2, got {visibility}")
        style, alpha = styles[visibility]
        color = matplotlib.colors.to_rgb("gray" if visibility == 0 else colors[i])
        if boxes is not None:
            if not np.any(boxes[i]):
                continue
            _outline_box(ax, boxes[i], color, alpha=alpha, linestyle=style)
        show_refined = refined_boxes is not None and visibility > 0
        if show_refined:
            _outline_box(ax, refined_boxes[i], color)
            if boxes is not None:
                _join_corners(ax, boxes[i], refined_boxes[i], color)
        # Captions sit on the refined box when it is drawn, else on the box.
        caption_box = refined_boxes[i] if show_refined else (boxes[i] if boxes is not None else None)
        if captions is not None and caption_box is not None:
            ax.text(caption_box[1], caption_box[0], captions[i], size=11, verticalalignment="top", color="w",
                    bbox={"facecolor": color, "alpha": 0.5, "pad": 2, "edgecolor": "none"})
        if masks is not None:
            apply_mask(canvas, masks[:, :, i], color)
            _draw_mask_outline(ax, masks[:, :, i], color)
    ax.imshow(_to_uint8(canvas))
    return _finish(fig, save_path)


def plot_confusion_matrix(cm, class_names, normalize=True, title="", save_path=None):
    """Confusion matrix, rows = true class, columns = predicted class.

    Each cell shows its count; with `normalize` the color and the first line are the
    fraction of the row (rows without samples stay 0).
    """
    cm = np.asarray(cm)
    n = len(class_names)
    if cm.shape != (n, n):
        raise ValueError(f"cm must be [{n}, {n}] for {n} class names, got shape {cm.shape}")
    if normalize:
        totals = cm.sum(axis=1, keepdims=True).astype(np.float64)
        shown = np.divide(cm, totals, out=np.zeros(cm.shape), where=totals > 0)
    else:
        shown = cm.astype(np.float64)
    side = max(4.0, 0.9 * n + 2.5)
    fig = _new_figure((side, side))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(shown, interpolation="nearest", cmap="Blues",
                      vmin=0, vmax=1 if normalize else max(shown.max(), 1))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title or ("Confusion matrix (row-normalised)" if normalize
                           else "Confusion matrix"))
    ax.set_xticks(np.arange(n), class_names, rotation=45, ha="right")
    ax.set_yticks(np.arange(n), class_names)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    half = (1.0 if normalize else shown.max()) / 2.0
    for i, j in itertools.product(range(n), range(n)):
        count = f"{cm[i, j]:g}"
        text = f"{shown[i, j]:.2f}\n({count})" if normalize else count
        ax.text(j, i, text, ha="center", va="center", fontsize=9,
                color="white" if shown[i, j] > half else "black")
    fig.tight_layout()
    return _finish(fig, save_path)


def plot_histogram(values, bins, title, xlabel, save_path=None):
    """Histogram of finite values (e.g. per-image Jaccard) with the mean marked."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"plot_histogram got {np.sum(~np.isfinite(values))} "
                         "non-finite values; drop or fix them first")
    fig, ax = _figure_and_axes(None, None)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Count")
    if values.size:
        ax.hist(values, bins=bins, color="tab:blue", edgecolor="white")
        mean = values.mean()
        ax.axvline(mean, color="tab:red", linestyle="dashed", label=f"mean = {mean:.3f}")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
    return _finish(fig, save_path)


def display_weight_stats(model):
    """Print and return [name, shape, min, max, std] rows for the trainable weights.

    `model` needs `get_trainable_layers()` (our MaskRCNN) or a `layers` list.
    Rows are flagged "*** dead?" when all values are equal (conv biases excepted) and
    "*** Overflow?" when a value exceeds 1000 in magnitude.
    """
    if hasattr(model, "get_trainable_layers"):
        layers = model.get_trainable_layers()
    else:
        layers = model.layers
    table = [["WEIGHT NAME", "SHAPE", "MIN", "MAX", "STD"]]
    for layer in layers:
        for i, (value, variable) in enumerate(zip(layer.get_weights(), layer.weights)):
            name = getattr(variable, "path", None) or variable.name
            alert = ""
            is_conv_bias = type(layer).__name__ == "Conv2D" and i == 1
            if value.size and value.min() == value.max() and not is_conv_bias:
                alert += " *** dead?"
            if value.size and np.abs(value).max() > 1000:
                alert += " *** Overflow?"
            table.append([name + alert, str(value.shape),
                          f"{value.min():+9.4f}" if value.size else "",
                          f"{value.max():+10.4f}" if value.size else "",
                          f"{value.std():+9.4f}" if value.size else ""])
    widths = [max(len(row[c]) for row in table) for c in range(5)]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
    return table
