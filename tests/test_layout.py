"""The package's layout is its architecture (README "Layout"): each folder
imports only the folders below it, no module imports itself back through
another, and a long module says at its top why it is long."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "server" / "stanfleet"

# folder (or top-level module) -> what it may import; the README's Layout map.
ALLOWED = {
    "defaults": set(), "errors": set(), "signals": set(), "pb": set(),
    # nats-py's flush() kept in order, for every process that uses nats-py
    "ordered_flush": set(),
    # what every long-running process shares: deployment config, logs, endpoints, signals
    "ops": {"defaults", "errors", "signals"},
    "broker": {"signals", "errors", "defaults"},
    "security": {"broker", "defaults", "errors"},
    "client": {"pb", "defaults", "ordered_flush"},
    "streaming": {"pb", "broker", "security", "ops", "defaults", "errors", "signals",
                  "ordered_flush"},
    "fleet": {"security", "defaults", "errors", "signals"},
    # services use the STAN client, never the server's internals but its
    # duration syntax (streaming.limits), shared so both read "30s" alike
    "services": {"client", "fleet", "security", "streaming.limits", "ops", "defaults", "errors",
                 "signals"},
    # the dashboard reads and changes the fleet through the services' own code,
    # and reads the site's deployment config like every service (ops.siteconfig)
    "dashboard": {"client", "fleet", "security", "services", "ops", "defaults", "errors",
                  "signals"},
    "cli": {"errors"},
    # `stanfleet deploy check`: reaches every dependency a site's config names
    "deploy": {"ops", "services", "defaults", "errors", "signals"},
    "up": {"broker", "client", "fleet", "security", "services", "dashboard", "streaming", "ops",
           "defaults", "errors", "signals"},
}
LONG = 400  # lines; longer needs a "Long because" line in the module docstring


def modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return out


def imports() -> dict[str, set[str]]:
    """Every stanfleet module each module imports, lazy and TYPE_CHECKING ones included."""
    mods = modules()
    edges: dict[str, set[str]] = defaultdict(set)
    for name, (path, is_pkg) in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[:len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                found = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            else:
                continue
            edges[name].update(m for m in found if m in mods and m != name)
    return edges


def part(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def test_each_part_imports_only_what_the_layout_allows():
    wrong = []
    for src, targets in imports().items():
        if src == "stanfleet":
            continue
        for dst in targets:
            a, b = part(src), part(dst)
            if a == b or dst == "stanfleet":
                continue
            allowed = ALLOWED[a]
            if b not in allowed and ".".join(dst.split(".")[1:3]) not in allowed:
                wrong.append(f"{src} -> {dst}")
    assert not wrong, "imports against the layout:\n" + "\n".join(sorted(wrong))


def test_no_import_circles():
    edges = imports()
    circles = []

    def visit(node, path, on_path, done):
        on_path.add(node)
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt in on_path:
                circles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in done:
                visit(nxt, path, on_path, done)
        on_path.discard(node)
        path.pop()
        done.add(node)

    done: set[str] = set()
    for start in sorted(edges):
        if start not in done:
            visit(start, [], set(), done)
    # a package re-exporting its modules is not a circle of its own
    circles = [c for c in circles if not _package_reexport(c)]
    assert not circles, "import circles:\n" + "\n".join(circles)


def _package_reexport(circle: str) -> bool:
    names = circle.split(" -> ")
    return any(b.startswith(a + ".") or a.startswith(b + ".") for a, b in zip(names, names[1:]))


def test_long_modules_say_why():
    silent = []
    for name, (path, _) in modules().items():
        if path.name == "protocol_pb2.py":
            continue  # generated by protoc
        text = path.read_text()
        doc = ast.get_docstring(ast.parse(text)) or ""
        if text.count("\n") > LONG and "Long because" not in doc:
            silent.append(f"{name}: {text.count(chr(10))} lines")
    assert not silent, "modules over %d lines with no reason at the top:\n%s" % (
        LONG, "\n".join(silent))
