"""The benchmark's arithmetic on made-up trials: hypervolume, choice, overhead, roofline.

No timing is asserted anywhere: benchmarks are measurements, run by ``python -m benchmarks``.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta

import numpy as np
import optuna
import pytest

from benchmarks.compare import ALPHA, agreement, chance_next_median_within, same_search_p
from benchmarks.hypervolume import (
    Box,
    box_of,
    curve,
    feasible_points,
    hypervolume,
    share_to_reach,
)
from benchmarks.overhead import FINISHED, SCREENED, STOPPED, overhead
from benchmarks.report import render_markdown, results_stem
from benchmarks.roofline import Peaks, floor_of, onnx_bytes
from benchmarks.search_speed import search_of, speed_lines
from benchmarks.suite import best_feasible, fine_tuned_name, nearest_misses
from search.core.study import make_sampler
from search.track.trials import ACCURACY_CONSTRAINT_KEY, CONSTRAINT_KEY

T0 = datetime(2026, 1, 1, 12, 0, 0)


def _trial(
    values, *, feasible=True, start=0.0, seconds=10.0, phases=None, baseline=False, kind="deployed"
):
    attrs = {"accuracy_kind": kind, **({"baseline": True} if baseline else {})}
    if phases is not None:
        attrs["phase_seconds"] = phases
    trial = optuna.trial.create_trial(
        values=list(values),
        user_attrs=attrs,
        constraints={CONSTRAINT_KEY: -1.0 if feasible else 1.0, ACCURACY_CONSTRAINT_KEY: -1.0},
    )
    trial.datetime_start = T0 + timedelta(seconds=start)
    trial.datetime_complete = T0 + timedelta(seconds=start + seconds)
    return trial


def _study(trials, budget_ms=0.3):
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.set_user_attr("latency_budget_ms", budget_ms)
    study.set_user_attr("max_accuracy_drop", 0.01)
    study.add_trials(trials)
    return study


def test_hypervolume_is_the_dominated_share_of_the_unit_box() -> None:
    box = Box(accuracy_floor=0.98, budget_ms=1.0, baseline_size_mb=1.0)
    # losses (0.5, 0.5, 0.5): the corner box (1 - 0.5)^3
    assert hypervolume([(0.99, 0.5, 0.5)], box) == pytest.approx(0.125)
    # two points that overlap: 0.125 + 0.5*0.75*1... computed by inclusion-exclusion
    both = hypervolume([(0.99, 0.5, 0.5), (0.995, 0.25, 0.5)], box)
    assert both == pytest.approx(0.75 * 0.75 * 0.5)
    # outside the box (over the budget, or bigger than the baseline) adds nothing
    assert hypervolume([(0.99, 1.5, 0.5), (0.99, 0.5, 2.0)], box) == 0.0


def test_the_curve_counts_a_point_from_the_moment_it_completed() -> None:
    base = _trial((0.99, 0.6, 1.0), feasible=False, baseline=True)
    quick = _trial((0.99, 0.15, 0.5), start=10, seconds=10)
    late = _trial((0.995, 0.15, 0.25), start=20, seconds=20)
    study = _study([base, quick, late])
    box = box_of(study)
    assert box == Box(pytest.approx(0.98), 0.3, 1.0)
    points = feasible_points(study.trials)
    assert [seconds for seconds, _ in points] == [20.0, 40.0]
    values = curve(points, box, [0, 20, 39, 40])
    assert values[0] == 0.0 and values[1] == values[2] > 0 and values[3] > values[2]


def test_a_search_that_reaches_the_same_front_sooner_is_reported_so() -> None:
    """Successive halving's claim, checked as the benchmark checks it: two searches of one
    seed, the second finding the same two models in half the wall time."""

    def run(stretch: float) -> optuna.Study:
        base = _trial((0.99, 0.6, 1.0), feasible=False, baseline=True)
        first = _trial((0.99, 0.15, 0.5), start=10 * stretch, seconds=10 * stretch)
        better = _trial((0.995, 0.15, 0.25), start=20 * stretch, seconds=20 * stretch)
        return _study([base, first, better])

    slow, fast = search_of(run(2.0)), search_of(run(1.0))
    assert (slow.seconds, fast.seconds) == (80.0, 40.0)
    assert slow.final == pytest.approx(fast.final) and fast.final > 0
    assert fast.seconds_to_reach(slow.final) == 40.0
    assert slow.hypervolume_at(40.0) < fast.final  # at equal time the slow one has less
    lines = speed_lines({"compress-0.5x-seed0": slow}, {"compress-0.5x-seed0": fast})
    assert "(0.50 of the time)" in lines[0] and "final front at 40 s (0.50)" in lines[0]
    assert lines[-1].startswith("median over 1 searches: the second took 0.50")
    # the other way round: the slow search never gets there within the fast one's time
    assert "hypervolume at equal time" in speed_lines({"s": fast}, {"s": slow})[-1]


def test_how_soon_one_arm_reaches_where_the_other_ended() -> None:
    """The same front sooner, as the efficiency part reports it: the median curve of the
    first arm against the median final of the second, and seed by seed."""
    times = [0, 100, 200, 300, 400]
    ours = [[0, 0.1, 0.3, 0.3, 0.5], [0, 0.2, 0.2, 0.2, 0.2], [0, 0.0, 0.25, 0.3, 0.3]]
    other = [[0, 0.1, 0.1, 0.2, 0.25], [0, 0.1, 0.3, 0.3, 0.4], [0, 0.1, 0.2, 0.2, 0.3]]
    median, per_seed = share_to_reach(ours, other, times)
    # median of ours: 0, 0.1, 0.25, 0.3, 0.3; the other's finals' median is 0.3
    assert median == 0.75
    assert per_seed == [0.5, None, 0.75]  # seed 1 never reaches 0.4
    assert share_to_reach(other, ours, times) == (1.0, [None, 0.5, 1.0])


def test_best_feasible_is_the_largest_speed_and_size_gain() -> None:
    base = _trial((0.99, 0.6, 1.0), feasible=False, baseline=True)
    fast = _trial((0.99, 0.2, 0.5))  # 3x faster, 2x smaller: 6
    small = _trial((0.985, 0.29, 0.125))  # 2.07x, 8x: 16.6
    tiny_but_slow = _trial((0.99, 0.5, 0.01), feasible=False)
    assert best_feasible(_study([base, fast, small, tiny_but_slow])).values == small.values
    assert best_feasible(_study([base, tiny_but_slow])) is None


def test_the_confident_rule_passes_over_a_pick_whose_interval_reaches_below_the_drop() -> None:
    base = _trial((0.99, 0.6, 1.0), feasible=False, baseline=True)
    base.user_attrs["delta_ci_low_points"] = 0.0
    # half a point down, but its paired interval reaches 1.7 points down: past the drop of 1
    lucky = _trial((0.985, 0.29, 0.125))
    lucky.user_attrs["delta_ci_low_points"] = -1.7
    sure = _trial((0.99, 0.2, 0.5))  # no change, the interval within 0.6 points
    sure.user_attrs["delta_ci_low_points"] = -0.6
    study = _study([base, lucky, sure])
    assert best_feasible(study).values == lucky.values  # the study's rule: point
    assert best_feasible(study, "point").values == lucky.values
    assert best_feasible(study, "confident").values == sure.values
    from search.registry.promote import choose_trial

    assert choose_trial(study, None, rule="confident").number == 2
    # a confident study: feasibility is its trials' constraints; the pick the highest low end
    study.set_user_attr("accuracy_rule", "confident")
    assert choose_trial(study, None).values == sure.values


def test_the_report_compares_both_rules_picks_on_test() -> None:
    from benchmarks.rules import rule_rows, rule_summary

    results = _results(faster_student=1.5, hv_random=0.25)
    search = results["compression"]["0.5x"]["seeds"][0]
    search["accuracy_rule"] = "point"
    search["picks"] = {
        "point": {"trial": 3, "promote_trial": 1},
        "confident": {"trial": 1, "promote_trial": 1},
    }
    search["candidates"] = [
        {"trial": 1, "accuracy": 0.99, "delta_points": 0.0, "delta_ci_low_points": -0.56,
         "delta_ci_high_points": 0.56, "test_accuracy": 0.987, "test_delta_points": -0.28,
         "test_delta_ci_points": [-0.84, 0.28], "faster": 2.0, "smaller": 5.0},
        {"trial": 3, "accuracy": 0.985, "delta_points": -0.56, "delta_ci_low_points": -1.39,
         "delta_ci_high_points": 0.28, "test_accuracy": 0.97, "test_delta_points": -1.67,
         "test_delta_ci_points": [-2.78, -0.56], "faster": 2.0, "smaller": 5.0},
    ]  # fmt: skip
    rows = rule_rows(results)
    point, confident = rows[0], rows[1]
    assert (point["rule"], point["trial"], point["inside"]) == ("point", 3, False)
    assert (confident["trial"], confident["inside"]) == (1, True)
    summary = rule_summary(rows)["0.5x"]
    assert summary["point"] == {
        "searches": 1, "picks": 1, "inside": 0, "judged": 1,
        "test_delta_points": [-1.67, -1.67, -1.67],
    }  # fmt: skip
    assert summary["confident"]["inside"] == 1
    text = render_markdown(results, "plot.png")
    assert "## Accuracy rules: point against confident" in text
    assert "| 0.5x | point | 1 of 1 | -1.67 (-1.67 to -1.67) | 0 of 1 |" in text
    assert "| 0.5x | 0 | point | trial 3 | -0.56 (-1.39, +0.28) | -1.67 | no |" in text
    assert "  | 3 (point pick) | 0.9850 (-0.56 (-1.39, +0.28)) | 0.9700 (-1.67 (-2.78, -0.56)) |" in text  # fmt: skip  # noqa: E501
    assert "  | 1 (point promote, confident pick, confident promote) |" in text


def test_with_nothing_feasible_the_nearest_misses_say_by_how_much() -> None:
    base = _trial((0.99, 0.6, 1.0), feasible=False, baseline=True)
    fast_but_poor = _trial((0.95, 0.12, 0.1), feasible=False)
    accurate_but_slow = _trial((0.985, 0.4, 0.3), feasible=False)
    screened = _trial((0.10, 0.05, 0.1), feasible=False, kind="before fine-tuning")
    misses = nearest_misses(_study([base, fast_but_poor, accurate_but_slow, screened], 0.15))
    under = misses["most accurate under the budget"]
    assert under["trial"] == 1 and under["delta_points"] == pytest.approx(-4)
    assert under["faster"] == pytest.approx(5)
    within = misses["fastest within the accuracy floor"]
    assert within["trial"] == 2 and within["p50_ms"] == 0.4
    assert "fastest candidate measured" not in misses  # a fine-tuned one is under it


def test_with_nothing_fine_tuned_under_the_budget_the_fastest_draft_says_how_near() -> None:
    base = _trial((0.99, 0.6, 1.0), feasible=False, baseline=True)
    accurate_but_slow = _trial((0.985, 0.4, 0.3), feasible=False)
    draft = _trial((0.10, 0.2, 0.1), feasible=False, kind="before fine-tuning")
    misses = nearest_misses(_study([base, accurate_but_slow, draft], 0.15))
    assert "most accurate under the budget" not in misses
    fastest = misses["fastest candidate measured"]
    assert fastest["trial"] == 2 and fastest["faster"] == pytest.approx(3)
    assert fastest["accuracy_kind"] == "before fine-tuning"


def test_overhead_is_what_the_work_phases_leave() -> None:
    work = {"fine_tune": 6.0, "evaluate": 1.0, "latency": 1.0, "export": 1.0}
    first = _trial((0.99, 0.2, 0.5), start=0, seconds=10, phases=work)
    second = _trial((0.99, 0.2, 0.5), start=12, seconds=10, phases=work)  # a 2 s gap
    result = overhead([_study([first, second])])
    assert result.trials == 2 and result.work_seconds == pytest.approx(16)
    assert result.trial_share == pytest.approx(0.2)
    assert result.run_share == pytest.approx(1 - 16 / 22)
    assert result.phases["export"] == pytest.approx(2)
    assert result.phases["other (Optuna, MLflow, files)"] == pytest.approx(2)


def test_overhead_is_split_by_what_became_of_the_trial() -> None:
    fine_tuned = _trial((0.99, 0.2, 0.5), seconds=10, phases={"fine_tune": 8.0, "export": 1.0})
    screened = _trial(
        (0.10, 0.9, 0.5), start=10, seconds=2, phases={"latency": 1.0, "export": 0.5},
        kind="before fine-tuning",
    )  # fmt: skip
    stopped = _trial(
        (0.5, 0.2, 0.5), start=12, seconds=4, phases={"fine_tune": 3.0}, kind="stopped at epoch 2"
    )
    kinds = overhead([_study([fine_tuned, screened, stopped])]).by_kind
    assert kinds[SCREENED]["trials"] == 1 and kinds[SCREENED]["share"] == pytest.approx(0.5)
    assert kinds[FINISHED]["share"] == pytest.approx(0.2)
    assert kinds[STOPPED]["work_seconds"] == pytest.approx(3.0)
    assert kinds[STOPPED]["share"] == pytest.approx(0.25)


def test_roofline_takes_the_slower_of_compute_and_memory() -> None:
    peaks = Peaks(fp32_gmacs=50, int8_gmacs=100, bandwidth_gbs=10, threads=1, how="made up")
    fp32 = floor_of(50_000_000, 1_000_000, False, measured_ms=2.0, peaks=peaks)
    assert fp32.compute_ms == pytest.approx(1.0) and fp32.memory_ms == pytest.approx(0.1)
    assert fp32.above_floor == pytest.approx(2.0)
    int8 = floor_of(50_000_000, 100_000_000, True, measured_ms=20.0, peaks=peaks)
    assert int8.compute_ms == pytest.approx(0.5) and int8.floor_ms == pytest.approx(10.0)


def test_onnx_bytes_counts_weights_and_intermediate_tensors(tmp_path) -> None:
    from onnx import TensorProto, helper, numpy_helper, save

    weight = numpy_helper.from_array(np.ones((4, 4), dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [weight],
    )
    path = tmp_path / "m.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    # 16 weights, then h and y of 4 floats each at batch 1
    assert onnx_bytes(path) == 4 * (16 + 4 + 4)

    # stored in fp16 (fp16-weights): the float32 weight its Cast leaves at load, once
    from techniques.quantization import to_fp16_weights

    half = tmp_path / "m.w16.onnx"
    to_fp16_weights(path, half)
    from onnx import load

    assert [t.data_type for t in load(str(half)).graph.initializer] == [TensorProto.FLOAT16]
    assert onnx_bytes(half) == 4 * (16 + 4 + 4)


def test_results_never_overwrite_an_earlier_run(tmp_path) -> None:
    day = date(2026, 11, 24)
    first = results_stem(tmp_path, quick=False, today=day)
    assert first.name == "2026-11-24"
    first.with_suffix(".json").write_text("{}")
    assert results_stem(tmp_path, quick=False, today=day).name == "2026-11-24-2"
    assert results_stem(tmp_path, quick=True, today=day).name == "2026-11-24-quick"


def _results(faster_student: float, hv_random: float, best=(2.2, 2.0, 3.0)) -> dict:
    def model(name, faster, size):
        return {
            "name": name,
            "scheme": "fp32",
            "test_accuracy": 0.99,
            "accuracy_delta_points": 0.0,
            "test_lost": 1,
            "test_gained": 1,
            "delta_interval_points": [-0.56, 0.56],
            "p50_ms": 0.3,
            "faster": [faster, faster - 0.05, faster + 0.05],
            "size_bytes": size,
            "smaller": 1e6 / size,
            "fewer_macs": None,
        }

    arms = {"default": 0.5, "random": hv_random}
    return {
        "command": "python -m benchmarks run",
        "plan": {
            "quick": False,
            "device": "cpu",
            "runtime": "onnxruntime",
            "threads": 1,
            "rounds": 3,
            "arm_seconds": 60,
            "seeds": [0],
        },
        "hardware": {"cpu_model": "x", "cpu_count": "2"},
        "baseline_p50_ms": 0.6,
        "durations_s": {"total": 60},
        "work_folder": "w",
        "compression": {
            "0.5x": {
                "budget_ms": 0.3,
                "seeds": [
                    {
                        "seed": 0,
                        "trials": 5,
                        "feasible": 1,
                        "trial": 3,
                        "params": {"prune.ratio": 0.5},
                        "name": "best at 0.5x, seed 0 (trial 3)",
                    },
                    {"seed": 1, "trials": 5, "feasible": 0, "nearest": {}},
                ],
                "summary": {
                    "seeds": 2,
                    "found": 1,
                    "faster": list(best),
                    "smaller": [5.0, 4.0, 6.0],
                    "test_delta_points": [-0.5, -1.0, 0.0],
                },
            }
        },
        "models": [
            model("baseline", 1.0, 1_000_000),
            model("best at 0.5x, seed 0 (trial 3)", 2.2, 200_000),
            model("student", faster_student, 300_000),
        ],
        "efficiency": {
            "budget_ms": 0.3,
            "times_s": [0, 60],
            "curves": {a: [[0, v]] for a, v in arms.items()},
            "summary": {
                a: {
                    "final_median": v,
                    "final_min": v,
                    "final_max": v,
                    "runs": [{"trials": 3, "feasible": 1}],
                }
                for a, v in arms.items()
            },
        },
        "overhead": {
            "trials": 2,
            "trial_share": 0.05,
            "run_share": 0.06,
            "trial_seconds": 20,
            "work_seconds": 19,
            "phases": {"fine_tune": 15.0, "export": 1.0},
            "by_kind": {
                SCREENED: {"trials": 1, "trial_seconds": 2.0, "work_seconds": 1.5, "share": 0.25},
                FINISHED: {"trials": 1, "trial_seconds": 18, "work_seconds": 17.5, "share": 0.03},
            },
        },
        "peaks": {"fp32_gmacs": 50, "int8_gmacs": 90, "bandwidth_gbs": 30, "how": "made up"},
        "roofline": [
            {
                "name": "best at 0.5x, seed 0 (trial 3)",
                "rate": "fp32",
                "macs": 2_000_000,
                "bytes": 200_000,
                "compute_ms": 0.04,
                "memory_ms": 0.0067,
                "measured_ms": 0.3,
                "above_floor": 7.5,
            }
        ],
    }


def _searched_by_seed(faster: list[float], results: dict | None = None) -> dict:
    """A run whose searches' best models (one per seed) are ``faster`` times faster."""
    results = results or _results(1.5, 0.1)
    template = next(m for m in results["models"] if m["name"].startswith("best at"))
    searched = []
    for seed, value in enumerate(faster):
        name = f"best at 0.5x, seed {seed} (trial 3)"
        searched.append({**template, "name": name, "faster": [value, value - 0.1, value + 0.1]})
    results["models"] = [m for m in results["models"] if m is not template] + searched
    budget = results["compression"]["0.5x"]
    budget["seeds"] = [{"seed": i, "name": m["name"]} for i, m in enumerate(searched)]
    return results


def test_two_runs_agree_when_rankings_match_and_spreads_overlap(tmp_path) -> None:
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    searched = [2.0, 2.2, 2.4]
    a.write_text(json.dumps(_searched_by_seed(searched, _results(1.5, hv_random=0.1))))
    b.write_text(json.dumps(_searched_by_seed(searched, _results(1.52, hv_random=0.2))))
    c.write_text(json.dumps(_searched_by_seed(searched, _results(2.5, hv_random=0.9))))
    assert agreement(a, b)[0]
    ok, lines = agreement(a, c)
    assert not ok and any("DIFFERENT" in line for line in lines)


def test_searched_models_differ_only_when_no_split_of_their_seeds_is_as_far_apart(
    tmp_path,
) -> None:
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps(_searched_by_seed([2.15, 2.70, 4.21])))  # the ninth run's
    b.write_text(json.dumps(_searched_by_seed([3.40, 3.72, 3.99])))  # the tenth run's
    c.write_text(json.dumps(_searched_by_seed([4.30, 4.50, 4.60])))  # above all of a's
    ok, lines = agreement(a, b)
    assert ok, lines
    expected = "faster: median 2.70 (2.15 to 4.21) vs 3.72 (3.40 to 3.99): same search (p = 0.70"
    assert expected in "\n".join(lines)
    ok, lines = agreement(a, c)
    assert not ok and any("faster" in line and "DIFFERENT" in line for line in lines)
    d = tmp_path / "d.json"
    d.write_text(json.dumps(_searched_by_seed([3.40, 3.72])))  # one search found nothing
    ok, lines = agreement(a, d)  # 2 and 3 seeds: the most extreme split has p = 0.20
    assert not ok and any("TOO FEW seeds" in line for line in lines)


def test_identical_searches_seldom_differ_with_three_seeds_a_side() -> None:
    """The rule's false alarms: pairs of runs drawn from one search, three seeds each."""
    rng = np.random.default_rng(0)
    pairs = rng.lognormal(1.0, 0.3, size=(200, 2, 3)).tolist()
    rank_sum = [same_search_p(one, two) <= ALPHA for one, two in pairs]
    medians_inside = [
        not (min(two) <= np.median(one) <= max(two) and min(one) <= np.median(two) <= max(one))
        for one, two in pairs
    ]
    assert np.mean(rank_sum) <= 0.15  # 0.10 expected: 2 of the 20 splits
    assert np.mean(medians_inside) >= 0.45  # the earlier rule: about 0.6


def test_the_next_median_lands_in_a_three_seed_range_three_times_in_five() -> None:
    """The closed form against counting every split, and against drawing runs."""
    import itertools
    import math

    for seeds in range(1, 8):
        pooled, inside = range(2 * seeds), 0
        for mine in itertools.combinations(pooled, seeds):
            theirs = sorted(set(pooled) - set(mine))
            middle = theirs[(seeds - 1) // 2 : seeds // 2 + 1]
            inside += mine[0] < middle[0] and middle[-1] < mine[-1]
        counted = inside / math.comb(2 * seeds, seeds)
        assert chance_next_median_within(seeds) == pytest.approx(counted)
    assert chance_next_median_within(3) == pytest.approx(0.6)
    assert chance_next_median_within(5) == pytest.approx(5 / 6)
    rng = np.random.default_rng(1)
    for seeds in (3, 4):
        mine, theirs = rng.lognormal(1.0, 0.3, size=(2, 20000, seeds))
        middle = np.sort(theirs, axis=1)[:, (seeds - 1) // 2 : seeds // 2 + 1]
        inside = (mine.min(axis=1) < middle.min(axis=1)) & (middle.max(axis=1) < mine.max(axis=1))
        assert inside.mean() == pytest.approx(chance_next_median_within(seeds), abs=0.015)


def test_the_report_marks_the_pick_and_what_promote_would_take() -> None:
    results = _results(faster_student=1.5, hv_random=0.25)
    search = results["compression"]["0.5x"]["seeds"][0]

    def candidate(trial: int, validation: float, test: float) -> dict:
        delta = 100 * (validation - 0.99)
        return {"trial": trial, "accuracy": validation, "delta_points": delta,
                "test_accuracy": test, "faster": 2.0, "smaller": 5.0}  # fmt: skip

    search["candidates"] = [candidate(1, 0.99, 0.97), candidate(3, 0.985, 0.99)]
    search["promote_trial"] = 1
    text = render_markdown(results, "plot.png")
    assert "  | 1 (promote) | 0.9900 (+0.00) | 0.9700 (-2.00) |" in text
    assert "  | 3 (pick) | 0.9850 (-0.50) | 0.9900 (+0.00) |" in text
    search["promote_trial"] = 3  # both rules on one trial
    assert "  | 3 (pick, promote) |" in render_markdown(results, "plot.png")
    del search["promote_trial"]  # a results file from before the mark
    assert "  | 1 | 0.9900" in render_markdown(results, "plot.png")


def test_the_report_splits_the_overhead_by_what_became_of_the_trial() -> None:
    results = _results(faster_student=1.5, hv_random=0.25)
    text = render_markdown(results, "plot.png")
    # 0.5 of the 1 s outside the work was the screened trial's
    assert f"| {SCREENED} | 1 | 2.00 | 25.0% | 50% |" in text
    del results["overhead"]["by_kind"]  # results from before the split
    assert "By what became of the trial" not in render_markdown(results, "plot.png")


def test_the_markdown_names_the_command_and_the_ratio() -> None:
    text = render_markdown(_results(faster_student=1.5, hv_random=0.25), "plot.png")
    assert "`python -m benchmarks run`" in text
    assert "Median hypervolume, default against random: 2.00×" in text
    assert "reaches random's final median at 1.00 of the wall time" in text
    assert (
        "| best at 0.5x, seed 0 (trial 3) (fp32) | 0.9900 (+0.00) | 1 / 1 (-0.56 to +0.56) "
        "| 0.3000 | 2.20 (2.15–2.25)" in text
    )
    older = _results(faster_student=1.5, hv_random=0.25)  # a file from before the counts
    for row in older["models"]:
        del row["test_lost"], row["test_gained"], row["delta_interval_points"]
    assert "| 0.9900 (+0.00) | – | 0.3000 |" in render_markdown(older, "plot.png")
    assert "| 0.5x (0.3000 ms) | 1 of 2 | 2.20 (2.00–3.00) | 5.00 (4.00–6.00) | -0.50" in text
    assert "the next run's median lies inside this run's min–max over n picks" in text
    assert "0.5x: 1 pick, no range" in text  # 1 of 2 searches found a model
    two = _results(faster_student=1.5, hv_random=0.25)
    two["compression"]["0.5x"]["summary"]["found"] = 2
    assert "0.5x: 2 picks, 17%" in render_markdown(two, "plot.png")
    # the roofline names the peak it divides by in a column of its own, not in the name
    assert "| best at 0.5x, seed 0 (trial 3) | fp32 | 2.00 M | 200 KB | 0.0400 |" in text


def _with_fine_tuned(results: dict, faster: list[float]) -> dict:
    """``results`` whose picks were also rebuilt with 30 epochs, ``faster`` times faster."""
    template = next(m for m in results["models"] if m["name"].startswith("best at"))
    budget = results["compression"]["0.5x"]
    for seed, value in enumerate(faster):
        name = f"best at 0.5x fine-tuned 30 epochs, seed {seed} (trial 3)"
        results["models"].append(
            {**template, "name": name, "faster": [value, value - 0.1, value + 0.1],
             "accuracy_delta_points": -0.28}
        )  # fmt: skip
        budget["seeds"][seed]["finetuned_name"] = name
    budget["summary_finetuned"] = {
        "seeds": 3, "found": 3, "faster": [2.2, 2.1, 2.3], "smaller": [5.0, 4.0, 6.0],
        "test_delta_points": [-0.28, -0.56, 0.0],
    }  # fmt: skip
    results["plan"]["finetune_epochs"] = 30
    return results


def test_a_pick_fine_tuned_longer_is_its_own_kind_of_searched_model() -> None:
    from benchmarks.compare import _is_searched, _kind

    name = fine_tuned_name("best at 0.5x, seed 1 (trial 8)", 30)
    assert name == "best at 0.5x fine-tuned 30 epochs, seed 1 (trial 8)"
    assert _kind(name) == "best at 0.5x fine-tuned 30 epochs" and _is_searched(name)


def test_picks_fine_tuned_longer_get_their_own_rows_and_comparison(tmp_path) -> None:
    text = render_markdown(_with_fine_tuned(_results(1.5, 0.25), [2.2]), "plot.png")
    assert (
        "| 0.5x, fine-tuned 30 epochs | 3 of 3 | 2.20 (2.10–2.30) | 5.00 (4.00–6.00) | -0.28"
        in text
    )
    assert "rebuilt by `search finetune` with 30 epochs" in text
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps(_with_fine_tuned(_searched_by_seed([2.0, 2.2, 2.4]), [2.0, 2.2, 2.4])))
    same = _with_fine_tuned(_searched_by_seed([2.0, 2.2, 2.4]), [2.05, 2.15, 2.35])
    b.write_text(json.dumps(same))
    apart = _with_fine_tuned(_searched_by_seed([2.0, 2.2, 2.4]), [4.0, 4.2, 4.4])
    c.write_text(json.dumps(apart))
    ok, lines = agreement(a, b)
    assert ok, lines
    assert any(line.startswith("best at 0.5x fine-tuned, faster") for line in lines)
    ok, lines = agreement(a, c)  # the picks as found agree; rebuilt, they do not
    assert not ok
    assert any("0.5x fine-tuned, faster" in line and "DIFFERENT" in line for line in lines)
    assert any("0.5x, faster" in line and "same search" in line for line in lines)


def test_the_sampler_is_chosen_by_name() -> None:
    assert isinstance(make_sampler("random", 0), optuna.samplers.RandomSampler)
    assert isinstance(make_sampler("tpe", 0), optuna.samplers.TPESampler)


def _matmul_file(path, width: int):
    """A one-MatMul ONNX file with the search's input and output names."""
    from onnx import TensorProto, helper, numpy_helper, save

    from search.measure.artifact import INPUT_NAME, OUTPUT_NAME, Artifact

    weight = numpy_helper.from_array(np.ones((64, width), dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", [INPUT_NAME, "W"], [OUTPUT_NAME])],
        "g",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", width])],
        [weight],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return Artifact(path=path, scheme="fp32")


def test_each_round_times_every_model_in_a_fresh_process(tmp_path) -> None:
    import time

    from benchmarks.side_by_side import ScoreOnTest, compare, time_rounds
    from search.core.profile import Target

    models = [
        Target("big", _matmul_file(tmp_path / "big.onnx", 512), macs=64 * 512),
        Target("small", _matmul_file(tmp_path / "small.onnx", 8), macs=64 * 8),
    ]
    started = time.perf_counter()
    timing = {"runtime": "onnxruntime", "device": "cpu", "threads": 1, "started": started}
    inputs = np.ones((1, 64), dtype=np.float32)
    rounds = time_rounds(models, inputs, count=1, first=0, **timing)
    # the protocol of results files from before 2026-11-25: each model once, one after another
    rounds += time_rounds(models, inputs, count=1, first=1, interleaved=False, **timing)
    assert len(rounds) == 2 and rounds[0].at_s < rounds[1].at_s
    assert all(len(r.p50_ms) == 2 and min(r.p50_ms) > 0 for r in rounds)
    right = np.arange(10) < 9  # 9 of 10 right; the small model loses two, gains one
    scores = [ScoreOnTest(0.9, right), ScoreOnTest(0.8, np.arange(10) >= 2)]
    rows = compare(models, scores, rounds)
    assert rows[0].faster == (1.0, 1.0, 1.0)
    assert (rows[1].test_lost, rows[1].test_gained) == (2, 1)
    assert rows[0].delta_interval_points == (0.0, 0.0)
    ratios = sorted(r.p50_ms[0] / r.p50_ms[1] for r in rounds)
    assert rows[1].faster[1:] == pytest.approx(tuple(ratios))
    assert rows[1].fewer_macs == 64 and rows[1].accuracy_delta_points == pytest.approx(-10)
    assert rows[1].smaller > 1


def test_round_protocols_finds_a_runs_models_by_path_or_else_by_size(tmp_path) -> None:
    from benchmarks.round_protocols import input_shape, model_files

    work = tmp_path / "work"
    (work / "a").mkdir(parents=True)
    big = _matmul_file(work / "a" / "big.onnx", 512)
    small = _matmul_file(work / "small.onnx", 8)
    results = {
        "models": [
            {"name": "baseline", "size_bytes": big.size_bytes, "scheme": "fp32"},
            {"name": "small", "size_bytes": 1, "scheme": "fp32", "path": str(small.path)},
        ]
    }
    found = model_files(results, work)
    assert [t.artifact.path for t in found] == [big.path, small.path]
    assert input_shape(big.path) == (1, 64)  # the symbolic batch taken as 1
    results["models"][1]["path"] = str(tmp_path / "gone.onnx")  # moved: looked up by size
    with pytest.raises(SystemExit, match="no file of 1 bytes"):
        model_files(results, work)


def test_budgets_are_shares_above_zero(capsys) -> None:
    from benchmarks.__main__ import main

    with pytest.raises(SystemExit) as stopped:
        main(["run", "--budgets", "0.5", "0"])
    assert stopped.value.code == 2
    assert "'0' is not a share above 0" in capsys.readouterr().err


def test_lever_settings_reach_the_searches_and_the_report(capsys) -> None:
    from benchmarks.__main__ import main

    assert main(["run", "--fix", "ft.searched=maybe"]) == 2
    assert (
        capsys.readouterr().err.strip().endswith("--fix ft.searched=maybe: use one of false, true")
    )
    results = _results(faster_student=1.5, hv_random=0.25)
    assert "The searches ran with" not in render_markdown(results, "plot.png")
    results["plan"]["fixed"] = [["ft.searched", True]]
    assert "The searches ran with `ft.searched=true`." in render_markdown(results, "plot.png")


def test_a_comparison_says_when_the_searches_ran_with_other_settings(tmp_path) -> None:
    first, second = _results(1.5, 0.25), _results(1.5, 0.25)
    second["plan"]["fixed"] = [["ft.searched", True]]
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, results in zip(paths, (first, second), strict=True):
        path.write_text(json.dumps(results))
    _, lines = agreement(*paths)
    assert lines[0] == "searches with other lever settings: the defaults vs ft.searched=true"


def test_the_arms_option_puts_the_rule_off_beside_the_default() -> None:
    """``--arms default no-early-stop``: the efficiency part at one wall time, successive
    halving on (the run's --early-stop) against the same search without it."""
    from benchmarks.__main__ import command_line, plan_of
    from benchmarks.arms import ARMS, DEFAULT_ARMS

    args = command_line().parse_args(
        ["run", "--early-stop", "on", "--arms", "default", "no-early-stop", "--arm-seconds", "400"]
    )
    plan = plan_of(args)
    assert plan.early_stop == "on" and plan.arm_seconds == 400
    default, off = plan.arms
    assert "early_stop" not in ARMS[default]  # the run's own setting
    assert ARMS[off] == {**ARMS[default], "early_stop": "off"}
    assert plan_of(command_line().parse_args(["run"])).arms == DEFAULT_ARMS
    with pytest.raises(SystemExit):
        command_line().parse_args(["run", "--arms", "fastest"])
