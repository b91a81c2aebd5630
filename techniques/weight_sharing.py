"""Weight sharing (Han et al., Deep Compression): each layer's weights clustered to 2^b values.

Every Conv/Gemm/MatMul weight of the exported ONNX file is replaced by a codebook of
``2**share.bits`` float32 centroids (k-means, scikit-learn, linear initialisation between
the layer's smallest and largest weight, as the paper found best) and one index per
weight. The file stores the indices as uint8 and rebuilds the weight with ``Cast`` and
``Gather`` in the graph, which ONNX Runtime folds into a dense weight when it loads the
file: the arithmetic, and so the latency, is the float model's.

Honest about the size: ONNX has no packed sub-byte integer that every runtime gathers
from, so an index takes a byte whatever ``bits`` is: the file is about 4x smaller than
float32 at any ``bits`` up to 8, and what fewer bits buy shows in the compressed size
(``search.measure.compressibility``: gzip of the file), not in the file. No fine-tuning of the
centroids: the clustering error is what the accuracy measures.

Not combined with int8 (the quantizer would find no weight initializers to quantize), and
off the search unless ``share.searched`` is true: ``search share`` sets it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from search.measure.artifact import Artifact
from search.train.loop import Recipe
from techniques.base import Context, TechniqueError

if TYPE_CHECKING:
    import optuna
    from torch import nn

BITS = (0, 2, 3, 4, 5, 6, 8)  # 0: off
SHARED_OPS = {"Conv": 1, "Gemm": 1, "MatMul": 1}  # op -> input index of the weight


@dataclass(frozen=True)
class ShareParams:
    """``bits``: each layer's weights take one of ``2**bits`` shared values."""

    bits: int

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 8:
            raise TechniqueError(f"share.bits={self.bits} must be from 1 to 8, e.g. 5")

    @property
    def label(self) -> str:
        return f"share{self.bits}b"


REFERENCE: Mapping[str, Any] = {"share.bits": 5}


class WeightSharing:
    name: ClassVar[str] = "share"
    stage: ClassVar[Literal["artifact"]] = "artifact"
    options: ClassVar[Mapping[str, tuple[Any, ...]]] = {"share.searched": (False, True)}

    def off_params(self, ctx: Context) -> Mapping[str, Any]:
        return {"share.bits": 0} if _searched(ctx) else {}

    def reference_params(self, ctx: Context) -> Mapping[str, Any] | None:
        return REFERENCE if _searched(ctx) else None

    def applicability(self, ctx: Context) -> str | None:
        return None

    def space(self, trial: optuna.trial.BaseTrial, ctx: Context) -> ShareParams | None:
        if not _searched(ctx) or ctx.runtime != "onnxruntime":
            return None
        if trial.params.get("quant.scheme", "fp32") != "fp32":
            return None  # another number format already owns the weights
        bits = trial.suggest_categorical("share.bits", BITS)
        return ShareParams(bits) if bits else None

    def fine_tunes(self, params: ShareParams) -> bool:
        return False

    def configure(self, recipe: Recipe, params: ShareParams, ctx: Context) -> Recipe:
        return recipe

    def before_export(self, model: nn.Module, params: Any, ctx: Context) -> nn.Module:
        return model

    def apply(self, artifact: Artifact, params: ShareParams, ctx: Context) -> Artifact:
        return share_weights(artifact, params.bits, seed=ctx.seed)


def _searched(ctx: Context) -> bool:
    return bool(ctx.options.get("share.searched", False))


def share_weights(artifact: Artifact, bits: int, *, seed: int = 0) -> Artifact:
    """Write ``<stem>.share<bits>b.onnx``: every weight a codebook entry (see the module)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if artifact.format != "onnx":
        raise TechniqueError("share.bits: weight sharing rewrites ONNX files only")
    model = onnx.load(str(artifact.path))
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    weights = {
        node.input[index]
        for node in graph.node
        for op, index in SHARED_OPS.items()
        if node.op_type == op and len(node.input) > index and node.input[index] in initializers
    }
    rebuild = []
    for name in sorted(weights):
        values = numpy_helper.to_array(initializers[name])
        if values.dtype != np.float32 or values.ndim < 2:
            continue
        codebook, indices = cluster(values, bits, seed=seed)
        graph.initializer.remove(initializers[name])
        graph.initializer.extend(
            [
                numpy_helper.from_array(codebook, f"{name}.codebook"),
                numpy_helper.from_array(indices, f"{name}.indices"),
            ]
        )
        rebuild += [
            helper.make_node(
                "Cast", [f"{name}.indices"], [f"{name}.indices32"], to=TensorProto.INT32
            ),
            helper.make_node("Gather", [f"{name}.codebook", f"{name}.indices32"], [name]),
        ]
    if not rebuild:
        raise TechniqueError("share.bits: the model has no float Conv, Gemm or MatMul weight")
    nodes = [*rebuild, *graph.node]  # the weights exist before anything reads them
    del graph.node[:]
    graph.node.extend(nodes)
    output = artifact.path.with_suffix(f".share{bits}b.onnx")
    onnx.save(model, str(output))
    return Artifact(path=output, scheme=f"share{bits}b")


def cluster(values: np.ndarray, bits: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(codebook float32 [k], indices uint8 shaped like ``values``): 1-D k-means with
    linearly spaced initial centroids; fewer centroids when there are fewer distinct values."""
    from sklearn.cluster import KMeans

    flat = values.reshape(-1, 1).astype(np.float64)
    k = min(2**bits, len(np.unique(flat)))
    start = np.linspace(flat.min(), flat.max(), k).reshape(-1, 1)
    kmeans = KMeans(n_clusters=k, init=start, n_init=1, random_state=seed).fit(flat)
    codebook = kmeans.cluster_centers_.reshape(-1).astype(np.float32)
    indices = kmeans.labels_.astype(np.uint8).reshape(values.shape)
    return codebook, indices
