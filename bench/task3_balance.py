"""Task 3 with class-balanced sampling on and off, over seeds, side by side.

    python bench/task3_balance.py --seeds 1 2 3                 # the synthetic Task 3 default
    python bench/task3_balance.py --seeds 1 --epochs 1 --steps-per-epoch 2 --limit 40   # a smoke run

Each run is the quick start a new user types, `python lesions.py --mode train --task
classification --dataset synthetic`, with `--set CLASS_BALANCING="repeat_factor"` or `"none"`
(so the comparison holds whatever the task's default is), then `--mode investigate --task
classification --dataset synthetic` on the run's validation images. Every training and scoring
is a fresh process with its own --logs under --output; the split seed stays fixed (42), so all
runs validate on the same images. Prints, per setting and seed, the balanced accuracy (the
official Task 3 score) and the recall of each class, then min / median / max, beside the
machine's bare ResNet-50 training step (bench/speed.py), and writes OUT/task3_balance.json and
OUT/task3_balance.md. bench/real_classification.py prints the same table for real images.
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

from isic import layout  # noqa: E402
from mrcnn.io import atomic  # noqa: E402
sys.path.insert(0, str(ROOT / "bench"))
import speed  # noqa: E402

SETTINGS = {"on": "repeat_factor", "off": "none"}  # --balancing -> Config.CLASS_BALANCING


def lesions(argv, env=None):
    """Run `python lesions.py ARGV` in a fresh process; stop with its command when it fails."""
    command = [sys.executable, str(ROOT / "lesions.py")] + [str(a) for a in argv]
    print("$ python lesions.py " + " ".join(command[2:]), flush=True)
    done = subprocess.run(command, cwd=ROOT, env=env or dict(os.environ))
    if done.returncode:
        raise SystemExit(f"task3: lesions.py exited with {done.returncode}: {' '.join(command[2:])}")


def newest_checkpoint(logs):
    found = sorted(pathlib.Path(logs).glob("classification*/mask_rcnn_classification_*.h5"))
    if not found:
        raise SystemExit(f"task3: no checkpoint under {logs}")
    return found[-1]


def result_row(metrics, seed, wall_s, balancing):
    """One row from investigate's metrics.json: balanced accuracy, per-class recall (argmax of
    the written rows, isic.evaluation.calibration), ECE and the confusion matrix."""
    block = metrics.get("task3_calibration") or {}
    recall = block.get("per_class_recall")
    if recall is None:  # an investigate without the calibration block: the scorer's sensitivities
        recall = {c: s["sensitivity"] for c, s in metrics["isic"]["per_category"].items()}
    return {"balancing": balancing, "seed": seed, "wall_s": round(wall_s, 1),
            "balanced_accuracy": metrics["isic"]["overall"], "recall": recall, "ece": block.get("ece"),
            "images": metrics.get("num_images"), "confusion_matrix": metrics.get("confusion_matrix", {}).get("matrix")}


def _stat(values):
    values = [v for v in values if v is not None]
    if not values:
        return {"min": None, "median": None, "max": None}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def summarise(rows):
    """{balancing: {"balanced_accuracy": {min, median, max}, "recall": {class: {...}}, "wall_s": {...}}}."""
    out = {}
    for setting in dict.fromkeys(r["balancing"] for r in rows):
        mine = [r for r in rows if r["balancing"] == setting]
        out[setting] = {"balanced_accuracy": _stat([r["balanced_accuracy"] for r in mine]),
                        "wall_s": _stat([r["wall_s"] for r in mine]),
                        "recall": {c: _stat([r["recall"].get(c) for r in mine]) for c in layout.DIAGNOSES}}
    return out


def _f(value):
    return "-" if value is None else f"{value:.2f}"


def markdown(rows, summary, bare_step_s, title):
    """The side-by-side table: one line per (balancing, seed), then min / median / max per setting."""
    head = "| balancing | seed | wall time | balanced acc. | " + " | ".join(layout.DIAGNOSES) + " |"
    lines = [f"### {title}", "", head, "|" + "---|" * (4 + len(layout.DIAGNOSES))]
    for row in rows:
        lines.append(f"| {row['balancing']} | {row['seed']} | {speed.format_minutes(row['wall_s'])} | "
                     f"{row['balanced_accuracy']:.3f} | " + " | ".join(_f(row["recall"].get(c)) for c in layout.DIAGNOSES)
                     + " |")
    for setting, s in summary.items():
        for stat in ("min", "median", "max"):
            lines.append(f"| {setting} | **{stat}** | {speed.format_minutes(s['wall_s'][stat])} | "
                         f"{s['balanced_accuracy'][stat]:.3f} | "
                         + " | ".join(_f(s["recall"][c][stat]) for c in layout.DIAGNOSES) + " |")
    lines += ["", "Per-class columns: recall of the argmax on the validation images."]
    for row in rows:
        if row.get("confusion_matrix"):
            lines += ["", f"Confusion matrix, balancing {row['balancing']}, seed {row['seed']} (rows: truth, "
                          f"columns: prediction, order {' '.join(layout.DIAGNOSES)}):", "",
                      "```"] + [" ".join(f"{v:4d}" for v in line) for line in row["confusion_matrix"]] + ["```"]
    step = f"{bare_step_s:.2f} s" if bare_step_s is not None else "not measured"
    lines += ["", f"Machine: bare ResNet-50 training step at 512, batch 2: {step}."]
    return "\n".join(lines) + "\n"


def bare_step():
    return speed.bare_step_in_fresh_process("task3")


def write_tables(out, name, rows, bare_step_s, title, extra=None):
    """Write OUT/<name>.json and .md, print the table, return the summary."""
    summary = summarise(rows)
    table = markdown(rows, summary, bare_step_s, title)
    atomic.write_json(out / f"{name}.json", dict(extra or {}, runs=rows, summary=summary,
                                                  bare_resnet50_step_s=bare_step_s))
    atomic.write_text(out / f"{name}.md", table)
    print(table)
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="training seeds (default 1 2 3)")
    parser.add_argument("--balancing", choices=("both", "on", "off"), default="both",
                        help="train with class-balanced sampling on, off, or both (default)")
    parser.add_argument("--split-seed", type=int, default=42, help="the one train/val split of every run")
    parser.add_argument("--minutes", type=float, help="training budget per run (default: the schedule)")
    parser.add_argument("--epochs", type=int, help="passed to each training (a short smoke run)")
    parser.add_argument("--steps-per-epoch", type=int, help="passed to each training")
    parser.add_argument("--limit", type=int, help="use at most N images (training and scoring)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a Config value for every training (repeatable)")
    parser.add_argument("--no-bare-step", action="store_true", help="skip the bare ResNet-50 step measurement")
    parser.add_argument("--output", default=str(ROOT / "logs" / "task3_balance"), help="folder of the runs and tables")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.output).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    extra = []
    for flag in ("epochs", "steps_per_epoch", "minutes"):
        if getattr(args, flag) is not None:
            extra += ["--" + flag.replace("_", "-"), f"{getattr(args, flag):g}"]
    limit = ["--limit", str(args.limit)] if args.limit else []
    settings = ["on", "off"] if args.balancing == "both" else [args.balancing]

    rows = []
    for setting in settings:
        for seed in args.seeds:
            run_dir = out / f"balancing_{setting}" / f"seed{seed}"
            logs = run_dir / "logs"
            sets = [a for o in args.overrides for a in ("--set", o)]
            start = time.monotonic()
            lesions(["--mode", "train", "--task", "classification", "--dataset", "synthetic", "--logs", logs,
                     "--seed", seed, "--split-seed", args.split_seed,
                     "--set", f"CLASS_BALANCING={json.dumps(SETTINGS[setting])}"] + sets + extra + limit)
            wall = time.monotonic() - start
            scored = run_dir / "investigate"
            lesions(["--mode", "investigate", "--task", "classification", "--dataset", "synthetic",
                     "--weights", newest_checkpoint(logs), "--subset", "val", "--output", scored] + limit)
            rows.append(result_row(json.loads((scored / "metrics.json").read_text()), seed, wall, setting))
            print(f"balancing {setting}, seed {seed}: balanced accuracy {rows[-1]['balanced_accuracy']:.3f}",
                  flush=True)
    bare_step_s = None if args.no_bare_step else bare_step()
    title = (f"Synthetic Task 3 default, class-balanced sampling {' vs '.join(settings)}, seeds "
             f"{' '.join(map(str, args.seeds))}" + (f", {' '.join(args.overrides)}" if args.overrides else ""))
    write_tables(out, "task3_balance", rows, bare_step_s, title,
                 {"split_seed": args.split_seed, "overrides": args.overrides, "extra_args": extra + limit})
    return 0


if __name__ == "__main__":
    sys.exit(main())
