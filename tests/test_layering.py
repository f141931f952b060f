"""The engine's layering, read from the code: every import of targetclip_core (module level or inside a
function) goes to its own layer or a lower one, no cycles, no other module's `_private` name, no
module over 600 lines, and the ComfyUI adapters stay thin (a node module imports no sibling but
nodes/common.py; the engine never imports ComfyUI). See docs/ARCHITECTURE.md."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from helpers.paths import REPO_ROOT

REPO = REPO_ROOT
ENGINE = "targetclip_core"
MAX_LINES = 600

# Bottom to top. A module may import modules of its own layer or of a lower one.
LAYERS = (
    ("targetclip_core.errors", "targetclip_core.devices"),
    ("targetclip_core.io",),
    ("targetclip_core.formats",),
    ("targetclip_core.generators",),
    ("targetclip_core.encoders",),
    ("targetclip_core.faces",),
    ("targetclip_core.methods",),
    ("targetclip_core.metrics",),
    ("targetclip_core.cli", "targetclip_core.bench"),
)
FACADE = ("targetclip_core", "targetclip_core.__main__")  # above every layer; nothing in the engine imports them
COMFY_MODULES = ("comfy", "comfy_execution", "folder_paths", "server", "nodes")


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under root/package."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(module: str, path: Path) -> list[tuple[int, str, str | None]]:
    """(line, imported module, imported name or None) for every import in the file, relative ones resolved."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found += [(node.lineno, base, alias.name) for alias in node.names]
    return found


def engine_edges(modules: dict[str, Path]) -> dict[str, list[tuple[int, str, str | None]]]:
    """module -> [(line, target module, name)] restricted to engine targets; `from pkg import module` points at the module."""
    edges = {}
    for module, path in modules.items():
        out = []
        for line, target, name in imports_of(module, path):
            if not (target == ENGINE or target.startswith(ENGINE + ".")):
                continue
            if name and f"{target}.{name}" in modules:
                out.append((line, f"{target}.{name}", None))
            else:
                out.append((line, target, name))
        edges[module] = out
    return edges


def layer_of(module: str) -> int | None:
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in graph:
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph.get(start, ())))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


@pytest.fixture(scope="module")
def modules():
    return module_files(REPO, ENGINE)


@pytest.fixture(scope="module")
def edges(modules):
    return engine_edges(modules)


def test_every_engine_module_belongs_to_a_layer(modules):
    unplaced = [m for m in modules if layer_of(m) is None and m not in FACADE]
    assert not unplaced, f"modules outside every layer (add them to a layer's package): {unplaced}"


def test_imports_go_down_the_layers(modules, edges):
    upward = []
    for module, targets in edges.items():
        if module in FACADE:
            continue
        here = layer_of(module)
        for line, target, _ in targets:
            if target in FACADE:
                upward.append(f"{modules[module]}:{line} imports the public facade {target}")
            elif target in modules and layer_of(target) > here:
                upward.append(f"{modules[module]}:{line} ({LAYERS[here][0]}) imports {target} from a higher layer")
    assert not upward, "\n".join(upward)


def test_no_module_imports_the_package_that_holds_it(modules, edges):
    # a package's __init__ re-exports its modules; a module importing its own package closes a cycle
    inward = [f"{modules[m]}:{line} imports {t}" for m, ts in edges.items() for line, t, _ in ts
              if m.startswith(t + ".") and modules[t].name == "__init__.py"]
    assert not inward, "\n".join(inward)


def test_no_import_cycles(edges):
    graph = {m: {t for _, t, _ in ts if t != m and not t.startswith(m + ".")} for m, ts in edges.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_takes_another_modules_private_name(modules, edges):
    private = [f"{modules[m]}:{line} takes {name} from {t}" for m, ts in edges.items() for line, t, name in ts
               if name and name.startswith("_") and not name.startswith("__") and t != m]
    assert not private, "\n".join(private)


def test_modules_stay_short(modules):
    long = {str(p.relative_to(REPO)): n for p in modules.values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by concern): {long}"


def test_the_engine_never_imports_comfyui(modules):
    found = [f"{path}:{line} imports {target}" for m, path in modules.items() for line, target, _ in imports_of(m, path)
             if target.split(".")[0] in COMFY_MODULES]
    assert not found, "\n".join(found)


def test_node_modules_import_no_sibling_but_common():
    nodes = module_files(REPO, "nodes")
    crossing = []
    for module, path in nodes.items():
        if module == "nodes":  # the package merges every family's mappings
            continue
        for line, target, name in imports_of(module, path):
            sibling = f"{target}.{name}" if name and f"{target}.{name}" in nodes else target
            if sibling in nodes and sibling not in ("nodes", "nodes.common", module):
                crossing.append(f"{path}:{line} imports {sibling}")
    assert not crossing, "\n".join(crossing)


# --------------------------------------------------------------------------- the checker itself


def test_checker_finds_a_cycle_an_upward_import_and_a_private_name(tmp_path):
    pkg = tmp_path / ENGINE
    for sub, text in {
        "__init__.py": "",
        "errors.py": "",
        "io/__init__.py": "",
        "io/files.py": "from targetclip_core.generators.load import read\n",  # upward
        "generators/__init__.py": "",
        "generators/load.py": "def read():\n    from targetclip_core.generators import stylegan2\n",
        "generators/stylegan2.py": "from targetclip_core.generators.load import _secret\n",  # cycle + private
    }.items():
        (pkg / sub).parent.mkdir(parents=True, exist_ok=True)
        (pkg / sub).write_text(text)
    mods = module_files(tmp_path, ENGINE)
    edges = engine_edges(mods)
    graph = {m: {t for _, t, _ in ts if t != m and not t.startswith(m + ".")} for m, ts in edges.items()}
    assert set(find_cycle(graph)) == {"targetclip_core.generators.load", "targetclip_core.generators.stylegan2"}
    assert layer_of("targetclip_core.io.files") < layer_of("targetclip_core.generators.load")
    assert ("targetclip_core.generators.load", "_secret") in {(t, n) for _, t, n in edges["targetclip_core.generators.stylegan2"]}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
