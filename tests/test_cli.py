"""The command line as a user meets it: real processes, real exit codes, one-line errors."""

import subprocess
import sys
from pathlib import Path

import pytest


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "search.cli", *args],
        capture_output=True, text=True, timeout=300, cwd=cwd,
    )  # fmt: skip


BAD = str(Path(__file__).parent / "fixtures" / "bad_tasks.py")
RUN = ["run", "--latency-budget", "5ms"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--latency-budget", "10"], "not a latency"),
        (["run", "--latency-budget", "-5ms"], "not a latency"),
        (["run", "--latency-budget", "0ms"], "greater than zero"),
        (["run", "--latency-budget", "nan ms"], "not a latency"),
        (["run", "--latency-budget", "1e400ms"], "not a latency"),
        (["run", "--latency-budget", "10 parsecs"], "not a latency"),
        (["run", "--latency-budget", "0x"], "relative budget"),
        (["run", "--trials", "2"], "give --latency-budget"),
        ([*RUN, "--trials", "x"], "--trials"),
        ([*RUN, "--trials", "0"], "--trials"),
        ([*RUN, "--timeout", "-1"], "--timeout"),
        ([*RUN, "--threads", "0"], "--threads"),
        ([*RUN, "--batch-size", "0"], "--batch-size"),
        ([*RUN, "--max-accuracy-drop", "-1"], "--max-accuracy-drop"),
        ([*RUN, "--max-failures", "0"], "--max-failures"),
        ([*RUN, "--bogus"], "--bogus"),
        ([*RUN, "--task", "nope"], "is not a task"),
        ([*RUN, "--task", "missing.py:make"], "no such file"),
        ([*RUN, "--task", f"{BAD}:absent"], "no callable named"),
        ([*RUN, "--task", f"{BAD}:raises"], "the dataset server is down"),
        ([*RUN, "--task", f"{BAD}:wrong_output"], "does not fit the task's labels"),
        ([*RUN, "--device", "tpu"], "--device"),
        ([*RUN, "--runtime", "tflite"], "--runtime"),
        ([*RUN, "--sampler", "grid"], "--sampler 'grid' is unknown"),
        ([*RUN, "--workers", "0"], "--workers"),
        ([*RUN, "--study", " "], "--study must not be empty"),
        ([*RUN, "--storage", "foo://x"], "unknown scheme 'foo'"),
        ([*RUN, "--storage", "sqlite:////no/such/dir/optuna.db"], "cannot open it"),
        ([*RUN, "--tracking-uri", "bogus://x"], "unknown scheme 'bogus'"),
        ([*RUN, "--tracking-uri", "http://127.0.0.1:9"], "no MLflow server answers"),
        ([*RUN, "--off", "bogus"], "no such lever"),
        ([*RUN, "--fix", "prune.ratio"], "NAME=VALUE"),
        ([*RUN, "--task", f"{BAD}:tiny", "--fix", "prune.ratio=0.95"], "prune.ratio=0.95"),
        ([*RUN, "--fix", "width.per=row"], "use one of stage, block"),
        ([*RUN, "--config", "absent.toml"], "no such file"),
        ([*RUN, "--use-sensitivity", "absent.json"], "--use-sensitivity absent.json: no such"),
        (["status", "--study", "nope"], "no such study"),
        (["pareto", "--study", "nope"], "no such study"),
        (["promote", "--study", "nope"], "no such study"),
        (["promote", "--tolerance", "2"], "--tolerance"),
        (["profile", "trial:x"], "write trial:N"),
        (["profile", "--batch-sizes", "0"], "at least 1"),
        (["profile", "missing.onnx"], "no such model file"),
        (["ui", "--port", "70000"], "--port"),
        (["space", "--runtime", "bogus"], "--runtime"),
        (["sensitivity", "--ratios", "x"], "--ratios 'x': write numbers"),
        (["sensitivity", "--ratios", "1.5"], "between 0 and 1"),
        (["lowrank", "--task", f"{BAD}:tiny", "--rank-ratio", "0"], "off; give e.g. --rank"),
        (["distill", "--task", f"{BAD}:tiny"], "needs a student"),
        (["quantize", "--task", f"{BAD}:tiny", "--scheme", "int4"], "--scheme int4: use one"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str], needle: str, tmp_path, tiny_task, monkeypatch, capsys
) -> None:
    """The console script's entry point in this process: a new process per case spent
    four seconds importing torch; the two cases below check a real process too."""
    code, out, err = run_main(*args, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert_one_clear_line(code, out, err, needle)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--latency-budget", "10"], "not a latency"),
        ([*RUN, "--task", f"{BAD}:raises"], "the dataset server is down"),
    ],
)
def test_bad_input_in_a_real_process_is_one_line_and_exit_2(
    args: list[str], needle: str, tmp_path, tiny_task
) -> None:
    result = run_cli(*args, cwd=tmp_path)
    assert_one_clear_line(result.returncode, result.stdout, result.stderr, needle)


def run_main(*args: str, cwd: Path, monkeypatch, capsys) -> tuple[int, str, str]:
    """``search ARGS`` through ``search.cli.app:main`` here: (exit code, stdout, stderr)."""
    from search.cli.app import main

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["search", *args])
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        main()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_clear_line(code: int, out: str, err: str, needle: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert needle in lines[0]
    assert "Traceback" not in err + out


def test_a_storage_password_never_reaches_the_output(tmp_path) -> None:
    url = "postgresql://search:s3cret-pw@127.0.0.1:9/studies"
    result = run_cli(*RUN, "--storage", url, cwd=tmp_path)
    assert result.returncode == 2
    assert "s3cret-pw" not in result.stderr + result.stdout
    assert "search:***@127.0.0.1" in result.stderr


def test_cuda_without_a_gpu_is_one_line_and_exit_2(tmp_path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run_cli("run", "--latency-budget", "5ms", "--device", "cuda", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --device cuda: no CUDA GPU is visible to PyTorch on this machine; use --device cpu"
    ]


def test_help_lists_the_run_command() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert "run" in result.stdout


@pytest.mark.slow  # 30 s: a search in a subprocess; scripts/test.sh --slow and CI run it
def test_run_with_the_example_task_prints_the_front(tmp_path) -> None:
    """The README's own-model example, through the real console entry point."""
    from pathlib import Path

    example = Path(__file__).parents[1] / "examples" / "my_task.py"
    result = run_cli(
        "run", "--task", f"{example}:make_task", "--latency-budget", "50ms", "--trials", "2",
        "--finetune-epochs", "1", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Pareto front" in result.stdout
    # successive halving is on by default; with one epoch it says it judges nobody
    assert "a one-epoch fine-tune has no rung" in result.stdout
    assert result.stdout.count("lever width: not applicable") == 1  # a plain CNN: said once
    assert "Browse it: search ui (from this folder;" in result.stdout
    assert "mlflow ui" not in result.stdout  # mlflow is inside the venv, often not on PATH
    assert (tmp_path / "studies" / "optuna.db").exists()
    assert (tmp_path / "mlruns" / "mlflow.db").exists()


def test_space_of_a_plain_cnn_skips_width_and_lists_the_rest(tmp_path) -> None:
    from pathlib import Path

    example = Path(__file__).parents[1] / "examples" / "my_task.py"
    result = run_cli("space", "--task", f"{example}:make_task", "--off", "lora", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "lever width: not applicable" in result.stdout
    assert "width.expand" not in result.stdout
    assert "lever depth: not applicable (no residual blocks" in result.stdout
    assert "depth.keep" not in result.stdout
    assert "resolution.scale" in result.stdout  # 8x8 digits, pooled to 2x2: takes 4x4 too
    for name in ("prune.importance", "quant.scheme", "distill.temperature", "lowrank.rank_ratio"):
        assert name in result.stdout
    assert "int8-qat" in result.stdout
    lora = next(line for line in result.stdout.splitlines() if "lora.rank" in line)
    assert lora.rstrip().endswith("off")


def test_a_config_file_drives_run_and_a_bad_one_is_one_line(tmp_path) -> None:
    (tmp_path / "bad.toml").write_text("[run]\nlatency_budget = '5ms'\n")
    result = run_cli("run", "--config", "bad.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --config bad.toml: [run] latency_budget is not an option; known: "
        "latency-budget, device, runtime, task, trials, timeout, study, storage, tracking-uri, "
        "seed, threads, workers, max-failures, heartbeat, batch-size, objective, finetune-epochs, "
        "max-accuracy-drop, accuracy-rule, latency-first, early-stop, rungs, rung-margin, "
        "rung-keep-fraction, latency-anchor, sampler, references, allow-mixed-hardware, "
        "use-sensitivity, sensitivity-tolerance"
    ]


def test_an_unexpected_error_is_one_line_unless_debug(tmp_path, monkeypatch, capsys) -> None:
    import search.core.study
    import search.track.browse
    from search.cli.app import main

    def broken(*args, **kwargs):
        raise RuntimeError("a bug\nwith two lines")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(search.core.study, "load_existing_study", lambda *a, **k: None)
    monkeypatch.setattr(search.track.browse, "status", broken)
    monkeypatch.setattr(sys, "argv", ["search", "status"])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: unexpected RuntimeError: a bug (search --debug ... shows the traceback)"
    ]
    monkeypatch.setattr(sys, "argv", ["search", "--debug", "status"])
    with pytest.raises(RuntimeError, match="a bug"):
        main()
