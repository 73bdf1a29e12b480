"""How much detect()'s scores move when inference molds with "area" instead of "bilinear".

    python -m isic.synthetic /tmp/full --count 3 --size 2848x4288      # full-size generated images
    python bench/resize_gap.py --images '/tmp/full/ISIC2018_Task1-2_Training_Input/*.jpg' \\
        --weights logs/segmentation.../mask_rcnn_segmentation_0016.h5 [--truth DIR] [--output OUT]

The weights' run config.json gives the network (as investigate builds it); each image is run
twice through detect(), with Config.RESIZE_METHOD "bilinear" (Matterport's, the default) and
"area" (what the training feed shrinks with). Per image: the top detection's score in each,
the IoU of the two lesion masks, and with --truth (a Task 1 ground-truth folder) each mask's
Jaccard against the truth. Prints a table and writes OUT/resize_gap.json.
"""
import argparse
import glob
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from mrcnn.io import atomic  # noqa: E402

METHODS = ("bilinear", "area")


def lesion_mask(result, shape):
    """The union of the detected masks [H, W] bool (Task 1's lesion), empty when none."""
    masks = result["masks"]
    return masks.any(axis=-1) if masks.shape[-1] else np.zeros(shape[:2], bool)


def iou(a, b):
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def truth_mask(folder, image_path):
    import cv2
    name = pathlib.Path(image_path).stem + "_segmentation.png"
    mask = cv2.imread(str(pathlib.Path(folder) / name), cv2.IMREAD_GRAYSCALE)
    return None if mask is None else mask > 127


def build_models(weights, overrides):
    """{method: inference MaskRCNN} from the run's config.json next to the weights."""
    import lesions
    from mrcnn.model import MaskRCNN
    saved = pathlib.Path(weights).parent / "config.json"
    values = json.loads(saved.read_text()) if saved.is_file() else {}
    task = "segmentation"
    config_class = lesions.TASK_CONFIGS[task]
    known = {k: v for k, v in values.items() if k.isupper() and hasattr(config_class, k)
             and k not in ("BATCH_SIZE", "IMAGE_SHAPE", "IMAGE_META_SIZE")}
    for key in ("MINI_MASK_SHAPE", "RPN_ANCHOR_SCALES"):
        if isinstance(known.get(key), list):
            known[key] = tuple(known[key])
    models = {}
    for method in METHODS:
        config = config_class(**dict(known, IMAGES_PER_GPU=1, GPU_COUNT=1, RESIZE_METHOD=method, **overrides))
        model = MaskRCNN("inference", config, str(pathlib.Path(weights).parent))
        model.load_weights(str(weights))
        models[method] = model
    return models


def compare(models, paths, truth=None):
    import cv2
    rows = []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]
        row = {"image": pathlib.Path(path).name, "shape": list(image.shape[:2])}
        masks = {}
        for method, model in models.items():
            start = time.perf_counter()
            result = model.detect([image])[0]
            row[f"{method}_s"] = round(time.perf_counter() - start, 2)
            row[f"{method}_score"] = float(result["scores"][0]) if len(result["scores"]) else 0.0
            masks[method] = lesion_mask(result, image.shape)
        row["mask_iou"] = iou(masks["bilinear"], masks["area"])
        gt = truth_mask(truth, path) if truth else None
        if gt is not None:
            for method in METHODS:
                row[f"{method}_jaccard"] = iou(masks[method], gt)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def table(rows):
    jaccard = "bilinear_jaccard" in rows[0] if rows else False
    head = "| image | size | top score bilinear | top score area | mask IoU bilinear vs area |"
    head += " Jaccard bilinear | Jaccard area |" if jaccard else ""
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        line = (f"| {r['image']} | {r['shape'][0]}x{r['shape'][1]} | {r['bilinear_score']:.3f} | "
                f"{r['area_score']:.3f} | {r['mask_iou']:.3f} |")
        if jaccard:
            line += f" {r.get('bilinear_jaccard', float('nan')):.3f} | {r.get('area_jaccard', float('nan')):.3f} |"
        lines.append(line)
    if rows:
        lines.append(f"| **mean** | | {np.mean([r['bilinear_score'] for r in rows]):.3f} | "
                     f"{np.mean([r['area_score'] for r in rows]):.3f} | {np.mean([r['mask_iou'] for r in rows]):.3f} |"
                     + (f" {np.mean([r['bilinear_jaccard'] for r in rows if 'bilinear_jaccard' in r]):.3f} | "
                        f"{np.mean([r['area_jaccard'] for r in rows if 'area_jaccard' in r]):.3f} |" if jaccard else ""))
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, help="image files or a glob (quote it)")
    parser.add_argument("--weights", required=True, help="a training checkpoint (its run's config.json is read)")
    parser.add_argument("--truth", help="folder of <id>_segmentation.png ground-truth masks")
    parser.add_argument("--limit", type=int, help="at most N images")
    parser.add_argument("--output", default=str(ROOT / "logs" / "resize_gap"), help="folder for resize_gap.json/.md")
    args = parser.parse_args(argv)
    paths = sorted(glob.glob(args.images)) if any(c in args.images for c in "*?[") else [args.images]
    paths = paths[:args.limit] if args.limit else paths
    if not paths:
        raise SystemExit(f"resize_gap: no image matches {args.images}")
    models = build_models(args.weights, {})
    rows = compare(models, paths, args.truth)
    out = pathlib.Path(args.output).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    text = table(rows)
    atomic.write_json(out / "resize_gap.json", {"weights": str(args.weights), "rows": rows})
    atomic.write_text(out / "resize_gap.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
