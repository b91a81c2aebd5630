"""MLflow tracking through ``MlflowClient`` with explicit run ids.

No global active run: parallel trials and workers each pass the run id they write to. One
MLflow experiment per Optuna study; one parent run per ``search run`` invocation; one child
run per trial, linked both ways (run id on the trial, trial number on the run).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException

from search.common.errors import TrackingError

PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "optuna.trial_number"
STUDY_TAG = "optuna.study_name"
MAX_PARAM_LENGTH = 6000


class Tracker:
    """The run-scoped MLflow writes the search makes; thin on purpose.

    Args:
        tracking_uri: any MLflow tracking URI (SQLite file, server URL).
        artifact_root: where a new experiment stores artifacts when the tracking store is
            local; None leaves the choice to the server.
    """

    def __init__(self, tracking_uri: str, *, artifact_root: Path | None = None) -> None:
        # MLflow prints "View run ... at" for every run ended on a server (and fetches the
        # run to do it); the search prints its own summary.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.artifact_root = artifact_root

    def experiment_id(self, name: str) -> str:
        """The experiment named ``name``, created on first use.

        This is the first call that reaches the store, so an unreachable server or a bad
        URI is reported here as one line.
        """
        try:
            return self._experiment_id(name)
        except Exception as error:
            raise TrackingError(
                f"--tracking-uri {self.client.tracking_uri}: cannot use it: "
                f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            ) from error

    def _experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return str(experiment.experiment_id)
        location = None
        if self.artifact_root is not None:
            location = experiment_folder(self.artifact_root, name).as_uri()
        # MLflow 3's UI opens an experiment as GenAI traces unless told it is model training.
        tags = {"mlflow.experimentKind": "custom_model_development"}
        try:
            return str(self.client.create_experiment(name, artifact_location=location, tags=tags))
        except MlflowException:  # another worker created it a moment ago
            again = self.client.get_experiment_by_name(name)
            if again is None:
                raise
            return str(again.experiment_id)

    def start_run(
        self,
        experiment_id: str,
        *,
        name: str,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
    ) -> str:
        all_tags = dict(tags or {})
        if parent_run_id is not None:
            all_tags[PARENT_TAG] = parent_run_id
        run = self.client.create_run(experiment_id, run_name=name, tags=all_tags)
        return str(run.info.run_id)

    def log(
        self,
        run_id: str,
        *,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, Any] | None = None,
        step: int = 0,
    ) -> None:
        """Params, metrics and tags in one request."""
        now_ms = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now_ms, step) for k, v in (metrics or {}).items()],
            params=[Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in (params or {}).items()],
            tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
        )

    def log_points(self, run_id: str, points: Sequence[Metric]) -> None:
        """Curve points that carry their own step and timestamp, in one request (see
        ``search.track.curve``)."""
        self.client.log_batch(run_id, metrics=list(points))

    def log_artifact(self, run_id: str, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path=folder)

    def log_artifact_text(self, run_id: str, name: str, text: str) -> None:
        self.client.log_text(run_id, text, name)

    def set_tag(self, run_id: str, key: str, value: Any) -> None:
        self.client.set_tag(run_id, key, str(value))

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        """Close a run as FINISHED, FAILED or KILLED."""
        self.client.set_terminated(
            run_id, status=RunStatus.to_string(RunStatus.from_string(status))
        )


_SAFE_FOLDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def experiment_folder(artifact_root: Path, name: str) -> Path:
    """The folder under ``artifact_root`` for the experiment named ``name``; never outside it.

    A study name is the user's free text, and MLflow and Optuna accept ``..``, ``/``, ``\\``
    and absolute paths in it: joined to the root as it is, ``../../x`` or ``/abs/x`` would
    put the run's model files outside the store. A plain name keeps its own folder (as
    before); any other is spelled with its unsafe characters replaced and a short hash of
    the whole name, so two names never share a folder.
    """
    root = artifact_root.resolve()
    if _SAFE_FOLDER.fullmatch(name) and name not in (".", ".."):
        folder = name
    else:
        readable = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:60] or "study"
        folder = f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"
    path = (root / folder).resolve()
    if path.parent != root:  # unreachable by construction; a guard, not a rule
        raise TrackingError(f"--study {name!r}: cannot place its artifacts under {root}")
    return path


class TrackingTarget(Protocol):
    """What a tracker needs from the run's configuration (``SearchConfig`` has it)."""

    @property
    def tracking_uri(self) -> str | None: ...
    @property
    def mlflow_uri(self) -> str: ...
    @property
    def mlruns_dir(self) -> Path: ...


def tracker_for(config: TrackingTarget) -> Tracker:
    """The run's tracker: artifacts under ``mlruns/artifacts`` for the local store, and
    wherever the server keeps them otherwise."""
    local_store = config.tracking_uri is None
    return Tracker(
        config.mlflow_uri, artifact_root=config.mlruns_dir / "artifacts" if local_store else None
    )
