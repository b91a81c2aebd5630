"""A study name is the user's free text: none may put the run's files outside the store.

The study name is the MLflow experiment's name, and the experiment's artifact folder was
the name joined to ``mlruns/artifacts``: ``../../x`` or ``/abs/x`` wrote model files
elsewhere (``search.track.tracker.experiment_folder`` now derives the folder).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from mlflow import MlflowClient

from search.core.config import SearchConfig
from search.core.runner import run_search
from search.track.tracker import Tracker, experiment_folder

UNSAFE = ["../../x", "/abs/x", "a/b", "a\\b", ".."]
PLAIN = "digits-0.5x-cpu"


def local_path(uri: str) -> Path:
    """A ``file://`` URI (or a bare path, as MLflow also writes them) as a path."""
    parts = urlsplit(uri)
    return Path(unquote(parts.path) if parts.scheme == "file" else uri)


def spelled(name: str, home: Path) -> str:
    """An absolute name points into the scratch folder, under its own ``abs/``: should the
    guard ever break, the test's files land where the test sees them, not in ``/abs``."""
    return f"{home}{name}" if name.startswith("/") else name


def files_under(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Tracker]]:
    """One SQLite store for the module (creating its database takes seconds), with the
    working folder inside the scratch folder so a stray relative write is seen too."""
    home = tmp_path_factory.mktemp("names")
    mlruns = home / "mlruns"
    mlruns.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(home)
        tracker = Tracker(f"sqlite:///{mlruns / 'mlflow.db'}", artifact_root=mlruns / "artifacts")
        yield home, tracker


def log_note(tracker: Tracker, home: Path, name: str) -> tuple[str, Path]:
    """An experiment for ``name``, a run in it with one small file: (run id, its path)."""
    experiment_id = tracker.experiment_id(name)
    run_id = tracker.start_run(experiment_id, name="note")
    note = home / "scratch" / "note.txt"  # the source, removed again below
    note.parent.mkdir(exist_ok=True)
    note.write_text(f"study {name!r}\n")
    tracker.log_artifact(run_id, note)
    note.unlink()
    tracker.end_run(run_id)
    artifact_uri = tracker.client.get_run(run_id).info.artifact_uri
    assert artifact_uri is not None
    return run_id, local_path(artifact_uri) / "note.txt"


@pytest.mark.parametrize("name", [*UNSAFE, PLAIN])
def test_a_study_name_keeps_its_artifacts_inside_the_store(
    name: str, store: tuple[Path, Tracker]
) -> None:
    home, tracker = store
    root = (home / "mlruns" / "artifacts").resolve()
    name = spelled(name, home)
    _, logged = log_note(tracker, home, name)

    assert logged.is_file()
    assert logged.resolve().is_relative_to(root)
    assert logged.read_text() == f"study {name!r}\n"
    experiment = tracker.client.get_experiment_by_name(name)
    assert experiment is not None and experiment.name == name  # the name itself is kept
    folder = local_path(experiment.artifact_location).resolve()
    assert folder.parent == root
    assert folder == experiment_folder(root, name)
    if name == PLAIN:
        assert folder.name == PLAIN  # a plain name keeps its plain folder
    else:
        assert folder.name != name
    outside = [
        path
        for path in files_under(home)
        if not path.resolve().is_relative_to((home / "mlruns").resolve())
    ]
    assert outside == []


def test_different_unsafe_names_get_different_folders(tmp_path: Path) -> None:
    folders = {experiment_folder(tmp_path, name) for name in UNSAFE}
    assert len(folders) == len(UNSAFE)
    # names that read alike once their unsafe characters are replaced stay apart
    assert experiment_folder(tmp_path, "a/b") != experiment_folder(tmp_path, "a\\b")
    assert experiment_folder(tmp_path, "a/b") != experiment_folder(tmp_path, "a_b")
    for folder in folders:
        assert folder.parent == tmp_path.resolve()


def test_a_search_with_an_unsafe_study_name_writes_only_under_its_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_task
) -> None:
    """End to end: the baseline trial's model file, the front and the plots all land in
    ``mlruns/`` and ``studies/`` (about ten seconds with the task trained)."""
    monkeypatch.chdir(tmp_path)
    config = SearchConfig(
        latency_budget_ms=1000.0, trials=1, finetune_epochs=1, home=tmp_path, seed=0,
        max_accuracy_drop=1.0, study_name="../../x", references=False,
    )  # fmt: skip
    result = run_search(config, task=tiny_task)

    assert result.study_name == "../../x" and result.trials_run == 1
    stores = [(tmp_path / "mlruns").resolve(), (tmp_path / "studies").resolve()]
    written = files_under(tmp_path)
    outside = [p for p in written if not any(p.resolve().is_relative_to(s) for s in stores)]
    assert outside == []
    client = MlflowClient(tracking_uri=config.mlflow_uri)
    run = client.get_run(result.parent_run_id)
    artifacts = local_path(str(run.info.artifact_uri)).resolve()
    assert artifacts.is_relative_to((tmp_path / "mlruns" / "artifacts").resolve())
    assert (artifacts / "pareto.csv").is_file()
    assert not (tmp_path / "x").exists()  # where the name pointed, joined as it is
