"""kernels/ is installed as a2sg_triton.kernels (package-dir mapping), never as a top-level package."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

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
    for module in ("kernels/lif", "kernels/stats", "kernels/surrogate", "ops/lif", "ops/_neuron", "search/controller",
                   "memory/saving", "models/__init__", "analysis/__init__", "data/datasets", "cli/train", "cli/config",
                   "cli/checkpoint", "cli/report"):
        assert f"a2sg_triton/{module}.py" in names
    assert not any(name.startswith("kernels/") for name in names)

    # Install the wheel alone into a fresh venv that imports its dependencies from the environment
    # running this test, whichever that is (a venv, the base interpreter, PYTHONPATH): a .pth file
    # lists the running interpreter's import path, less this checkout. (`--system-site-packages`
    # would see the base interpreter's packages, not those of a venv that runs the test.) The
    # venv's own site-packages precede the .pth's entries, so the wheel's copy is the one imported.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    running = [p for p in map(os.path.abspath, sys.path)
               if os.path.isdir(p) and not Path(p).resolve().is_relative_to(ROOT)]
    (Path(purelib) / "running-environment.pth").write_text("\n".join(running) + "\n")
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True, capture_output=True)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for script in ("a2sg-train", "a2sg-analyze", "a2sg-ablate"):
        assert script in entry_points
    probe = "import torch, a2sg_triton.kernels.lif as k; print(k.__file__); print(torch.__file__)"
    out = subprocess.run([python, "-I", "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path)
    kernels_file, torch_file = out.stdout.split()
    assert kernels_file.startswith(str(venv)) and kernels_file.endswith("a2sg_triton/kernels/lif.py")
    assert torch_file == torch.__file__  # the running environment's torch, not another interpreter's
