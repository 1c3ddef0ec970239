"""Files written so that a crash never leaves half of one."""

from __future__ import annotations

import os
import tempfile
from typing import IO, Any, Callable, Union

# A file or folder name: a str or a path object (pathlib.Path).
StrPath = Union[str, os.PathLike[str]]


def atomic_write(path: StrPath, write: Callable[[IO[Any]], object], binary: bool = True) -> None:
    """Writes a file through ``write(file)`` into a temporary file and a rename, so a crash never
    leaves half a file. The temporary name starts with ".tmp-" and ends in ".part". The file gets
    the mode a plain ``open`` would give it (0666 less the umask; mkstemp's own is 0600).

    Args:
        path: the file to write; its folder must exist.
        write: called once with the open temporary file; what it returns is ignored.
        binary: open the file in binary mode ("wb"), else in text mode ("w").
    """
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o22)
    os.umask(mask)
    return mask
