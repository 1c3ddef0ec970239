"""kernels/ is installed as a2sg_triton.kernels (package-dir mapping), never as a top-level package."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import a2sg_triton.kernels.lif

ROOT = Path(__file__).resolve().parents[1]


def test_kernels_import_as_subpackage():
    assert Path(a2sg_triton.kernels.lif.__file__).resolve().parent.name == "kernels"
    assert "kernels" not in sys.modules  # nothing imported a bare top-level `kernels`


@pytest.mark.slow
def test_wheel_layout_and_install(tmp_path):
    # build from a copy so that setuptools' build/ folder never lands in the checkout
    src = tmp_path / "src"
    for part in ("a2sg_triton", "kernels", "pyproject.toml", "README.md"):
        copy = shutil.copytree if (ROOT / part).is_dir() else shutil.copy
        copy(ROOT / part, src / part, **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree
                                         else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(src)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("a2sg_triton-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("kernels/lif", "kernels/stats", "kernels/surrogate", "models/__init__", "analysis/__init__"):
        assert f"a2sg_triton/{module}.py" in names
    assert not any(name.startswith("kernels/") for name in names)

    # install the wheel alone into a venv that sees this interpreter's torch/triton, then import it
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True, capture_output=True)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for script in ("a2sg-train", "a2sg-analyze", "a2sg-ablate"):
        assert script in entry_points
    probe = "import a2sg_triton, a2sg_triton.kernels.lif as k; print(k.__file__)"
    out = subprocess.run([python, "-I", "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path)
    assert str(venv) in out.stdout and out.stdout.strip().endswith("a2sg_triton/kernels/lif.py")
