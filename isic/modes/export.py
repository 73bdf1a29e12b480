"""Export mode: a trained model as one self-contained SavedModel plus its model card.

The SavedModel (mrcnn.io.saved_model) takes a raw RGB image (or JPEG/PNG bytes) and returns the
detections in the image's own frame and the task's deliverable, computed in the graph with
the same rules as isic.outputs.deliverables:
- segmentation:   lesion_mask [H, W] uint8, the top detection's mask (zeros when none);
- attributes:     attribute_masks [5, H, W] uint8, per attribute (layout.ATTRIBUTES order)
                  the union of its detections' masks;
- classification: diagnosis_probabilities [7] float32 (layout.DIAGNOSES order), the score-
                  weighted mean of every detection's softmax without background, renormalised;
                  the most confident proposal's diagnosis softmax when nothing is detected.
Task 1's GrabCut/fill refinement and test-time flips are not graph ops: the exported lesion
mask is the unrefined network mask, the card says so, and `--mode predict --weights DIR`
applies the card's refinement settings on top (isic.outputs.refinement), as with a checkpoint.
"""
import datetime
import logging
import os
import pathlib
import shutil
import subprocess
import tempfile
import time

import numpy as np

from isic import layout
from isic.errors import UserError
from isic.modes import run_folders
from isic.outputs import deliverables
from mrcnn.io import atomic, download

log = logging.getLogger(__name__)

DELIVERABLE_OUTPUT = {"segmentation": "lesion_mask", "attributes": "attribute_masks",
                      "classification": "diagnosis_probabilities"}
CHECK_SIZES = ((300, 400), (256, 256), (450, 330))  # synthetic agreement images when no --image is given


# --- Deliverables in the graph ------------------------------------------------------------

def deliverable_outputs(task):
    """extra_outputs(image, detections) for mrcnn.io.saved_model.export_saved_model: the task's
    deliverable as TF ops (same rules as isic.outputs.deliverables)."""
    import tensorflow as tf

    def lesion_mask(image, det):
        shape = tf.shape(image)[:2]
        has_any = tf.shape(det["scores"])[0] > 0
        # Detections are sorted by score: the top one is the first.
        mask = tf.cond(has_any, lambda: det["masks"][0], lambda: tf.zeros(shape, tf.uint8))
        return {"lesion_mask": mask}

    def attribute_masks(image, det):
        shape = tf.shape(image)[:2]
        masks = []
        for class_id in range(1, len(layout.ATTRIBUTES) + 1):
            chosen = tf.boolean_mask(det["masks"], tf.equal(det["class_ids"], class_id))  # [k, H, W]
            union = tf.reduce_max(tf.concat([tf.zeros(tf.concat([[1], shape], 0), tf.uint8), chosen], 0), axis=0)
            masks.append(union)
        return {"attribute_masks": tf.stack(masks)}  # [5, H, W]

    def diagnosis_probabilities(image, det):
        # The rule of isic.outputs.deliverables.task3_row: every detection, else the best proposal.
        return {"diagnosis_probabilities": deliverables.task3_row_graph(det)}

    return {"segmentation": lesion_mask, "attributes": attribute_masks,
            "classification": diagnosis_probabilities}[task]


# --- Agreement with detect() ----------------------------------------------------------------

def _iou(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def agreement(task, reference, exported, image_shape):
    """Compare one image's detect() result with the exported model's raw outputs.
    Returns a dict: counts (detect, export), max box difference in pixels, max score and
    class-probability differences, the lowest per-detection mask IoU, and the deliverable's
    agreement (mask IoU, lowest attribute IoU, or max probability difference)."""
    n_ref, n_exp = len(reference["scores"]), len(exported["scores"])
    out = {"detections_detect": n_ref, "detections_export": n_exp, "same_count": n_ref == n_exp}
    n = min(n_ref, n_exp)
    ref_masks = np.moveaxis(reference["masks"], -1, 0)
    out["max_box_px"] = int(np.abs(reference["rois"][:n].astype(np.int64)
                                   - exported["boxes"][:n].astype(np.int64)).max(initial=0))
    out["max_score_diff"] = float(np.abs(reference["scores"][:n] - exported["scores"][:n]).max(initial=0.0))
    out["max_class_prob_diff"] = float(np.abs(reference["class_probs"][:n]
                                              - exported["class_probs"][:n]).max(initial=0.0))
    out["same_class_ids"] = bool(np.array_equal(reference["class_ids"][:n], exported["class_ids"][:n]))
    out["min_mask_iou"] = min((_iou(ref_masks[i], exported["masks"][i]) for i in range(n)), default=1.0)
    expected = deliverables.task_deliverable(task, reference, image_shape)
    got = exported[DELIVERABLE_OUTPUT[task]]
    if task == "segmentation":
        out["deliverable_iou"] = _iou(expected, got)
    elif task == "attributes":
        out["deliverable_iou"] = min(_iou(expected[name], got[i]) for i, name in enumerate(layout.ATTRIBUTES))
    else:
        out["deliverable_max_diff"] = float(np.abs(np.asarray(expected) - got).max())
    return out


def summarise(per_image):
    """The worst case over images of `agreement` dicts (what the card records)."""
    summary = {"images": len(per_image),
               "same_count_all": all(a["same_count"] for a in per_image),
               "same_class_ids_all": all(a["same_class_ids"] for a in per_image),
               "detections_per_image": [a["detections_detect"] for a in per_image],
               "max_box_px": max(a["max_box_px"] for a in per_image),
               "max_score_diff": max(a["max_score_diff"] for a in per_image),
               "max_class_prob_diff": max(a["max_class_prob_diff"] for a in per_image),
               "min_mask_iou": min(a["min_mask_iou"] for a in per_image)}
    if "deliverable_iou" in per_image[0]:
        summary["min_deliverable_iou"] = min(a["deliverable_iou"] for a in per_image)
    else:
        summary["max_deliverable_diff"] = max(a["deliverable_max_diff"] for a in per_image)
    return summary


def check_images(image_spec=None, seed=0):
    """Images to measure agreement on: up to three from --image, else three synthetic
    lesions of different sizes (list of (name, RGB uint8 array))."""
    if image_spec:
        from isic.modes.predict import list_inputs, read_image
        found = [(p.name, read_image(p)) for p in list_inputs(image_spec)[:3]]
        found = [(name, image) for name, image in found if image is not None]
        if found:
            return found
    from isic import synthetic
    rng = np.random.default_rng(seed)
    return [(f"synthetic_{h}x{w}", synthetic.render_sample(rng, size=(h, w))[0]) for h, w in CHECK_SIZES]


# --- The card -------------------------------------------------------------------------------

def project_version():
    """`git describe` of the project checkout (commit, '-dirty' when edited), or 'unknown'."""
    root = pathlib.Path(__file__).resolve().parents[1]
    try:
        described = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                                   capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return described.stdout.strip() if described.returncode == 0 and described.stdout.strip() else "unknown"


def directory_size(path):
    return sum(f.stat().st_size for f in pathlib.Path(path).rglob("*") if f.is_file())


def model_card(task, config, weights, agreement_summary, export_seconds, size_bytes):
    """The JSON-ready card written beside the SavedModel."""
    import tensorflow as tf
    from mrcnn.io import saved_model as mrcnn_export
    refinement = {"TASK1_TTA_FLIPS": bool(getattr(config, "TASK1_TTA_FLIPS", False)),
                  "TASK1_MASK_REFINEMENT": getattr(config, "TASK1_MASK_REFINEMENT", "none")}
    return {
        "format": "TensorFlow SavedModel (Mask R-CNN, ISIC 2018)",
        "task": task,
        "class_names": ["BG"] + list(layout.CLASS_NAMES[task]),
        "signatures": {
            mrcnn_export.SIGNATURE_IMAGE: "image: uint8 [H, W, 3] RGB, any size",
            mrcnn_export.SIGNATURE_BYTES: "image_bytes: string scalar, a JPEG or PNG file's content",
        },
        "outputs": {
            "boxes": "int32 [N, 4] (y1, x1, y2, x2) pixels of the input image, y2/x2 exclusive",
            "class_ids": "int32 [N], index into class_names",
            "scores": "float32 [N], sorted high to low",
            "masks": "uint8 [N, H, W] 0/1",
            "class_probs": "float32 [N, NUM_CLASSES] softmax row of each detection",
            DELIVERABLE_OUTPUT[task]: {
                "segmentation": "uint8 [H, W] 0/1: the top detection's mask (unrefined, see task1_postprocessing)",
                "attributes": "uint8 [5, H, W] 0/1 in attribute_names order: union of each attribute's masks",
                "classification": "float32 [7] in diagnosis_names order: the score-weighted mean of every "
                                  "detection's probabilities without background, renormalised; the most "
                                  "confident proposal's diagnosis softmax when nothing is detected",
            }[task],
        },
        "attribute_names": list(layout.ATTRIBUTES) if task == "attributes" else None,
        "diagnosis_names": list(layout.DIAGNOSES) if task == "classification" else None,
        "task1_postprocessing": None if task != "segmentation" else {
            "in_graph": "none: the exported lesion_mask is the unrefined network mask",
            "run_config": refinement,
            "applied_by": "python lesions.py --mode predict --weights <this folder> applies run_config on top",
        },
        "config": config.to_dict(),
        "source_checkpoint": str(weights) if isinstance(weights, pathlib.Path) else weights,
        "source_checkpoint_sha256": (download.file_digest(weights, "sha256") if isinstance(weights, pathlib.Path)
                                     else None),
        "project_version": project_version(),
        "tensorflow_version": tf.__version__,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "export_seconds": round(export_seconds, 1),
        "size_bytes": size_bytes,
        "agreement_with_detect": agreement_summary,
    }


# --- Export -------------------------------------------------------------------------------

def check_output_dir(output_dir, overwrite=False):
    """The --output folder as a Path, or a UserError when writing there would replace
    something (a file, or a non-empty folder without --overwrite)."""
    output_dir = pathlib.Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"--output {output_dir}: exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise UserError(f"--output {output_dir}: folder exists and is not empty (choose another folder)")
    return output_dir


def export_model(model, task, output_dir, weights, images, overwrite=False):
    """Write `model` (a MaskRCNN in inference mode, one image per batch) to `output_dir` as a
    SavedModel plus model_card.json, after measuring its agreement with detect() on
    `images` [(name, RGB uint8)]. Written to a temporary folder first and moved into place,
    so an interrupted export leaves nothing half-written. Returns the card."""
    from mrcnn.io import saved_model as mrcnn_export
    output_dir = check_output_dir(output_dir, overwrite)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}.export-"))
    try:
        started = time.perf_counter()
        mrcnn_export.export_saved_model(model, staging, extra_outputs=deliverable_outputs(task))
        export_seconds = time.perf_counter() - started
        exported = mrcnn_export.ExportedModel(staging)
        per_image = []
        for name, image in images:
            measured = agreement(task, model.detect([image])[0], exported.run(image), image.shape)
            measured["image"] = f"{name} ({image.shape[0]}x{image.shape[1]})"
            per_image.append(measured)
        summary = summarise(per_image)
        summary["per_image"] = per_image
        card = model_card(task, model.config, weights, summary, export_seconds, directory_size(staging))
        atomic.write_json(staging / mrcnn_export.CARD_NAME, card)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(staging, output_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return card


def run(args, config, overrides=()):
    """--mode export: the chosen weights of --task as a SavedModel in --output."""
    if not args.output:
        raise UserError("--mode export needs --output DIR (the SavedModel folder to write)")
    if config.IMAGE_RESIZE_MODE not in ("square", "pad64", "none"):
        raise UserError(f"IMAGE_RESIZE_MODE={config.IMAGE_RESIZE_MODE!r} cannot be exported "
                        "(use square, pad64 or none)")
    check_output_dir(args.output, bool(getattr(args, "overwrite", False)))  # before any model work
    synthetic = args.dataset == "synthetic"
    weights = run_folders.resolve_weights(args.weights, "export", synthetic, args.task, args.logs)
    config = run_folders.run_config_for(weights, config, overrides)
    config = type(config).from_dict(dict(config.to_dict(), IMAGES_PER_GPU=1, GPU_COUNT=1))  # one image per call
    model = run_folders.load_inference_model(config, weights, args.logs)
    images = check_images(getattr(args, "image", None), seed=int(config.SEED))
    card = export_model(model, args.task, args.output, weights, images,
                        overwrite=bool(getattr(args, "overwrite", False)))
    summary = card["agreement_with_detect"]
    print(f"Exported {args.task} model to {args.output} ({card['size_bytes'] / 1e6:.1f} MB, "
          f"{card['export_seconds']:.0f} s). Agreement with detect() on {summary['images']} image(s): "
          f"same counts {summary['same_count_all']}, boxes within {summary['max_box_px']} px, "
          f"scores within {summary['max_score_diff']:.1e}, lowest mask IoU {summary['min_mask_iou']:.4f}")
    return 0
