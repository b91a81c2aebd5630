"""Against a real MLflow tracking server on 127.0.0.1, started by ``search ui``.

A small study is logged to the server and promoted; the results are then read back through
MLflow's REST API, and the UI is opened in a headless Chromium that must find the trial
runs (its screenshot is kept in ``test-artifacts/``).
"""

import json
import os
import shutil
import urllib.parse
import urllib.request
from pathlib import Path

import optuna
import pytest
from servers import mlflow_server

from search.core.config import SearchConfig
from search.core.runner import run_search
from search.registry.promote import promote
from search.track.tracker import TRIAL_TAG

# A server start, a three-trial search and a promotion: about a minute on 2 cores, so it
# runs with the other real-server checks (PostgreSQL) in `scripts/test.sh --slow`.
pytestmark = pytest.mark.slow

ARTIFACTS = Path(
    os.environ.get("SEARCH_TEST_ARTIFACTS", Path(__file__).parents[1] / "test-artifacts")
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``search ui`` on a free port; stopped by its process group at the end."""
    home = tmp_path_factory.mktemp("served")
    with mlflow_server(home) as url:
        yield url, home


def rest(url: str, path: str, payload: dict | None = None, **query: str) -> dict:
    address = f"{url}/api/2.0/mlflow/{path}"
    if query:
        address += "?" + urllib.parse.urlencode(query)
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(
        address, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


@pytest.fixture(scope="module")
def searched(server, tiny_task):
    url, home = server
    config = SearchConfig(
        latency_budget_ms=1000.0, trials=3, finetune_epochs=1, home=home,
        max_accuracy_drop=1.0, study_name="served", tracking_uri=url,
    )  # fmt: skip
    run_search(config, task=tiny_task)
    study = optuna.load_study(study_name="served", storage=config.storage_url)
    promotion = promote(
        study, tiny_task, storage_url=config.storage_url, tracking_uri=url, trial_number=None,
        model_name="served-model", tolerance=0.005, force=False,
        lock_dir=config.studies_dir / "locks",
    )  # fmt: skip
    return url, study, promotion


def test_the_study_and_its_champion_are_readable_through_the_rest_api(searched) -> None:
    url, study, promotion = searched
    experiment = rest(url, "experiments/get-by-name", experiment_name="served")["experiment"]
    runs = rest(url, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    tags = [{t["key"]: t["value"] for t in run["data"].get("tags", [])} for run in runs]
    trials = [(run, tag) for run, tag in zip(runs, tags, strict=True) if TRIAL_TAG in tag]
    parent = [run for run, tag in zip(runs, tags, strict=True) if tag.get("kind") == "search"]
    finished = [t.number for t in study.trials if t.state.is_finished()]
    assert sorted(int(tag[TRIAL_TAG]) for _, tag in trials) == finished
    for run, _ in trials:
        metrics = {m["key"] for m in run["data"]["metrics"]}
        assert {"accuracy", "latency_p50_ms", "size_mb", "feasible"} <= metrics
    (parent_run,) = parent
    listed = rest(url, "artifacts/list", run_id=parent_run["info"]["run_id"])
    assert {"pareto.csv", "pareto.html", "pareto.png", "front.md"} <= {
        f["path"] for f in listed["files"]
    }
    version = rest(url, "registered-models/alias", name="served-model", alias="champion")
    version = version["model_version"]
    assert str(version["version"]) == promotion.version
    version_tags = {t["key"]: t["value"] for t in version["tags"]}
    assert float(version_tags["test_accuracy"]) == pytest.approx(promotion.card.test_accuracy)


def test_the_mlflow_ui_shows_the_trial_runs(searched) -> None:
    url, study, _ = searched
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser_path is None:
        pytest.skip("no Chromium on this machine (.ci/run installs it with apt where root)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    experiment = rest(url, "experiments/get-by-name", experiment_name="served")["experiment"]
    names = {t.user_attrs["run_name"] for t in study.trials if "run_name" in t.user_attrs}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{url}/#/experiments/{experiment['experiment_id']}/runs")
        parent = page.locator("[role=row]", has_text="served +0").first
        parent.wait_for(timeout=60_000)
        parent.locator("button[data-component-id*='runnamecellrenderer']").first.click()
        page.get_by_text("t000 baseline").first.wait_for(timeout=30_000)
        shown = {text for text in page.locator("a").all_inner_texts() if text in names}
        page.screenshot(path=str(ARTIFACTS / "mlflow-ui.png"))
        browser.close()
    assert shown == names
