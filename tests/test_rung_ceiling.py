"""The oracle's ceiling for successive halving, on a made-up rule-off search."""

from __future__ import annotations

from datetime import datetime, timedelta

import optuna
import pytest

from benchmarks.early_stop import recorded_readings
from benchmarks.rung_ceiling import ceiling, render
from search.core.rungs import RungRule
from search.track.trials import DEPLOYED, RUNG_ATTR

START = datetime(2026, 12, 6)
RULE = RungRule()  # the default: epoch 4, margin 0.05, the top third
SECONDS = 10.0  # every trial takes this long, one after another


def _trial(
    index: int,
    values: tuple[float, float, float],
    *,
    feasible: bool,
    reading: float | None = None,
    fine_tune: float = 0.0,
    below_floor: float = -0.01,
    tags: tuple[str, ...] = (),
) -> optuna.trial.FrozenTrial:
    trial = optuna.trial.create_trial(
        values=list(values),
        user_attrs={
            "accuracy_kind": DEPLOYED,
            "below_accuracy_floor": below_floor,
            "phase_seconds": {"fine_tune": fine_tune},
            **({RUNG_ATTR: {"4": reading}} if reading is not None else {}),
            **{tag: True for tag in tags},
        },
        constraints={"over_budget_ms": -0.1 if feasible else 0.1, "below_floor": below_floor},
    )
    trial.datetime_start = START + timedelta(seconds=index * SECONDS)
    trial.datetime_complete = trial.datetime_start + timedelta(seconds=SECONDS)
    return trial


def _study(trials: list[optuna.trial.FrozenTrial]) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.set_user_attr("latency_budget_ms", 0.5)
    study.set_user_attr("max_accuracy_drop", 0.01)  # floor 0.98
    study.add_trials(trials)
    return study


def test_the_oracle_saves_the_fine_tuning_of_every_hopeless_candidate_before_the_front() -> None:
    """The front is complete when the last trial that raised the hypervolume ends; an
    oracle at epoch e saves the rest of every below-floor fine-tune before it, but not a
    reference's (the rule never stops those) nor one after the front."""
    study = _study([
        _trial(0, (0.99, 1.0, 1.0), feasible=False, tags=("baseline",)),
        _trial(1, (0.985, 0.4, 0.8), feasible=True, reading=0.9, fine_tune=8),  # front
        _trial(2, (0.5, 0.3, 0.5), feasible=False, reading=0.2, fine_tune=8, below_floor=0.48),
        _trial(3, (0.4, 0.3, 0.5), feasible=False, reading=0.1, fine_tune=8, below_floor=0.58,
               tags=("reference",)),
        _trial(4, (0.99, 0.25, 0.5), feasible=True, reading=0.92, fine_tune=8),  # completes it
        _trial(5, (0.3, 0.3, 0.5), feasible=False, reading=0.1, fine_tune=8, below_floor=0.68),
        _trial(6, (0.984, 0.45, 0.9), feasible=True, reading=0.88, fine_tune=8),  # dominated
    ])  # fmt: skip
    found = ceiling(
        study, epochs=10, rungs=[1, 4], arm_seconds=100.0, rule=RULE, readings_of=recorded_readings
    )
    assert found is not None
    assert found.front_seconds == pytest.approx(50.0) and found.share == pytest.approx(0.5)
    assert found.oracle_share == pytest.approx({1: (50 - 8 * 0.9) / 100, 4: (50 - 8 * 0.6) / 100})
    # the default rule (epoch 4) stops trial 2 against trial 1's reading, as the oracle does
    assert found.rule_share == pytest.approx(found.oracle_share[4])
    lines = render([found])
    assert lines[0] == (
        f"{study.study_name}: front complete at 0.50; an oracle stopping at epoch 1: 0.43, "
        "epoch 4: 0.45; the rule replayed: 0.45"
    )
    assert lines[-1].startswith("median: front complete at 0.50")


def test_without_evidence_the_rule_saves_nothing_the_oracle_still_does() -> None:
    """Before any candidate met the floor the rule stops nobody; the oracle knows the end."""
    study = _study([
        _trial(0, (0.99, 1.0, 1.0), feasible=False, tags=("baseline",)),
        _trial(1, (0.5, 0.3, 0.5), feasible=False, reading=0.2, fine_tune=10, below_floor=0.48),
        _trial(2, (0.99, 0.25, 0.5), feasible=True, reading=0.92, fine_tune=8),
    ])  # fmt: skip
    found = ceiling(
        study, epochs=10, rungs=[4], arm_seconds=60.0, rule=RULE, readings_of=recorded_readings
    )
    assert found is not None
    assert found.rule_share == pytest.approx(0.5)
    assert found.oracle_share[4] == pytest.approx((30 - 6) / 60)


def test_a_search_that_found_nothing_feasible_has_no_front_to_reach() -> None:
    study = _study([
        _trial(0, (0.99, 1.0, 1.0), feasible=False, tags=("baseline",)),
        _trial(1, (0.5, 0.3, 0.5), feasible=False, reading=0.2, fine_tune=10, below_floor=0.48),
    ])  # fmt: skip
    assert ceiling(study, epochs=10, rungs=[4], arm_seconds=60.0) is None
    assert render([]) == ["no search found anything feasible: no front to reach"]


def test_a_rule_that_stops_a_candidate_which_ended_feasible_gets_no_share() -> None:
    """With that candidate stopped, the front reached is another one: no share is claimed,
    and the line says which trial it was."""
    study = _study([
        _trial(0, (0.99, 1.0, 1.0), feasible=False, tags=("baseline",)),
        _trial(1, (0.985, 0.4, 0.8), feasible=True, reading=0.9, fine_tune=8),
        _trial(2, (0.99, 0.25, 0.5), feasible=True, reading=0.3, fine_tune=8),  # a slow starter
    ])  # fmt: skip
    found = ceiling(
        study, epochs=10, rungs=[4], arm_seconds=60.0, rule=RULE, readings_of=recorded_readings
    )
    assert found is not None and found.rule_share is None and found.rule_false_stops == (2,)
    assert found.oracle_share[4] == pytest.approx(0.5)  # nothing below the floor to stop
    assert render([found])[0].endswith("the rule replayed stops trial(s) 2, which ended feasible")


def test_rung_ceiling_says_bad_input_in_one_line(tmp_path, capsys) -> None:
    from benchmarks.__main__ import main

    storage = f"sqlite:///{tmp_path}/o.db"
    optuna.create_study(storage=storage, study_name="s")
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    given = ["rung-ceiling", "--storage", storage, "--study", "s", "--tracking-uri", tracking]
    assert main([*given, "--arm-seconds", "0"]) == 2
    assert capsys.readouterr().err.strip().endswith("--arm-seconds 0 must be above 0")
    assert main([*given, "--rungs", "10"]) == 2
    assert "--rungs [10]: give epochs from 1 to 9" in capsys.readouterr().err
    assert main(given) == 2  # no MLflow store there: said, not created
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no such file to read" in error
    assert not (tmp_path / "mlflow.db").exists()
    assert main([*given[:4], "nope", *given[5:]]) == 2
    assert capsys.readouterr().err.count("\n") == 1
