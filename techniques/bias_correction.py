"""Empirical bias correction (Nagel et al., 2019, section 4.2), before int8 export.

Rounding a layer's weights to int8 is not zero-mean per output channel: ``E[W_q x] -
E[W x] = (W_q - W) E[x]`` is a systematic shift of each output channel, and behind a
ReLU a shift is not averaged away; layer after layer it adds up. The correction measures
it on calibration data and subtracts it from the bias, so the quantized layer's outputs
have the float layer's means again.

Measured, not derived from batch norm statistics: the calibration batch goes once through
the float model (each Conv2d and Linear output's per-channel mean) and once through a copy
whose weights are rounded to the grid ONNX Runtime will use (symmetric int8, per output
channel or per tensor, 7-bit with ``reduce_range``: ``techniques.fake_quant``), layer by
layer in execution order. Each layer's shift is measured on inputs that already carry the
corrected, quantized layers before it (the paper's empirical variant), and removed from
the outputs the next layers see. The returned model keeps its float weights (ONNX
Runtime rounds them to the same grid) and takes the corrected biases; a layer without a
bias gains one. Activation rounding is not simulated: its error is close to zero-mean.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Iterable

import torch
from torch import nn

from techniques.equalization import Layer, fold_batch_norms
from techniques.fake_quant import FakeQuantSpec, fake_quantize_weight

LAYERS = (nn.Conv2d, nn.Linear)
SAMPLES = 128  # calibration inputs, in one batch: the hooks correct within a single pass


@torch.no_grad()
def correct_biases(
    model: nn.Module,
    calibration: Iterable[torch.Tensor],
    *,
    per_channel: bool,
    reduce_range: bool,
    skip: Collection[str] = (),
    samples: int = SAMPLES,
) -> nn.Module:
    """A copy of ``model`` (batch norms folded) whose biases undo int8 weight rounding's shift.

    Args:
        calibration: input batches; the first ``samples`` inputs are used.
        per_channel, reduce_range: the weight grid ONNX Runtime's static quantizer will use.
        skip: names of layers that stay in float (not corrected, not rounded).
    """
    model = fold_batch_norms(model)
    inputs = _first(calibration, samples)
    layers: dict[str, Layer] = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, LAYERS) and name not in skip
    }
    if inputs is None or not layers:
        return model
    float_means = _output_means(model, layers, inputs)
    spec = FakeQuantSpec(per_channel=per_channel, reduce_range=reduce_range)
    quantized = _rounded_copy(model, layers, spec)
    shifts: dict[str, torch.Tensor] = {}

    def correct(name: str):
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
            shift = _channel_means(output) - float_means[name]
            shifts[name] = shift
            return output - _broadcast(shift, output)

        return hook

    hooks = [quantized.get_submodule(n).register_forward_hook(correct(n)) for n in layers]
    try:
        quantized(inputs)
    finally:
        for handle in hooks:
            handle.remove()
    for name, layer in layers.items():
        if name not in shifts or not bool(torch.isfinite(shifts[name]).all()):
            continue
        bias = layer.bias if layer.bias is not None else torch.zeros_like(shifts[name])
        layer.bias = nn.Parameter(bias - shifts[name])
    return model


def round_weights(model: nn.Module, *, per_channel: bool, reduce_range: bool) -> nn.Module:
    """A copy of ``model`` with every Conv2d and Linear weight on its int8 grid (for tests
    and diagnostics: the float model as ONNX Runtime's int8 weights make it)."""
    model = fold_batch_norms(model)
    layers: dict[str, Layer] = {n: m for n, m in model.named_modules() if isinstance(m, LAYERS)}
    return _rounded_copy(model, layers, FakeQuantSpec(per_channel, reduce_range=reduce_range))


def _rounded_copy(model: nn.Module, layers: dict[str, Layer], spec: FakeQuantSpec) -> nn.Module:
    rounded = copy.deepcopy(model)
    for name in layers:
        layer = rounded.get_submodule(name)
        assert isinstance(layer, LAYERS)
        layer.weight.copy_(fake_quantize_weight(layer.weight, spec))
    return rounded


def _output_means(
    model: nn.Module, layers: dict[str, Layer], inputs: torch.Tensor
) -> dict[str, torch.Tensor]:
    means: dict[str, torch.Tensor] = {}
    hooks = [
        layer.register_forward_hook(
            lambda _m, _i, out, name=name: means.__setitem__(name, _channel_means(out))
        )
        for name, layer in layers.items()
    ]
    try:
        model(inputs)
    finally:
        for handle in hooks:
            handle.remove()
    return means


def _channel_means(output: torch.Tensor) -> torch.Tensor:
    """Mean over every axis but the channel one (1 for a convolution, last for a Linear)."""
    if output.dim() == 4:
        return output.mean(dim=(0, 2, 3))
    return output.reshape(-1, output.shape[-1]).mean(dim=0)


def _broadcast(shift: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    return shift.reshape(1, -1, 1, 1) if output.dim() == 4 else shift


def _first(batches: Iterable[torch.Tensor], samples: int) -> torch.Tensor | None:
    taken, count = [], 0
    for batch in batches:
        taken.append(batch[: samples - count])
        count += len(taken[-1])
        if count >= samples:
            break
    return torch.cat(taken) if taken else None
