"""Structure the redesign promises: stages never import each other; layout facts live once."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "pronlora"
# Each stage's modules; the driver (launch.py) and the tools (bench*) may use any stage.
STAGES = {
    "prep": {"pronlora.data.prep"},
    "train": {"pronlora.train"},
    "infer": {"pronlora.infer"},
    "collect": {"pronlora.collect", "pronlora.report"},
}


def _imports(module: str) -> set[str]:
    path = SRC.joinpath(*module.split(".")[1:]).with_suffix(".py")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _closure(module: str) -> set[str]:
    """Every pronlora module reachable by imports from ``module`` (lazy imports included)."""
    seen, todo = set(), [module]
    while todo:
        mod = todo.pop()
        if mod in seen or not mod.startswith("pronlora"):
            continue
        seen.add(mod)
        path = SRC.joinpath(*mod.split(".")[1:])
        if path.with_suffix(".py").is_file():
            todo += [m for m in _imports(mod) if m.startswith("pronlora")]
    return seen


def test_no_stage_imports_another_stage() -> None:
    for stage, modules in STAGES.items():
        others = set().union(*(m for s, m in STAGES.items() if s != stage))
        for module in modules:
            reached = _closure(module) & others
            assert not reached, f"stage {stage} ({module}) imports {sorted(reached)}"


def test_no_stage_depends_on_the_developer_tools() -> None:
    for stage, modules in STAGES.items():
        for module in modules:
            tools = sorted(m for m in _closure(module) if m.startswith("pronlora.devtools"))
            assert not tools, f"stage {stage} ({module}) imports {tools}"


def test_run_dir_layout_is_spelled_in_layout_py_only() -> None:
    names = r"run\.json|predictions|checkpoints|trainer|train_log\.jsonl|manifest\.json"
    spellings = re.compile(rf'"({names})"')
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "layout.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if spellings.search(line):
                offenders.append(f"{path.relative_to(SRC)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
