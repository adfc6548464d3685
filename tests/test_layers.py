"""The package's layering (docs/DESIGN.md §1), checked on the source: every import of a fastsrnn
module, at module level or inside a function (TYPE_CHECKING ones too), runs down the layer order;
no two modules import each other, directly or around a circle; no module re-exports a name it
imported (each name has one home, and its importers import it from there).

``python -m tests.test_layers`` prints the counts and every offending edge.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

ROOT = Path(__file__).resolve().parent.parent
# Top to bottom: a module may import its own layer and the layers after it. The root package's
# module level holds only __version__ (the base); its lazy public names (PEP 562 __getattr__) are
# the API, on top.
LAYERS = (
    ("api", ("fastsrnn:api", "fastsrnn.cli", "fastsrnn.__main__")),
    ("tools", ("fastsrnn.tools",)),
    ("training", ("fastsrnn.training",)),
    ("generation", ("fastsrnn.generation",)),
    ("quality", ("fastsrnn.quality",)),
    ("data", ("fastsrnn.data",)),
    ("backends", ("fastsrnn.backends",)),
    ("ops", ("fastsrnn.ops", "fastsrnn.kernels", "fastsrnn.csrc")),
    ("checkpoint", ("fastsrnn.checkpoint",)),
    ("model", ("fastsrnn.model",)),
    ("base", ("fastsrnn.config", "fastsrnn.quantize", "fastsrnn.env", "fastsrnn.atomic", "fastsrnn.outlock",
              "fastsrnn")),
)
API = "fastsrnn:api"


def modules() -> Dict[str, Path]:
    """Module name -> source file, for fastsrnn/ and the two folders shipped inside it (setup.py)."""
    found = {}
    for folder, package in ((ROOT / "fastsrnn", "fastsrnn"), (ROOT / "kernels", "fastsrnn.kernels")):
        for path in sorted(folder.rglob("*.py")):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def layer_of(module: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes if p != "fastsrnn"):
            return rank
    if module == "fastsrnn":
        return len(LAYERS) - 1
    raise AssertionError(f"{module} is in no layer of tests/test_layers.py's LAYERS (docs/DESIGN.md §1)")


def _target(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(mods: Dict[str, Path]) -> List[Tuple[str, str, int]]:
    """Every (importer, imported module, line) within the package."""
    edges = []
    for module, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            src = module
            # the root's indented imports: its lazy public names and their TYPE_CHECKING twins
            if module == "fastsrnn" and getattr(node, "col_offset", 0) > 0:
                src = API
            if isinstance(node, ast.Import):
                edges += [(src, a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "fastsrnn"]
            elif isinstance(node, ast.ImportFrom):
                target = _target(module, path.name == "__init__.py", node)
                if target.split(".")[0] != "fastsrnn":
                    continue
                for a in node.names:  # `from package import module` imports the module
                    sub = f"{target}.{a.name}"
                    edges.append((src, sub if sub in mods or sub == "fastsrnn.csrc" else target, node.lineno))
    return edges


def upward(edges) -> List[str]:
    return sorted({f"{a} -> {b} (line {line}): {LAYERS[layer_of(a)][0]} imports {LAYERS[layer_of(b)][0]}"
                   for a, b, line in edges if layer_of(b) < layer_of(a)})


def cycles(edges) -> List[List[str]]:
    """The import circles: strongly connected components of more than one module (Tarjan)."""
    graph: Dict[str, Set[str]] = {}
    for a, b, _ in edges:
        if a != b:
            graph.setdefault(a, set()).add(b)
            graph.setdefault(b, set())
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _used_names(tree: ast.Module) -> Set[str]:
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            used.add(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier():
            used.add(node.value)  # a string annotation
    return used


def re_exports(mods: Dict[str, Path]) -> List[str]:
    """Names a module imports from the package at module level and never uses: kept only so that
    others can import them from there. A package's __init__ is its public face and may do so."""
    found = []
    for module, path in mods.items():
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in tree.body:  # __all__ lists names, it does not use them
            if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["__all__"]:
                tree.body.remove(node)
                break
        used = _used_names(tree)
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and _target(module, False, node).startswith("fastsrnn"):
                found += [f"{module}: {a.asname or a.name} (from {_target(module, False, node)}, line {node.lineno})"
                          for a in node.names if (a.asname or a.name) not in used]
    return sorted(found)


def _imported_names(path: Path, module: str) -> Dict[str, str]:
    """Names that ``module`` binds at module level by importing them from the package: name -> source module."""
    tree = ast.parse(path.read_text(), str(path))
    return {a.asname or a.name: _target(module, path.name == "__init__.py", node)
            for node in tree.body if isinstance(node, ast.ImportFrom)
            and _target(module, path.name == "__init__.py", node).startswith("fastsrnn") for a in node.names}


def second_homes(mods: Dict[str, Path]) -> List[str]:
    """Imports, in the package, tests/ and benchmarks/, of a name from a module that only imported it
    itself (a package's __init__, the package's public face, excepted)."""
    borrowed = {m: _imported_names(p, m) for m, p in mods.items() if p.name != "__init__.py"}
    found = []
    files = [*mods.items(), *((f"{p.parent.name}.{p.stem}", p) for d in ("tests", "benchmarks")
                              for p in sorted((ROOT / d).rglob("*.py")))]
    for module, path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                target = _target(module, path.name == "__init__.py", node)
                found += [f"{path.relative_to(ROOT)}:{node.lineno}: {a.name} from {target}, "
                          f"whose home is {borrowed[target][a.name]}"
                          for a in node.names if a.name in borrowed.get(target, {})]
    return sorted(found)


def test_no_import_runs_up_the_layers():
    bad = upward(imports(modules()))
    assert not bad, f"{len(bad)} imports run up the layers (docs/DESIGN.md §1):\n" + "\n".join(bad)


def test_no_import_circles():
    found = cycles(imports(modules()))
    assert not found, f"{len(found)} import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_re_exports():
    found = re_exports(modules())
    assert not found, (f"{len(found)} names re-exported (import each from its home instead):\n" + "\n".join(found))


def test_names_are_imported_from_their_home():
    found = second_homes(modules())
    assert not found, f"{len(found)} names imported from a second home:\n" + "\n".join(found)


def test_the_checker_sees_upward_imports_and_circles():
    edges = [("fastsrnn.model", "fastsrnn.training.trainer", 1), ("fastsrnn.tools.a", "fastsrnn.tools.b", 1),
             ("fastsrnn.tools.b", "fastsrnn.tools.c", 1), ("fastsrnn.tools.c", "fastsrnn.tools.a", 1)]
    assert len(upward(edges)) == 1
    assert cycles(edges) == [["fastsrnn.tools.a", "fastsrnn.tools.b", "fastsrnn.tools.c"]]


if __name__ == "__main__":
    mods = modules()
    edges = imports(mods)
    up, circles, shims, homes = upward(edges), cycles(edges), re_exports(mods), second_homes(mods)
    print(f"{len(up)} upward imports, {len(circles)} circles, {len(shims)} re-exported names, "
          f"{len(homes)} imports from a second home")
    print("\n".join(up + [" <-> ".join(c) for c in circles] + shims + homes))
