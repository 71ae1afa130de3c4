"""The package's import graph: no circle, and the dependency rules of the layout.

- no import circle, counting lazy (in-function) imports too;
- engines import nothing from losses, training or rewrite;
- training imports nothing from rewrite;
- no package module imports the CLI (cli, commands);
- kernels import nothing above them but config.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "python" / "onpolicy_sft"


def _module_name(path: Path) -> str:
    parts = ["onpolicy_sft", *path.relative_to(PKG).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PKG.rglob("*.py") if "assets" not in p.parts}


def _target(name: str) -> str | None:
    """The package module an imported name belongs to (longest known prefix)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, *, top_level_only: bool) -> set[str]:
    """Package modules ``module`` imports: at import time only, or also inside functions
    (lazy imports); ``if TYPE_CHECKING:`` blocks never run and are left out."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def add(name: str) -> None:
        t = _target(name)
        if t:
            found.add(t)

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name):
            if node.test.id == "TYPE_CHECKING":
                for child in node.orelse:
                    visit(child, in_function)
                return
        if isinstance(node, ast.Import) and not (top_level_only and in_function):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom) and not (top_level_only and in_function):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                t = _target(f"{base}.{alias.name}") or _target(base)
                if t:
                    found.add(t)
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    found.discard(module)
    return found


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_module_discovery_sees_the_layout() -> None:
    for name in (
        "onpolicy_sft.training",
        "onpolicy_sft.prompts",
        "onpolicy_sft.models",
        "onpolicy_sft._io",
        "onpolicy_sft.engines.sampling",
        "onpolicy_sft.kernels.chunked",
        "onpolicy_sft.kernels.torch_rows",
        "onpolicy_sft.kernels.triton_rows",
        "onpolicy_sft.kernels.reference",
    ):
        assert name in MODULES, name
    assert "onpolicy_sft.train" not in MODULES


@pytest.mark.parametrize("top_level_only", [True, False], ids=["at-import", "with-lazy"])
def test_no_import_circle(top_level_only: bool) -> None:
    graph = {m: _imports(m, top_level_only=top_level_only) for m in MODULES}
    # a package's __init__ runs before its submodules: an edge to it from inside is fine
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if _within(m, n):
                continue
            if state.get(n) == 1:
                cycle = [*stack[stack.index(n) :], n]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if n not in state:
                dfs(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            dfs(m)


RULES = [
    (
        "onpolicy_sft.engines",
        ("onpolicy_sft.losses", "onpolicy_sft.training", "onpolicy_sft.rewrite"),
    ),
    ("onpolicy_sft.training", ("onpolicy_sft.rewrite",)),
    (
        "onpolicy_sft.kernels",
        ("onpolicy_sft.losses", "onpolicy_sft.integrations", "onpolicy_sft.training"),
    ),
]


def test_dependency_rules() -> None:
    bad = []
    for module in MODULES:
        deps = _imports(module, top_level_only=False)
        for owner, banned in RULES:
            if _within(module, owner):
                bad += [(module, d) for d in deps if any(_within(d, b) for b in banned)]
        if not (
            _within(module, "onpolicy_sft.commands")
            or module in ("onpolicy_sft.cli", "onpolicy_sft.__main__")
        ):
            bad += [
                (module, d)
                for d in deps
                if _within(d, "onpolicy_sft.cli") or _within(d, "onpolicy_sft.commands")
            ]
    assert not bad, bad


def test_the_walker_sees_relative_and_lazy_imports() -> None:
    assert "onpolicy_sft.config" in _imports("onpolicy_sft.kernels.weights", top_level_only=True)
    assert "onpolicy_sft.kernels.torch_rows" in _imports(
        "onpolicy_sft.kernels.chunked", top_level_only=True
    )
    assert "onpolicy_sft.kernels.triton_rows" not in _imports(
        "onpolicy_sft.kernels.chunked", top_level_only=True
    )  # lazily imported only
    assert "onpolicy_sft.kernels.triton_rows" in _imports(
        "onpolicy_sft.kernels.chunked", top_level_only=False
    )
