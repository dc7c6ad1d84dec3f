"""Structure the redesign promises: stages never import each other; layout facts live once."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "pronlora"
PACKAGES = ("core", "data", "model", "train", "infer", "collect", "launch", "devtools")


def _package(name: str) -> set[str]:
    return {f"pronlora.{name}.{p.stem}" for p in (SRC / name).glob("*.py") if p.stem != "__init__"}


# Each stage's modules; the launchers (launch/) and the tools (devtools/) may use any stage.
STAGES = {
    "prep": _package("data"),
    "train": _package("train"),
    "infer": _package("infer"),
    "collect": _package("collect"),
}


def test_the_package_tree_shows_the_stages() -> None:
    top = sorted(p.name for p in SRC.glob("*.py"))
    assert top == ["__init__.py"], f"modules outside the stage packages: {top}"
    assert sorted(p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()) == sorted(
        PACKAGES
    )


def test_the_core_and_the_model_import_no_stage() -> None:
    stages = set().union(*STAGES.values()) | _package("launch")
    for floor in ("core", "model"):
        allowed = {"core"} if floor == "core" else {"core", "model"}
        for module in _package(floor):
            reached = {m for m in _closure(module) if m.count(".") == 2}
            assert not reached & stages, f"{module} imports {sorted(reached & stages)}"
            assert all(m.split(".")[1] in allowed for m in reached), (module, sorted(reached))


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


def test_every_mutation_still_finds_the_code_it_breaks() -> None:
    """tools/mutations.py runs before a release, not in CI: code moved since would leave a
    mutation that breaks nothing (two had gone stale unnoticed when checks moved modules)."""
    import importlib.util
    import sys

    repo = SRC.parents[1]
    spec = importlib.util.spec_from_file_location("mutations", repo / "tools" / "mutations.py")
    assert spec is not None and spec.loader is not None
    mutations = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("mutations", mutations)  # dataclasses resolve the module by name
    spec.loader.exec_module(mutations)
    stale = {
        m.id: (repo / m.path).read_text().count(m.find)
        for m in mutations.MUTATIONS
        if (repo / m.path).read_text().count(m.find) != 1
    }
    assert not stale, f"mutation id -> occurrences of its code (want 1): {stale}"
    tests = {t.split("::")[0] for m in mutations.MUTATIONS for t in m.tests}
    assert all((repo / t).is_file() for t in tests), tests
