"""The shape of the code, checked: no import circle in the package tree, the Pi's package free of the
server side, and the proto-to-core dispatch written once (kws_rpc/wire/handlers.py)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("kws_rpc", "edge", "trainers", "bench")
SERVER_ONLY = ("kws_rpc.mqtt.broker", "kws_rpc.mqtt.worker", "kws_rpc.lab.coop_demo", "kws_rpc.serving.servicer",
               "kws_rpc.serving.server", "kws_rpc.serving.gateway", "kws_rpc.serving.grpc_backend", "amqtt", "fastapi", "uvicorn",
               "tensorflow", "trainers")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (lazy imports inside functions included)."""
    found: set[str] = set()
    package = module_name(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    return {m: {i for i in imports(p) if i in files and i != m} for m, p in files.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
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
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle() -> None:
    g = graph()
    assert "edge.lab.evaluate" in g and "edge.cascade" in g["edge.lab.evaluate"]
    assert cycles(g) == []


def test_edge_imports_nothing_of_the_server_side() -> None:
    bad = {m: sorted(i for i in imports((REPO / Path(*m.split("."))).with_suffix(".py")) if
                     any(i == s or i.startswith(s + ".") for s in SERVER_ONLY))
           for m in graph() if m.startswith("edge.") and m not in ("edge", "edge.lab")}
    assert {m: v for m, v in bad.items() if v} == {}


def test_the_proto_dispatch_exists_once() -> None:
    """Only kws_rpc/wire/handlers.py turns a PredictRequest into core calls; the servicer, the MQTT worker and
    the edge's local answers call it."""
    sources = {p: p.read_text() for pkg in ("kws_rpc", "edge") for p in (REPO / pkg).rglob("*.py")}
    dispatching = sorted(str(p.relative_to(REPO)) for p, text in sources.items() if 'WhichOneof("input")' in text)
    assert dispatching == ["kws_rpc/wire/handlers.py"]
    for user in ("kws_rpc/serving/servicer.py", "kws_rpc/serving/local_backend.py", "kws_rpc/mqtt/worker.py", "edge/cascade.py"):
        assert "handlers" in sources[REPO / user], user
