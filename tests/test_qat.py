"""Quantization-aware training: fake quantization in the fine-tune, QDQ int8 in the export."""

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from search.measure.onnx_runtime import export_onnx, open_session
from search.measure.runtimes import evaluate
from search.train.loop import Recipe, fit
from techniques import Context
from techniques.fake_quant import (
    FakeQuantLayer,
    FakeQuantSpec,
    fake_quantize_weight,
    insert_fake_quant,
    remove_fake_quant,
)
from techniques.lora import add_adapters, merge_adapters
from techniques.quantization import Quantization, QuantParams, quantize

SPEC = FakeQuantSpec(per_channel=True, activation_type="uint8", reduce_range=True)


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("reduce_range", [True, False])
def test_fake_quantized_weights_lie_on_the_symmetric_int8_grid(per_channel, reduce_range) -> None:
    torch.manual_seed(0)
    weight = torch.randn(6, 4, 3, 3) * torch.linspace(0.1, 3, 6)[:, None, None, None]
    spec = FakeQuantSpec(per_channel=per_channel, reduce_range=reduce_range)
    quantized = fake_quantize_weight(weight, spec)
    absmax = weight.flatten(1).abs().amax(1, keepdim=True) if per_channel else weight.abs().max()
    steps = quantized.flatten(1) / (absmax / spec.weight_qmax)
    torch.testing.assert_close(steps, steps.round(), atol=1e-3, rtol=0)
    assert steps.abs().max() <= spec.weight_qmax + 1e-3
    assert not torch.equal(quantized, weight)


def test_gradients_pass_straight_through_to_weights_and_lora_adapters(tiny_task) -> None:
    model = add_adapters(tiny_task.build_model(), rank=2)
    insert_fake_quant(model, SPEC)
    wrapped = [m for m in model.modules() if isinstance(m, FakeQuantLayer)]
    assert wrapped and not any(isinstance(m.layer, FakeQuantLayer) for m in wrapped)
    model.train()
    inputs, targets = next(iter(tiny_task.data("train")))
    tiny_task.loss(model(inputs), targets).backward()
    # up starts at zero, so it is the adapter half with a gradient on the first step.
    lora_up = [p for n, p in model.named_parameters() if n.endswith("up.weight")]
    assert lora_up and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_up)


def test_removing_fake_quant_leaves_plain_layers_with_snapped_weights(tiny_task) -> None:
    model = insert_fake_quant(tiny_task.build_model(), SPEC)
    model.train()
    model(next(iter(tiny_task.data("train")))[0])  # observe one batch's ranges
    plain = merge_adapters(remove_fake_quant(model))
    assert not any(isinstance(m, FakeQuantLayer) for m in plain.modules())
    head = [m for m in plain.modules() if isinstance(m, nn.Linear)][-1]
    torch.testing.assert_close(head.weight, fake_quantize_weight(head.weight, SPEC))


def test_qat_exports_a_qdq_graph_that_onnx_runtime_runs_on_the_trained_grid(
    tiny_task, tmp_path
) -> None:
    """The acceptance test: fake-quant fine-tune -> export -> QDQ int8 that ORT runs.

    And the grid QAT trained on is the one deployed: the classifier's int8 weights times
    their scales reproduce the snapped weights exactly.
    """
    ctx = Context(tiny_task, "cpu", tmp_path, tiny_task.build_model())
    lever = Quantization()
    params = QuantParams("int8-qat", per_channel=True, reduce_range=True)
    assert lever.fine_tunes(params)
    recipe = lever.configure(Recipe(epochs=1, lr=0.01), params, ctx)
    model = tiny_task.build_model()
    for step in recipe.prepare:
        model = step(model)
    fit(model, tiny_task.data("train"), epochs=1, lr=0.01, loss_fn=tiny_task.loss)
    for step in recipe.finish:
        model = step(model)
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1].weight.detach()

    fp32 = export_onnx(model, tiny_task.example_inputs(1), tmp_path / "qat.onnx")
    int8 = lever.apply(fp32, params, ctx)
    graph = onnx.load(str(int8.path)).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    accuracy = evaluate(int8, tiny_task.data("val"), tiny_task.metric, threads=2)
    assert accuracy > 0.85
    x = tiny_task.example_inputs(2).numpy()
    (logits,) = open_session(int8.path).run(None, {"input": x})
    assert logits.shape == (2, 10) and np.isfinite(logits).all()

    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    int8_weights = [
        node for node in graph.node
        if node.op_type == "DequantizeLinear"
        and initializers.get(node.input[0], np.zeros(0)).shape == tuple(head.shape)
    ]  # fmt: skip
    assert len(int8_weights) == 1
    q, scale = (initializers[name] for name in int8_weights[0].input[:2])
    deployed = torch.from_numpy(q.astype(np.float32) * scale[:, None])
    torch.testing.assert_close(deployed, head, atol=1e-6, rtol=1e-5)


def test_qat_scheme_is_static_qdq_for_the_quantizer(tiny_task, tmp_path) -> None:
    fp32 = export_onnx(tiny_task.build_model(), tiny_task.example_inputs(1), tmp_path / "m.onnx")
    params = QuantParams("int8-qat", per_channel=True, reduce_range=True)
    assert params.label == "int8qat-pc-u8-r7-minmax"
    quantized = quantize(fp32, params, calibration=tiny_task.data("train"))
    assert quantized.scheme == "int8-qat"
    assert quantized.size_bytes < 0.6 * fp32.size_bytes


@pytest.mark.parametrize("activation_type", ["uint8", "int8"])
def test_per_tensor_qat_through_lora_on_a_heavily_pruned_model_keeps_a_finite_loss(
    tiny_task, activation_type
) -> None:
    """The case issue 32 saw fail with "loss became nan in epoch 0" (QAT per tensor, 70%
    pruned, LoRA, distilled): it must train, and the guard must stay armed."""
    from search.train.loop import Distillation
    from techniques.pruning import prune_channels

    torch.manual_seed(0)
    base = tiny_task.build_model()
    model = prune_channels(base, tiny_task.example_inputs(1), ratio=0.7, scope="global")
    model = add_adapters(model, 8)
    spec = FakeQuantSpec(per_channel=False, activation_type=activation_type, reduce_range=True)
    model = insert_fake_quant(model, spec)
    losses: list[float] = []
    fit(model, tiny_task.data("train"), epochs=2, lr=0.05, loss_fn=tiny_task.loss,
        distillation=Distillation(base, temperature=8.0, alpha=0.9),
        on_epoch=lambda _epoch, loss: losses.append(loss))  # fmt: skip
    assert len(losses) == 2 and all(np.isfinite(losses))
    model = merge_adapters(remove_fake_quant(model))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_nan_guard_still_stops_a_diverging_fine_tune(tiny_task) -> None:
    model = insert_fake_quant(tiny_task.build_model(), FakeQuantSpec(per_channel=False))
    with pytest.raises(FloatingPointError, match="loss became nan in epoch 0"):
        fit(model, tiny_task.data("train"), epochs=1, lr=0.05,
            loss_fn=lambda outputs, targets: outputs.sum() * float("nan"))  # fmt: skip
