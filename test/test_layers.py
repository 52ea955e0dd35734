"""The package's layers point one way: model <- backends <- engine <- data <- (eval | train) <- ros <- cli.

Every import of an ``ar_ros`` module (top-level or inside a function) is read from the source and checked
against the layer table below; a lower layer importing a higher one fails with the file and the import.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ar_ros"

# the first matching prefix decides a module's layer (a dotted module path inside ar_ros)
LAYERS = [
    ("errors", 0), ("progress", 0), ("io", 0),
    ("model", 1),
    ("backends", 2),
    ("engine", 3), ("options", 3),
    ("data", 4), ("draw", 4),
    ("eval", 5), ("train", 5),
    ("ros", 6), ("msg", 6), ("srv", 6),
    ("demo", 7), ("cli", 7), ("__main__", 7), ("__init__", 7),
]


def layer(module: str) -> int:
    for prefix, level in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return level
    raise AssertionError(f"ar_ros.{module} has no layer: add it to LAYERS")


def module_of(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path):
    """(line, imported ar_ros module path) of every import in ``path``."""
    here = module_of(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
            elif node.module and (node.module + ".").startswith("ar_ros."):
                base, node.module = [], node.module[len("ar_ros"):].lstrip(".") or None
            else:
                continue
            if node.module:
                yield node.lineno, ".".join(base + node.module.split("."))
            else:  # from . import a, b: each name is a module of that package
                for alias in node.names:
                    yield node.lineno, ".".join(base + [alias.name])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("ar_ros."):
                    yield node.lineno, alias.name[len("ar_ros."):]


FILES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_has_a_layer():
    for path in FILES:
        layer(module_of(path))


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(PACKAGE)) for p in FILES])
def test_no_module_imports_a_higher_layer(path):
    mine = module_of(path)
    bad = [f"{path.relative_to(PACKAGE.parent)}:{line}: ar_ros.{mine} (layer {layer(mine)}) imports ar_ros.{target} "
           f"(layer {layer(target)})" for line, target in imports(path) if target and layer(target) > layer(mine)]
    assert not bad, "\n".join(bad)


def test_the_engine_sees_backends_only_through_the_factory():
    allowed = ("backends.factory", "backends.base")
    bad = [f"{path.relative_to(PACKAGE.parent)}:{line}: {target}" for path in FILES
           if module_of(path).startswith("engine") for line, target in imports(path)
           if target.startswith("backends") and not target.startswith(allowed)]
    assert not bad, "\n".join(bad)


def test_private_torch_operators_live_only_in_the_cpu_package():
    cpu = PACKAGE / "backends" / "torch_cpu"
    bad = [str(p.relative_to(PACKAGE.parent)) for p in FILES
           if cpu not in p.parents and ("torch.ops.mkldnn" in p.read_text() or "torch._C" in p.read_text())]
    assert not bad, bad


def test_the_core_never_imports_rclpy():
    bad = [str(p.relative_to(PACKAGE.parent)) for p in FILES if layer(module_of(p)) < 6
           and any(isinstance(n, (ast.Import, ast.ImportFrom)) and "rclpy" in ast.dump(n)
                   for n in ast.walk(ast.parse(p.read_text())))]
    assert not bad, bad
