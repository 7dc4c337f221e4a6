"""The house holds its layers: every import in mlbench/ (function-local ones too) goes down to a lower
stage or stays in its own, no two modules import each other in a circle, and no framework is imported."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mlbench"
LAYERS = [  # lowest first: the stages of a run, each on what it stands on
    {"__init__", "runfolder", "config"},
    {"cells"},
    {"process"},  # one worker process, spawn to outcome
    {"results"},  # a cell's row and the files that keep rows
    {"analysis"},  # verdicts drawn from rows
    {"present"},  # report.html, RESULTS.md, their charts
    {"executors"},  # where workers run
    {"tasks"},  # calibration, verify, maxbatch: worker tasks beside the grid
    {"progress", "orchestrator"},
    {"cli", "__main__"},
]
FRAMEWORKS = {"torch", "tensorflow", "jax", "jaxlib", "flax", "optax", "keras"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer(module: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if stage(module) in names)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file: module level and inside functions alike."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            # `from mlbench.x import y`: y may be a module of its own
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names if node.module.startswith("mlbench")]
    return out


def graph() -> dict[str, set[str]]:
    """mlbench's modules and the mlbench modules each imports."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for _, m in imports(path) if m in files and m != name and not name.startswith(m + ".")}
        for name, path in files.items()
    }


def test_every_module_has_a_stage() -> None:
    unplaced = [m for m in graph() if not any(stage(m) in names for names in LAYERS)]
    assert not unplaced, f"modules in no stage of LAYERS: {unplaced}"


def test_no_import_runs_back_up() -> None:
    upward = [
        f"{name} ({stage(name)}) imports {target} ({stage(target)})"
        for name, targets in graph().items()
        for target in targets
        if layer(target) > layer(name) and stage(target) != stage(name)
    ]
    assert not upward, "imports that run back up:\n" + "\n".join(sorted(upward))


def test_no_circle() -> None:
    edges = graph()
    seen: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(edges[node]):
            if seen.get(nxt) == 1:
                circles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in seen:
                visit(nxt, [*path, nxt])
        seen[node] = 2

    for start in sorted(edges):
        if start not in seen:
            visit(start, [start])
    assert not circles, "import circles:\n" + "\n".join(circles)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_framework_and_no_worker_backend_is_imported(path: Path) -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {m}"
        for line, m in imports(path)
        if m.split(".")[0] in FRAMEWORKS or (m.startswith("workers.") and not m.startswith("workers.common"))
    ]
    assert not bad, "\n".join(bad)


def test_the_layer_check_sees_a_planted_upward_import_and_circle(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks above can fail: an upward import and a circle planted in the graph."""
    planted = {
        "mlbench.results.store": {"mlbench.present.report"},
        "mlbench.present.report": {"mlbench.results.store"},
    }
    monkeypatch.setattr(sys.modules[__name__], "graph", lambda: planted)
    with pytest.raises(AssertionError, match="run back up"):
        test_no_import_runs_back_up()
    with pytest.raises(AssertionError, match="circles"):
        test_no_circle()
