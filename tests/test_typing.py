"""The package's callables are typed (mypy checks them in .ci/run) and take at most 8 positional
parameters; options come keyword-only after the data, as torch's do."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "a2sg_triton"
# torch.library ops keep the flat signatures the dispatcher needs; triton.jit kernels live in kernels/
EXEMPT_DECORATORS = ("custom_op", "triton.jit")


def functions():
    """(file, function node, is_method) of every function the package defines."""
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        methods = {id(node) for cls in ast.walk(tree) if isinstance(cls, ast.ClassDef) for node in cls.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                decorators = [ast.unparse(d) for d in node.decorator_list]
                if not any(name in d for d in decorators for name in EXEMPT_DECORATORS):
                    yield path, node, id(node) in methods


def parameters(node, is_method):
    args = node.args
    params = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
    params = [p for p in params if p is not None]
    if is_method and params and params[0].arg in ("self", "cls", "ctx"):
        params = params[1:]
    return params


def public_callables():
    """(file, node, is_method): the module-level public functions, and the public methods (and
    ``__init__``) of the module-level public classes."""
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                yield path, node, False
            elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                for method in node.body:
                    if isinstance(method, ast.FunctionDef) and (not method.name.startswith("_")
                                                                or method.name == "__init__"):
                        yield path, method, True


def test_public_callables_are_typed():
    """Every parameter and return of every public function and method carries a type hint."""
    missing = []
    for path, node, is_method in public_callables():
        if any(name in ast.unparse(d) for d in node.decorator_list for name in EXEMPT_DECORATORS):
            continue
        where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}"
        missing += [f"{where}({p.arg})" for p in parameters(node, is_method) if p.annotation is None]
        if node.returns is None and node.name != "__init__":
            missing.append(f"{where} -> return")
    assert not missing, "\n".join(missing)


def test_at_most_eight_positional_parameters():
    crowded = []
    for path, node, is_method in functions():
        positional = [*node.args.posonlyargs, *node.args.args]
        if is_method and positional and positional[0].arg in ("self", "cls", "ctx"):
            positional = positional[1:]
        if len(positional) > 8:
            crowded.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({len(positional)})")
    assert not crowded, "\n".join(crowded)
