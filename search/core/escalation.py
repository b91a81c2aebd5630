"""Reference escalation: a reference that misses the budget is tried stronger; one that
meets it is tried again in a smaller file (from float32), then stronger while it holds.

A new study starts with each lever's textbook setting (``reference_trials``), e.g.
pruning 50%. Whether that setting meets the budget depends on the model: on the digits
CNN pruning 50% runs 2.2x faster, on the digits transformer 1.6x, short of a 0.5x budget,
where 60% runs 2.2x faster within a point of the baseline. A reference over the budget
says little; the same lever one step stronger is the informative next point. So when a
reference trial misses the budget, the study enqueues it again with every escalatable
parameter one step up, until it meets the budget or the lever's range ends. A draft over
the budget stops before fine-tuning (latency first), so each step costs an export and a
brief latency measurement, not a fine-tune.

A feasible reference is tried again too. In float32 first towards size: the same
parameters with the weights stored in fp16 (``quant.scheme=fp16-weights``), which ONNX
Runtime turns back into the float32 graph when it loads the file. Same arithmetic, so
the same latency, in about half the file: on the digits CNN pruned by half, 0.151 MB
against 0.280 MB at 0.263 ms both. Left to the sampler, that point is one format among
six on top of every other lever, and the sampler rarely lands near a feasible reference:
in the three 40-trial searches at 0.5x of benchmark run 2026-11-24-6, the sampled trials
found one feasible candidate between them (the references found the rest). The
fine-tuned model of the reference is reused (``TrialObjective._fine_tuned``), so the step
costs an export, a conversion and the measurements.

Once stored smaller (or where no smaller format is offered), a feasible reference is tried
one step stronger, and so on while it stays feasible: the informative next point is where
the accuracy floor or the range ends, as an engineer would try pruning 60% after 50% held.
Why: the pruning-50% reference stored in fp16 sits just inside a 0.5x budget here (2.17x
faster side by side), and with no step after a feasible one the searches' courses split
on the side of the budget it was measured on. Over, it was escalated to 60% and two
searches of benchmark run 2026-11-25-4 reached 3.72x and 3.40x; under, nothing followed
it and two searches of run 2026-11-25-5 ended on it (2.17x). Now both sides lead to the
same next point. Each step fine-tunes (a stronger pruning changes the weights), about a
fine-tune's time per step, at most two steps from 50% to the 70% end of the range.

The same holds for the two levers that change the network's shape rather than its width:
elastic depth steps to a quarter fewer residual blocks kept (``depth.keep``, down to 0) and
elastic resolution to an eighth of a side less (``resolution.scale``, down to 0.5 or the
smallest scale the model takes, read off the trial's own distribution). For both, the
smaller value is the faster one, and 1 means the lever is off.

Over the budget, a reference that combines several knobs moves one of them per step:
the one whose own single-lever reference bought the most speed per step, measured in this
study (``knob_rates``). Such a step costs an export and a brief timing, so fine steps are
cheap, and the first form that meets the budget is then the least compressed on its path.
Why: moving every knob at once overshot. In the 0.25x searches of benchmark run
2026-12-05-2 the combined reference went from 3.8x faster (just over the budget) to 8.6x in
one step (pruning 70%, no residual blocks, half the input side, all at once) and lost 1.4
to 2.2 points there; none of the three searches found a model within one point.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from techniques.pruning import MAX_RATIO
from techniques.resolution import SCALE_STEP, SMALLEST_SCALE


@dataclass(frozen=True)
class Step:
    """How a knob is made stronger: by ``step`` (negative: smaller is faster) until ``end``;
    at ``off`` its lever is not applied, and escalation never switches a lever on."""

    step: float
    end: float
    off: float


# the knobs whose next value is faster: pruning more channels, keeping fewer residual
# blocks (techniques/depth.py), running on a smaller input (techniques/resolution.py)
STEPS: Mapping[str, Step] = {
    "prune.ratio": Step(0.1, MAX_RATIO, off=0.0),
    "depth.keep": Step(-0.25, 0.0, off=1.0),
    "resolution.scale": Step(-SCALE_STEP, SMALLEST_SCALE, off=1.0),
}
# the number format a feasible float32 reference is stored in next: a smaller file, the
# same arithmetic
SMALLER_FORMAT = ("quant.scheme", "fp32", "fp16-weights")


def stronger_params(
    params: Mapping[str, Any],
    fixed: Collection[str] = (),
    distributions: Mapping[str, optuna.distributions.BaseDistribution] | None = None,
) -> dict[str, Any] | None:
    """``params`` with every escalatable, unfixed, switched-on knob one step up; None
    when none can move (off, pinned by the user, or at the end of its range).

    ``distributions`` (the trial's) end a range early where the model allows less than the
    whole of it (a model that runs on no smaller input than 0.75 of its own).
    """
    stronger = dict(params)
    for name, knob in STEPS.items():
        value = params.get(name)
        if name in fixed or value is None or value == knob.off:
            continue  # a lever that is off stays off: escalation strengthens, never adds
        end = knob.end
        distribution = (distributions or {}).get(name)
        if isinstance(distribution, optuna.distributions.FloatDistribution):
            end = min(end, distribution.high) if knob.step > 0 else max(end, distribution.low)
        moved = float(value) + knob.step
        moved = min(moved, end) if knob.step > 0 else max(moved, end)
        if (moved - float(value)) * knob.step > 1e-9:
            stronger[name] = round(moved, 6)
    return stronger if stronger != dict(params) else None


def knob_rates(study: optuna.Study) -> dict[str, float]:
    """Speed bought per step by each knob on its own: ln(baseline p50 / p50) over the
    steps from off, at the strongest single-lever reference of the knob measured so far.

    A knob's single-lever reference is the trial whose ``reference`` is the knob's lever
    (``prune`` for ``prune.ratio``); knobs whose reference has not finished are absent.
    """
    baseline_ms: float | None = None
    furthest: dict[str, tuple[float, float]] = {}  # knob -> (steps from off, p50 ms)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        p50 = trial.user_attrs.get("latency", {}).get("p50_ms")
        if p50 is None or p50 <= 0:
            continue
        if trial.user_attrs.get("baseline"):
            baseline_ms = float(p50)
            continue
        for name, knob in STEPS.items():
            value = trial.params.get(name)
            if trial.user_attrs.get("reference") != name.split(".")[0] or value is None:
                continue
            steps = abs(float(value) - knob.off) / abs(knob.step)
            if steps > 0 and steps >= furthest.get(name, (0.0, 0.0))[0]:
                furthest[name] = (steps, float(p50))
    if baseline_ms is None:
        return {}
    return {name: math.log(baseline_ms / p50) / steps for name, (steps, p50) in furthest.items()}


def one_knob_stronger(
    params: Mapping[str, Any],
    fixed: Collection[str] = (),
    distributions: Mapping[str, optuna.distributions.BaseDistribution] | None = None,
    rates: Mapping[str, float] | None = None,
) -> dict[str, Any] | None:
    """``params`` with one knob a step stronger: of those that can move, the one with the
    highest ``rates`` entry (``STEPS`` order among equals and unknowns); None when none can."""
    order = sorted(STEPS, key=lambda name: -(rates or {}).get(name, 0.0))
    for name in order:
        others = set(fixed) | (set(STEPS) - {name})
        moved = stronger_params(params, others, distributions)
        if moved is not None:
            return moved
    return None


def smaller_params(
    params: Mapping[str, Any], fixed: Collection[str] = (), formats: Collection[str] = ()
) -> dict[str, Any] | None:
    """``params`` stored in the smaller format with the same arithmetic; None when the
    format is not float32, is pinned by the user, or the runtime does not offer the other."""
    name, current, smaller = SMALLER_FORMAT
    if name in fixed or params.get(name) != current or smaller not in formats:
        return None
    return {**params, name: smaller}


def escalate_reference(
    trial: optuna.Trial,
    over_budget_ms: float,
    *,
    feasible: bool = False,
    fixed: Collection[str] = (),
    formats: Collection[str] = (),
) -> dict[str, Any] | None:
    """Enqueue the next form of ``trial`` when it is a reference: one knob stronger when it
    is over the budget (``one_knob_stronger``); when it is feasible, stored smaller
    (``formats``: those the runtime offers) or, with no smaller form to try, stronger. An
    infeasible reference under the budget (below the accuracy floor) ends its line.

    Returns the parameters it enqueued (None when it enqueued nothing). The new trial
    keeps the reference's name, plus ``escalated_from``, so a report can tell it from the
    textbook setting.
    """
    reference = trial.user_attrs.get("reference")
    if not reference or trial.user_attrs.get("baseline"):
        return None
    distributions = trial.distributions
    if over_budget_ms > 0:
        rates = knob_rates(trial.study)
        following = one_knob_stronger(trial.params, fixed, distributions, rates)
    elif feasible:
        following = smaller_params(trial.params, fixed, formats) or stronger_params(
            trial.params, fixed, distributions
        )
    else:
        return None
    if following is None or _already_tried(trial.study, following):
        return None
    trial.study.enqueue_trial(
        following, user_attrs={"reference": reference, "escalated_from": trial.number}
    )
    return following


def _already_tried(study: optuna.Study, params: Mapping[str, Any]) -> bool:
    """A finished trial had these parameters, or a waiting one was enqueued with them."""
    for other in study.get_trials(deepcopy=False):
        if other.state == optuna.trial.TrialState.WAITING:
            if other.system_attrs.get("fixed_params") == dict(params):
                return True
        elif other.params == dict(params):
            return True
    return False
