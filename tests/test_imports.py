"""Layers point down and no two modules import each other, read from the package's source with ``ast``.

Layers, top to bottom (a module may import its own layer's peers and anything below, never above):

    6  entry points    preftune (the package's public API), __main__, cli; testing, tiny_architectures
                       (test support: only tests import them, so library code must not)
    5  applications    experiments, demo, demo_grpo, theory (``preftune theory``), plot (``preftune plot``): they run
                       or read the stages
    4  stages          one script per stage plus the pieces they share
    3  training        train, objectives, rewards
    2  modeling        models, log-probs, the reference, generation
    1  inputs          data, config, assets (embedded models and data), hub (Hub downloads), tasks
                       (generated task data)
    0  foundations     losses, rl (pure maths), errors, device (device selection), storage (disk sizes and
                       write errors), hashing (file hashes)

Inside stages/, a stage script (:data:`STAGE_SCRIPTS`) is a leaf: no other stages module imports it;
what two stages share lives in a shared module (common, inputs, ...).

Every import counts: module level, inside functions (deferred, but still a dependency) and under
``if TYPE_CHECKING:`` (a type names the module it comes from). ``from preftune.x import y`` depends on
the submodule preftune.x.y when it exists, else on preftune.x. A package's ``__init__`` importing its
own submodules is an ordinary edge, so a submodule that imports its package back closes a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "preftune"

LAYERS: dict[str, int] = {
    "preftune": 6, "__main__": 6, "cli": 6, "testing": 6, "tiny_architectures": 6,
    "experiments": 5, "demo": 5, "demo_grpo": 5, "theory": 5, "plot": 5,
    "stages": 4,
    "train": 3, "objectives": 3, "rewards": 3,
    "modeling": 2,
    "data": 1, "config": 1, "assets": 1, "hub": 1, "tasks": 1,
    "losses": 0, "rl": 0, "errors": 0, "device": 0, "storage": 0, "hashing": 0,
}
STAGE_SCRIPTS = frozenset({"dpo", "sft", "reward_model", "rl", "evaluate", "grpo", "online_dpo"})

# Edges that break a rule today, each with why it is still here. Remove an entry when its import goes;
# test_known_violations_still_exist fails on a stale one so that the list stays true.
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p): p for p in sorted(root.rglob("*.py"))}


def _targets(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        anchor = importer.split(".") if is_package else importer.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
    return [f"{base}.{alias.name}" for alias in node.names]


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """importer → the package's modules it imports (each target cut back to the longest module name)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _targets(node, name, path.name == "__init__.py"):
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else module
    if top not in LAYERS:
        raise AssertionError(f"{module}: no layer for preftune.{top}; add it to LAYERS (and to the docstring)")
    return LAYERS[top]


def rule_breaks(graph: dict[str, set[str]]) -> dict[tuple[str, str], str]:
    """(importer, imported) → which rule the edge breaks: an upward import, or a stage script imported
    by another stages module."""
    breaks = {}
    for importer, deps in graph.items():
        for dep in deps:
            if layer(dep) > layer(importer):
                breaks[(importer, dep)] = f"upward: layer {layer(importer)} imports layer {layer(dep)}"
            elif (importer.startswith("preftune.stages.") and dep.startswith("preftune.stages.")
                  and dep.rpartition(".")[2] in STAGE_SCRIPTS):
                breaks[(importer, dep)] = "a stages module imports a stage script"
    return breaks


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def without_known(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {m: {d for d in deps if (m, d) not in KNOWN_VIOLATIONS} for m, deps in graph.items()}


def describe(component: list[str], graph: dict[str, set[str]]) -> str:
    inside = set(component)
    return "; ".join(f"{a} -> {b}" for a in component for b in sorted(graph[a] & inside))


def test_every_module_has_a_layer():
    for module in package_modules():
        layer(module)


def test_layers_point_down():
    breaks = {edge: why for edge, why in rule_breaks(import_graph(package_modules())).items()
              if edge not in KNOWN_VIOLATIONS}
    assert not breaks, "imports against the layer order:\n" + "\n".join(
        f"{a} -> {b}: {why}" for (a, b), why in sorted(breaks.items()))


def test_no_two_modules_import_each_other():
    graph = without_known(import_graph(package_modules()))
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(describe(c, graph) for c in found)


def test_known_violations_still_exist():
    graph = import_graph(package_modules())
    stale = [edge for edge in KNOWN_VIOLATIONS if edge[1] not in graph.get(edge[0], set())]
    assert not stale, f"fixed, so remove from KNOWN_VIOLATIONS: {stale}"


# The checker itself, on small graphs with a known answer (so the checks above cannot pass vacuously).

def test_an_upward_import_is_reported():
    graph = {"preftune.losses.x": {"preftune.modeling.y"}, "preftune.modeling.y": set(),
             "preftune.stages.dpo": {"preftune.modeling.y"}}
    assert list(rule_breaks(graph)) == [("preftune.losses.x", "preftune.modeling.y")]


def test_a_stage_script_imported_by_a_stage_is_reported():
    graph = {"preftune.stages.grpo": {"preftune.stages.rl", "preftune.stages.common"},
             "preftune.stages.rl": {"preftune.stages.common"}, "preftune.stages.common": set()}
    assert list(rule_breaks(graph)) == [("preftune.stages.grpo", "preftune.stages.rl")]


def test_a_cycle_is_reported():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_imports_are_resolved_to_modules(tmp_path):
    pkg = tmp_path / "preftune"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import leaf\n")
    (pkg / "sub" / "leaf.py").write_text(
        "from preftune.sub import thing\nimport preftune.other\n\ndef f():\n    from ..other import g\n")
    (pkg / "other.py").write_text("from preftune.sub.leaf import f\n")
    modules = {".".join(p.relative_to(tmp_path).with_suffix("").parts).removesuffix(".__init__"): p
               for p in pkg.rglob("*.py")}
    graph = import_graph(modules)
    assert graph["preftune.sub"] == {"preftune.sub.leaf"}
    assert graph["preftune.sub.leaf"] == {"preftune.sub", "preftune.other"}
    assert graph["preftune.other"] == {"preftune.sub.leaf"}
    assert cycles(graph) == [["preftune.other", "preftune.sub", "preftune.sub.leaf"]]
