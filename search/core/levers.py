"""The user's say over the search space: levers switched off, parameters fixed, shape options.

    --off lora                       the lever stays at its "off" parameters
    --fix prune.importance=taylor    the parameter takes this value in every trial
    --fix width.per=block            a shape option of a lever (not searched)

Fixing goes through Optuna's ``PartialFixedSampler`` rather than a narrower distribution:
Optuna refuses to change a parameter's distribution within a study, so a study can be
resumed with other fixes and the sampler still learns from the trials run before. Switching
a lever off is fixing its off parameters. Names and values are checked against the space
itself, found by sampling it (``explore_space``), so a typo is one clear line up front.
"""

from __future__ import annotations

import math
import tomllib
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna

from search.common.errors import ConfigError

if TYPE_CHECKING:
    from techniques import Context


@dataclass(frozen=True)
class LeverSettings:
    """Levers off, parameters fixed and options set, as the user gave them."""

    off: tuple[str, ...] = ()
    fixed: tuple[tuple[str, Any], ...] = ()  # parameters and options alike, by full name

    @property
    def fixed_dict(self) -> dict[str, Any]:
        return dict(self.fixed)

    def options(self) -> dict[str, Any]:
        """The shape options among the fixed names (``width.per``)."""
        known = option_names()
        return {name: value for name, value in self.fixed if name in known}

    def parameters(self) -> dict[str, Any]:
        """The fixed search parameters (everything fixed that is not an option)."""
        known = option_names()
        return {name: value for name, value in self.fixed if name not in known}

    def merged(self, other: LeverSettings) -> LeverSettings:
        """These settings with ``other``'s on top (the command line over the config file)."""
        off = tuple(dict.fromkeys((*self.off, *other.off)))
        return LeverSettings(off=off, fixed=tuple({**self.fixed_dict, **other.fixed_dict}.items()))

    def describe(self) -> dict[str, str]:
        """Flat strings for the MLflow parent run."""
        return {
            "levers.off": ",".join(self.off) or "none",
            "levers.fixed": ",".join(f"{k}={v}" for k, v in self.fixed) or "none",
        }


def _techniques() -> dict[str, Any]:
    """The technique registry, imported on first use: it brings in PyTorch (two seconds),
    which a command that fails on its options should not wait for."""
    from techniques import TECHNIQUES

    return dict(TECHNIQUES)


def option_names() -> dict[str, tuple[Any, ...]]:
    return {name: values for t in _techniques().values() for name, values in t.options.items()}


def parse_assignments(pairs: Iterable[str]) -> tuple[tuple[str, Any], ...]:
    """``NAME=VALUE`` strings into pairs; values read as TOML (0.5, true), else as text."""
    parsed = []
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name.strip() or not text.strip():
            raise ConfigError(f"--fix {pair!r}: write NAME=VALUE, e.g. --fix prune.ratio=0.5")
        parsed.append((name.strip(), _read_value(text.strip())))
    return tuple(parsed)


def _read_value(text: str) -> Any:
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def check_levers_and_options(settings: LeverSettings) -> None:
    """The lever names and option values, which need no model to check."""
    for lever in settings.off:
        if lever not in _techniques():
            raise ConfigError(
                f"--off {lever}: no such lever; levers are {', '.join(_techniques())}"
            )
    options = option_names()
    for name, value in settings.fixed:
        if name.partition(".")[0] in settings.off and name not in options:
            raise ConfigError(
                f"--fix {name}={_spelled(value)} contradicts --off {name.partition('.')[0]}: "
                "drop one of them"
            )
        if name in options and value not in options[name]:
            raise ConfigError(
                f"--fix {name}={value}: use one of {', '.join(map(_spelled, options[name]))}"
            )


def resolve(settings: LeverSettings, ctx: Context, space: Mapping[str, Any]) -> dict[str, Any]:
    """The fixed parameter values to give the sampler, checked against ``space``.

    Raises:
        ConfigError: an unknown lever, parameter or option, or a value outside its range.
    """
    check_levers_and_options(settings)
    fixed: dict[str, Any] = {}
    for lever in settings.off:
        fixed.update(_techniques()[lever].off_params(ctx))
    options = option_names()
    for name, value in settings.fixed:
        if name in options:
            continue
        if name not in space:
            raise ConfigError(
                f"--fix {name}: no such parameter for this task and device; "
                f"known: {', '.join([*space, *options])}"
            )
        fixed[name] = _checked(name, value, space[name])
    return fixed


def _checked(name: str, value: Any, distribution: Any) -> Any:
    """``value`` in the distribution's own type, or a ConfigError that shows the range."""
    dists = optuna.distributions
    if isinstance(distribution, dists.CategoricalDistribution):
        if value in distribution.choices and not _bool_for_number(value, distribution.choices):
            return next(c for c in distribution.choices if c == value)
        shown = ", ".join(_spelled(c) for c in distribution.choices)
        raise ConfigError(f"--fix {name}={value}: use one of {shown}")
    low, high, step = distribution.low, distribution.high, distribution.step
    span = f"from {low:g} to {high:g}" + (f" in steps of {step:g}" if step else "")
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or not low <= value <= high:
        raise ConfigError(f"--fix {name}={value}: must be a number {span}")
    if step and abs((value - low) / step - round((value - low) / step)) > 1e-6:
        raise ConfigError(f"--fix {name}={value}: must be a number {span}")
    if isinstance(distribution, dists.IntDistribution):
        if value != int(value):
            raise ConfigError(f"--fix {name}={value}: must be a whole number {span}")
        return int(value)
    if step:  # snap to the grid Optuna itself would produce
        return round(low + round((value - low) / step) * step, 10)
    return float(value)


def _spelled(value: Any) -> str:
    """A value as the user would type it: ``true``, not ``True``."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _bool_for_number(value: Any, choices: tuple[Any, ...]) -> bool:
    """True == 1 in Python; refuse ``true`` for a numeric choice and ``1`` for a boolean one."""
    return any(c == value and isinstance(c, bool) != isinstance(value, bool) for c in choices)


def fixing_sampler(
    sampler: optuna.samplers.BaseSampler, fixed: Mapping[str, Any]
) -> optuna.samplers.BaseSampler:
    """``sampler`` with ``fixed`` parameters pinned (the sampler itself when none are)."""
    if not fixed:
        return sampler
    with warnings.catch_warnings():  # "experimental" since Optuna 2.4; the tool for the job
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.PartialFixedSampler(dict(fixed), sampler)


def constrain_references(
    trials: Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]],
    fixed: Mapping[str, Any],
    off: Iterable[str] = (),
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The reference trials with the user's fixes taking precedence, duplicates dropped.

    The baseline is kept as it is: it is the uncompressed model every ratio is against.
    A reference of a lever that is ``off`` is dropped, and so is a combined one that the
    ``off`` levers leave with a single lever: each would repeat another trial. A combined
    one left with several is named after those (``prune+quant``, not
    ``depth+prune+quant`` with depth off).
    """
    off_levers = set(off)
    kept: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for params, attrs in trials:
        if not attrs.get("baseline"):
            levers = str(attrs.get("reference", "")).split("+")
            left = [lever for lever in levers if lever not in off_levers]
            if not left or (len(levers) > 1 and len(left) == 1):
                continue
            attrs = {**attrs, "reference": "+".join(left)}
        constrained = dict(params) if attrs.get("baseline") else {**params, **fixed}
        if all(constrained != other for other, _ in kept):
            kept.append((constrained, dict(attrs)))
    return kept


@dataclass(frozen=True)
class SpaceRow:
    """One parameter or option of the space, as ``search space`` shows it."""

    lever: str
    stage: str
    name: str
    domain: str  # e.g. "0 to 0.7 step 0.05" or "fp32 | fp16 | ..."
    status: str  # "searched", "fixed: 0.5", "off", "option: stage"


def space_rows(
    ctx: Context, space: Mapping[str, Any], fixed: Mapping[str, Any], off: Iterable[str]
) -> list[SpaceRow]:
    """The effective space, lever by lever in application order."""
    rows = []
    off_levers = set(off)
    for lever, technique in _techniques().items():
        for name, values in technique.options.items():
            chosen = ctx.options.get(name, values[0])
            domain = " | ".join(map(_spelled, values))
            rows.append(SpaceRow(lever, technique.stage, name, domain, f"option: {chosen}"))
        for name, distribution in space.items():
            if name.partition(".")[0] != lever:
                continue
            if lever in off_levers:
                status = "off"
            elif name in fixed:
                status = f"fixed: {_spelled(fixed[name])}"
            else:
                status = "searched"
            rows.append(SpaceRow(lever, technique.stage, name, _domain(distribution), status))
    return rows


def _domain(distribution: Any) -> str:
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return " | ".join(_spelled(choice) for choice in distribution.choices)
    step = f" step {distribution.step:g}" if distribution.step else ""
    return f"{distribution.low:g} to {distribution.high:g}{step}"
