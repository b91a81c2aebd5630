"""Exported graphs kept on disk, so another study or process refills rather than exports.

A trial's draft is exported through the TorchScript exporter (0.2-0.45 s on digits, the
largest part of a trial's own overhead after fine-tuning) unless a graph of its topology
was exported before (``search.measure.refill``). Within one study that is a third of the
drafts; but a user runs several searches of one model (another budget, another seed, a
resumed study, ``--workers`` processes side by side), and each sampled the same
topologies again and exported each anew: the ten studies of benchmark run 32 exported
263 graphs of 67 topologies. Here each template is also written under the cache folder,
keyed by its topology and everything else the exported graph depends on, and read back
by any later process.

Nothing is trusted more than a template made in this process: the refilled file is
checked against the PyTorch model on real inputs either way. An entry is one file, its
recipes as a line of JSON and then the graph, replaced atomically, so processes writing
the same entry at once leave one whole; an unreadable entry is a miss. The folder is
kept under a byte limit, least recently used out first.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from search.measure.onnx_runtime import OPSET
from search.measure.refill import Template, make_template

# Entries written by another layout of this file are not read: bump when it changes.
FORMAT = 1
FOLDER = "onnx-templates"
MAX_BYTES = 512 * 2**20


def template_key(topology: str, example_inputs: torch.Tensor, opset: int) -> str:
    """What an exported graph depends on besides the model's topology: the input's shape
    and type, the exporter (PyTorch's version) and the opset."""
    payload = [
        FORMAT,
        topology,
        list(example_inputs.shape[1:]),  # the batch axis is exported as dynamic
        str(example_inputs.dtype),
        torch.__version__,
        opset,
    ]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:24]


class TemplateStore:
    """Templates under ``folder``, at most ``max_bytes`` of them."""

    def __init__(self, folder: Path, *, max_bytes: int = MAX_BYTES) -> None:
        self.folder = folder
        self.max_bytes = max_bytes

    def load(self, key: str) -> Template | None:
        """The template stored under ``key``, or None (absent or unreadable)."""
        path = self._path(key)
        try:
            data = path.read_bytes()
            header, _, model_bytes = data.partition(b"\n")
            listed = json.loads(header)
            recipes = {
                str(name): tuple(tuple(str(part) for part in recipe) for recipe in found)
                for name, found in listed.items()
            }
            os.utime(path)  # recently used: among the last to go
        except (OSError, ValueError, AttributeError, TypeError):
            return None
        return Template(model_bytes, recipes) if model_bytes else None

    def save(self, key: str, template: Template) -> None:
        """Write ``template`` under ``key``, then keep the folder under its limit. A full
        disk or a read-only folder only loses the entry."""
        listed = {
            name: [list(recipe) for recipe in found] for name, found in template.recipes.items()
        }
        path = self._path(key)
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            partial.write_bytes(json.dumps(listed).encode() + b"\n" + template.model_bytes)
            partial.replace(path)  # atomic: a concurrent reader sees all of it or none
            self._trim()
        except OSError:
            partial.unlink(missing_ok=True)

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.template"

    def _trim(self) -> None:
        """Drop the least recently used entries while the folder holds more than its
        limit; the newest entry always stays."""
        entries = []
        for path in self.folder.glob("*.template"):
            try:
                status = path.stat()
            except OSError:  # removed by another process meanwhile
                continue
            entries.append((status.st_mtime, status.st_size, path))
        entries.sort(key=lambda entry: entry[0])
        held = sum(size for _, size, _ in entries)
        for _, size, path in entries[:-1]:
            if held <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            held -= size


class Templates:
    """Templates by topology for one process: the last few in memory, every one on disk
    where a store is given, and why a topology has none (then its files are exported).

    Args:
        store: the disk store shared with other processes; None: memory only.
        size, max_bytes: how many templates, and how many bytes of them, stay in memory
            (a large model keeps fewer).
    """

    def __init__(
        self, store: TemplateStore | None, *, size: int = 16, max_bytes: int = 256 * 2**20
    ) -> None:
        self.store = store
        self.size = size
        self.max_bytes = max_bytes
        self._held: OrderedDict[str, Template | str] = OrderedDict()

    def find(
        self, topology: str, example_inputs: torch.Tensor
    ) -> tuple[Template | str | None, bool]:
        """The template of ``topology`` (or why there is none, or None: never exported),
        and whether it came from the disk."""
        held = self._held.get(topology)
        if held is not None or self.store is None:
            return held, False
        stored = self.store.load(template_key(topology, example_inputs, OPSET))
        if stored is None:
            return None, False
        self._hold(topology, stored)
        return stored, True

    def keep(
        self, topology: str, model: nn.Module, onnx_bytes: bytes, example_inputs: torch.Tensor
    ) -> None:
        """The graph just exported from ``model`` as its topology's template, or why it
        cannot be one (kept in memory only: another process may do better)."""
        template, why = make_template(model, onnx_bytes, example_inputs)
        self._hold(topology, template if template is not None else why)
        if template is not None and self.store is not None:
            self.store.save(template_key(topology, example_inputs, OPSET), template)

    def _hold(self, topology: str, entry: Template | str) -> None:
        self._held[topology] = entry
        self._held.move_to_end(topology)

        def held_bytes() -> int:
            return sum(len(t.model_bytes) for t in self._held.values() if isinstance(t, Template))

        while len(self._held) > self.size or (
            len(self._held) > 1 and held_bytes() > self.max_bytes
        ):
            self._held.popitem(last=False)
