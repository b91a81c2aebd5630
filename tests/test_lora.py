import torch
from torch import nn

from search.measure.onnx_runtime import export_onnx
from search.measure.runtimes import evaluate
from search.tasks.mobilenetv2 import MobileNetV2, MobileNetV2Config
from search.train.loop import fit
from techniques.lora import LoRALayer, add_adapters, merge_adapters


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return MobileNetV2(MobileNetV2Config(width_mult=0.5, last_channels=128)).eval()


def test_merged_equals_unmerged_within_1e_5() -> None:
    model, x = add_adapters(small_net(), rank=4).eval(), torch.randn(3, 1, 32, 32)
    for module in model.modules():
        if isinstance(module, LoRALayer):
            nn.init.normal_(module.up.weight, std=0.02)  # a non-trivial update
    with torch.no_grad():
        unmerged = model(x)
        merged_model = merge_adapters(model)
        merged = merged_model(x)
    assert not any(isinstance(m, LoRALayer) for m in merged_model.modules())
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)


def test_adapters_start_as_the_identity_and_only_they_and_norms_train() -> None:
    base, x = small_net(), torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        expected = base(x)
    model = add_adapters(small_net(), rank=2).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".down." in n or ".up." in n or _is_norm(model, n) for n in trainable)
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise and not any(isinstance(m, LoRALayer) for m in depthwise)


def _is_norm(model: nn.Module, parameter_name: str) -> bool:
    module = model.get_submodule(parameter_name.rsplit(".", 1)[0])
    return isinstance(module, nn.BatchNorm2d)


def test_lora_fine_tuning_trains_and_exports_a_plain_model(tiny_task, tmp_path) -> None:
    model = add_adapters(tiny_task.build_model(), rank=4)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    fit(model, tiny_task.data("train"), epochs=1, lr=0.01, loss_fn=tiny_task.loss)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    plain = merge_adapters(model).eval()
    artifact = export_onnx(plain, tiny_task.example_inputs(1), tmp_path / "m.onnx")
    assert evaluate(artifact, tiny_task.data("val"), tiny_task.metric) > 0.8
