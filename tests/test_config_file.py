"""``--config search.toml``: every key checked, the command line on top."""

from pathlib import Path

import pytest

from search.common.errors import ConfigError
from search.core.config_file import load_config_file, search_config_from
from search.core.levers import LeverSettings

GOOD = """
[run]
latency-budget = "0.3ms"
trials = 30
timeout = 600

[levers]
off = ["lora"]

[levers.fix]
"prune.importance" = "taylor"
width.per = "block"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "search.toml"
    path.write_text(text)
    return path


def test_a_config_file_sets_run_options_and_levers(tmp_path) -> None:
    file = load_config_file(write(tmp_path, GOOD))
    assert file.run == {"latency-budget": "0.3ms", "trials": 30, "timeout": 600}
    assert file.levers.off == ("lora",)
    assert dict(file.levers.fixed) == {"prune.importance": "taylor", "width.per": "block"}
    config = search_config_from({"trials": None}, file, file.levers, home=tmp_path)
    assert config.latency_budget_ms == 0.3 and config.trials == 30 and config.timeout_s == 600
    assert config.levers.options() == {"width.per": "block"}


def test_the_latency_anchor_is_on_unless_switched_off(tmp_path) -> None:
    file = load_config_file(write(tmp_path, GOOD))
    assert search_config_from({}, file, file.levers, home=tmp_path).latency_anchor is True
    off = search_config_from({"latency-anchor": False}, file, file.levers, home=tmp_path)
    assert off.latency_anchor is False


def test_the_command_line_wins_over_the_file(tmp_path) -> None:
    file = load_config_file(write(tmp_path, GOOD))
    cli = LeverSettings(off=("quant",), fixed=(("prune.importance", "magnitude"),))
    levers = file.levers.merged(cli)
    config = search_config_from({"trials": 3, "device": "cpu"}, file, levers, home=tmp_path)
    assert config.trials == 3
    assert levers.off == ("lora", "quant")
    assert dict(levers.fixed)["prune.importance"] == "magnitude"


def test_timeout_alone_runs_until_it(tmp_path) -> None:
    file = load_config_file(None)
    given = {"latency-budget": "1ms", "timeout": 60.0}
    assert search_config_from(given, file, file.levers, home=tmp_path).trials is None
    given = {"latency-budget": "1ms"}
    assert search_config_from(given, file, file.levers, home=tmp_path).trials == 8


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[run\n", "not valid TOML"),
        ("[runn]\n", "runn is unknown"),
        ("[run]\nlatency_budget = '1ms'\n", "latency_budget is not an option"),
        ("[run]\ntrials = 'many'\n", "trials = 'many' must be int"),
        ("[run]\ntrials = true\n", "must be int"),
        ("[levers]\noff = 'lora'\n", "off must be a list"),
        ("[levers]\nfixed = {}\n", "fixed is unknown"),
        ("levers = 3\n", "levers must be a table"),
    ],
)
def test_a_bad_file_is_one_clear_error(tmp_path, text, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config_file(write(tmp_path, text))


def test_a_missing_file_and_a_missing_budget_are_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config_file(tmp_path / "absent.toml")
    file = load_config_file(None)
    with pytest.raises(ConfigError, match="give --latency-budget"):
        search_config_from({}, file, file.levers, home=tmp_path)
