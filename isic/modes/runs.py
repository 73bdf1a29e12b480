"""Runs mode: the runs of a logs folder as a table, and two runs side by side.

    python lesions.py --mode runs [--logs DIR] [--task T]
    python lesions.py --mode runs --compare RUN_A RUN_B

A run folder (isic/modes/run_folders.py) holds config.json, run.json (when training started, from
which weights, the command), history.csv (one row per finished epoch, Keras' 0-based epoch
index), checkpoints and the investigate_*/ folders with their metrics.json. The table reads
only those files: no TensorFlow, nothing written.
"""
import csv
import datetime
import json
import math
import pathlib

from isic import layout
from isic.errors import UserError
from isic.modes.run_folders import RUN_RECORD
from mrcnn.config import VALUE_SOURCES_KEY
from mrcnn.io import run_dirs

COLUMNS = ("run", "task", "started", "epochs", "best val loss (epoch)", "last investigate", "weights")


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
        return value if isinstance(value, dict) else None
    except (OSError, ValueError):
        return None


def read_history(run_dir):
    """[{column: float}] of a run's history.csv, one per finished epoch, with 'epoch' 1-based
    (the checkpoint's number); [] when there is none."""
    path = pathlib.Path(run_dir) / "history.csv"
    if not path.is_file():
        return []
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            values = {}
            for key, text in row.items():
                try:
                    values[key] = float(text)
                except (TypeError, ValueError):
                    continue
            if "epoch" in values:
                values["epoch"] = int(values["epoch"]) + 1
                rows.append(values)
    return rows


def run_task(run_dir):
    """The task of a run folder: its config.json's NAME, else the task its folder name starts with."""
    config = _read_json(pathlib.Path(run_dir) / "config.json") or {}
    if config.get("NAME") in layout.TASKS:
        return config["NAME"]
    return next((t for t in layout.TASKS if run_dirs.run_dir_key(pathlib.Path(run_dir).name, t)), None)


def last_investigation(run_dir):
    """(overall score, split, subset, folder name) of the newest investigate_* metrics.json, or None."""
    found = []
    for path in pathlib.Path(run_dir).glob("investigate_*/metrics.json"):
        report = _read_json(path)
        if report and isinstance(report.get("isic"), dict) and "overall" in report["isic"]:
            found.append((path.stat().st_mtime, report, path.parent.name))
    if not found:
        return None
    _, report, folder = max(found, key=lambda item: item[0])
    return float(report["isic"]["overall"]), report.get("split", "Training"), report.get("subset"), folder


def run_summary(run_dir):
    """One row of the table as a dict (None values where a file is missing)."""
    run_dir = pathlib.Path(run_dir)
    task = run_task(run_dir)
    record = _read_json(run_dir / RUN_RECORD) or {}
    history = read_history(run_dir)
    checkpoints = run_dirs.run_checkpoints(run_dir, task) if task else []
    epochs = max([int(run_dirs.CHECKPOINT_RE.match(p.name).group("epoch")) for p in checkpoints], default=0)
    with_val = [r for r in history if math.isfinite(r.get("val_loss", math.nan))]
    best = min(with_val, key=lambda r: r["val_loss"]) if with_val else None
    started = record.get("started")
    if started is None and task:
        key = run_dirs.run_dir_key(run_dir.name, task)
        if key:
            started = datetime.datetime.strptime(key[0], run_dirs.STAMP_FORMAT).isoformat(timespec="seconds")
    return {"run": run_dir.name, "path": str(run_dir), "task": task, "started": started, "epochs": epochs,
            "best_val_loss": best["val_loss"] if best else None, "best_epoch": best["epoch"] if best else None,
            "investigate": last_investigation(run_dir), "weights": record.get("weights")}


def find_runs(logs_dir, task=None):
    """Run folders under `logs_dir` (of `task`, or of every task), newest first."""
    logs_dir = pathlib.Path(logs_dir)
    if not logs_dir.is_dir():
        raise UserError(f"--logs {logs_dir}: no such folder (training writes its run folders there)")
    found = []
    for path in logs_dir.iterdir():
        if not path.is_dir():
            continue
        for name in ([task] if task else layout.TASKS):
            key = run_dirs.run_dir_key(path.name, name)
            if key is not None:
                found.append((key, path))
                break
    return [p for _, p in sorted(found, key=lambda item: item[0], reverse=True)]


def _cell(summary, column):
    if column == "run":
        return summary["run"]
    if column == "task":
        return summary["task"] or "?"
    if column == "started":
        return (summary["started"] or "?").replace("T", " ")
    if column == "epochs":
        return str(summary["epochs"])
    if column == "best val loss (epoch)":
        loss = summary["best_val_loss"]
        return "-" if loss is None else f"{loss:.4f} ({summary['best_epoch']})"
    if column == "last investigate":
        found = summary["investigate"]
        if not found:
            return "-"
        score, split, subset, _ = found
        return f"{score:.4f} {split.lower()}" + (f"/{subset}" if split == "Training" and subset else "")
    return summary["weights"] or "?"


def format_table(rows, columns):
    """A plain-text table with aligned columns."""
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def resolve_run(text, logs_dir):
    """A run folder given as a path or as a folder name under --logs."""
    for path in (pathlib.Path(text).expanduser(), pathlib.Path(logs_dir) / text):
        if path.is_dir() and (path / "config.json").is_file():
            return path
    raise UserError(f"--compare {text}: not a run folder (a folder with a config.json, as a path or a name under "
                    f"{logs_dir})")


def config_differences(run_a, run_b):
    """[(attribute, value in A, value in B)] of the Config values that differ (sources aside)."""
    a = _read_json(run_a / "config.json") or {}
    b = _read_json(run_b / "config.json") or {}
    keys = sorted((set(a) | set(b)) - {VALUE_SOURCES_KEY})
    return [(k, a.get(k, "(absent)"), b.get(k, "(absent)")) for k in keys if a.get(k, "(absent)") != b.get(k, "(absent)")]


def compare(run_a, run_b):
    """The text of --compare: differing Config values, then the two histories by epoch."""
    lines = [f"A: {run_a}", f"B: {run_b}", ""]
    differences = config_differences(run_a, run_b)
    if differences:
        rows = [[k, json.dumps(va), json.dumps(vb)] for k, va, vb in differences]
        lines += [f"{len(differences)} Config value(s) differ:", format_table(rows, ("attribute", "A", "B"))]
    else:
        lines.append("The Config values are the same.")
    history_a = {r["epoch"]: r for r in read_history(run_a)}
    history_b = {r["epoch"]: r for r in read_history(run_b)}
    epochs = sorted(set(history_a) | set(history_b))

    def value(row, key):
        return "-" if row is None or key not in row else f"{row[key]:.4f}"

    rows = [[str(e), value(history_a.get(e), "loss"), value(history_a.get(e), "val_loss"),
             value(history_b.get(e), "loss"), value(history_b.get(e), "val_loss")] for e in epochs]
    lines += ["", "History (loss, validation loss):" if rows else "No history.csv in either run."]
    if rows:
        lines.append(format_table(rows, ("epoch", "A loss", "A val loss", "B loss", "B val loss")))
    for name, run in (("A", run_a), ("B", run_b)):
        found = last_investigation(run)
        if found:
            lines.append(f"{name} last investigate ({found[3]}): {found[0]:.4f} on the {found[1]} split")
    return "\n".join(lines)


def run(args):
    if args.compare:
        run_a, run_b = (resolve_run(text, args.logs) for text in args.compare)
        print(compare(run_a, run_b))
        return 0
    folders = find_runs(args.logs, args.task)
    if not folders:
        what = f"'{args.task}' runs" if args.task else "runs"
        print(f"No {what} under {args.logs}")
        return 0
    rows = [[_cell(run_summary(p), c) for c in COLUMNS] for p in folders]
    print(format_table(rows, COLUMNS))
    return 0
