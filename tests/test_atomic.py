"""mrcnn.io.atomic: the one write-to-temp-then-rename helper and its file-mode rule."""
import os

import pytest

from mrcnn.io import atomic


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_new_file_gets_the_mode_open_would_give(tmp_path):
    path = atomic.atomic_write(tmp_path / "sub" / "a.txt", lambda f: f.write("hello\n"), binary=False)
    assert path.read_text() == "hello\n"
    assert path.stat().st_mode & 0o777 == 0o666 & ~current_umask()  # not mkstemp's 0600
    assert os.listdir(path.parent) == ["a.txt"]


def test_replacing_keeps_the_old_files_mode_and_a_failure_keeps_its_content(tmp_path):
    path = tmp_path / "b.bin"
    path.write_bytes(b"old")
    path.chmod(0o640)
    with atomic.atomic_open(path, "wb") as f:
        f.write(b"new")
    assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == 0o640

    with pytest.raises(RuntimeError, match="disk full"):
        with atomic.atomic_open(path, "wb", durable=False) as f:
            f.write(b"half")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["b.bin"]  # no temporary file left behind


def test_atomic_path_hands_out_a_path_for_libraries_that_open_it_themselves(tmp_path):
    target = tmp_path / "c.dat"
    with atomic.atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".c.dat.") and tmp.exists()
        tmp.write_bytes(b"x" * 10)
        assert not target.exists()  # only visible once complete
    assert target.read_bytes() == b"x" * 10


def test_atomic_open_refuses_appending(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic.atomic_open(tmp_path / "d", "ab"):
            pass
