"""Successive halving over fine-tuning epochs: the rule, its place in a trial, its record."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from search.common.errors import ConfigError
from search.core.config import SearchConfig
from search.core.config_file import ConfigFile, search_config_from
from search.core.levers import LeverSettings
from search.core.objective import RunLink, TrialObjective, TrialSettings
from search.core.rungs import (
    Reading,
    RungRule,
    describe,
    held_readings,
    judge,
    parse_rungs,
    peer_readings,
)
from search.core.runner import run_search
from search.track.tracker import Tracker
from search.track.trials import RUNG_ATTR, STOPPED_ATTR, WOULD_STOP_ATTR, is_feasible

FLOOR = 0.9
RULE = RungRule(epochs=(2,), margin=0.05, keep_fraction=1 / 3)
HELD = [Reading(3, 0.40), Reading(4, 0.62)]  # read at the rung by two that met the floor


def test_a_candidate_below_every_one_that_met_the_floor_stops_one_near_them_goes_on() -> None:
    peers = [0.40, 0.62, 0.70]
    verdict = judge(RULE, accuracy=0.30, held=HELD, peers=peers)
    assert verdict.stop and "trial 3" in verdict.reason and "0.4000" in verdict.reason
    assert judge(RULE, accuracy=0.349, held=HELD, peers=peers).stop  # just past the margin
    assert not judge(RULE, accuracy=0.36, held=HELD, peers=peers).stop  # within the margin
    # the floor itself does not judge: early readings are far under final ones
    assert not judge(RULE, accuracy=0.45, held=HELD, peers=peers).stop


def test_without_a_finished_candidate_that_met_the_floor_nothing_stops() -> None:
    verdict = judge(RULE, accuracy=0.01, held=[], peers=[0.9, 0.95, 0.97, 0.99])
    assert not verdict.stop and "no finished candidate" in verdict.reason


def test_the_top_fraction_at_a_rung_goes_on_whatever_its_reading() -> None:
    """ASHA: of six candidates at the rung the best two go on, even all below the bar."""
    held = [Reading(0, 0.90)]
    peers = [0.10, 0.20, 0.30, 0.40, 0.50]
    assert not judge(RULE, accuracy=0.60, held=held, peers=peers).stop  # 1st of 6
    assert not judge(RULE, accuracy=0.45, held=held, peers=peers).stop  # 2nd of 6
    assert judge(RULE, accuracy=0.35, held=held, peers=peers).stop  # 3rd of 6
    # alone at the rung (fewer than three candidates), rank keeps nobody
    assert judge(RULE, accuracy=0.60, held=held, peers=[]).stop


def test_rungs_are_judged_only_before_the_last_epoch() -> None:
    rule = RungRule(epochs=(2, 5))
    assert [e for e in range(1, 11) if rule.judges(e, 10)] == [2, 5]
    assert not RungRule(epochs=(2,)).judges(2, 2)  # the end of the schedule is no rung


def test_the_start_of_a_search_says_where_candidates_are_judged_or_why_none_is() -> None:
    assert describe(RungRule(epochs=(4,)), 10) == (
        "stops hopeless fine-tunes after epoch 4 of 10 (--early-stop off: finish every one)"
    )
    assert "epochs 2, 5 of 10" in (describe(RungRule(epochs=(2, 5, 10)), 10) or "")
    shadow = describe(RungRule(epochs=(4,), shadow=True), 10) or ""
    assert "shadow" in shadow and "stops nothing" in shadow
    # the default rung past a short schedule judges nobody: said, with what to do
    short = describe(RungRule(epochs=(4,)), 3) or ""
    assert "judges no candidate" in short and "--rungs 4" in short and "below 3" in short
    assert describe(RungRule(epochs=(4,)), 1) == (
        "successive halving judges no candidate: a one-epoch fine-tune has no rung"
    )
    assert describe(None, 10) is None  # off
    assert describe(RungRule(), 0) is None  # nothing is fine-tuned


def test_rungs_from_the_command_line_and_the_config_file() -> None:
    assert parse_rungs("5,2, 2") == (2, 5)
    with pytest.raises(ConfigError, match="--rungs"):
        parse_rungs("two")
    with pytest.raises(ConfigError, match="--rungs"):
        parse_rungs("0")
    given = {"latency-budget": "0.5x", "rungs": "3", "early-stop": "shadow"}
    config = search_config_from(given, ConfigFile(), LeverSettings(), home=Path.cwd())
    assert config.rungs == (3,) and config.early_stop == "shadow"
    with pytest.raises(ConfigError, match="--early-stop"):
        SearchConfig(early_stop="sometimes")
    with pytest.raises(ConfigError, match="--rung-margin"):
        SearchConfig(rung_margin=1.5)


def test_the_keep_fraction_from_the_command_line_and_the_config_file_reaches_the_rule() -> None:
    """ASHA's share is an option like the rung and the margin (the issue's "rungs and
    fraction are options"): what the user gives is what judges."""
    from search.core.runner import rung_rule

    assert rung_rule(SearchConfig()).keep_fraction == pytest.approx(1 / 3)
    given = {"latency-budget": "0.5x", "rung-keep-fraction": 0}
    config = search_config_from(given, ConfigFile(), LeverSettings(), home=Path.cwd())
    rule = rung_rule(config)
    assert rule is not None and rule.keep_fraction == 0
    # with no top share, a candidate below the bar stops even when it leads its peers
    assert judge(rule, accuracy=0.2, held=HELD, peers=[0.1, 0.15]).stop
    assert not judge(RULE, accuracy=0.2, held=HELD, peers=[0.1, 0.15]).stop
    with pytest.raises(ConfigError, match="--rung-keep-fraction 1 must be from 0 to below 1"):
        SearchConfig(rung_keep_fraction=1.0)


def _objective(tmp_path: Path, tiny_task, rule: RungRule) -> tuple[TrialObjective, str]:
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=tmp_path / "art")
    experiment = tracker.experiment_id("rungs")
    settings = TrialSettings(
        latency_budget_ms=1.0, accuracy_floor=FLOOR, device="cpu", threads=1, batch_size=1,
        finetune_epochs=10, seed=0, rungs=rule,
    )  # fmt: skip
    link = RunLink(tracker, experiment, parent_run_id=None, study_name="rungs")
    objective = TrialObjective(tiny_task, tiny_task.build_model(), settings, link, tmp_path)
    return objective, tracker.start_run(experiment, name="t")


def _finished(study: optuna.Study, reading: float, *, met_floor: bool, kind: str = "deployed"):
    """A completed earlier candidate that read ``reading`` at rung 2."""
    study.add_trial(
        optuna.trial.create_trial(
            values=[0.95 if met_floor else 0.5, 1.0, 1.0],
            user_attrs={
                RUNG_ATTR: {"2": reading},
                "accuracy_kind": kind,
                "below_accuracy_floor": 0.0 if met_floor else 0.4,
            },
        )
    )


def test_on_a_study_the_hopeless_stop_the_promising_go_on_references_never_stop(
    tmp_path: Path, tiny_task
) -> None:
    objective, run_id = _objective(tmp_path, tiny_task, RULE)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    _finished(study, 0.62, met_floor=True)
    _finished(study, 0.55, met_floor=True)
    _finished(study, 0.05, met_floor=False)  # ended below the floor: no evidence
    _finished(study, 0.02, met_floor=False, kind="stopped at epoch 2")
    assert [r.accuracy for r in held_readings(study.get_trials(), 2)] == [0.62, 0.55]
    hopeless, promising, reference = study.ask(), study.ask(), study.ask()
    reference.set_user_attr("reference", "prune 50%")

    assert objective._at_rung(hopeless, 2, 10, 0.30, run_id)
    assert hopeless.user_attrs[STOPPED_ATTR] == 2
    assert "the lowest reading at the rung" in hopeless.user_attrs["stop_reason"]
    assert not objective._at_rung(promising, 2, 10, 0.52, run_id)
    assert not objective._at_rung(reference, 2, 10, 0.10, run_id)
    assert STOPPED_ATTR not in reference.user_attrs
    # each reading is recorded, so the candidates after rank against it
    assert sorted(peer_readings(study.get_trials(), 2)) == [0.02, 0.05, 0.1, 0.3, 0.52, 0.55, 0.62]
    assert not objective._at_rung(study.ask(), 1, 10, 0.10, run_id)  # no rung at epoch 1


def test_shadow_mode_records_the_stop_and_goes_on(tmp_path: Path, tiny_task) -> None:
    shadow = RungRule(epochs=(2,), margin=0.05, shadow=True)
    objective, run_id = _objective(tmp_path, tiny_task, shadow)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    _finished(study, 0.62, met_floor=True)
    trial = study.ask()
    assert not objective._at_rung(trial, 1, 10, 0.20, run_id)  # no rung: recorded, for replays
    assert not objective._at_rung(trial, 2, 10, 0.30, run_id)
    assert trial.user_attrs[WOULD_STOP_ATTR] == 2 and STOPPED_ATTR not in trial.user_attrs
    assert trial.user_attrs[RUNG_ATTR] == {"1": 0.20, "2": 0.30}


def test_a_stopped_trial_is_complete_infeasible_and_visible_in_mlflow_and_status(
    home: Path, tiny_task
) -> None:
    """End to end (seconds): a finished candidate met the floor reading 0.99 after its
    first epoch; resumed, a candidate pruned by 70% reads below it there and completes,
    labelled, without the rest of its fine-tune.

    The finished candidate is the baseline's record with a rung reading: a real one's
    first-epoch reading is noisy (0.61-0.78 for pruning by 5-30% across CPUs), and the
    test is of what a stop leaves behind; ``judge``'s rule is tested above."""
    only_pruning = ("quant", "width", "lowrank", "lora", "ort", "depth", "resolution", "distill")

    def search(ratio: float, trials: int):
        config = SearchConfig(
            latency_budget_ms=1000.0, trials=trials, early_stop="on", finetune_epochs=3,
            home=home, seed=0, max_accuracy_drop=0.5, rungs=(1,), rung_margin=0.0,
            references=False, study_name="rungs",
            levers=LeverSettings(off=only_pruning, fixed=(("prune.ratio", ratio),)),
        )  # fmt: skip
        return config, run_search(config, task=tiny_task)

    config, _ = search(0.1, trials=1)  # the baseline
    study = optuna.load_study(study_name="rungs", storage=config.storage_url)
    baseline = study.trials[0]
    attrs = {k: v for k, v in baseline.user_attrs.items() if k != "baseline"}
    attrs.update({RUNG_ATTR: {"1": 0.99}, "accuracy_kind": "deployed"})
    study.add_trial(
        optuna.trial.create_trial(
            values=baseline.values, user_attrs=attrs, system_attrs=baseline.system_attrs
        )
    )
    config, result = search(0.7, trials=1)

    study = optuna.load_study(study_name="rungs", storage=config.storage_url)
    evidence, trial = study.trials[1], study.trials[2]
    assert evidence.user_attrs["below_accuracy_floor"] <= 0
    assert trial.user_attrs[RUNG_ATTR]["1"] < evidence.user_attrs[RUNG_ATTR]["1"]
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.user_attrs[STOPPED_ATTR] == 1
    assert trial.user_attrs["accuracy_kind"] == "stopped at epoch 1"
    assert trial.values[0] == pytest.approx(trial.user_attrs[RUNG_ATTR]["1"])
    assert not is_feasible(trial)
    run = MlflowClient(tracking_uri=result.tracking_uri).get_run(trial.user_attrs["mlflow_run_id"])
    assert run.data.tags["stopped_early"] == "True"
    assert run.data.metrics[STOPPED_ATTR] == 1
    epochs = MlflowClient(tracking_uri=result.tracking_uri).get_metric_history(
        run.info.run_id, "finetune_loss"
    )
    assert len(epochs) == 1  # one epoch of three ran

    status = subprocess.run(
        [sys.executable, "-m", "search.cli", "status", "--json", "--study", "rungs"],
        capture_output=True, text=True, timeout=120, cwd=home,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["stopped_early"] == 1


def test_the_benchmark_counts_false_stops_in_shadow_mode() -> None:
    """A would-stop candidate that ended feasible is a false stop; the fine-tuning after
    its rung is what the rule would have saved."""
    from benchmarks.early_stop import render, rung_counts

    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    for feasible, would in ((True, True), (False, True), (True, False)):
        trial = study.ask()
        trial.set_user_attr(RUNG_ATTR, {"2": 0.5})
        trial.set_user_attr("phase_seconds", {"fine_tune": 10.0})
        if would:
            trial.set_user_attr(WOULD_STOP_ATTR, 2)
        trial.set_constraint("accuracy_below_floor", 0.0 if feasible else 0.1)
        study.tell(trial, [0.9, 1.0, 1.0])
    counts = rung_counts(study, epochs=10)
    assert counts["judged"] == 3 and counts["would_stop"] == 2
    assert counts["false_stops"] == [0]
    assert counts["seconds_saved"] == pytest.approx(2 * 10.0 * 8 / 10)
    table = "\n".join(render({"0.5x": [{"seed": 0, "rungs": counts}]}, "shadow"))
    assert "| 0.5x | 0 | 3 | 0 | 2 | 1 (trials 0) | 30 | 16 |" in table
    assert "False-stop rate: 1 of 2 (50%)." in table
    # with the rule on nobody knows what a stopped candidate would have become: not "0"
    live = "\n".join(render({"0.5x": [{"seed": 0, "rungs": counts}]}, "on"))
    assert "| 0.5x | 0 | 3 | 0 | – | – | 30 | 16 |" in live and "False-stop rate" not in live


def test_a_shadow_search_replayed_with_another_margin_scores_it_by_what_ended_feasible() -> None:
    """Every candidate of a shadow search finished: the replay knows which stops were
    false. A reference never stops; one the replay stops is no longer evidence."""
    from datetime import datetime, timedelta

    from benchmarks.early_stop import replay
    from search.track.trials import DEPLOYED

    start = datetime(2026, 12, 5)

    def finished(reading: float, *, feasible: bool, reference: bool = False):
        trial = optuna.trial.create_trial(
            values=[0.99 if feasible else 0.5, 1.0, 1.0],
            user_attrs={
                RUNG_ATTR: {"2": reading},
                "accuracy_kind": DEPLOYED,
                "below_accuracy_floor": -0.01 if feasible else 0.3,
                "phase_seconds": {"fine_tune": 10.0},
                **({"reference": "prune"} if reference else {}),
            },
            constraints={"over_budget_ms": -1.0, "below_floor": -0.01 if feasible else 0.3},
        )
        trial.datetime_start, trial.datetime_complete = start, start + timedelta(seconds=12)
        return trial

    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.add_trials([
        finished(0.9, feasible=True, reference=True),  # the first evidence
        finished(0.5, feasible=True),  # a slow starter that ended feasible
        finished(0.02, feasible=False),  # hopeless
        finished(0.01, feasible=False, reference=True),  # references never stop
    ])  # fmt: skip
    tight = replay(study, RungRule(epochs=(2,), margin=0.05), epochs=10)
    assert tight.stops == 2 and tight.false_stops == [1]
    assert tight.seconds_saved == pytest.approx(2 * 10.0 * 8 / 10)
    assert tight.fine_tune_seconds == pytest.approx(40)
    assert tight.trial_seconds == pytest.approx(48)
    loose = replay(study, RungRule(epochs=(2,), margin=0.45), epochs=10)
    assert loose.stops == 1 and loose.false_stops == []  # the slow starter went on
    assert loose.seconds_saved == pytest.approx(8.0)


def test_replay_rungs_says_a_bad_storage_in_one_line(tmp_path) -> None:
    from benchmarks.__main__ import main

    missing = f"sqlite:///{tmp_path}/no/such/folder/o.db"
    assert main(["replay-rungs", "--storage", missing]) == 2
    empty = f"sqlite:///{tmp_path}/empty.db"
    assert main(["replay-rungs", "--storage", empty]) == 2


def test_a_replay_reads_every_epoch_from_the_mlflow_curve_where_the_study_kept_rungs_only(
    tmp_path,
) -> None:
    from benchmarks.early_stop import curve_readings, recorded_readings

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    for step, value in enumerate([0.1, 0.3, 0.6, 0.8]):
        client.log_metric(run_id, "finetune_val_accuracy_eager", value, step=step)
    trial = optuna.trial.create_trial(
        values=[0.9, 1.0, 1.0], user_attrs={"mlflow_run_id": run_id, RUNG_ATTR: {"2": 0.3}}
    )
    assert recorded_readings(trial) == {"2": 0.3}
    assert curve_readings(uri)(trial) == {"1": 0.1, "2": 0.3, "3": 0.6, "4": 0.8}
