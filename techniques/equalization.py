"""Cross-layer equalization (Nagel et al., 2019, "Data-Free Quantization"), before int8 export.

Folding batch norm into a depthwise convolution leaves output channels whose weight ranges
differ by orders of magnitude; one int8 scale per tensor then rounds the small channels to
zero, and even per-channel scales meet the same spread in the activations between layers.
Equalization moves range between two consecutive layers without changing what they
compute: for a pair ``conv1 -> act -> conv2`` and a positive factor ``s_i`` per channel,

    W1[i] /= s_i,   b1[i] /= s_i,   W2[:, i] *= s_i          (i: conv1's output channel)

is exact when ``act(x / s) = act(x) / s``, which holds for ReLU, leaky ReLU, PReLU and
no activation. The paper's ``s_i = sqrt(r1_i * r2_i) / r2_i`` (``r1_i``: the range of
conv1's output channel i, ``r2_i``: the range of conv2's input channel i) gives both the
same range ``sqrt(r1_i * r2_i)``; pairs are swept until the factors settle, since a layer
in the middle of a chain belongs to two pairs.

ReLU6 (any clip at ``[0, c]``) is not positively homogeneous: ``min(x / s, c)`` clips at
``c * s`` in the old units. The paper replaces it by ReLU, which changes the network. Here
it is kept, and the factors are held where the clip stays exact on the calibration data:
with ``m_i`` the largest value channel i reaches before the clip (times a safety margin),
``clip(x / S_i) = clip(x) / S_i`` for every such input exactly when ``m_i <= c * min(1,
S_i)``. So a channel that the clip cuts (``m_i > c``) keeps ``S_i = 1``, and a channel
below the clip is scaled by at least ``m_i / c``. The clipping channels are not
equalized; in exchange the model, its graph (a Clip after a Conv, fused by ONNX Runtime)
and its float outputs stay the same, which the tests check to 1e-4. Since a held channel
keeps its range, no free channel is moved past the held ones' ranges in either layer:
that would only coarsen the per-tensor grid (on a MobileNetV2 with a wide depthwise
spread, letting them move made per-tensor rounding error worse, not better). Without
calibration data, pairs behind a clip are left alone.

Pairs are found by structure on a ``torch.fx`` trace: a Conv2d or Linear whose only user
is (through identities and at most one of those activations, each with one user) another
Conv2d or Linear, grouped and depthwise convolutions included. A model fx cannot trace
is returned folded only where it could be traced, which is nowhere: unchanged.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from search.measure.refill import folded_batch_norm

SWEEPS = 20  # the factors of a chain settle in a few; each sweep costs microseconds
# The clip is kept exact for inputs that push a channel up to this many times the largest
# value it reached on the calibration data (held-out data may go a little further).
CLIP_MARGIN = 1.5
MIN_RANGE = 1e-12  # a weight range below this is an emptied channel: not rescaled
LAYERS = (nn.Conv2d, nn.Linear)
Layer = nn.Conv2d | nn.Linear
PASS_THROUGH = (nn.Identity, nn.Dropout)  # identities in eval mode
HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU, nn.PReLU)
HOMOGENEOUS_FUNCTIONS = (F.relu, torch.relu, F.leaky_relu)


@dataclass(frozen=True)
class Pair:
    """Two consecutive layers, by module name, and the clip between them (None: none)."""

    first: str
    second: str
    clip: float | None = None


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every BatchNorm2d folded into the convolution before it.

    Only a batch norm whose convolution feeds nothing else is folded; it becomes an
    Identity and the convolution gains a bias. This is what the ONNX exporter does to an
    eval-mode model anyway, so the exported graph is the same.
    """
    model = copy.deepcopy(model).eval()
    graph = _trace(model)
    if graph is None:
        return model
    for node in graph.nodes:
        module = _module(model, node)
        if not isinstance(module, nn.BatchNorm2d) or not node.args:
            continue
        source = node.args[0]
        conv = _module(model, source) if isinstance(source, fx.Node) else None
        if isinstance(conv, nn.Conv2d) and len(source.users) == 1 and module.track_running_stats:
            _fold(conv, module)
            model.set_submodule(str(node.target), nn.Identity())
    return model


@torch.no_grad()
def _fold(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    weight, bias = folded_batch_norm(conv, norm)
    conv.weight.copy_(weight)
    conv.bias = nn.Parameter(bias)


def find_pairs(model: nn.Module) -> list[Pair]:
    """Consecutive layer pairs that can be equalized, in execution order (see module doc)."""
    graph = _trace(model)
    if graph is None:
        return []
    pairs = []
    for node in graph.nodes:
        if not isinstance(_module(model, node), LAYERS):
            continue
        clip: float | None = None
        current, activations = node, 0
        while len(current.users) == 1:
            (current,) = current.users
            module = _module(model, current)
            if isinstance(module, LAYERS):
                pairs.append(Pair(str(node.target), str(current.target), clip))
                break
            if isinstance(module, PASS_THROUGH):
                continue
            bound = _clip_bound(module)
            homogeneous = isinstance(module, HOMOGENEOUS) or (
                current.op == "call_function" and current.target in HOMOGENEOUS_FUNCTIONS
            )
            if activations == 0 and (homogeneous or bound is not None):
                activations, clip = 1, bound
                continue
            break
    return [pair for pair in pairs if _compatible(model, pair)]


def _clip_bound(module: nn.Module | None) -> float | None:
    """The upper bound of a clip at [0, c] (ReLU6 is one), else None."""
    if isinstance(module, nn.Hardtanh) and module.min_val == 0.0 and module.max_val > 0:
        return float(module.max_val)
    return None


def _layer(model: nn.Module, name: str) -> Layer:
    layer = model.get_submodule(name)
    assert isinstance(layer, LAYERS)
    return layer


def _compatible(model: nn.Module, pair: Pair) -> bool:
    first, second = _layer(model, pair.first), _layer(model, pair.second)
    out_channels = first.weight.shape[0]
    if isinstance(second, nn.Conv2d):
        return isinstance(first, nn.Conv2d) and second.in_channels == out_channels
    # a Linear after a convolution would mix the last spatial axis, not channels
    return isinstance(first, nn.Linear) and bool(second.in_features == out_channels)


@torch.no_grad()
def equalize(
    model: nn.Module,
    calibration: Iterable[torch.Tensor] = (),
    *,
    sweeps: int = SWEEPS,
    margin: float = CLIP_MARGIN,
) -> tuple[nn.Module, list[Pair]]:
    """A copy of ``model``, batch norms folded and consecutive layers equalized.

    Args:
        calibration: input batches; needed only to equalize pairs with a clip between.
        sweeps: passes over the pairs (a chain's factors settle within a few).
        margin: how far past its calibration maximum a clipped channel stays exact.

    Returns:
        The equalized copy, and the pairs it rescaled.
    """
    model = fold_batch_norms(model)
    pairs = find_pairs(model)
    peaks = _peaks(model, [p for p in pairs if p.clip is not None], calibration)
    pairs = [p for p in pairs if p.clip is None or p.first in peaks]
    totals = {pair.first: torch.ones(_layer(model, pair.first).weight.shape[0]) for pair in pairs}
    for _ in range(sweeps):
        for pair in pairs:
            first, second = _layer(model, pair.first), _layer(model, pair.second)
            r1 = first.weight.detach().flatten(1).abs().amax(dim=1)
            r2 = _input_ranges(second)
            wanted = torch.where(
                (r1 > MIN_RANGE) & (r2 > MIN_RANGE), torch.sqrt(r1 / r2.clamp_min(MIN_RANGE)), 1.0
            )
            total = totals[pair.first] * wanted
            if pair.clip is not None:
                held = peaks[pair.first] * margin > pair.clip
                total = _within_held_ranges(total, totals[pair.first], r1, r2, held)
                total = _exact_under_clip(total, peaks[pair.first] * margin, pair.clip)
            step = total / totals[pair.first]
            if not bool(torch.isfinite(step).all()):
                continue
            _rescale(first, second, step)
            totals[pair.first] = total
    return model, pairs


def _exact_under_clip(total: torch.Tensor, peak: torch.Tensor, clip: float) -> torch.Tensor:
    """The nearest factors with ``peak <= clip * min(1, total)``: the clip stays exact."""
    return torch.where(peak > clip, torch.ones_like(total), total.maximum(peak / clip))


def _within_held_ranges(
    total: torch.Tensor,
    current: torch.Tensor,
    r1: torch.Tensor,
    r2: torch.Tensor,
    held: torch.Tensor,
) -> torch.Tensor:
    """Factors that give no free channel a larger range than the held channels have.

    The held (clipped) channels keep their ranges, and with them each layer's largest
    range, so one int8 step per tensor; a free channel moved past them would only make
    that step coarser for every other channel.
    """
    if not bool(held.any()) or bool(held.all()):
        return total
    step = total / current  # r1 and r2 are the ranges at ``current``
    first_cap = r1[held].max()
    second_cap = r2[held].max()
    low = r1 / first_cap  # step >= low keeps r1 / step <= first_cap
    high = second_cap / r2.clamp_min(MIN_RANGE)  # step <= high keeps r2 * step <= second_cap
    bounded = torch.where(low <= high, step.clamp(min=low, max=high), step)
    return torch.where(held, total, current * bounded)


def _input_ranges(layer: Layer) -> torch.Tensor:
    """max |W| per input channel of a Conv2d (any groups) or Linear: shape (in,)."""
    weight = layer.weight.detach()
    if isinstance(layer, nn.Linear):
        return weight.abs().amax(dim=0)
    groups = layer.groups
    out_channels, per_group = weight.shape[:2]
    grouped = weight.abs().reshape(groups, out_channels // groups, per_group, -1)
    return grouped.amax(dim=(1, 3)).reshape(-1)  # (groups * per_group,) = (in,)


def _rescale(first: Layer, second: Layer, step: torch.Tensor) -> None:
    """first's output channel i divided by step_i, second's input channel i multiplied."""
    first.weight.div_(step.reshape(-1, *([1] * (first.weight.dim() - 1))))
    if first.bias is not None:
        first.bias.div_(step)
    weight = second.weight
    if isinstance(second, nn.Linear):
        weight.mul_(step.reshape(1, -1))
        return
    groups = second.groups
    out_channels, per_group = weight.shape[:2]
    view = weight.view(groups, out_channels // groups, per_group, *weight.shape[2:])
    view.mul_(step.reshape(groups, 1, per_group, *([1] * (weight.dim() - 2))))


def _peaks(
    model: nn.Module, pairs: list[Pair], calibration: Iterable[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The largest value each output channel of each pair's first layer reaches: (C,)."""
    if not pairs:
        return {}
    peaks: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            channels = output.transpose(0, 1).flatten(1).amax(dim=1)
            peaks[name] = channels if name not in peaks else peaks[name].maximum(channels)

        return hook

    hooks = [model.get_submodule(p.first).register_forward_hook(keep(p.first)) for p in pairs]
    try:
        for inputs in calibration:
            model(inputs)
    finally:
        for handle in hooks:
            handle.remove()
    return peaks


def _trace(model: nn.Module) -> fx.Graph | None:
    try:
        return fx.symbolic_trace(model).graph
    except Exception:
        return None


def _module(model: nn.Module, node: fx.Node) -> nn.Module | None:
    if node.op != "call_module":
        return None
    return model.get_submodule(str(node.target))


def weight_range_spread(model: nn.Module) -> float:
    """The largest ratio of largest to smallest output-channel range of any layer (a
    diagnostic: per-tensor int8 suffers when it is large)."""
    worst = 1.0
    for module in model.modules():
        if isinstance(module, LAYERS):
            ranges = module.weight.detach().flatten(1).abs().amax(dim=1)
            ranges = ranges[ranges > MIN_RANGE]
            if len(ranges):
                worst = max(worst, float(ranges.max() / ranges.min()))
    return worst if math.isfinite(worst) else float("inf")
