"""The package's layers (CONTRIBUTING.md, "Layout"): no import of a2sg_triton runs back up a layer,
and kernels/ imports nothing of the package."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "a2sg_triton"

# module or package (dotted, inside a2sg_triton) -> layer; the longest matching prefix decides
LAYERS = {
    "kernels": 0,
    "ops": 1, "files": 1, "figures": 1,
    "memory": 2, "reference": 2,
    "nn": 3,
    "search": 4, "convert": 4, "rmp": 4, "models": 4, "data": 4,
    "analysis": 5,
    "cli": 6,
    "": 7,  # __init__.py: the public API gathers every layer
}
# Leaves that sit below the folder they live in: SGV/TGC and one β search need only the ops.
LAYERS |= {"search.metrics": 1, "search.bo": 1}


def layer_of(module):
    if module.startswith("__"):  # the package's metadata (__version__), not a module
        return 0
    parts = module.split(".")
    for end in range(len(parts), -1, -1):
        key = ".".join(parts[:end])
        if key in LAYERS:
            return LAYERS[key]
    raise AssertionError(f"a2sg_triton.{module} has no layer in LAYERS")


def package_modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        yield path, ".".join(parts), is_package


def imported_modules(path, module, is_package):
    """The a2sg_triton modules (dotted, inside the package) that the file imports, anywhere in it."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "a2sg_triton":
                target = node.module.partition(".")[2]
            else:
                continue
            # `from . import memory` imports a module by name
            names = [f"{target}.{alias.name}".strip(".") for alias in node.names] if not node.module else [target]
            yield from names
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "a2sg_triton":
                    yield alias.name.partition(".")[2]


MODULES = list(package_modules())


def test_every_module_has_a_layer():
    assert len(MODULES) > 40
    for _, module, _ in MODULES:
        layer_of(module)


@pytest.mark.parametrize("path, module, is_package", MODULES, ids=[m for _, m, _ in MODULES])
def test_no_import_runs_up_a_layer(path, module, is_package):
    own = layer_of(module)
    upward = [target for target in imported_modules(path, module, is_package) if layer_of(target) > own]
    assert not upward, f"a2sg_triton.{module} (layer {own}) imports {upward} from a higher layer"


def test_the_check_sees_an_upward_import(tmp_path):
    path = tmp_path / "lif.py"
    path.write_text("from ..search.controller import A2SG\nfrom . import _neuron\n")
    targets = list(imported_modules(path, "ops.lif", False))
    assert targets == ["search.controller", "ops._neuron"]
    assert layer_of(targets[0]) > layer_of("ops.lif") >= layer_of(targets[1])


def test_at_most_twelve_modules_at_the_top():
    assert len(list(PACKAGE.glob("*.py"))) <= 12


def test_kernels_import_nothing_of_the_package():
    for path in sorted((ROOT / "kernels").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1, f"{path.name} imports from outside kernels/"
            module = node.module if isinstance(node, ast.ImportFrom) else None
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [module or ""]
            assert not any(name.split(".")[0] == "a2sg_triton" for name in names), f"{path.name} imports the package"
