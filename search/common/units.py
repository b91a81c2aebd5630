"""Figures written for people: a latency to three significant figures, with its unit.

Study names, MLflow params and mismatch messages keep the exact figure
(``search.core.config.format_ms``); what is only read uses these. A relative budget is a
product such as 0.5 x 0.355806 ms, whose raw digits (``0.177903 ms``) claim a precision
no latency measurement has.
"""

from __future__ import annotations

import math

SIGNIFICANT = 3


def show_ms(value_ms: float) -> str:
    """``0.177903`` -> ``0.178 ms``, ``10`` -> ``10 ms``, ``1234.5`` -> ``1234 ms``.

    Three significant figures, never fewer digits before the point than the value has
    and never an exponent; trailing zeros are dropped.
    """
    if not math.isfinite(value_ms):
        return f"{value_ms} ms"
    if value_ms == 0:
        return "0 ms"
    decimals = max(0, SIGNIFICANT - 1 - math.floor(math.log10(abs(value_ms))))
    text = f"{value_ms:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text} ms"


def show_budget(
    budget_ms: float, *, factor: float | None = None, baseline_ms: float | None = None
) -> str:
    """``0.178 ms``, or for a relative budget ``0.178 ms (0.5x the baseline's 0.356 ms)``."""
    shown = show_ms(budget_ms)
    if factor is None:
        return shown
    if baseline_ms is None:
        return f"{shown} ({factor:g}x the baseline's)"
    return f"{shown} ({factor:g}x the baseline's {show_ms(baseline_ms)})"
