"""A model the ONNX exporter cannot take is refused in one line that names the culprit.

Model libraries wrap activations in custom ``torch.autograd.Function``s unless built
"exportable"; ``torch.onnx.export`` then ended the run with "unexpected RuntimeError:
ONNX export failed: Couldn't export Python operator HardSwishJitAutoFn".
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from search.common.errors import ExportError
from search.measure.onnx_runtime import export_onnx

FIXTURES = Path(__file__).parent / "fixtures"

# The pattern of timm's memory-saving activations: a scripted function inside a custom
# autograd Function, which the exporter can neither inline nor translate.
FUNCTION_SOURCE = """
import torch
from torch import nn


@torch.jit.script
def _hard_swish(x: torch.Tensor) -> torch.Tensor:
    return x * (x + 3).clamp(min=0, max=6).div(6.0)


class HardSwishJitAutoFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return _hard_swish(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * ((x + 3).clamp(0, 6) / 6 + x * ((x > -3) & (x < 3)) / 6)


class HardSwishMe(nn.Module):
    def forward(self, x):
        return HardSwishJitAutoFn.apply(x)
"""

TASK_SOURCE = f'''
import sys
sys.path.insert(0, {str(FIXTURES)!r})
from tiny_task import make_task
{FUNCTION_SOURCE}

def make():
    """The tiny digits task with an untrained model that calls the Function."""
    task = make_task()
    task.build_model = lambda: nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), HardSwishMe(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 10),
    )
    return task
'''


@pytest.fixture(scope="module")
def hard_swish(tmp_path_factory: pytest.TempPathFactory) -> type[nn.Module]:
    """``HardSwishMe`` loaded from a file: ``torch.jit.script`` reads its function's source."""
    path = tmp_path_factory.mktemp("custom") / "custom_function.py"
    path.write_text(FUNCTION_SOURCE)
    spec = importlib.util.spec_from_file_location("custom_function", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():  # torch.jit.script is deprecated; libraries still use it
        warnings.simplefilter("ignore", DeprecationWarning)
        spec.loader.exec_module(module)
    return module.HardSwishMe


class Block(nn.Module):
    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.conv(x))


def test_the_cli_refuses_a_model_with_a_custom_function_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "custom_task.py").write_text(TASK_SOURCE)
    result = subprocess.run(
        [sys.executable, "-m", "search.cli", "run", "--task", "custom_task.py:make",
         "--latency-budget", "5ms", "--trials", "1"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # the exporter's C++ warning is not passed on
    assert lines[0].startswith("error: cannot export the model to ONNX")
    assert "custom autograd Function HardSwishJitAutoFn in module '1' (HardSwishMe)," in lines[0]
    assert "make the model exportable" in lines[0] and "exportable=True" in lines[0]
    assert "unexpected" not in lines[0] and "Traceback" not in result.stdout + result.stderr
    assert "Torch IR graph" not in result.stdout


def test_every_module_calling_the_function_is_counted_innermost_first(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], hard_swish: type[nn.Module]
) -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 1), Block(hard_swish()), Block(hard_swish()))
    with pytest.raises(ExportError) as raised:
        export_onnx(model, torch.randn(1, 1, 8, 8), tmp_path / "model.onnx")
    message = str(raised.value)
    assert "HardSwishJitAutoFn in module '1.act' (HardSwishMe) and 1 more," in message
    assert "HardSwishJitAutoFn" in message and "\n" not in message
    out, err = capfd.readouterr()
    assert "HardSwishJitAutoFn" not in out + err  # held while exporting, dropped on failure


def test_an_unsupported_operator_is_one_line_with_the_way_out(tmp_path: Path) -> None:
    class Inverse(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.linalg.inv(x.reshape(-1, 8, 8)).flatten(1)

    with pytest.raises(ExportError, match="aten::linalg_inv") as raised:
        export_onnx(Inverse(), torch.randn(1, 1, 8, 8), tmp_path / "model.onnx")
    assert "--runtime torch" in str(raised.value) and "\n" not in str(raised.value)


def test_a_function_the_exporter_can_inline_still_exports(tmp_path: Path) -> None:
    class Doubled(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):  # plain torch ops: the exporter inlines them
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            return grad * 2

    class Net(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return Doubled.apply(x).flatten(1)

    artifact = export_onnx(Net(), torch.randn(1, 1, 8, 8), tmp_path / "model.onnx")
    assert artifact.path.is_file()


def test_held_output_is_passed_on_after_success_and_dropped_after_failure(
    capfd: pytest.CaptureFixture[str],
) -> None:
    from search.measure.export_errors import native_output_held

    with native_output_held():
        os.write(1, b"kept out\n")
        os.write(2, b"kept err\n")
    with pytest.raises(ValueError), native_output_held():
        os.write(2, b"dropped\n")
        raise ValueError("the export failed")
    out, err = capfd.readouterr()
    assert out == "kept out\n" and err == "kept err\n"
