"""Train Task 1 (lesion segmentation) on real dermoscopy images within a wall-time budget on a CPU.

    python bench/real_segmentation.py --data ../shared/ham10000-seg --minutes 30 --output out/real

Everything goes through lesions.py: the script builds one `lesions.py --mode train` command
(from scratch, `--minutes` budget, the CPU recipe below as `--set` values), runs it, and copies
the last checkpoint and its config.json into OUT. It trains on the seeded, lesion-disjoint
train split (80 %) of DIR; score the other 20 % with

    python lesions.py --mode investigate --dataset DIR --weights OUT/mask_rcnn_segmentation_real.h5 --subset val

(`--evaluate` runs that too and prints the thresholded Jaccard). The last line printed is
the path of the weights file. OUT/command.txt holds the exact lesions.py command.
"""
import argparse
import json
import os
import pathlib
import shutil
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import lesions  # noqa: E402
from mrcnn.io import atomic  # noqa: E402

WEIGHTS_NAME = "mask_rcnn_segmentation_real.h5"
FIGURE_NAME = "boundaries.png"

# What fits a 2-core CPU and learns from scratch (measured, see docs/real-image-results.md):
# the synthetic CPU config (resnet18 with BatchNorm training, 256 px images,
# CPU-sized RPN/ROI counts), fewer validation steps, a learning-rate drop for the last
# fifth of the budget, geometric augmentation only, and GrabCut refinement of the lesion
# mask at full resolution (an inference setting, saved in config.json so investigate and
# predict apply it).
CPU_RECIPE = dict(
    lesions.SYNTHETIC_CPU_OVERRIDES,
    VALIDATION_STEPS=5,
    SCHEDULE=[["all", 8, 0.01], ["all", 10, 0.001]],
    # The widths of the published real-image run (docs/real-image-results.md), not the synthetic config's narrower ones.
    TOP_DOWN_PYRAMID_SIZE=128,
    RPN_CONV_CHANNELS=512,
    MASK_HEAD_CHANNELS=256,
    AUGMENTATION="geometric",
    TASK1_MASK_REFINEMENT="grabcut",
)


def train_command(data, minutes, logs, seed, recipe):
    """The lesions.py arguments that train the recipe (what a user would type)."""
    argv = ["--mode", "train", "--task", "segmentation", "--dataset", str(data), "--weights", "none",
            "--logs", str(logs), "--minutes", f"{minutes:g}", "--seed", str(seed), "--split-seed", str(seed)]
    for key, value in recipe.items():
        argv += ["--set", f"{key}={json.dumps(value, separators=(',', ':'))}"]
    return argv


def newest_checkpoint(logs):
    checkpoints = sorted(pathlib.Path(logs).glob("segmentation*/mask_rcnn_segmentation_*.h5"))
    if not checkpoints:
        raise SystemExit(f"real_segmentation: training wrote no checkpoint under {logs}")
    return checkpoints[-1]


def copy_atomic(src, dst):
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def boundary_figure(data, pred_dir, per_image, path, count=8):
    """A grid of validation images with the true (green) and predicted (magenta) lesion
    boundaries and each image's Jaccard, spread over the Jaccard range (worst to best)."""
    import cv2
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from isic import layout
    ranked = sorted(per_image, key=lambda k: per_image[k]["jaccard"])
    picks = [ranked[round(i * (len(ranked) - 1) / max(1, count - 1))] for i in range(min(count, len(ranked)))]
    cols = 4
    rows = (len(picks) + cols - 1) // cols
    fig = Figure(figsize=(4 * cols, 3.2 * rows))
    for n, image_id in enumerate(picks):
        ax = fig.add_subplot(rows, cols, n + 1)
        image = cv2.imread(str(data / layout.TASK12_INPUT_DIR.format(split="Training") / f"{image_id}.jpg"))[..., ::-1]
        truth = cv2.imread(str(data / layout.TASK1_GT_DIR.format(split="Training") / layout.segmentation_name(image_id)), 0) > 127
        pred = cv2.imread(str(pred_dir / layout.segmentation_name(image_id)), 0) > 127
        ax.imshow(image)
        for mask, colour in ((truth, "lime"), (pred, "magenta")):
            if mask.any():
                ax.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1.5)
        ax.set_title(f"{image_id}  J={per_image[image_id]['jaccard']:.2f}", fontsize=9)
        ax.axis("off")
    fig.suptitle("validation: true boundary (green) vs predicted (magenta)")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=80)
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="dataset root in the ISIC 2018 Task 1 layout")
    parser.add_argument("--minutes", type=float, default=30.0, help="wall-time budget for training")
    parser.add_argument("--output", required=True, help="folder for the weights, config.json and logs")
    parser.add_argument("--seed", type=int, default=42, help="split/augmentation seed (default 42)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change a recipe value (repeatable), as lesions.py --set")
    parser.add_argument("--evaluate", action="store_true",
                        help="then score the validation split with lesions.py --mode investigate")
    args = parser.parse_args(argv)

    data = pathlib.Path(args.data).expanduser().resolve()
    if not data.is_dir():
        print(f"real_segmentation: error: --data {args.data}: no such folder", file=sys.stderr)
        return 2
    out = pathlib.Path(args.output).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    recipe = dict(CPU_RECIPE)
    recipe.update(dict(lesions.parse_override(o) for o in args.overrides))
    logs = out / "logs"

    argv_train = train_command(data, args.minutes, logs, args.seed, recipe)
    command = "python lesions.py " + " ".join(_quote(a) for a in argv_train)
    atomic.write_text(out / "command.txt", command + "\n")
    print(command, flush=True)
    start = time.monotonic()
    status = lesions.main(argv_train)
    if status:
        return status
    trained_s = time.monotonic() - start
    checkpoint = newest_checkpoint(logs)
    weights = out / WEIGHTS_NAME
    copy_atomic(checkpoint.parent / "config.json", out / "config.json")
    copy_atomic(checkpoint, weights)
    summary = {"data": str(data), "minutes_budget": args.minutes, "wall_s": round(trained_s, 1),
               "checkpoint": str(checkpoint), "weights": str(weights), "recipe": recipe, "command": command}
    if args.evaluate:
        metrics_dir = out / "investigate"
        status = lesions.main(["--mode", "investigate", "--task", "segmentation", "--dataset", str(data),
                               "--weights", str(weights), "--subset", "val", "--seed", str(args.seed),
                               "--output", str(metrics_dir)])
        if status:
            return status
        metrics = json.loads((metrics_dir / "metrics.json").read_text())
        summary["validation"] = dict(metrics["isic"]["macro_average"], images=metrics["num_images"],
                                     mask_map=metrics["mask_map"])
        print(f"validation: {json.dumps(summary['validation'])}")
        boundary_figure(data, metrics_dir / "predictions", metrics["isic"]["per_image"], out / FIGURE_NAME)
    atomic.write_json(out / "summary.json", summary)
    print(f"trained {trained_s / 60:.1f} min; weights:")
    print(weights)
    return 0


def _quote(arg):
    return arg if all(c.isalnum() or c in "-_=./,:" for c in arg) else "'" + arg + "'"


if __name__ == "__main__":
    sys.exit(main())
