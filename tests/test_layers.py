"""The one-way import rule of docs/architecture.md: a module imports only from lower layers.

Every ``import ixcdoc.X`` / ``from ixcdoc.X import`` counts, also inside functions (the lazy
imports that keep ``--help`` fast are still dependencies); imports under ``TYPE_CHECKING``
do not (they are annotations only). Modules of one package may import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ixcdoc"

# Lowest first; the same table as docs/architecture.md ("Layout").
LAYERS: list[list[str]] = [
    ["errors", "verbosity", "answer"],
    ["config", "tiling", "tasks", "gpu", "tokenizer", "ranking", "guards", "tinyckpt"],
    ["vram", "prompt", "records", "hub", "inputs", "preprocess"],
    ["planning", "model", "viewer"],
    ["generate", "sizing"],
    ["engine"],
    ["runtime", "feeder"],
    ["reading", "screening"],
    ["pagerun", "outdir"],
    ["batch", "doctor", "evaluation"],
    ["serve", "distributed"],
    ["cli"],
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _unit(module: str) -> str:
    """``ixcdoc.model.clip`` -> ``model``: the top-level module or package it belongs to."""
    return module.split(".")[1]


def _imports(path: Path) -> set[str]:
    """The ixcdoc modules a file imports at run time (TYPE_CHECKING blocks left out)."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level == 0 and node.module and node.module.startswith("ixcdoc."):
                found.add(node.module)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(a.name for a in node.names if a.name.startswith("ixcdoc."))

    Visitor().visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts == ("ixcdoc", "__init__"):
            continue  # the facade: lazy re-exports of the public API
        out.append((".".join(parts), path))
    return out


def test_every_module_has_a_layer() -> None:
    missing = sorted({_unit(m) for m, _ in _modules()} - set(RANK))
    assert not missing, f"add these to LAYERS and to docs/architecture.md: {missing}"


@pytest.mark.parametrize(("module", "path"), _modules(), ids=lambda v: str(v))
def test_imports_go_down(module: str, path: Path) -> None:
    me = _unit(module)
    upward = [
        dep
        for dep in sorted(_imports(path))
        if _unit(dep) != me and RANK.get(_unit(dep), 10**6) >= RANK.get(me, -1)
    ]
    assert not upward, f"{module} imports from its own layer or above: {upward}"


def test_the_rule_catches_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "tiling.py"
    bad.write_text("def f():\n    from ixcdoc.runtime import load\n    return load\n")
    deps = _imports(bad)
    assert deps == {"ixcdoc.runtime"}
    assert RANK["runtime"] >= RANK["tiling"]
