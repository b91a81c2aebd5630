"""A fine-tuning curve reaches MLflow in batches, with every point's step kept."""

from __future__ import annotations

from pathlib import Path

from search.track.curve import BufferedCurve
from search.track.tracker import Tracker


def _run(tmp_path: Path) -> tuple[Tracker, str]:
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=tmp_path / "art")
    return tracker, tracker.start_run(tracker.experiment_id("curve"), name="t")


def _steps(tracker: Tracker, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in tracker.client.get_metric_history(run_id, key))


def test_points_are_held_until_the_interval_passes_then_sent_with_their_steps(
    tmp_path: Path,
) -> None:
    tracker, run_id = _run(tmp_path)
    curve = BufferedCurve(tracker, run_id, every_s=3600.0)
    for epoch in range(5):
        curve.add({"finetune_loss": 1.0 / (epoch + 1)}, epoch)
    assert _steps(tracker, run_id, "finetune_loss") == []  # held: one request, not five
    curve.flush()
    assert _steps(tracker, run_id, "finetune_loss") == [(e, 1.0 / (e + 1)) for e in range(5)]
    curve.flush()  # nothing held: nothing sent twice
    assert len(_steps(tracker, run_id, "finetune_loss")) == 5


def test_a_slow_epoch_is_sent_at_once(tmp_path: Path) -> None:
    tracker, run_id = _run(tmp_path)
    curve = BufferedCurve(tracker, run_id, every_s=0.0)  # every epoch slower than the interval
    curve.add({"finetune_val_accuracy_eager": 0.5}, 0)
    assert _steps(tracker, run_id, "finetune_val_accuracy_eager") == [(0, 0.5)]
