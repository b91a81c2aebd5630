"""``search profile``: the baseline alone (table and JSON) and side by side with a trial."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from search.cli.report import print_profiles
from search.common.errors import ConfigError
from search.core.profile import profile_all

TINY = f"{Path(__file__).parent / 'fixtures' / 'tiny_task.py'}:make_task"


@pytest.mark.slow  # 30 s: three timing subprocesses; scripts/test.sh --slow and CI run it
def test_profile_of_the_baseline_prints_a_table_and_valid_json(tmp_path, task_cache) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "search.cli", "profile", "--task", TINY, "--batch-sizes",
             "1,4", *args],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )  # fmt: skip

    table = cli()
    assert table.returncode == 0, table.stderr
    for row in ("size MB", "params", "MMACs", "batch 1 p50 ms", "batch 4 samples/s"):
        assert row in table.stdout
    parsed = json.loads(cli("--json").stdout)
    (baseline,) = parsed
    assert baseline["name"] == "baseline" and baseline["macs"] > 0
    one, four = baseline["latency"]["1"], baseline["latency"]["4"]
    assert 0 < one["p50_ms"] <= one["p95_ms"] <= one["p99_ms"]
    assert four["batch_size"] == 4 and four["throughput_per_s"] > 0
    refused = cli("--compare")
    assert refused.returncode == 2 and "two or more targets" in refused.stderr


def test_compare_puts_a_trial_beside_the_baseline_with_ratios(home, tiny_task) -> None:
    from search.core.config import SearchConfig
    from search.core.levers import LeverSettings
    from search.core.runner import run_search

    levers = LeverSettings(off=("depth", "width", "lowrank", "lora", "quant", "resolution"))
    config = SearchConfig(
        latency_budget_ms=1000.0, trials=2, finetune_epochs=1, home=home,
        max_accuracy_drop=1.0, levers=levers, study_name="p",
    )  # fmt: skip
    run_search(config, task=tiny_task)  # trial 1: the pruning reference
    profiles = profile_all(
        ["baseline", "trial:1"], tiny_task, storage_url=config.storage_url,
        tracking_uri=config.mlflow_uri, study_name="p", batch_sizes=(1,), threads=1,
        device="cpu", lock_dir=home / "locks",
    )  # fmt: skip
    baseline, pruned = profiles
    assert pruned.name == "trial 1" and pruned.size_bytes < baseline.size_bytes
    assert pruned.macs is not None and baseline.macs is not None and pruned.macs < baseline.macs
    console = Console(record=True, width=120)
    print_profiles(console, profiles, compare=True)
    text = console.export_text()
    ratio = baseline.size_bytes / pruned.size_bytes
    assert f"({ratio:.2f}×)" in text
    with pytest.raises(ConfigError, match="no completed trial 7"):
        profile_all(
            ["trial:7"], tiny_task, storage_url=config.storage_url,
            tracking_uri=config.mlflow_uri, study_name="p", batch_sizes=(1,), threads=1,
            device="cpu", lock_dir=home / "locks",
        )  # fmt: skip
