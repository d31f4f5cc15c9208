"""The import layering of src/ditlab (docs/architecture.md), checked by walking every import statement.

- models/ and diffusion/ import nothing from tasks/, train/, eval/ (nor from the layers above them:
  generation, runs, cli, experiments);
- tasks/ import nothing from train/;
- no import cycle anywhere in the package.

Imports inside functions (lazy imports) count the same as top-level ones. The negative controls plant a
bad import in a copy of the tree and check that the walk names the offending edge.
"""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ABOVE = ("ditlab.tasks", "ditlab.train", "ditlab.eval", "ditlab.generation", "ditlab.runs", "ditlab.cli",
         "ditlab.experiments")
FORBIDDEN = {"ditlab.models": ABOVE, "ditlab.diffusion": ABOVE, "ditlab.tasks": ("ditlab.train",)}


def modules(src: Path) -> dict[str, Path]:
    out = {}
    for f in (src / "ditlab").rglob("*.py"):
        name = ".".join(f.relative_to(src).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def imported(mods: dict[str, Path], name: str, node) -> list[str]:
    """The ditlab modules an import statement of module ``name`` refers to."""
    if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative import
            parts = name.split(".") if mods[name].name == "__init__.py" else name.split(".")[:-1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parts + ([base] if base else []))
        targets = [base] + [f"{base}.{a.name}" for a in node.names]
    return [t for t in targets if t in mods]


def import_graph(src: Path) -> dict[str, set[str]]:
    mods = modules(src)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in imported(mods, name, node):
                    # a package's own submodules and the root package are not layering edges
                    if target != name and not name.startswith(target + ".") and target != "ditlab":
                        edges[name].add(target)
    return edges


def forbidden_edges(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for source, targets in edges.items():
        for layer, banned in FORBIDDEN.items():
            if source == layer or source.startswith(layer + "."):
                bad += [f"{source} -> {t}" for t in sorted(targets)
                        if any(t == b or t.startswith(b + ".") for b in banned)]
    return bad


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]

    def visit(root):
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_forbidden_import_and_no_cycle():
    edges = import_graph(SRC)
    assert len(edges) > 50  # the walk found the package
    assert forbidden_edges(edges) == []
    assert cycles(edges) == []


def plant(tmp_path: Path, module: str, line: str) -> Path:
    copy = tmp_path / "src"
    shutil.copytree(SRC / "ditlab", copy / "ditlab")
    path = copy / "ditlab" / (module.replace(".", "/") + ".py")
    path.write_text(path.read_text() + f"\n\ndef _planted():\n    {line}\n")  # a lazy import counts too
    return copy


def test_a_planted_forbidden_import_is_named(tmp_path):
    src = plant(tmp_path, "models.attention", "from ditlab.train.ema import EMA")
    assert forbidden_edges(import_graph(src)) == ["ditlab.models.attention -> ditlab.train.ema"]
    src = plant(tmp_path / "b", "tasks.image.task", "import ditlab.train.trainer")
    assert forbidden_edges(import_graph(src)) == ["ditlab.tasks.image.task -> ditlab.train.trainer"]


def test_a_planted_cycle_is_found(tmp_path):
    src = plant(tmp_path, "diffusion.noise", "from ditlab.diffusion.samplers import sample")
    found = cycles(import_graph(src))
    assert ["ditlab.diffusion.noise", "ditlab.diffusion.samplers"] in found
