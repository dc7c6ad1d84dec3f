"""Experiments as data: a YAML naming training runs and their overrides, validated like configs.

An experiment is a grid of runs of one base config (e.g. the paper's Table 3: LoRA-only and
Unfreeze, 4 epochs each). ``--seeds N`` repeats every run with ``seed=1..N``. A lab adds its own
by writing a YAML (r=16 vs r=64, nf4 vs bf16) and passing its path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import yaml

from pronlora.core.config import ConfigError, load_config
from pronlora.core.layout import BASE_CHECKPOINT
from pronlora.launch.plan import TrainRun

_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Experiment:
    name: str
    config: str
    overrides: tuple[str, ...]
    runs: tuple[tuple[str, tuple[str, ...]], ...]  # (run name, its overrides)


def available_experiments() -> list[str]:
    folder = files("pronlora") / "experiments"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_experiment(name_or_path: str) -> Experiment:
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        packaged = files("pronlora") / "experiments" / f"{name_or_path}.yaml"
        if not packaged.is_file():
            raise ConfigError(
                f"no experiment named {name_or_path!r}; available: "
                f"{', '.join(available_experiments())} (or a YAML path)"
            )
        path = Path(str(packaged))
    elif not path.is_file():
        raise ConfigError(f"experiment file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    unknown = sorted(set(data) - {"name", "config", "overrides", "runs"})
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; known: name, config, overrides, runs")
    for key in ("config", "runs"):
        if key not in data:
            raise ConfigError(f"{path}: {key}: missing")
    runs = data["runs"]
    if not isinstance(runs, dict) or not runs:
        raise ConfigError(f"{path}: runs: expected a mapping of run name -> overrides")
    parsed = []
    for run, overrides in runs.items():
        if not isinstance(run, str) or not _RUN_NAME.fullmatch(run):
            raise ConfigError(f"{path}: runs.{run}: a run name is letters, digits, _ . -")
        parsed.append((run, _overrides(overrides, f"{path}: runs.{run}")))
    return Experiment(
        name=str(data.get("name") or path.stem),
        config=str(data["config"]),
        overrides=_overrides(data.get("overrides") or [], f"{path}: overrides"),
        runs=tuple(parsed),
    )


def _overrides(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise ConfigError(f"{where}: expected a list of key=value strings, got {value!r}")
    return tuple(value)


def effective_overrides(overrides: tuple[str, ...]) -> tuple[str, ...]:
    """One ``key=value`` per key, the last one given winning (``epochs=4 ... epochs=2`` is
    ``epochs=2``), in the order the keys first appear: what the run is, as a plan prints it."""
    merged: dict[str, str] = {}
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        merged[key] = item
    return tuple(merged.values())


def experiment_runs(
    exp: Experiment, root: Path, seeds: int = 0, config: str | None = None, extra: tuple = ()
) -> list[TrainRun]:
    """The runs of ``exp`` under ``root`` (one dir each); the first evaluates the base model.

    ``config`` replaces the experiment's base config (e.g. ``smoke`` for a CPU demo); ``extra``
    overrides apply to every run, after the experiment's own.
    """
    if seeds < 0:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    base = config or exp.config
    out: list[TrainRun] = []
    for name, run_overrides in exp.runs:
        for seed in range(1, seeds + 1) if seeds else [None]:
            overrides = (*exp.overrides, *run_overrides, *extra)
            if seed is not None:
                overrides = (*overrides, f"seed={seed}")
            overrides = effective_overrides(overrides)
            try:
                cfg = load_config(base, list(overrides))
            except ConfigError as exc:
                raise ConfigError(f"experiment {exp.name}, run {name}: {exc}") from None
            run_name = f"{name}-s{seed}" if seed is not None else name
            epochs = tuple(f"epoch-{e}" for e in range(1, cfg.epochs + 1))
            out.append(
                TrainRun(
                    name=run_name,
                    config=base,
                    overrides=overrides,
                    run_dir=str((root / run_name).resolve()),
                    epochs=cfg.epochs,
                    evaluate=((BASE_CHECKPOINT,) if not out else ()) + epochs,
                )
            )
    return out
