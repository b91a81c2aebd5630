"""Empirical bias correction: the quantized layer's output shift, measured and removed."""

import itertools

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from search.measure.artifact import INPUT_NAME
from search.measure.onnx_runtime import export_onnx
from techniques.bias_correction import correct_biases, round_weights
from techniques.quantization import QuantParams, quantize


def _layer_with_a_rounding_shift() -> nn.Module:
    """One convolution whose weights one per-tensor int8 grid rounds with a bias: most
    of each filter is small, its range set by one large weight per filter."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.rand_like(conv.weight) * 0.004 + 0.001)  # all round to 0 or 1
        conv.weight[:, 0, 0, 0] = torch.linspace(0.2, 0.5, 16)
    return nn.Sequential(conv).eval()


def _relu_inputs(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(count, 8, 6, 6, generator=generator) + 0.5)  # E[x] > 0


def _mean_shift(candidate: nn.Module, reference: nn.Module, inputs: torch.Tensor) -> float:
    """Mean over channels of |E[candidate] - E[reference]| per output channel."""
    difference = candidate(inputs) - reference(inputs)
    return float(difference.mean(dim=(0, 2, 3)).abs().mean())


@torch.no_grad()
def test_it_removes_a_quantized_layers_mean_output_error_on_held_out_inputs() -> None:
    model = _layer_with_a_rounding_shift()
    corrected = correct_biases(
        model, [_relu_inputs(64, seed=0)], per_channel=False, reduce_range=True
    )
    held_out = _relu_inputs(64, seed=1)
    before = round_weights(model, per_channel=False, reduce_range=True)
    after = round_weights(corrected, per_channel=False, reduce_range=True)
    shift_before = _mean_shift(before, model, held_out)
    assert shift_before > 1e-3  # the rounding does shift the outputs
    assert _mean_shift(after, model, held_out) < 0.2 * shift_before
    # and the whole error, not only its mean, goes down
    error = lambda m: float((m(held_out) - model(held_out)).abs().mean())  # noqa: E731
    assert error(after) < error(before)


@torch.no_grad()
def test_it_reduces_the_error_of_the_file_onnx_runtime_quantizes(tmp_path) -> None:
    """The same, measured on the deployed file: ONNX Runtime's own int8 grid."""
    model = _layer_with_a_rounding_shift()
    calibration = [_relu_inputs(64, seed=0)]
    corrected = correct_biases(model, calibration, per_channel=False, reduce_range=True)
    held_out = _relu_inputs(64, seed=1)
    expected = model(held_out).numpy()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(calibration[0], torch.zeros(64)), batch_size=64
    )
    params = QuantParams("int8-static", per_channel=False, reduce_range=True)

    def shift(candidate: nn.Module, name: str) -> float:
        artifact = export_onnx(candidate, held_out[:1], tmp_path / f"{name}.onnx")
        quantized = quantize(artifact, params, calibration=loader, samples=64)
        session = ort.InferenceSession(str(quantized.path), providers=["CPUExecutionProvider"])
        outputs = session.run(None, {INPUT_NAME: held_out.numpy()})[0]
        return float(np.abs((outputs - expected).mean(axis=(0, 2, 3))).mean())

    assert shift(corrected, "corrected") < 0.5 * shift(model, "plain")


@torch.no_grad()
def test_correction_follows_the_network_and_leaves_float_outputs_close(tiny_task) -> None:
    model = tiny_task.build_model()
    batches = [x for x, _ in itertools.islice(tiny_task.data("train"), 2)]
    corrected = correct_biases(model, batches, per_channel=True, reduce_range=True)
    held_out = next(iter(tiny_task.data("val")))[0]
    reference = model(held_out)
    plain = round_weights(model, per_channel=True, reduce_range=True)(held_out)
    fixed = round_weights(corrected, per_channel=True, reduce_range=True)(held_out)
    assert float((fixed - reference).abs().mean()) < float((plain - reference).abs().mean())
    # the correction is small: the float model itself moves by less than the rounding did
    drift = float((corrected(held_out) - reference).abs().mean())
    assert drift < float((plain - reference).abs().mean()) * 2


@torch.no_grad()
def test_layers_kept_in_float_are_not_corrected() -> None:
    model = _layer_with_a_rounding_shift()
    corrected = correct_biases(
        model, [_relu_inputs(32, seed=0)], per_channel=False, reduce_range=True, skip={"0"}
    )
    assert torch.equal(corrected[0].bias, model[0].bias)
