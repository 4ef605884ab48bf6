"""The layers import only downwards (ARCHITECTURE.md): read every module's imports with ast.

Each top-level part of src/ says which parts of src/ it may import (its own included) and which
outside libraries it must not; an import anywhere in a file counts, also inside a function."""

import ast
import shutil
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

PARTS = ("base", "config", "run", "training", "models", "data", "viz", "sinks", "xai", "callbacks", "testing")
ENTRY_POINTS = ("train.py", "explain.py", "report.py")

# part -> the parts of src it may import, bottom to top
ALLOWED = {
    "base": {"base"},
    "xai": {"base", "xai"},
    "models": {"base", "models"},
    "data": {"base", "data"},
    "viz": {"viz"},
    "sinks": {"base", "sinks", "viz"},
    "config": {"base", "config", "models", "data"},
    "run": {"base", "config", "run"},
    "training": {"base", "config", "run", "data", "training"},
    "callbacks": {"base", "config", "run", "training", "models", "data", "viz", "sinks", "xai", "callbacks"},
    "testing": {"base", "config", "testing"},
    # the entry points build everything; only the tests and bench/ import src.testing
    **{name: set(PARTS) - {"testing"} | {"train"} for name in ENTRY_POINTS},
}

# part -> outside libraries it must not import: xai is pure torch, the base layer below everything
LIBRARIES = {
    "base": ("lightning", "hydra", "omegaconf", "wandb"),
    "xai": ("lightning", "wandb", "hydra", "omegaconf", "matplotlib", "PIL"),
    "viz": ("lightning",),
}


def imports(path: Path) -> list[str]:
    """Every module name `path` imports; `from src import xai` counts as src.xai."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "src":
                names += [f"src.{alias.name}" for alias in node.names]
            else:
                names.append(node.module)
    return names


def violations(src: Path, part: str) -> list[str]:
    """`file: module` for each import of `part` (a package or an entry point under `src`) that
    reaches above it."""
    files = [src / part] if part.endswith(".py") else sorted((src / part).rglob("*.py"))
    bad = []
    for f in files:
        for name in imports(f):
            words = name.split(".")
            if words[0] == "src" and len(words) > 1:
                target = words[1] if words[1] in PARTS or words[1] == "train" else f"{words[1]}.py"
                if target.removesuffix(".py") not in {a.removesuffix(".py") for a in ALLOWED[part]}:
                    bad.append(f"{f.relative_to(src)}: {name}")
            elif words[0] in LIBRARIES.get(part, ()):
                bad.append(f"{f.relative_to(src)}: {name}")
    return bad


# inside src/xai: the call shape (core, targets) and folding below the methods, the scores above
# them, the latent-space explanations above both; morphing needs only the call shape and folding
XAI_BELOW = {"core.py": set(), "targets.py": set(), "folding.py": set()}
XAI_ALLOWED = {
    **XAI_BELOW,
    "methods": {*XAI_BELOW, "methods"},
    "scores": {*XAI_BELOW, "methods", "scores"},
    "latent": {*XAI_BELOW, "methods", "scores", "latent"},
    "morph": {*XAI_BELOW, "morph"},
}


def xai_violations(xai: Path, part: str) -> list[str]:
    files = [xai / part] if part.endswith(".py") else sorted((xai / part).rglob("*.py"))
    allowed = {a.removesuffix(".py") for a in XAI_ALLOWED[part]}
    return [
        f"{f.relative_to(xai)}: {name}"
        for f in files
        for name in imports(f)
        if name.startswith("src.xai.") and name.split(".")[2] not in allowed
    ]


@pytest.mark.parametrize("part", sorted(XAI_ALLOWED))
def test_inside_xai_each_part_imports_only_what_is_below_it(part):
    assert {p.name for p in (SRC / "xai").iterdir()} - {"__init__.py", "__pycache__"} == set(XAI_ALLOWED)
    assert not xai_violations(SRC / "xai", part)


@pytest.mark.parametrize("part", ["methods", "scores", "latent", "morph"])
def test_a_planted_upward_import_inside_xai_is_caught(part, tmp_path):
    copy = tmp_path / "xai"
    shutil.copytree(SRC / "xai", copy, ignore=shutil.ignore_patterns("__pycache__"))
    above = next(p for p in ("latent", "morph") if p not in XAI_ALLOWED[part])
    (copy / part / "planted.py").write_text(f"from src.xai.{above}.x import y\n")
    assert xai_violations(copy, part) == [f"{part}/planted.py: src.xai.{above}.x"]


def test_every_part_of_src_has_a_rule():
    entries = {p.name for p in SRC.iterdir() if p.name != "__pycache__" and p.name != "__init__.py"}
    assert entries == set(PARTS) | set(ENTRY_POINTS)


@pytest.mark.parametrize("part", [*PARTS, *ENTRY_POINTS])
def test_each_part_imports_only_what_is_below_it(part):
    assert not violations(SRC, part), f"{part} imports from above it"


@pytest.mark.parametrize("part", PARTS)
def test_a_planted_upward_import_is_caught_in_every_part(part, tmp_path):
    copy = tmp_path / "src"
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("__pycache__"))
    above = next(p for p in (*PARTS, "train") if p not in ALLOWED[part])
    (copy / part / "planted.py").write_text(f"def f():\n    from src import {above}\n")
    assert violations(copy, part) == [f"{part}/planted.py: src.{above}"]


def test_the_checker_reads_every_import_form(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "def f():\n    from src.callbacks.base import ImageCallback\nimport lightning as L\nfrom src import xai\n"
    )
    assert sorted(imports(module)) == ["lightning", "src.callbacks.base", "src.xai"]
