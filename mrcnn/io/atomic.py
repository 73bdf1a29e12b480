"""Write to a temporary file beside the target, then rename it into place: the one way this
project replaces a file, so that a reader never sees half a file and a failed or interrupted
write leaves the previous file (if any) as it was.

File-mode rule: the result is readable like any other file the user writes. A new file gets
the mode open() would give it (0666 less the umask), a replaced file keeps its own mode;
never mkstemp's 0600.
"""
import contextlib
import json
import math
import os
import pathlib
import uuid


class AtomicWriteError(OSError):
    """A file could not be written (disk full, no permission, a file where a folder should
    be); the message is one line naming the file, and nothing partial was left behind."""


def _fsync(path, directory=False):
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        return  # e.g. directories cannot be opened on some systems
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path, durable=True):
    """Yield a fresh, empty temporary Path in `path`'s folder to write to; when the block
    ends normally it is renamed over `path`, when it raises it is removed.

    durable: fsync the file (and the folder) so that the rename survives a crash; cheap
    regenerable files may skip it. The folder is created when missing.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies
    try:
        yield tmp
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)  # replacing: keep the old file's mode
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync(path.parent, directory=True)


@contextlib.contextmanager
def atomic_open(path, mode="wb", durable=True, **open_kwargs):
    """open() for writing, atomically: yields the file object of a temporary file that
    replaces `path` when the block ends without an error (see `atomic_path`)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a whole new file: mode 'w' or 'wb', not {mode!r}")
    with atomic_path(path, durable=durable) as tmp:
        with open(tmp, mode, **open_kwargs) as f:
            yield f


def atomic_write(path, write_fn, binary=True, durable=True):
    """Run write_fn(file) on a temporary file beside `path`, then move it into place.
    Text mode writes UTF-8 with newlines untranslated. Returns `path` as a Path.
    An OSError on the way becomes one AtomicWriteError naming `path`."""
    path = pathlib.Path(path)
    text_args = {} if binary else {"encoding": "utf-8", "newline": ""}
    try:
        with atomic_open(path, "wb" if binary else "w", durable=durable, **text_args) as f:
            write_fn(f)
    except AtomicWriteError:
        raise
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        raise AtomicWriteError(f"cannot write {path}: {reason}") from e
    return path


def write_bytes(path, data, durable=True):
    """Replace `path` with `data` (bytes), atomically."""
    return atomic_write(path, lambda f: f.write(data), durable=durable)


def write_text(path, text, durable=True):
    """Replace `path` with `text` (UTF-8), atomically."""
    return atomic_write(path, lambda f: f.write(text), binary=False, durable=durable)


def strict_json(value):
    """`value` with NumPy scalars as Python numbers and NaN / infinities (undefined scores)
    as None, so that json.dumps(..., allow_nan=False) accepts it."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # NumPy scalars, 0-d arrays
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def write_json(path, data, durable=True, indent=2, **dumps_kwargs):
    """Replace `path` with `data` as strict JSON (undefined values are null), atomically."""
    text = json.dumps(strict_json(data), indent=indent, allow_nan=False, **dumps_kwargs) + "\n"
    return write_text(path, text, durable=durable)
