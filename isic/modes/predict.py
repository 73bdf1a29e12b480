"""Predict mode: run a trained model on a file, a folder or a glob and write, per image, the
ISIC-format output(s), an overlay PNG and a JSON; for Task 3 also one submission CSV with
a row for every input image. Images are read one at a time (streamed), so a folder of any
size fits in memory.

Before the model is built: the inputs are listed and their headers checked (unreadable
files are named and skipped; a lone bad file is the error), two inputs that would write the
same output names are refused, and images whose outputs are all in the output folder from
the same weights and the same file are set aside (an interrupted run continues; --overwrite
redoes them). The output folder is created by the first file written.
"""
import glob
import io
import json
import logging
import pathlib

import numpy as np
from PIL import Image
from tqdm import tqdm

from isic import layout
from isic.data import images
from isic.errors import UserError
from isic.evaluation import calibration
from isic.modes import preflight, run_folders
from isic.outputs import deliverables, refinement, submission
from mrcnn import visualize
from mrcnn.data import resize
from mrcnn.io import atomic

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
# Overlays are drawn with this long side at most (--full-size-overlays keeps the image size):
# a 6688x4459 overlay PNG is tens of MB and costs seconds to encode.
OVERLAY_MAX_SIDE = 1024


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


def check_inputs(paths):
    """(readable, skipped): the header of every input checked before any model work.

    A lone input that fails is the error itself; in a folder each failure is a warning
    naming the file and the rest goes on.
    """
    if len(paths) == 1:
        images.inspect_image(paths[0], decode=False)
        return list(paths), []
    readable, skipped = [], []
    for path in paths:
        try:
            images.inspect_image(path, decode=False)
            readable.append(path)
        except images.ImageReadError as e:
            log.warning("Skipping %s", e)
            skipped.append(path)
    if not readable:
        raise UserError(f"none of the {len(paths)} input files is a readable image "
                        f"(each is named in a warning above)")
    return readable, skipped


def output_stems(paths):
    """{path: output stem}: the ISIC id in the file name, else its stem. Refuses inputs that
    share a stem (ISIC_0000001.jpg, ISIC_0000001.png, ISIC_0000001_v2.jpg): their outputs
    would overwrite each other, and a submission holds one file per ISIC id."""
    by_stem = {}
    for path in paths:
        by_stem.setdefault(submission.submission_stem(path.name), []).append(path)
    clashes = [(stem, group) for stem, group in by_stem.items() if len(group) > 1]
    if clashes:
        shown = "; ".join(f"{', '.join(p.name for p in group)} -> {stem}" for stem, group in clashes[:3])
        more = f" and {len(clashes) - 3} more" if len(clashes) > 3 else ""
        raise UserError(f"input files would share output names: {shown}{more} (outputs are named by "
                        f"the ISIC id in the file name); predict them into separate --output folders")
    return {group[0]: stem for stem, group in by_stem.items()}


def source_record(path):
    """What identifies an input file in its JSON, so a re-run knows the outputs are its own."""
    stat = pathlib.Path(path).stat()
    return {"path": str(pathlib.Path(path).resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def weights_label(weights):
    """--weights as recorded in each JSON: the checkpoint's absolute path, or the keyword."""
    return str(weights.resolve()) if isinstance(weights, pathlib.Path) else str(weights)


def image_outputs(task, out_dir, stem):
    """Every file predict writes for one image; the JSON last (it is written last)."""
    return (deliverables.deliverable_paths(task, out_dir, stem)
            + [out_dir / f"{stem}_overlay.png", out_dir / f"{stem}.json"])


def earlier_outputs(task, out_dir, stem):
    """The JSON of an image whose outputs are all in `out_dir`, or None when any is
    missing or the JSON is unreadable (an interrupted image: it is redone)."""
    paths = image_outputs(task, out_dir, stem)
    if not all(p.is_file() for p in paths):
        return None
    try:
        summary = json.loads(paths[-1].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if task == "classification" and not isinstance(summary.get("probabilities"), dict):
        return None
    return summary


def find_finished(task, out_dir, stems, weights):
    """{path: JSON summary} of inputs already predicted into `out_dir` by these weights.
    Refuses when complete outputs there come from other weights or another file of that name."""
    finished, foreign = {}, []
    for path, stem in stems.items():
        summary = earlier_outputs(task, out_dir, stem)
        if summary is None:
            continue
        if summary.get("weights") == weights_label(weights) and summary.get("source") == source_record(path):
            finished[path] = summary
        else:
            foreign.append(stem)
    if foreign:
        raise UserError(f"{out_dir} already holds outputs for {len(foreign)} of these images "
                        f"(e.g. {foreign[0]}) from other weights or another file of that name; "
                        f"pass --overwrite to replace them or choose another --output")
    return finished


def write_overlay(path, image, result, class_names, max_side=OVERLAY_MAX_SIDE):
    """The image with every detection's mask and box drawn on it, as a PNG, shrunk to
    `max_side` on its long side (None: full size). Returns the scale used."""
    height, width = image.shape[:2]
    scale = 1.0 if not max_side else min(1.0, max_side / max(height, width))
    masks, boxes = result["masks"], np.asarray(result["rois"], np.float64)  # [H, W, N], [N, 4]
    if scale < 1.0:
        size = resize.scaled_size(height, width, scale)
        image = resize.resize_array(image, *size, "area")
        masks = resize.resize_masks(masks, *size)[..., :len(result["scores"])]
        boxes = boxes * scale
    overlay = visualize.overlay_masks(image, masks)
    colors = visualize.random_colors(max(1, len(result["scores"])), seed=0)
    for box, color in zip(boxes, colors):
        visualize.draw_box(overlay, box, tuple(int(255 * c) for c in color))
    buffer = io.BytesIO()
    Image.fromarray(overlay).save(buffer, format="PNG")
    atomic.write_bytes(path, buffer.getvalue())
    return scale


def default_output_dir(weights, logs_dir):
    """`<run folder>/predictions` for a checkpoint, else `<logs>/predictions`."""
    if isinstance(weights, pathlib.Path):
        return weights.parent / "predictions"
    return pathlib.Path(logs_dir) / "predictions"


def check_resizable(path, shape, config):
    """Refuse, as a bad item, an image so thin that resizing it to the network's size would
    leave its short side under two pixels (a 4000x3 strip at IMAGE_MAX_DIM 256, say): the
    resize would still give one pixel, but a one-pixel window has no extent to map
    detections back through."""
    if min(resize.scaled_size(shape[0], shape[1], resize.config_scale(shape, config))) < 2:
        raise images.ImageReadError(
            "image too thin", f"{path} is {shape[0]}x{shape[1]} pixels: resized to fit IMAGE_MAX_DIM "
            f"{config.IMAGE_MAX_DIM} its short side would be under two pixels, so there is nothing to detect")


def split_input_folder(args, config):
    """Without --image, --split names the input images: that split's input folder of --dataset."""
    split = getattr(args, "split", None)
    if not split:
        return None
    run_folders.check_dataset_dir(args.dataset)
    root = run_folders.resolve_dataset_dir(args.dataset, config.SPLIT_SEED)
    folder = root / layout.input_dir(args.task, layout.SPLIT_OPTIONS[split])
    if not folder.is_dir():
        raise UserError(f"{folder} not found: the {args.task} task's {split} input images in the official ISIC 2018 "
                        f"layout (isic2018/README.md); download them from {layout.DATA_URL}")
    return str(folder)


def run(args, config, overrides=()):
    synthetic = args.dataset == "synthetic"
    overwrite = getattr(args, "overwrite", False)
    max_side = None if getattr(args, "full_size_overlays", False) else OVERLAY_MAX_SIDE
    inputs = list_inputs(args.image or split_input_folder(args, config))
    weights = run_folders.resolve_weights(args.weights, "predict", synthetic, args.task, args.logs)
    run_folders.check_inference_weights(weights)
    out_dir = pathlib.Path(args.output) if args.output else default_output_dir(weights, args.logs)
    preflight.check_writable_folder(out_dir, "--output")
    readable, skipped = check_inputs(inputs)
    stems = output_stems(readable)
    finished = {} if overwrite else find_finished(args.task, out_dir, stems, weights)
    todo = [p for p in readable if p not in finished]
    if finished:
        log.info("%d of %d images already have all their outputs in %s from these weights: kept "
                 "(--overwrite redoes them)", len(finished), len(readable), out_dir)
    class_names = ["BG"] + list(layout.CLASS_NAMES[args.task])

    new = {}
    if todo:
        config = run_folders.run_config_for(weights, config, overrides)
        model = run_folders.load_inference_model(config, weights, args.logs)
        # Task 3 rows through the run's temperature (calibration.json, fitted by investigate).
        temperature = calibration.run_temperature(weights) if args.task == "classification" else None
        for path in tqdm(todo, desc="predict", unit="img", disable=len(todo) < 2):
            try:
                image = images.read_rgb(path)
                check_resizable(path, image.shape, config)
            except images.ImageReadError as e:
                if len(inputs) == 1:
                    raise
                log.warning("Skipping %s", e)
                skipped.append(path)
                continue
            stem = stems[path]
            result = model.detect([image])[0]
            deliverable = refinement.task_deliverable(args.task, model, image, result)
            if temperature is not None:
                deliverable = calibration.calibrated_rows(deliverable, temperature)
            deliverables.write_deliverable(args.task, out_dir, stem, deliverable)
            scale = write_overlay(out_dir / f"{stem}_overlay.png", image, result, class_names, max_side)
            summary = deliverables.detections_json(
                result, class_names, args.task, probabilities=deliverable if args.task == "classification" else None)
            if temperature is not None:
                summary["temperature"] = temperature
            summary.update(image=str(path), height=int(image.shape[0]), width=int(image.shape[1]),
                           overlay_scale=scale, source=source_record(path), weights=weights_label(weights))
            atomic.write_json(out_dir / f"{stem}.json", summary)  # last: it marks the image done
            new[path] = deliverable

    if args.task == "classification":
        rows = []
        for path in readable:
            if path in new:
                rows.append((stems[path], new[path]))
            elif path in finished:
                rows.append((stems[path], [finished[path]["probabilities"][d] for d in layout.DIAGNOSES]))
        if rows:
            deliverables.write_task3_predictions(out_dir, [r[0] for r in rows], [r[1] for r in rows])
    if skipped:
        log.warning("Skipped %d unreadable file(s): %s", len(skipped), ", ".join(p.name for p in skipped))
    if not new and not finished:
        raise UserError(f"none of the {len(inputs)} input file(s) is a readable image")
    kept = f" ({len(finished)} kept from an earlier run)" if finished else ""
    print(f"Wrote predictions for {len(new)} image(s) to {out_dir}{kept}")
    return 0
