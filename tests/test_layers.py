"""The layers import only downwards (ARCHITECTURE.md): read every module's imports with ast."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# package -> top-level names its modules must never import (anywhere, also inside functions)
FORBIDDEN = {
    "xai": ("lightning", "wandb", "hydra", "omegaconf", "src.callbacks", "src.sinks", "src.viz", "src.models",
            "src.data", "src.train", "src.explain", "matplotlib", "PIL"),
    "models": ("src.xai", "src.callbacks", "src.sinks", "src.viz"),
    "data": ("src.xai", "src.callbacks", "src.sinks", "src.viz", "src.models"),
    "viz": ("src.xai", "src.callbacks", "src.sinks", "src.models", "lightning"),
    "ops.py": ("src", "lightning"),
    "contracts.py": ("src", "lightning"),
}  # fmt: skip


def imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def hits(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_what_is_below_it(layer):
    files = [SRC / layer] if layer.endswith(".py") else sorted((SRC / layer).rglob("*.py"))
    assert files and all(f.exists() for f in files)
    bad = [f"{f.relative_to(SRC)}: {name}" for f in files for name in imports(f) if hits(name, FORBIDDEN[layer])]
    assert not bad, f"layer {layer} imports from above it: {bad}"


def test_the_checker_sees_a_violation(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from src.callbacks.base import ImageCallback\nimport lightning as L\n")
    assert sorted(imports(module)) == ["lightning", "src.callbacks.base"]
    assert hits("src.callbacks.base", FORBIDDEN["xai"]) and not hits("src.callbacksx", ("src.callbacks",))
