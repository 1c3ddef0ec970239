"""Assembles the importable package from a plain copy of the tree, with nothing installed.

In the repository, ``kernels/`` sits beside ``a2sg_triton/`` and becomes
``a2sg_triton.kernels`` only through pyproject.toml's ``[tool.setuptools] package-dir`` mapping, so
putting the repository root on ``PYTHONPATH`` imports ``a2sg_triton`` without its kernels. This
script lays out what ``pip install`` would install: for every package listed in
``[tool.setuptools] packages`` it copies the ``.py`` files of the folder that the mapping gives it
(the longest mapped prefix of its dotted name, then one folder per remaining part) to
``DEST/<package as a path>``. Then ``DEST`` on ``sys.path`` imports the package, kernels included.

    python3 bench/stage_package.py DEST       # prints DEST/a2sg_triton

Standard library only (Python >= 3.11 for tomllib): bench/gpu_check.sh runs it before anything of
the project can be imported.
"""

import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_sources(pyproject):
    """-> {dotted package name: source folder} from pyproject.toml's setuptools table."""
    table = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]
    mapping = table.get("package-dir", {})
    sources = {}
    for package in table["packages"]:
        parts = package.split(".")
        for cut in range(len(parts), -1, -1):
            prefix = ".".join(parts[:cut])
            if prefix in mapping or cut == 0:
                base = mapping.get(prefix, "")
                sources[package] = pyproject.parent.joinpath(base, *parts[cut:])
                break
    return sources


def stage(dest, root=ROOT):
    """Copies every package's modules under ``dest``; -> the top-level package folders made."""
    dest = Path(dest)
    tops = set()
    for package, source in package_sources(root / "pyproject.toml").items():
        modules = sorted(source.glob("*.py"))
        if not (source / "__init__.py").is_file():
            raise SystemExit(f"stage_package: {package} maps to {source}, which has no __init__.py")
        target = dest.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for module in modules:
            shutil.copy2(module, target / module.name)
        tops.add(dest / package.split(".")[0])
    return sorted(tops)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python3 bench/stage_package.py DEST")
    for top in stage(argv[0]):
        print(top)


if __name__ == "__main__":
    main()
