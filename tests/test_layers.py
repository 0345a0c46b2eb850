"""The layers of design.md hold: no module imports from a layer above its own, and no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What each package may import from cimid (besides itself). HTTP is the top of the daemon; the service
# never formats bytes (no wire); the wire and the model touch neither store nor drivers; drivers know
# only the hook specifications and the error they raise.
ALLOWED = {
    "cimid.model": {"cimid.errors"},
    "cimid.store": {"cimid.errors"},
    "cimid.wire": {"cimid.errors", "cimid.model"},
    "cimid.service": {"cimid.errors", "cimid.model", "cimid.store", "cimid.plugins", "cimid.hookspecs",
                      "cimid.config"},
    "cimid.http": {"cimid.errors", "cimid.model", "cimid.service", "cimid.wire", "cimid.config"},
    "cimid.plugins": {"cimid.hookspecs", "cimid.config", "cimid.errors"},
    "cimid.hookspecs": {"cimid.config", "cimid.errors"},
    "cimid.config": {"cimid.errors"},
    "drivers": {"cimid.errors", "cimid.hookspecs"},
    # Federation: the node side reads the provider (capacity); the front stands on the node side's etcd
    # wrapper and speaks CIMI through the wire dialect, never through a local provider.
    "cimid.cluster": {"cimid.errors", "cimid.config", "cimid.service"},
    "cimid.front": {"cimid.errors", "cimid.config", "cimid.model", "cimid.wire", "cimid.cluster", "cimid.http",
                    "cimid.store",  # the $filter compiler over the global catalogue (store.query, no SQLite file)
                    "cimid.plugins", "cimid.hookspecs"},
}
DRIVER_PACKAGES = ("cimid_",)  # drivers/cimid_libvirt, drivers/cimid_dir, ... (never cimid.*)


def modules() -> dict[str, Path]:
    """Every module by the name it is imported as: drivers/ is a source folder of top-level packages."""
    found = {}
    for path in [*(ROOT / "cimid").rglob("*.py"), *(ROOT / "drivers").rglob("*.py")]:
        root = ROOT / "drivers" if ROOT / "drivers" in path.parents else ROOT
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, *, top_level_only: bool) -> set[str]:
    """The modules `name` imports, relative imports resolved; with top_level_only, not those inside
    functions (which run later and cannot make a cycle at import time)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # `if TYPE_CHECKING:` blocks never run
        nodes = [n for n in nodes if not (isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test))]
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from . import x` names modules
    return found


def layer_of(module: str) -> str | None:
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    if module.startswith(DRIVER_PACKAGES):
        return "drivers"
    return None


def test_no_module_imports_from_a_layer_above_it():
    wrong = []
    for name, path in modules().items():
        own = layer_of(name)
        if own is None:
            continue  # cimid.cli, cimid.daemon: the top, which assembles everything
        for target in imports(name, path, top_level_only=False):
            theirs = layer_of(target)
            if target.startswith("cimid.") and theirs != own and theirs not in ALLOWED[own] \
                    and not any(target == a or target.startswith(a + ".") for a in ALLOWED[own]):
                wrong.append(f"{name} imports {target}")
    assert wrong == []


def test_no_import_cycle():
    known = modules()
    graph = {name: {t for t in imports(name, path, top_level_only=True) if t in known and t != name}
             for name, path in known.items()}
    cycles, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(trail[trail.index(nxt):] + [node, nxt]) if nxt in trail else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, trail + [node])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    # A package's __init__ importing its own submodules is how packages work, not a cycle.
    cycles = [c for c in cycles if not _package_self_import(c)]
    assert cycles == []


def _package_self_import(cycle: str) -> bool:
    nodes = cycle.split(" -> ")
    return all(b.startswith(a + ".") or a.startswith(b + ".") for a, b in zip(nodes, nodes[1:]))


def test_the_checks_see_a_violation():
    """The walker itself works: it finds a known import of the service by the HTTP layer."""
    name = "cimid.http.app"
    assert "cimid.service.provider" in imports(name, modules()[name], top_level_only=True)
