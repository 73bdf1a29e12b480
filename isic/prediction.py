"""Predict mode: run a trained model on a file, a folder or a glob and write, per image, the
ISIC-format output(s), an overlay PNG and a JSON; for Task 3 also one submission CSV with
a row for every input image. Images are read one at a time (streamed), so a folder of any
size fits in memory.
"""
import glob
import io
import logging
import pathlib

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from isic import layout, outputs, refinement, runs, submission
from isic.errors import UserError
from mrcnn import visualize

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


def list_inputs(spec):
    """Image paths from a file, a folder (its image files, sorted) or a glob pattern."""
    if not spec:
        raise UserError("--mode predict needs --image PATH (a file, a folder or a quoted glob)")
    path = pathlib.Path(spec).expanduser()
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise UserError(f"--image {spec}: the folder has no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return found
    if path.is_file():
        return [path]
    if glob.has_magic(spec):
        found = sorted(pathlib.Path(p) for p in glob.glob(str(path)) if pathlib.Path(p).is_file())
        if not found:
            raise UserError(f"--image {spec}: the pattern matches no file")
        return found
    raise UserError(f"--image {spec}: no such file or folder")


def read_image(path):
    """An RGB uint8 [H, W, 3] array, or None (logged) when the file is not a readable image."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        log.warning("Skipping %s: not a readable image (%s)", path, str(e).splitlines()[0] if str(e) else type(e).__name__)
        return None


def write_overlay(path, image, result, class_names):
    """The image with every detection's mask and box drawn on it, as a PNG."""
    overlay = visualize.overlay_masks(image, result["masks"])
    colors = visualize.random_colors(max(1, len(result["scores"])), seed=0)
    for box, color in zip(result["rois"], colors):
        visualize.draw_box(overlay, box, tuple(int(255 * c) for c in color))
    buffer = io.BytesIO()
    Image.fromarray(overlay).save(buffer, format="PNG")
    return submission.atomic_write(path, lambda f: f.write(buffer.getvalue()))


def default_output_dir(weights, logs_dir):
    """`<run folder>/predictions` for a checkpoint, else `<logs>/predictions`."""
    if isinstance(weights, pathlib.Path):
        return weights.parent / "predictions"
    return pathlib.Path(logs_dir) / "predictions"


def run(args, config, overrides=()):
    synthetic = args.dataset == "synthetic"
    inputs = list_inputs(args.image)
    weights = runs.resolve_weights(args.weights, "predict", synthetic, args.task, args.logs)
    config = runs.run_config_for(weights, config, overrides)
    model = runs.load_inference_model(config, weights, args.logs)
    out_dir = pathlib.Path(args.output) if args.output else default_output_dir(weights, args.logs)
    out_dir.mkdir(parents=True, exist_ok=True)
    class_names = ["BG"] + list(layout.CLASS_NAMES[args.task])

    rows, skipped = [], []
    for path in tqdm(inputs, desc="predict", unit="img", disable=len(inputs) < 2):
        image = read_image(path)
        if image is None:
            skipped.append(path)
            continue
        result = model.detect([image])[0]
        stem = submission.submission_stem(path.name)
        deliverable = refinement.task_deliverable(args.task, model, image, result)
        outputs.write_deliverable(args.task, out_dir, stem, deliverable)
        if args.task == "classification":
            rows.append((stem, deliverable))
        write_overlay(out_dir / f"{stem}_overlay.png", image, result, class_names)
        summary = outputs.detections_json(result, class_names, args.task)
        summary.update(image=str(path), height=int(image.shape[0]), width=int(image.shape[1]))
        outputs.write_json(out_dir / f"{stem}.json", summary)

    if args.task == "classification" and rows:
        outputs.write_task3_predictions(out_dir, [r[0] for r in rows], [r[1] for r in rows])
    done = len(inputs) - len(skipped)
    if skipped:
        log.warning("Skipped %d unreadable file(s): %s", len(skipped), ", ".join(p.name for p in skipped))
    if done == 0:
        raise UserError(f"none of the {len(inputs)} input file(s) is a readable image")
    print(f"Wrote predictions for {done} image(s) to {out_dir}")
    return 0
