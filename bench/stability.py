"""Train a recipe K times with different seeds, score each run, and report the spread.

    python bench/stability.py --runs 3                       # the quick start, seeds 1 2 3
    python bench/stability.py --runs 3 --set NORM=gn         # compare an option
    python bench/stability.py --recipe real --data ../shared/ham10000-seg --runs 3

Recipes: `quick` is the quick start (`lesions.py --mode train --dataset synthetic`, scored by
`--mode investigate --dataset synthetic` on its validation images); `real` is
bench/real_segmentation.py's CPU recipe (its `train_command`, `--minutes` budget, the
lesion-disjoint split of --data), scored on that split's validation images. Every training and
scoring is a fresh `python lesions.py` process with its own --logs folder under --output, so
the runs share nothing but the image cache. The split seed stays fixed (42, or --split-seed),
so all runs validate on the same images; --seed varies initialisation, batch order and
augmentation. Prints a table (seed, wall time, thresholded Jaccard, mean Jaccard, mask mAP,
then min / median / max) beside the machine's bare ResNet-50 training step at 512 (bench/speed.py),
and writes it to OUT/stability.json and OUT/stability.md.
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mrcnn.io import atomic  # noqa: E402
sys.path.insert(0, str(ROOT / "bench"))
import speed  # noqa: E402

METRICS = (("threshold_jaccard", "thresholded Jaccard"), ("jaccard", "mean Jaccard"), ("mask_map", "mask mAP@0.5"))


def train_argv(args, seed, logs, overrides):
    """lesions.py arguments of one training of the recipe."""
    if args.recipe == "real":
        import lesions
        import real_segmentation
        recipe = dict(real_segmentation.CPU_RECIPE)
        recipe.update(dict(lesions.parse_override(o) for o in overrides))
        argv = real_segmentation.train_command(pathlib.Path(args.data).resolve(), args.minutes, logs, seed, recipe)
        return _set_split_seed(argv, args.split_seed)
    argv = ["--mode", "train", "--dataset", "synthetic", "--logs", str(logs), "--seed", str(seed),
            "--split-seed", str(args.split_seed)]
    if args.minutes:
        argv += ["--minutes", f"{args.minutes:g}"]
    for override in overrides:
        argv += ["--set", override]
    return argv


def _set_split_seed(argv, split_seed):
    """real_segmentation splits with the run's seed; a spread needs one validation set for all."""
    argv = list(argv)
    argv[argv.index("--split-seed") + 1] = str(split_seed)
    return argv


def investigate_argv(args, weights, out):
    dataset = "synthetic" if args.recipe == "quick" else str(pathlib.Path(args.data).resolve())
    return ["--mode", "investigate", "--task", "segmentation", "--dataset", dataset, "--weights", str(weights),
            "--subset", "val", "--output", str(out)]


def lesions(argv, extra_args, env):
    """Run `python lesions.py ARGV`; raise with its last error line when it fails."""
    command = [sys.executable, str(ROOT / "lesions.py")] + list(argv) + list(extra_args)
    print("$ python lesions.py " + " ".join(command[2:]), flush=True)
    done = subprocess.run(command, cwd=ROOT, env=env)
    if done.returncode:
        raise SystemExit(f"stability: lesions.py exited with {done.returncode}: {' '.join(command[2:])}")


def newest_checkpoint(logs):
    found = sorted(pathlib.Path(logs).glob("segmentation*/mask_rcnn_segmentation_*.h5"))
    if not found:
        raise SystemExit(f"stability: no checkpoint under {logs}")
    return found[-1]


def run_row(metrics, seed, wall_s):
    """One table row from investigate's metrics.json."""
    macro = metrics["isic"]["macro_average"]
    return {"seed": seed, "wall_s": round(wall_s, 1), "threshold_jaccard": macro["threshold_jaccard"],
            "jaccard": macro["jaccard"], "mask_map": metrics["mask_map"]["mAP@0.5"],
            "images": metrics.get("num_images")}


def summarise(rows):
    """{metric: {min, median, max}} over the runs, wall time included."""
    out = {}
    for key in ("wall_s",) + tuple(k for k, _ in METRICS):
        values = [row[key] for row in rows]
        out[key] = {"min": min(values), "median": statistics.median(values), "max": max(values)}
    return out


def markdown(rows, summary, bare_step_s, title):
    lines = [f"### {title}", "", "| seed | wall time | thresholded Jaccard | mean Jaccard | mask mAP@0.5 |",
             "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['seed']} | {speed.format_minutes(row['wall_s'])} | {row['threshold_jaccard']:.3f} | "
                     f"{row['jaccard']:.3f} | {row['mask_map']:.3f} |")
    for stat in ("min", "median", "max"):
        lines.append(f"| **{stat}** | {speed.format_minutes(summary['wall_s'][stat])} | "
                     + " | ".join(f"{summary[k][stat]:.3f}" for k, _ in METRICS) + " |")
    step = f"{bare_step_s:.2f} s" if bare_step_s is not None else "not measured"
    lines += ["", f"Machine: bare ResNet-50 training step at 512, batch 2: {step}."]
    return "\n".join(lines) + "\n"


def bare_step():
    return speed.bare_step_in_fresh_process("stability")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=("quick", "real"), default="quick",
                        help="quick: the synthetic quick start (default); real: bench/real_segmentation.py's recipe")
    parser.add_argument("--data", help="real: dataset root in the ISIC 2018 Task 1 layout")
    parser.add_argument("--runs", type=int, default=3, help="trainings (default 3)")
    parser.add_argument("--seeds", type=int, nargs="+", help="their seeds (default 1 .. runs)")
    parser.add_argument("--split-seed", type=int, default=42, help="the one train/val split of every run (default 42)")
    parser.add_argument("--minutes", type=float, help="training budget per run (real: default 30; quick: the "
                                                      "schedule's epochs unless given)")
    parser.add_argument("--epochs", type=int, help="passed to each training (a short smoke run)")
    parser.add_argument("--steps-per-epoch", type=int, help="passed to each training")
    parser.add_argument("--limit", type=int, help="use at most N images (training and scoring)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a Config value for every training, e.g. NORM=gn (repeatable)")
    parser.add_argument("--deterministic", action="store_true", help="train with lesions.py --deterministic "
                                                                     "(PYTHONHASHSEED=0 for the processes)")
    parser.add_argument("--no-bare-step", action="store_true", help="skip the bare ResNet-50 step measurement")
    parser.add_argument("--output", default=str(ROOT / "logs" / "stability"), help="folder of the runs and tables")
    args = parser.parse_args(argv)
    if args.recipe == "real":
        if not args.data:
            parser.error("--recipe real needs --data")
        args.minutes = 30.0 if args.minutes is None else args.minutes
    seeds = args.seeds or list(range(1, args.runs + 1))
    if len(seeds) != args.runs and args.seeds:
        args.runs = len(seeds)
    out = pathlib.Path(args.output).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    extra = []
    if args.deterministic:
        env["PYTHONHASHSEED"] = "0"
        extra.append("--deterministic")
    for flag in ("epochs", "steps_per_epoch", "limit"):
        if getattr(args, flag) is not None:
            extra += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]

    rows = []
    for seed in seeds:
        run_dir = out / f"seed{seed}"
        logs = run_dir / "logs"
        start = time.monotonic()
        lesions(train_argv(args, seed, logs, args.overrides), extra, env)
        wall = time.monotonic() - start
        weights = newest_checkpoint(logs)
        scored = run_dir / "investigate"
        lesions(investigate_argv(args, weights, scored), [f"--limit={args.limit}"] if args.limit else [], env)
        rows.append(run_row(json.loads((scored / "metrics.json").read_text()), seed, wall))
        print(f"seed {seed}: {json.dumps(rows[-1])}", flush=True)

    summary = summarise(rows)
    bare_step_s = None if args.no_bare_step else bare_step()
    title = f"{args.recipe} recipe, {len(rows)} seeds" + (f", {' '.join(args.overrides)}" if args.overrides else "")
    table = markdown(rows, summary, bare_step_s, title)
    record = {"recipe": args.recipe, "overrides": args.overrides, "split_seed": args.split_seed,
              "deterministic": args.deterministic, "runs": rows, "summary": summary,
              "bare_resnet50_step_s": bare_step_s, "extra_args": extra}
    atomic.write_json(out / "stability.json", record)
    atomic.write_text(out / "stability.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
