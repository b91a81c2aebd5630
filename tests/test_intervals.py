"""The statistics every accuracy is shown with (``search.measure.intervals``), against
values worked out by hand or published."""

from __future__ import annotations

import numpy as np
import pytest

from search.measure.intervals import (
    accuracy_figures,
    mcnemar_exact_p,
    paired_delta,
    show_delta,
    wilson_interval,
)


def test_wilson_matches_the_published_values() -> None:
    # Wilson (1927) / Newcombe (1998): 5 of 10 -> 0.2366-0.7634; 0 of 10 -> 0-0.2775
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert wilson_interval(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-5)
    assert wilson_interval(1, 7) == pytest.approx((0.02568, 0.51313), abs=1e-5)
    low, high = wilson_interval(355, 359)  # the digits split: about one point either side
    assert 0.97 < low < 355 / 359 < high < 1.0
    with pytest.raises(ValueError):
        wilson_interval(3, 0)


def test_models_that_agree_everywhere_have_a_degenerate_interval_at_zero() -> None:
    base = np.arange(50) % 7 != 0  # some right, some wrong: the same ones
    same = paired_delta(base, base.copy())
    assert (same.lost, same.gained, same.delta_points) == (0, 0, 0.0)
    assert (same.low_points, same.high_points) == (0.0, 0.0)
    assert same.mcnemar_p == 1.0


def test_a_model_that_only_loses_has_the_binomial_quantiles_as_its_interval() -> None:
    # The baseline right on all 100, the model wrong on 10: each bootstrap draw's delta is
    # -Binomial(100, 0.1) points, whose 2.5% and 97.5% quantiles are 5 and 16
    # (P(X<=4) = 0.024, P(X<=5) = 0.058; P(X<=15) = 0.960, P(X<=16) = 0.979).
    base = np.ones(100, dtype=bool)
    model = base.copy()
    model[:10] = False
    delta = paired_delta(base, model)
    assert (delta.lost, delta.gained, delta.delta_points) == (10, 0, -10.0)
    assert (delta.low_points, delta.high_points) == (-16.0, -5.0)
    assert paired_delta(base, model) == delta  # seeded: the same counts, the same interval


def test_a_paired_delta_counts_images_lost_and_gained_and_brackets_the_delta() -> None:
    base = np.ones(360, dtype=bool)
    base[:2] = False  # the baseline misses two images
    model = base.copy()
    model[2:8] = False  # six more missed
    model[0] = True  # one the baseline missed
    delta = paired_delta(base, model)
    assert (delta.lost, delta.gained, delta.total) == (6, 1, 360)
    assert delta.delta_points == pytest.approx(-500 / 360)
    # five images net of 360: the interval reaches about two images either side
    assert -4 < delta.low_points < delta.delta_points < delta.high_points < 0.6
    with pytest.raises(ValueError):
        paired_delta(base, model[:10])


def test_mcnemar_exact_is_the_two_sided_binomial_test_on_the_disagreements() -> None:
    assert mcnemar_exact_p(6, 1) == pytest.approx(2 * 8 / 128)  # 2 * P(X <= 1), X ~ B(7, 1/2)
    assert mcnemar_exact_p(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact_p(3, 3) == 1.0
    assert 0 < mcnemar_exact_p(3000, 2000) < 1e-40  # large counts: exact, no overflow


def test_right_or_wrong_only_where_the_metric_is_top1_accuracy() -> None:
    from search.measure.intervals import per_example_correct as right_or_wrong

    outputs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    targets = np.array([0, 1, 1, 1])
    assert right_or_wrong(outputs, targets, 0.75).tolist() == [True, True, False, True]
    assert right_or_wrong(outputs, targets, 0.8) is None  # another metric (say, macro F1)
    assert right_or_wrong(outputs[:, 0], targets, 0.75) is None  # not class scores


def test_accuracy_figures_carry_the_names_the_trials_record() -> None:
    base = np.ones(100, dtype=bool)
    model = base.copy()
    model[:10] = False
    figures = accuracy_figures(model, base).as_dict()
    assert set(figures) == {
        "accuracy_ci_low", "accuracy_ci_high", "delta_points", "delta_ci_low_points",
        "delta_ci_high_points", "examples_lost", "examples_gained", "mcnemar_p",
    }  # fmt: skip
    assert figures["accuracy_ci_low"] < 0.9 < figures["accuracy_ci_high"]
    assert set(accuracy_figures(model, None).as_dict()) == {"accuracy_ci_low", "accuracy_ci_high"}
    assert show_delta(-0.56, -1.39, 0.28) == "-0.6 (-1.4, +0.3)"
    assert show_delta(None) == "-"
