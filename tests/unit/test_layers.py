"""The house has floors that run one way (../shared/ARCHITECTURE.md; the README's "Layout"): a module
imports only modules on its own floor or below, and no two modules import each other, directly or in a circle.
Every import counts, also those inside functions (a lazy import still ties the floors together)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

# lowest first; a module belongs to the first floor with a prefix of its name (longest prefix wins)
FLOORS = [
    ("base", ["recforge", "recforge.errors", "recforge.utils"]),
    ("core", ["recforge.metrics", "recforge.losses", "recforge.samplers", "recforge.models", "recforge.data",
              "recforge.rerank"]),
    ("training", ["recforge.training"]),
    ("experiment", ["recforge.config", "recforge.pipeline", "recforge.restore", "recforge.testing"]),
    ("tracking", ["recforge.tracking"]),
    ("services", ["recforge.tuning", "recforge.analysis", "recforge.serving", "recforge.ensemble",
                  "recforge.explain"]),
    ("entry points", ["recforge.cli", "recforge.train", "recforge.eval", "recforge.retrain", "recforge.compare",
                      "recforge.data_cli", "recforge.catalog", "recforge.ensemble.cli"]),
]
# within the core floor: models, losses, samplers and metrics know nothing of data, and data nothing of them; the
# re-rankers stand alone (the evaluator takes one as a callable)
CORE_APART = {"recforge.data": ("recforge.models", "recforge.losses", "recforge.samplers", "recforge.metrics",
                                "recforge.rerank"),
              "recforge.models": ("recforge.data", "recforge.rerank"),
              "recforge.losses": ("recforge.data", "recforge.models"),
              "recforge.metrics": ("recforge.data", "recforge.models", "recforge.losses", "recforge.samplers",
                                   "recforge.rerank"),
              "recforge.samplers": ("recforge.data", "recforge.models"),
              "recforge.rerank": ("recforge.data", "recforge.models", "recforge.losses", "recforge.samplers",
                                  "recforge.metrics")}


def modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "recforge").rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    edges = {}
    for name, path in mods.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for target in found:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    targets.add(target)
        edges[name] = targets
    return edges


def floor_of(name: str) -> int:
    best = max(((len(prefix), level) for level, (_, prefixes) in enumerate(FLOORS) for prefix in prefixes
                if name == prefix or name.startswith(prefix + ".")), default=None)
    assert best is not None, f"{name} is on no floor: add it to FLOORS"
    return best[1]


def area(name: str, areas) -> str | None:
    return next((a for a in areas if name == a or name.startswith(a + ".")), None)


def test_every_import_points_down_or_across():
    edges = imports(modules())
    upward = [f"{m} ({FLOORS[floor_of(m)][0]}) imports {t} ({FLOORS[floor_of(t)][0]})"
              for m, targets in edges.items() for t in targets if floor_of(t) > floor_of(m)]
    assert not upward, "imports that point up a floor:\n" + "\n".join(sorted(upward))
    crossing = [f"{m} imports {t}" for m, targets in edges.items() for t in targets
                if area(t, CORE_APART.get(area(m, CORE_APART) or "", ()))]
    assert not crossing, "core modules that import each other's areas:\n" + "\n".join(sorted(crossing))


def test_no_import_cycles():
    edges = imports(modules())
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_an_upward_import(tmp_path):
    """A lazy upward import inside a function is found (what the two tests above rely on)."""
    package = tmp_path / "recforge"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models" / "__init__.py").write_text("")
    (package / "models" / "bad.py").write_text("def f():\n    from recforge.train import train\n")
    (package / "train.py").write_text("")
    edges = imports({name: path for name, path in
                     ((".".join(p.relative_to(tmp_path).with_suffix("").parts).removesuffix(".__init__"), p)
                      for p in package.rglob("*.py"))})
    assert edges["recforge.models.bad"] == {"recforge.train"}
    assert floor_of("recforge.train") > floor_of("recforge.models.bad")
