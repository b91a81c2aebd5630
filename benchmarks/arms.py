"""The ways to search that the efficiency benchmark can put side by side.

Each arm is a set of ``SearchConfig`` fields over the benchmark's base configuration. Kept
apart from the suite so the command line can offer their names without importing it.
"""

from __future__ import annotations

from typing import Any

# The first three run by default; the first named is the one the others are compared with.
ARMS: dict[str, dict[str, Any]] = {
    "default (TPE, references, latency first)": {
        "sampler": "tpe", "references": True, "latency_first": True},
    # plain Optuna: random search with every candidate fine-tuned to the end
    "random, no latency first": {
        "sampler": "random", "references": False, "latency_first": False, "early_stop": "off"},
    "ours, no latency first": {"sampler": "tpe", "references": True, "latency_first": False},
    # the default without successive halving: at one wall time beside the default (with
    # --early-stop on), what the rule buys
    "default, no early stop": {
        "sampler": "tpe", "references": True, "latency_first": True, "early_stop": "off"},
}  # fmt: skip
DEFAULT_ARMS = tuple(list(ARMS)[:3])
# ``--arms`` names
ARM_KEYS = dict(zip(("default", "random", "no-latency-first", "no-early-stop"), ARMS, strict=True))
