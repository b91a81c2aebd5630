import pytest

from search.common.errors import ConfigError
from search.core.config import SearchConfig, parse_latency_ms


@pytest.mark.parametrize(
    ("text", "expected_ms"),
    [
        ("10ms", 10.0),
        ("2.5 ms", 2.5),
        ("800us", 0.8),
        ("0.01s", 10.0),
        (" 1s ", 1000.0),
        (".5ms", 0.5),
    ],
)
def test_parse_latency_accepts_units(text: str, expected_ms: float) -> None:
    assert parse_latency_ms(text) == pytest.approx(expected_ms)


@pytest.mark.parametrize("text", ["10", "-5ms", "10 parsecs", "", "ms", "0ms", "1e3ms", "5 m s"])
def test_parse_latency_rejects_with_a_fix(text: str) -> None:
    with pytest.raises(ConfigError, match="latency-budget"):
        parse_latency_ms(text)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "tpu"}, "--device"),
        ({"trials": 0}, "--trials"),
        ({"trials": None, "timeout_s": None}, "never end"),
        ({"threads": 0}, "--threads"),
        ({"batch_size": 0}, "--batch-size"),
        ({"finetune_epochs": -1}, "--finetune-epochs"),
        ({"timeout_s": -3.0}, "--timeout"),
        ({"max_accuracy_drop": -0.01}, "--max-accuracy-drop"),
        ({"max_accuracy_drop": float("nan")}, "--max-accuracy-drop"),
        ({"max_accuracy_drop": float("inf")}, "--max-accuracy-drop"),
        ({"objective": "speed"}, "--objective 'speed' is unknown"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SearchConfig(latency_budget_ms=1.0, **kwargs)


def test_default_study_name_resumes_the_same_study(tmp_path) -> None:
    config = SearchConfig(latency_budget_ms=0.4, home=tmp_path)
    assert config.resolved_study_name("digits") == "digits-0.4ms-cpu"
    assert config.storage_url == f"sqlite:///{tmp_path / 'studies' / 'optuna.db'}"
    assert config.mlflow_uri == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    server = SearchConfig(
        latency_budget_ms=5, objective="throughput", batch_size=32, home=tmp_path
    )
    assert server.resolved_study_name("digits") == "digits-5ms-cpu-throughput-b32"


def test_a_relative_budget_is_a_factor_of_the_baseline() -> None:
    from search.core.config import parse_latency_budget

    assert parse_latency_budget("0.5x") == (0.0, 0.5)
    assert parse_latency_budget(" 2 x ") == (0.0, 2.0)
    assert parse_latency_budget("3ms") == (3.0, None)
    for bad in ("0x", "x", "-0.5x", "1000x"):
        with pytest.raises(ConfigError, match="latency-budget"):
            parse_latency_budget(bad)
    relative = SearchConfig(latency_budget_ms=0.0, latency_budget_factor=0.5)
    assert relative.resolved_study_name("digits") == "digits-0.5x-cpu"
