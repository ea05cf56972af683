"""The layers of the library (DESIGN.md section 4): who may import whom.

The graph is read with ``ast`` from the sources, imports inside functions included (an
import moved into a function to dodge a circle is still an edge).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, name: str) -> set[str]:
    """The geosr modules ``path`` imports (resolved relative imports, ``from pkg import mod`` as pkg.mod)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m == "geosr" or m.startswith("geosr.")}


def library_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in (ROOT / "geosr").rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in imports_of(path, name) if m in modules and m != name}
    return graph


def test_the_library_never_imports_training():
    offenders = {}
    for path in (ROOT / "geosr").rglob("*.py"):
        name = module_name(path)
        bad = sorted(m for m in imports_of(path, name) if m.startswith("geosr.training"))
        if bad:
            offenders[name] = bad
    assert not offenders, offenders


def test_no_import_circle_among_the_library_modules():
    graph = library_graph()
    # packages import their own modules to re-export them; an edge into a package's __init__
    # from its own module is the circle that matters
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + "."):
                continue  # a package importing its submodules
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


@pytest.mark.parametrize("code", ["import geosr", "import geosr.cli", "import geosr.cli.info"])
def test_the_library_and_cli_start_without_torch(code):
    out = subprocess.run(
        [sys.executable, "-c", f"{code}; import sys; print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_no_private_name_is_imported_from_another_module():
    """``from geosr.x import _name`` ties a module to another's internals: make the name public."""
    offenders = []
    for folder in ("geosr", "pipelines", "training"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("geosr"):
                    offenders += [f"{path.relative_to(ROOT)}: {node.module}.{a.name}"
                                  for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not offenders, offenders
