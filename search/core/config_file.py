"""``--config search.toml``: the options of ``search run`` and the lever settings, in a file.

    [run]                          # any option of `search run`, by its long name
    latency-budget = "0.3ms"
    trials = 30

    [levers]
    off = ["lora"]                 # levers kept at their "off" parameters

    [levers.fix]                   # parameters fixed, and shape options
    "prune.importance" = "taylor"
    "width.per" = "block"

Options given on the command line win over the file. Every key is checked: a misspelt one
is an error that lists the known ones, not a silently ignored line.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search.common.errors import ConfigError
from search.core.config import SearchConfig, parse_latency_budget
from search.core.levers import LeverSettings
from search.core.rungs import parse_rungs

# long option name -> the Python types its value may have in TOML
RUN_KEYS: dict[str, tuple[type, ...]] = {
    "latency-budget": (str,),
    "device": (str,),
    "runtime": (str,),
    "task": (str,),
    "trials": (int,),
    "timeout": (int, float),
    "study": (str,),
    "storage": (str,),
    "tracking-uri": (str,),
    "seed": (int,),
    "threads": (int,),
    "workers": (int,),
    "max-failures": (int,),
    "heartbeat": (int,),
    "batch-size": (int,),
    "objective": (str,),
    "finetune-epochs": (int,),
    "max-accuracy-drop": (int, float),
    "accuracy-rule": (str,),
    "latency-first": (bool,),
    "early-stop": (str,),
    "rungs": (str, int),
    "rung-margin": (int, float),
    "rung-keep-fraction": (int, float),
    "latency-anchor": (bool,),
    "sampler": (str,),
    "references": (bool,),
    "allow-mixed-hardware": (bool,),
    "use-sensitivity": (str,),
    "sensitivity-tolerance": (int, float),
}

# long option name -> SearchConfig field
_FIELDS = {
    "latency-budget": "latency_budget_ms",
    "device": "device",
    "runtime": "runtime",
    "task": "task",
    "trials": "trials",
    "timeout": "timeout_s",
    "study": "study_name",
    "storage": "storage",
    "tracking-uri": "tracking_uri",
    "seed": "seed",
    "threads": "threads",
    "workers": "workers",
    "max-failures": "max_failures",
    "heartbeat": "heartbeat_s",
    "batch-size": "batch_size",
    "objective": "objective",
    "finetune-epochs": "finetune_epochs",
    "max-accuracy-drop": "max_accuracy_drop",
    "accuracy-rule": "accuracy_rule",
    "latency-first": "latency_first",
    "early-stop": "early_stop",
    "rungs": "rungs",
    "rung-margin": "rung_margin",
    "rung-keep-fraction": "rung_keep_fraction",
    "latency-anchor": "latency_anchor",
    "sampler": "sampler",
    "references": "references",
    "allow-mixed-hardware": "allow_mixed_hardware",
    "use-sensitivity": "sensitivity",
    "sensitivity-tolerance": "sensitivity_tolerance",
}


@dataclass(frozen=True)
class ConfigFile:
    """What a config file says: ``run`` options by long name, and lever settings."""

    run: dict[str, Any] = field(default_factory=dict)
    levers: LeverSettings = field(default_factory=LeverSettings)


def load_config_file(path: Path | None) -> ConfigFile:
    """Read and check ``path``; None gives an empty config."""
    if path is None:
        return ConfigFile()
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"--config {path}: cannot read it: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"--config {path}: not valid TOML: {error}") from None
    _only(path, "", document, {"run", "levers"})
    run = _table(path, document, "run")
    for key, value in run.items():
        if key not in RUN_KEYS:
            raise ConfigError(
                f"--config {path}: [run] {key} is not an option; known: {', '.join(RUN_KEYS)}"
            )
        wanted = RUN_KEYS[key]
        if isinstance(value, bool) != (bool in wanted) or not isinstance(value, wanted):
            names = {"str": "text", "bool": "true or false"}
            kind = " or ".join(names.get(t.__name__, t.__name__) for t in wanted)
            raise ConfigError(f"--config {path}: [run] {key} = {value!r} must be {kind}")
    levers = _table(path, document, "levers")
    _only(path, "levers", levers, {"off", "fix"})
    off = levers.get("off", [])
    if not isinstance(off, list) or not all(isinstance(name, str) for name in off):
        raise ConfigError(f'--config {path}: [levers] off must be a list of names, e.g. ["lora"]')
    fix = levers.get("fix", {})
    if not isinstance(fix, dict):
        raise ConfigError(f"--config {path}: [levers.fix] must be a table of name = value")
    flat = _flatten(fix)
    return ConfigFile(run=run, levers=LeverSettings(off=tuple(off), fixed=tuple(flat.items())))


def _table(path: Path, document: dict[str, Any], key: str) -> dict[str, Any]:
    table = document.get(key, {})
    if not isinstance(table, dict):
        raise ConfigError(f"--config {path}: {key} must be a table ([{key}])")
    return table


def _only(path: Path, where: str, table: dict[str, Any], allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            place = f"[{where}] " if where else ""
            raise ConfigError(
                f"--config {path}: {place}{key} is unknown; known: {', '.join(sorted(allowed))}"
            )


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"prune": {"ratio": 0.5}}`` and ``{"prune.ratio": 0.5}`` both to ``prune.ratio``."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def search_config_from(
    given: dict[str, Any], file: ConfigFile, levers: LeverSettings, *, home: Path
) -> SearchConfig:
    """The run's config: command-line values (None: not given) over the file's, over defaults.

    ``--trials`` defaults to 8 unless only ``--timeout`` is given, which then runs until it.
    """
    merged = {**file.run, **{k: v for k, v in given.items() if v is not None}}
    if "latency-budget" not in merged:
        raise ConfigError(
            "give --latency-budget (e.g. --latency-budget 10ms) or latency-budget in [run] "
            "of the --config file"
        )
    values = {_FIELDS[key]: value for key, value in merged.items()}
    budget_ms, factor = parse_latency_budget(str(merged["latency-budget"]))
    values["latency_budget_ms"], values["latency_budget_factor"] = budget_ms, factor
    if "rungs" in merged:
        values["rungs"] = parse_rungs(str(merged["rungs"]))
    if "timeout" in merged:
        values["timeout_s"] = float(merged["timeout"])
        values.setdefault("trials", None)
    return SearchConfig(**values, levers=levers, home=home)
