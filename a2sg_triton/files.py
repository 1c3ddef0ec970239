"""Files written so that a crash never leaves half of one."""

import os
import tempfile


def atomic_write(path, write, binary=True):
    """Writes a file through ``write(file)`` into a temporary file and a rename, so a crash never
    leaves half a file. The temporary name starts with ".tmp-" and ends in ".part"."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
