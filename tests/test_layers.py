"""The package's layers point down (docs/architecture.md): no module imports from a
higher layer, deferred imports inside functions included, and no module imports another
module's private (underscore) names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fastsoftmax"

# bottom to top; a module's layer is that of its first path component
LAYERS = {
    "kernels": (
        "reference", "_numba", "_cupy", "_validate", "_backends", "_threads", "_version", "_files",
        "_cpu_target",
    ),
    "op API": ("_api", "_linear"),
    "training": ("train",),
    "estimators": ("estimator", "dask"),
    "apps": (
        "cli", "benchmarks", "bench_cases", "bench_report", "machine", "plots", "data",
        "implementations", "warmup", "__init__", "__main__", "torch",
    ),
}  # fmt: skip
RANK = {part: rank for rank, parts in enumerate(LAYERS.values()) for part in parts}
NAMES = list(LAYERS)


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _dotted(path: Path) -> list[str]:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _is_submodule(parts: list[str]) -> bool:
    base = PACKAGE.joinpath(*parts)
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _imports(path: Path):
    """(target module parts, name or None, line) for every import of the package's own
    modules in `path`, relative or absolute, at any depth."""
    here = _dotted(path)
    package = here if path.name == "__init__.py" else here[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "fastsoftmax":
                    yield parts[1:], None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                if node.level - 1 > len(package):
                    raise AssertionError(f"{path}: import above the package")
            elif (node.module or "").split(".")[0] == "fastsoftmax":
                base = []
                node_module = node.module.split(".")[1:]
                yield from _from(base + node_module, node, path)
                continue
            else:
                continue
            yield from _from(base + (node.module.split(".") if node.module else []), node, path)


def _from(module: list[str], node: ast.ImportFrom, path: Path):
    for alias in node.names:
        if _is_submodule([*module, alias.name]):
            yield [*module, alias.name], None, node.lineno
        else:
            yield module, alias.name, node.lineno


def _layer(parts: list[str]) -> int:
    return RANK[parts[0] if parts else "__init__"]


def test_every_module_has_a_layer():
    for path in _modules():
        parts = _dotted(path) or ["__init__"]
        assert parts[0] in RANK, f"{path.relative_to(PACKAGE)} is in no layer"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    own = _layer(_dotted(path))
    for target, _, line in _imports(path):
        layer = _layer(target)
        assert layer <= own, (
            f"{path.relative_to(PACKAGE)}:{line} ({NAMES[own]}) imports "
            f"fastsoftmax.{'.'.join(target) or '__init__'} ({NAMES[layer]})"
        )


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_private_names_across_modules(path):
    here = _dotted(path)
    for target, name, line in _imports(path):
        if name is None or not name.startswith("_") or name.startswith("__"):
            continue
        assert target == here, (
            f"{path.relative_to(PACKAGE)}:{line} imports the private name {name} of "
            f"fastsoftmax.{'.'.join(target)}"
        )
