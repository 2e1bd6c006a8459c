"""The package's import graph: no cycle, and every layer imports only the layers below it
(docs/architecture.md §1). Every import counts, those inside functions included: a lazy import
is still a dependency."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lfvila_cli"

# What each layer may import besides itself; a module not listed here belongs to the top layer
# (the CLI and the application modules over the library), which may import anything below it.
BASE = {"lfvila_cli.errors", "lfvila_cli.config", "lfvila_cli.version", "lfvila_cli.hub", "lfvila_cli.progress"}
LAYERS = {
    "lfvila_cli.data": BASE,
    "lfvila_cli.objectives": BASE,
    "lfvila_cli.model": BASE | {"lfvila_cli.objectives"},
    "lfvila_cli.pipeline": BASE,
    "lfvila_cli.train": BASE | {"lfvila_cli.data", "lfvila_cli.model", "lfvila_cli.objectives", "lfvila_cli.evaluation",
                                "lfvila_cli.tasks", "lfvila_cli.plots"},
}
TOP_ONLY = ("lfvila_cli.main", "lfvila_cli.stages")  # imported by nothing below the CLI


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: the package's modules it imports}, from the source (nothing is imported)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                candidates = [origin] + [f"{origin}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            # ``from . import x`` imports the submodule x when there is one, else a name of the package
            targets.update(c for c in candidates if c in modules and c != name)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def within(module: str, package: str) -> bool:
    """``module`` is ``package`` or inside it (the root package ``lfvila_cli`` only as itself)."""
    return module == package or (package != "lfvila_cli" and module.startswith(package + "."))


def layer_of(module: str):
    return next((layer for layer in LAYERS if within(module, layer)), None)


def test_the_graph_is_read_from_the_source():
    graph = import_graph()
    assert "lfvila_cli.pipeline.runner" in graph["lfvila_cli.main"] or any(
        "lfvila_cli.pipeline" in t for t in graph["lfvila_cli.main"]
    )
    assert "lfvila_cli.model.lfvila" in graph["lfvila_cli.model.presets"]  # a module-level import
    assert "lfvila_cli.data.corpus" in graph["lfvila_cli.stages.cache"]  # an import inside a function


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_cycle_detection_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_each_layer_imports_only_the_layers_below_it():
    wrong = []
    for module, targets in import_graph().items():
        layer = layer_of(module)
        for target in sorted(targets):
            if any(within(target, top) for top in TOP_ONLY):
                if not any(within(module, top) for top in TOP_ONLY):
                    wrong.append(f"{module} -> {target} (only the CLI uses the stages)")
                continue
            if layer is None or layer_of(target) == layer:
                continue
            allowed = LAYERS[layer]
            if not any(within(target, a) for a in allowed):
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_the_stage_registry_and_every_stage_config_load_without_torch():
    """Every command reads the stage registry and its config classes: they import no heavy
    library (docs/architecture.md §1), so `lfvila prepare` or `lfvila status` start at once."""
    import subprocess
    import sys

    code = (
        "import sys, lfvila_cli.stages as s;"
        "[stage.config_class() for stage in s.STAGES.values()];"
        "heavy = [m for m in ('torch', 'zarr', 'decord', 'transformers', 'deepspeed', 'onnxruntime') if m in sys.modules];"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
