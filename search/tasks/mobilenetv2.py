"""A MobileNetV2-style network written out, so no torchvision is needed.

The blocks follow Sandler et al. (2018): a 1x1 expansion to ``expand_ratio`` times the
input width, a 3x3 depthwise convolution, and a linear 1x1 projection, each with batch
norm; ReLU6 after the first two. The expansion convolution is kept as its own named
module (``block.expand``) so that the expand-ratio lever can find and narrow it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

# (expand_ratio, out_channels, repeats, first_stride) per stage; the CIFAR-style layout,
# with the first stride 1 because the input is only 32x32.
CIFAR_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` without losing more than 10%.

    Channel counts that are multiples of 8 run faster in ONNX Runtime's kernels.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def conv_bn_relu6(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    padding = (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise (3x3) -> project (1x1, linear), with a skip when shapes match."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, expand_ratio: int
    ) -> None:
        super().__init__()
        hidden = round(in_channels * expand_ratio)
        self.expand_ratio = expand_ratio
        self.use_residual = stride == 1 and in_channels == out_channels
        self.expand: nn.Module = (
            conv_bn_relu6(in_channels, hidden, 1) if expand_ratio != 1 else nn.Identity()
        )
        self.depthwise = conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden)
        self.project = nn.Sequential(
            nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.use_residual else out


@dataclass(frozen=True)
class MobileNetV2Config:
    """Shape of a MobileNetV2-style network; hashed to key the cached baseline."""

    in_channels: int = 1
    num_classes: int = 10
    width_mult: float = 1.0
    stem_channels: int = 32
    last_channels: int = 1280
    stages: tuple[tuple[int, int, int, int], ...] = CIFAR_STAGES
    dropout: float = 0.2


class MobileNetV2(nn.Module):
    """MobileNetV2 with a width multiplier; ``features`` then ``classifier``."""

    def __init__(self, config: MobileNetV2Config) -> None:
        super().__init__()
        width = config.width_mult
        channels = make_divisible(config.stem_channels * width)
        layers: list[nn.Module] = [conv_bn_relu6(config.in_channels, channels, 3, 1)]
        for expand_ratio, out, repeats, first_stride in config.stages:
            out_channels = make_divisible(out * width)
            for index in range(repeats):
                stride = first_stride if index == 0 else 1
                layers.append(InvertedResidual(channels, out_channels, stride, expand_ratio))
                channels = out_channels
        last = make_divisible(config.last_channels * max(1.0, width))
        if config.last_channels < 1280:
            last = make_divisible(config.last_channels * width)
        layers.append(conv_bn_relu6(channels, last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Dropout(config.dropout), nn.Linear(last, config.num_classes)
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def inverted_residual_blocks(model: nn.Module) -> Sequence[InvertedResidual]:
    """All inverted residual blocks of ``model``, in forward order."""
    return [m for m in model.modules() if isinstance(m, InvertedResidual)]
