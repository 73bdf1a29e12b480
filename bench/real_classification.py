"""Train Task 3 (lesion diagnosis) on real dermoscopy images within a wall-time budget on a CPU,
with class-balanced sampling on and/or off, and print balanced accuracy, per-class recall and the
confusion matrix of the validation split.

    python bench/real_classification.py --data ../shared/ham10000-seg --minutes 30 --output out/real3

The Task 3 counterpart of bench/real_segmentation.py. `../shared/ham10000-seg` holds 107 HAM10000
images in the Task 1 folder names, its Task 3 ground-truth CSV and `HAM10000_metadata.csv`
(lesion_id, dx); the script lays them out for the Task 3 loader under OUT/data (symlinks, nothing
copied): the images as `ISIC2018_Task3_Training_Input`, the lesion masks as
`HAM10000_segmentations_lesion_tschandl`. Splits are by lesion and stratified by diagnosis
(isic/data/datasets.py), so every class is validated. Each setting is one `lesions.py --mode
train --task classification` command (from scratch, `--minutes`, the CPU recipe below), then
`--mode investigate --subset val`; OUT/<setting>/command.txt holds the exact commands. The table
(bench/task3_balance.py's) goes to OUT/real_classification.md and .json.
"""
import argparse
import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import lesions  # noqa: E402
import real_segmentation  # noqa: E402
import task3_balance  # noqa: E402
from isic import layout  # noqa: E402
from mrcnn.io import atomic  # noqa: E402

# bench/real_segmentation.py's CPU recipe without its Task 1 refinement: resnet18 with BatchNorm
# training at 256 px, the published real-image widths, geometric augmentation, a learning-rate
# drop for the last stage.
CPU_RECIPE = {key: value for key, value in real_segmentation.CPU_RECIPE.items() if key != "TASK1_MASK_REFINEMENT"}

# OUT/data entry -> folder or file of the Task 1-named source
LINKS = {layout.TASK3_INPUT_DIR.format(split="Training"): layout.TASK12_INPUT_DIR.format(split="Training"),
         layout.HAM10000_MASK_DIR: layout.TASK1_GT_DIR.format(split="Training"),
         layout.TASK3_GT_DIR.format(split="Training"): layout.TASK3_GT_DIR.format(split="Training"),
         layout.HAM10000_METADATA_CSV: layout.HAM10000_METADATA_CSV}


def task3_layout(source, target):
    """Symlink the Task 3 layout of `source` (ham10000-seg's Task 1 names) into `target`."""
    target.mkdir(parents=True, exist_ok=True)
    for name, origin in LINKS.items():
        src, dst = source / origin, target / name
        if not src.exists():
            raise SystemExit(f"real_classification: {src} not found: --data must hold {origin} "
                             "(../shared/ham10000-seg's layout)")
        if dst.is_symlink() and dst.resolve() == src.resolve():
            continue
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        dst.symlink_to(src.resolve(), target_is_directory=src.is_dir())
    return target


def train_command(data, minutes, logs, seed, split_seed, recipe):
    """The lesions.py arguments that train the recipe (what a user would type)."""
    argv = ["--mode", "train", "--task", "classification", "--dataset", str(data), "--weights", "none",
            "--logs", str(logs), "--minutes", f"{minutes:g}", "--seed", str(seed), "--split-seed", str(split_seed)]
    for key, value in recipe.items():
        argv += ["--set", f"{key}={json.dumps(value, separators=(',', ':'))}"]
    return argv


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="../shared/ham10000-seg or a folder in its layout")
    parser.add_argument("--minutes", type=float, default=30.0, help="wall-time budget per training (default 30)")
    parser.add_argument("--balancing", choices=("both", "on", "off"), default="both",
                        help="class-balanced sampling on, off, or both (default: both, one training each)")
    parser.add_argument("--output", required=True, help="folder for the layout, runs and tables")
    parser.add_argument("--seed", type=int, default=42, help="initialisation/augmentation seed (default 42)")
    parser.add_argument("--split-seed", type=int, default=42, help="the train/val split (default 42)")
    parser.add_argument("--epochs", type=int, help="passed to training (a short smoke run)")
    parser.add_argument("--steps-per-epoch", type=int, help="passed to training")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change a recipe value (repeatable), as lesions.py --set")
    parser.add_argument("--no-bare-step", action="store_true", help="skip the bare ResNet-50 step measurement")
    args = parser.parse_args(argv)

    source = pathlib.Path(args.data).expanduser().resolve()
    if not source.is_dir():
        print(f"real_classification: error: --data {args.data}: no such folder", file=sys.stderr)
        return 2
    out = pathlib.Path(args.output).expanduser().resolve()
    data = task3_layout(source, out / "data")
    settings = ["on", "off"] if args.balancing == "both" else [args.balancing]
    extra = []
    for flag in ("epochs", "steps_per_epoch"):
        if getattr(args, flag) is not None:
            extra += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]

    rows = []
    for setting in settings:
        run_dir = out / f"balancing_{setting}"
        recipe = dict(CPU_RECIPE, CLASS_BALANCING=task3_balance.SETTINGS[setting])
        recipe.update(dict(lesions.parse_override(o) for o in args.overrides))
        train = train_command(data, args.minutes, run_dir / "logs", args.seed, args.split_seed, recipe) + extra
        start = time.monotonic()
        task3_balance.lesions(train)
        wall = time.monotonic() - start
        weights = task3_balance.newest_checkpoint(run_dir / "logs")
        investigate = ["--mode", "investigate", "--task", "classification", "--dataset", str(data),
                       "--weights", str(weights), "--subset", "val", "--output", str(run_dir / "investigate")]
        atomic.write_text(run_dir / "command.txt", "\n".join(
            "python lesions.py " + " ".join(_quote(a) for a in command) for command in (train, investigate)) + "\n")
        task3_balance.lesions(investigate)
        metrics = json.loads((run_dir / "investigate" / "metrics.json").read_text())
        rows.append(task3_balance.result_row(metrics, args.seed, wall, setting))
        print(f"balancing {setting}: balanced accuracy {rows[-1]['balanced_accuracy']:.3f} on "
              f"{rows[-1]['images']} validation images", flush=True)
    bare_step_s = None if args.no_bare_step else task3_balance.bare_step()
    title = f"Task 3 on {source.name}, {args.minutes:g} min a training, class-balanced sampling {' vs '.join(settings)}"
    task3_balance.write_tables(out, "real_classification", rows, bare_step_s, title,
                               {"data": str(source), "minutes_budget": args.minutes, "recipe": CPU_RECIPE,
                                "overrides": args.overrides, "extra_args": extra})
    return 0


def _quote(arg):
    return arg if all(c.isalnum() or c in "-_=./,:" for c in arg) else "'" + arg + "'"


if __name__ == "__main__":
    sys.exit(main())
