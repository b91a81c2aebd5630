"""Quantization-aware training: fake-quantize during fine-tuning what ONNX Runtime will quantize.

Post-training int8 rounds weights the network never saw rounded. QAT fine-tunes through the
rounding instead (straight-through gradients, ``torch.fake_quantize_*``), so the weights
settle where rounding costs least. What is simulated mirrors what the QDQ quantizer in
``techniques.quantization`` will do to the exported graph:

* weights: symmetric int8, per output channel or per tensor, scale ``max|w| / 127`` (or
  ``/ 64`` with ``reduce_range``, ONNX Runtime's 7-bit weights);
* inputs of every Conv2d and Linear: asymmetric uint8 or int8 per tensor, with the range
  tracked as an exponential moving average of batch min/max (zero always inside it).

Batch norm stays unfolded during training. Per-channel symmetric scales commute with the
per-channel factor that folding multiplies in, so weights on the grid before folding are on
the grid after it; per-tensor scales only approximate this. At the end the weights are
snapped to their grid and the wrappers removed: the export is a plain float model that the
static quantizer turns into QDQ int8 with the same grid. LoRA layers are quantized as their
merged weight, which is what is deployed.

torch.ao.quantization is deprecated in the installed torch; only the core fake-quantize
operators are used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from techniques.lora import LoRALayer
from techniques.surgery import replace_modules

EMA_MOMENTUM = 0.05


@dataclass(frozen=True)
class FakeQuantSpec:
    """The int8 format to simulate; the same fields as the static scheme it precedes."""

    per_channel: bool = True
    activation_type: str = "uint8"
    reduce_range: bool = False

    @property
    def weight_qmax(self) -> int:
        return 64 if self.reduce_range else 127

    @property
    def activation_bounds(self) -> tuple[int, int]:
        return (0, 255) if self.activation_type == "uint8" else (-128, 127)


def fake_quantize_weight(weight: torch.Tensor, spec: FakeQuantSpec) -> torch.Tensor:
    """``weight`` rounded to its symmetric int8 grid; gradients pass straight through."""
    qmax = spec.weight_qmax
    if spec.per_channel:
        absmax = weight.detach().flatten(1).abs().amax(dim=1)
        scale = (absmax / qmax).clamp_min(1e-12).float()
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -qmax, qmax)
    scale = (weight.detach().abs().amax() / qmax).clamp_min(1e-12).float().reshape(1)
    zero = torch.zeros(1, dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_tensor_affine(weight, scale, zero, -qmax, qmax)


class ActivationRange(nn.Module):
    """Tracks an input's range in training and fake-quantizes it with that range."""

    low: torch.Tensor
    high: torch.Tensor
    seen: torch.Tensor

    def __init__(self, spec: FakeQuantSpec) -> None:
        super().__init__()
        self.spec = spec
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                low, high = x.min().clamp_max(0), x.max().clamp_min(0)
                if not bool(self.seen):
                    self.low.copy_(low), self.high.copy_(high), self.seen.fill_(True)
                else:
                    self.low.lerp_(low, EMA_MOMENTUM), self.high.lerp_(high, EMA_MOMENTUM)
        if not bool(self.seen):
            return x
        qmin, qmax = self.spec.activation_bounds
        scale = ((self.high - self.low) / (qmax - qmin)).clamp_min(1e-8).float().reshape(1)
        zero = (qmin - torch.round(self.low / scale)).clamp(qmin, qmax).to(torch.int32)
        # float32 in: under CUDA's bf16 autocast the activations arrive in bf16
        return torch.fake_quantize_per_tensor_affine(x.float(), scale, zero.reshape(1), qmin, qmax)


class FakeQuantLayer(nn.Module):
    """A Conv2d, Linear or LoRALayer run with fake-quantized input and weight."""

    def __init__(self, layer: nn.Conv2d | nn.Linear | LoRALayer, spec: FakeQuantSpec) -> None:
        super().__init__()
        self.layer = layer
        self.spec = spec
        self.input_range = ActivationRange(spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_range(x)
        base = self.layer.base if isinstance(self.layer, LoRALayer) else self.layer
        weight = fake_quantize_weight(effective_weight(self.layer), self.spec)
        if isinstance(base, nn.Linear):
            return F.linear(x, weight, base.bias)
        assert isinstance(base, nn.Conv2d)
        return base._conv_forward(x, weight, base.bias)

    @torch.no_grad()
    def snapped(self) -> nn.Module:
        """The plain layer with its (merged) weight on the int8 grid it trained on."""
        layer = self.layer.merged() if isinstance(self.layer, LoRALayer) else self.layer
        assert isinstance(layer, nn.Conv2d | nn.Linear)
        layer.weight.copy_(fake_quantize_weight(layer.weight, self.spec))
        return layer


def effective_weight(layer: nn.Module) -> torch.Tensor:
    """The weight that will be deployed: a LoRA layer's base plus its update."""
    if isinstance(layer, LoRALayer):
        update = layer.up.weight.flatten(1) @ layer.down.weight.flatten(1)
        return layer.base.weight + update.reshape(layer.base.weight.shape)
    assert isinstance(layer, nn.Conv2d | nn.Linear)
    return layer.weight


def _quantizable(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d | nn.Linear | LoRALayer)


def insert_fake_quant(model: nn.Module, spec: FakeQuantSpec) -> nn.Module:
    """Wrap every Conv2d, Linear and LoRA layer in place (a LoRA layer's parts stay inside)."""

    def wrap(_name: str, module: nn.Module) -> nn.Module | None:
        if isinstance(module, FakeQuantLayer):
            return module
        return FakeQuantLayer(module, spec) if _quantizable(module) else None  # type: ignore[arg-type]

    return replace_modules(model, wrap)


def remove_fake_quant(model: nn.Module) -> nn.Module:
    """Replace every wrapper by its snapped plain layer, in place."""
    return replace_modules(
        model, lambda _, m: m.snapped() if isinstance(m, FakeQuantLayer) else None
    )
