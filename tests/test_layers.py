"""The layers of `core/` (README, Architecture): imports flow one way, from the configuration up to
the command line, and the analysis of records imports only the configuration below it. Every
import counts: at module level or inside a function, relative or absolute, and the string
targets of `importlib.import_module` and the spec's `registry(".models.MODELS")`."""
from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "core"

# Bottom to top. A module may import from its own layer and those below it.
LAYERS = [
    ("config", ["spec", "sections", "trees", "registry", "errors", "schema", "format", "names", "logs"]),
    ("parts", ["data", "models", "losses", "metrics", "optim"]),
    ("train", ["train", "checkpoint", "record", "distributed", "inference", "export"]),
    ("tracking", ["tracking"]),
    ("analysis", ["analysis"]),
    ("sweeps", ["sweeps"]),
    ("reports", ["reports", "bench"]),
    ("cli", ["cli", "__main__"]),
]
LEVEL = {name: i for i, (_, names) in enumerate(LAYERS) for name in names}
ANALYSIS_MAY_IMPORT = {"config"}  # the analysis of records sits on the configuration alone
# Known, listed exceptions: (importing module, imported top-level name).
EXCEPTIONS = {
    # A model's own rules (size divisor, options) are checked on the model class, after the names
    # passed the torch-free table in names.py.
    ("spec", "models"), ("spec", "losses"),
}


def top(module: str) -> str:
    return module.split(".")[0]


def imports_of(path: Path, type_checking: bool = True) -> set[str]:
    """Every segsweep module `path` imports (dotted, relative to the package); without those
    under `if TYPE_CHECKING:` (annotations, never run) when `type_checking` is False."""
    rel = path.relative_to(CORE).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    tree = ast.parse(path.read_text())
    strings = {n.targets[0].id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
               and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
               and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)}
    found: set[str] = set()
    skipped = set() if type_checking else {
        id(inner) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body for inner in ast.walk(stmt)}

    def resolve(level: int, module: str | None) -> str:
        base = package[: len(package) - (level - 1)] if level else []
        return ".".join([*base, *(module.split(".") if module else [])])

    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                target = resolve(node.level, node.module)
                if target:
                    found.add(target)
                else:  # from . import x
                    found.update(a.name for a in node.names)
            elif (node.module or "").startswith("segsweep."):
                found.add(node.module.removeprefix("segsweep."))
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            if name in ("import_module", "registry") and node.args:
                arg = node.args[0]
                text = arg.value if isinstance(arg, ast.Constant) else strings.get(getattr(arg, "id", ""))
                if isinstance(text, str) and text.startswith("."):
                    parts = text.lstrip(".").split(".")
                    found.add(".".join(parts[:-1] if name == "registry" else parts))
    return found


def test_imports_flow_one_way() -> None:
    bad = []
    for path in sorted(CORE.rglob("*.py")):
        rel = path.relative_to(CORE).with_suffix("")
        if rel.parts == ("__init__",):
            continue  # the package's lazy public API names every layer
        module = ".".join(rel.parts).removesuffix(".__init__")
        here = LEVEL[top(module)]
        for target in imports_of(path):
            there = LEVEL.get(top(target))
            if there is None:
                continue
            exception = (module, top(target)) in EXCEPTIONS or (top(module), top(target)) in EXCEPTIONS
            if top(module) == "analysis" and LAYERS[there][0] not in ANALYSIS_MAY_IMPORT | {"analysis"}:
                bad.append(f"{module} imports {target}: the analysis imports only the configuration")
            elif there > here and not exception:
                bad.append(f"{module} ({LAYERS[here][0]}) imports {target} ({LAYERS[there][0]}), a higher layer")
    assert not bad, "\n".join(bad)


def test_every_module_has_a_layer() -> None:
    names = {p.relative_to(CORE).parts[0].removesuffix(".py") for p in CORE.glob("*") if p.name != "__pycache__"}
    assert names - {"__init__"} <= set(LEVEL), sorted(names - set(LEVEL) - {"__init__"})


def test_the_check_sees_lazy_imports_and_string_targets(tmp_path: Path) -> None:
    """The scanner itself: an import inside a function and an import_module string both count."""
    assert {"models", "losses"} <= {top(t) for t in imports_of(CORE / "spec.py")}  # registry(".models.MODELS")
    found = imports_of(CORE / "sweeps" / "engines.py")
    assert "sweeps.optuna_engine" in found  # `from .optuna_engine import run_optuna_sweep` inside a function
    assert "train.stop" in imports_of(CORE / "train" / "callbacks.py")  # under TYPE_CHECKING ...
    assert "train.stop" not in imports_of(CORE / "train" / "callbacks.py", type_checking=False)  # ... which never runs


def module_graph() -> dict[str, set[str]]:
    """Module -> the modules it imports when it runs (lazy imports and string targets included; a
    package import is an edge to its __init__)."""
    modules = {}
    for path in CORE.rglob("*.py"):
        rel = path.relative_to(CORE).with_suffix("")
        if rel.parts != ("__init__",):
            modules[".".join(rel.parts).removesuffix(".__init__")] = path

    def known(target: str) -> str | None:
        parts = target.split(".")
        while parts and ".".join(parts) not in modules:
            parts.pop()
        return ".".join(parts) or None

    return {name: {m for t in imports_of(path, type_checking=False) if (m := known(t)) and m != name}
            for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of `graph`: its strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle_in_core() -> None:
    graph = module_graph()
    assert {"sweeps.engines", "sweeps.launchers", "spec", "models"} <= set(graph)
    circles = cycles(graph)
    assert not circles, "\n".join(" <-> ".join(c) for c in circles)


def test_the_cycle_check_finds_a_circle_through_a_lazy_import() -> None:
    graph = module_graph()
    assert cycles(graph) == []
    graph["models.unet"] = graph["models.unet"] | {"spec"}  # spec reaches models lazily (its registry string)
    assert any({"spec", "models.unet"} <= set(c) for c in cycles(graph))
