"""Files the package writes: atomically, and with the mode a plain open would give them."""

import os
import stat

import pytest

from a2sg_triton.files import atomic_write


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_write_gives_the_umask_mode(tmp_path, umask):
    """Run files are shared: 0644 under the common umask 022 (mkstemp alone leaves 0600)."""
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "metrics.jsonl", lambda f: f.write("{}\n"), binary=False)
        plain = tmp_path / "plain.txt"
        plain.write_text("{}\n")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "metrics.jsonl").stat().st_mode)
    assert mode == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask
    assert (tmp_path / "metrics.jsonl").read_text() == "{}\n"


def test_a_failed_write_leaves_nothing(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"old")

    def fail(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "checkpoint.pt", fail)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"old"
