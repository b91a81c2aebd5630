"""Exported graphs on disk: read back whole by another process, refilled and checked there,
unreadable entries missed, the folder kept under its limit.

The network is written here as a model library writes it (its own attribute names,
hard-swish, a depthwise convolution), never with the project's classes.
"""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import torch
from torch import nn

from search.core.objective import REFILLED_FROM_DISK
from search.core.runner import run_search
from search.measure.onnx_runtime import OPSET, export_onnx
from search.measure.refill import disagreement, make_template, refill, topology_key
from search.measure.template_store import FOLDER, Templates, TemplateStore, template_key
from tests.test_end_to_end import config_for, finished


class ZooNet(nn.Module):
    def __init__(self, hidden: int = 24) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.act = nn.Hardswish()
        self.expand = nn.Conv2d(8, hidden, 1, bias=False)
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False)
        self.dw_bn = nn.BatchNorm2d(hidden)
        self.project = nn.Conv2d(hidden, 8, 1)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem_bn(self.stem(x)))
        x = x + self.project(self.act(self.dw_bn(self.dw(self.expand(x)))))
        return self.head(x.mean((2, 3)))


def _trained_like(model: nn.Module, seed: int) -> nn.Module:
    """``model`` with random weights and running statistics, as after some training."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
    return model.eval()


def _template(tmp_path: Path, model: nn.Module, example: torch.Tensor):
    exported = export_onnx(model, example, tmp_path / "exported.onnx")
    template, why = make_template(model, exported.path.read_bytes(), example)
    assert template is not None, why
    return template


def test_a_stored_template_is_read_back_whole_and_refills_another_width(tmp_path) -> None:
    example = torch.randn(1, 1, 8, 8)
    template = _template(tmp_path, _trained_like(ZooNet(24), 0), example)
    key = template_key(topology_key(ZooNet(24)), example, OPSET)
    TemplateStore(tmp_path / "store").save(key, template)

    loaded = TemplateStore(tmp_path / "store").load(key)  # another process, same folder
    assert loaded == template
    narrower = _trained_like(ZooNet(16), 1)  # pruned: same topology, other shapes
    assert topology_key(narrower) == topology_key(ZooNet(24))
    artifact, why = refill(loaded, narrower, tmp_path / "refilled.onnx")
    assert artifact is not None, why
    assert disagreement(artifact, narrower, torch.randn(4, 1, 8, 8)) == ""


def test_the_key_holds_what_the_graph_depends_on_besides_the_topology() -> None:
    topology = topology_key(ZooNet())
    base = template_key(topology, torch.randn(1, 1, 8, 8), OPSET)
    assert template_key(topology, torch.randn(3, 1, 8, 8), OPSET) == base  # batch is dynamic
    assert template_key(topology, torch.randn(1, 1, 16, 16), OPSET) != base
    assert template_key(topology, torch.randn(1, 1, 8, 8).double(), OPSET) != base
    assert template_key(topology, torch.randn(1, 1, 8, 8), OPSET + 1) != base
    assert template_key(topology_key(ZooNet()) + "x", torch.randn(1, 1, 8, 8), OPSET) != base


def test_absent_or_unreadable_entries_are_misses(tmp_path) -> None:
    store = TemplateStore(tmp_path)
    assert store.load("absent") is None
    (tmp_path / "torn.template").write_bytes(b'{"a": [["tensor"')  # cut short
    assert store.load("torn") is None
    (tmp_path / "empty.template").write_bytes(b"{}\n")  # recipes, no graph
    assert store.load("empty") is None
    (tmp_path / "list.template").write_bytes(b"[1, 2]\nonnx")
    assert store.load("list") is None


def test_the_folder_keeps_under_its_limit_least_recently_used_out_first(tmp_path) -> None:
    example = torch.randn(1, 1, 8, 8)
    template = _template(tmp_path, _trained_like(ZooNet(), 0), example)
    entry_bytes = len(template.model_bytes) + 1000
    store = TemplateStore(tmp_path / "store", max_bytes=int(2.5 * entry_bytes))
    store.save("a", template)
    store.save("b", template)
    for age, key in ((300, "a"), (200, "b")):  # "a" older than "b"
        path = tmp_path / "store" / f"{key}.template"
        os.utime(path, (path.stat().st_atime - age, path.stat().st_mtime - age))
    assert store.load("a") is not None  # read: now the most recently used
    store.save("c", template)  # three entries over a limit of two and a half
    kept = sorted(p.stem for p in (tmp_path / "store").glob("*.template"))
    assert kept == ["a", "c"]
    assert not list((tmp_path / "store").glob("*.tmp"))


def test_templates_come_from_memory_first_then_from_the_disk(tmp_path) -> None:
    example = torch.randn(1, 1, 8, 8)
    model = _trained_like(ZooNet(), 0)
    exported = export_onnx(model, example, tmp_path / "exported.onnx")
    topology = topology_key(model)
    first = Templates(TemplateStore(tmp_path / "store"))
    assert first.find(topology, example) == (None, False)
    first.keep(topology, model, exported.path.read_bytes(), example)
    held, from_disk = first.find(topology, example)
    assert held is not None and not from_disk

    later = Templates(TemplateStore(tmp_path / "store"))  # another process
    stored, from_disk = later.find(topology, example)
    assert stored == held and from_disk
    assert later.find(topology, example) == (stored, False)  # held in memory since
    assert Templates(None).find(topology, example) == (None, False)


def test_a_second_search_of_the_model_refills_the_graphs_the_first_exported(
    home, tiny_task
) -> None:
    config = config_for(home, trials=1)
    run_search(config, task=tiny_task)
    assert list((config.cache_dir / FOLDER).glob("*.template"))

    again = config_for(home, trials=1, study_name="another budget")
    result = run_search(again, task=tiny_task)
    study = optuna.load_study(study_name=result.study_name, storage=again.storage_url)
    baseline = next(t for t in finished(study) if t.user_attrs.get("baseline"))
    assert baseline.user_attrs["draft_file"] == REFILLED_FROM_DISK
