"""Run folders and their checkpoints, without TensorFlow (the CLI finds `--weights last`
before it pays for importing it).

A run folder is `<model_dir>/<name><YYYYmmddTHHMMSS>` (Matterport's name with seconds), with
`_2`, `_3`, ... appended when that name is taken; folders of older runs named to the minute
(`<name><YYYYmmddTHHMM>`) are still found. Checkpoints inside are
`mask_rcnn_<name>_<epoch:04d>.h5`.
"""
import datetime
import errno
import os
import pathlib
import re

STAMP_FORMAT = "%Y%m%dT%H%M%S"
_STAMP = r"(?P<stamp>\d{8}T\d{4}(?:\d{2})?)(?:_(?P<suffix>\d+))?"
CHECKPOINT_RE = re.compile(r"^mask_rcnn_(?P<name>.+)_(?P<epoch>\d{4})\.h5$")


def _folder_re(name):
    return re.compile("^" + re.escape(name.lower()) + _STAMP + "$")


def run_dir_key(folder_name, name):
    """Sort key (time stamp to the second, suffix) of a run folder of `name`, None for other folders."""
    m = _folder_re(name).match(folder_name)
    if not m:
        return None
    stamp = m.group("stamp")
    return (stamp if len(stamp) == 15 else stamp + "00"), int(m.group("suffix") or 1)


def claim_run_dir(model_dir, name, now=None):
    """Create and return a new, empty run folder for `name`: the time stamp to the second,
    then `_2`, `_3`, ... while the name is taken (os.mkdir is atomic, so two processes
    starting in the same second get different folders)."""
    model_dir = pathlib.Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    base = name.lower() + (now or datetime.datetime.now()).strftime(STAMP_FORMAT)
    suffix = 1
    while True:
        path = model_dir / (base if suffix == 1 else f"{base}_{suffix}")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            suffix += 1


def checkpoint_run(path, name):
    """(run folder, epoch) when `path` is a checkpoint `mask_rcnn_<name>_NNNN.h5` inside a run
    folder of `name`; None otherwise (another task's checkpoint, a file outside a run)."""
    path = pathlib.Path(path)
    m = CHECKPOINT_RE.match(path.name)
    if not m or m.group("name") != name.lower() or run_dir_key(path.parent.name, name) is None:
        return None
    return path.parent, int(m.group("epoch"))


def run_checkpoints(run_dir, name):
    """The checkpoints of `name` in a run folder, by epoch."""
    found = [p for p in pathlib.Path(run_dir).iterdir()
             if (m := CHECKPOINT_RE.match(p.name)) and m.group("name") == name.lower() and p.is_file()]
    return sorted(found, key=lambda p: p.name)


def find_last(model_dir, name):
    """The newest checkpoint of the newest run folder of `name` under `model_dir` that holds one
    (folders without a checkpoint are passed over). Raises FileNotFoundError."""
    model_dir = pathlib.Path(model_dir)
    folders = []
    if model_dir.is_dir():
        for p in model_dir.iterdir():
            key = run_dir_key(p.name, name)
            if key is not None and p.is_dir():
                folders.append((key, p))
    if not folders:
        raise FileNotFoundError(errno.ENOENT, f"Could not find a '{name.lower()}' run folder under {model_dir}")
    for _, folder in sorted(folders, reverse=True):
        checkpoints = run_checkpoints(folder, name)
        if checkpoints:
            return checkpoints[-1]
    raise FileNotFoundError(errno.ENOENT, f"Could not find weight files in the '{name.lower()}' run folders "
                                          f"under {model_dir}")
