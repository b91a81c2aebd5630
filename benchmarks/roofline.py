"""How far from the hardware's floor a model runs: a roofline-style estimate.

The floor of one inference is the larger of two times: its multiply-accumulates at the
peak rate this machine reached in the same runtime on one large matrix product (int8 for
an int8 model, float32 otherwise), and its bytes (weights plus every intermediate tensor
once) at the memory bandwidth measured by one large copy. A small model at batch 1 runs far
above this floor: each of its dozens of operators costs a fixed dispatch time that no
roofline counts; the ratio shows how much of the time is that rather than arithmetic.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

MATMUL_SIZE = 512  # 134 M multiply-accumulates per product: milliseconds, not microseconds
COPY_BYTES = 256 * 2**20  # far beyond any cache here
REPEATS = 20


@dataclass(frozen=True)
class Peaks:
    """Measured rates, with the thread count they were measured with."""

    fp32_gmacs: float  # 1e9 multiply-accumulates per second
    int8_gmacs: float
    bandwidth_gbs: float  # 1e9 bytes per second, read plus write
    threads: int
    how: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Floor:
    """One model's estimate against its measured p50."""

    macs: int
    bytes: int
    rate: str  # which peak applies: "int8" or "fp32"
    compute_ms: float
    memory_ms: float
    measured_ms: float

    @property
    def floor_ms(self) -> float:
        return max(self.compute_ms, self.memory_ms)

    @property
    def above_floor(self) -> float:
        return self.measured_ms / self.floor_ms

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "floor_ms": self.floor_ms, "above_floor": self.above_floor}


def floor_of(macs: int, n_bytes: int, int8: bool, measured_ms: float, peaks: Peaks) -> Floor:
    """The roofline estimate for ``macs`` and ``n_bytes`` on ``peaks`` (a pure function)."""
    rate = peaks.int8_gmacs if int8 else peaks.fp32_gmacs
    return Floor(
        macs=macs,
        bytes=n_bytes,
        rate="int8" if int8 else "fp32",
        compute_ms=macs / (rate * 1e9) * 1e3,
        memory_ms=n_bytes / (peaks.bandwidth_gbs * 1e9) * 1e3,
        measured_ms=measured_ms,
    )


def measure_peaks(device: str, threads: int) -> Peaks:
    """Peak multiply-accumulate rates and memory bandwidth of ``device``, measured now."""
    if device == "cuda":
        return _cuda_peaks()
    return Peaks(
        fp32_gmacs=_ort_matmul_rate(int8=False, threads=threads),
        int8_gmacs=_ort_matmul_rate(int8=True, threads=threads),
        bandwidth_gbs=_copy_bandwidth(),
        threads=threads,
        how=f"ONNX Runtime MatMul / MatMulInteger (u8 x s8) {MATMUL_SIZE}^3, "
        f"{threads} thread(s); numpy copy of {COPY_BYTES >> 20} MiB",
    )


def onnx_bytes(path: Path, batch_size: int = 1) -> int:
    """Weights plus every intermediate tensor once, from ONNX shape inference.

    The float outputs of DequantizeLinear are left out: ONNX Runtime fuses a QDQ pair into
    its integer kernel, so those tensors never exist. A weight stored in fp16 and cast when
    the file loads (``fp16-weights``) counts once, as the float32 tensor its Cast leaves.
    """
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    stored = {t.name for t in model.graph.initializer}
    cast_at_load = {
        n.input[0] for n in model.graph.node if n.op_type == "Cast" and n.input[0] in stored
    }
    weights = sum(
        int(np.prod(t.dims)) * _element_bytes(t.data_type)
        for t in model.graph.initializer
        if t.name not in cast_at_load
    )
    dequantized = {
        o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output
    }
    tensors = [*model.graph.value_info, *model.graph.output]
    activations = 0
    for info in tensors:
        if info.name in dequantized:
            continue
        shape = info.type.tensor_type.shape
        dims = [d.dim_value if d.HasField("dim_value") else batch_size for d in shape.dim]
        activations += int(np.prod(dims)) * _element_bytes(info.type.tensor_type.elem_type)
    return weights + activations


def _element_bytes(data_type: int) -> int:
    import onnx

    return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize)


def _ort_matmul_rate(*, int8: bool, threads: int) -> float:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    n = MATMUL_SIZE
    rng = np.random.default_rng(0)
    if int8:
        weights = numpy_helper.from_array(rng.integers(-127, 127, (n, n), dtype=np.int8), "B")
        node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
        inputs = rng.integers(0, 255, (n, n), dtype=np.uint8)
    else:
        weights = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "B")
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
        a_type = y_type = TensorProto.FLOAT
        inputs = rng.standard_normal((n, n)).astype(np.float32)
    graph = helper.make_graph(
        [node],
        "peak",
        [helper.make_tensor_value_info("A", a_type, [n, n])],
        [helper.make_tensor_value_info("Y", y_type, [n, n])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    onnx.checker.check_model(model)
    seconds = _best_seconds(lambda: session.run(None, {"A": inputs}))
    return n**3 / seconds / 1e9


def _copy_bandwidth() -> float:
    source = np.ones(COPY_BYTES // 8, dtype=np.float64)
    target = np.empty_like(source)
    seconds = _best_seconds(lambda: np.copyto(target, source), repeats=5)
    return 2 * COPY_BYTES / seconds / 1e9


def _best_seconds(call: Any, repeats: int = REPEATS) -> float:
    """The fastest of ``repeats`` timed calls after one warm-up: a peak, not a typical time."""
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return min(times)


def _cuda_peaks() -> Peaks:
    import torch

    n = 4096
    torch.backends.cuda.matmul.allow_tf32 = False
    a = torch.randn(n, n, device="cuda")
    fp32 = n**3 / _cuda_seconds(lambda: a @ a) / 1e9
    q = torch.randint(-127, 127, (n, n), dtype=torch.int8, device="cuda")
    int8 = n**3 / _cuda_seconds(lambda: torch._int_mm(q, q)) / 1e9
    source = torch.empty(COPY_BYTES * 4, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    bandwidth = 2 * source.numel() / _cuda_seconds(lambda: target.copy_(source)) / 1e9
    return Peaks(fp32, int8, bandwidth, threads=1, how=f"torch {n}^3 fp32 (no TF32) / "
                 "_int_mm int8 products; device copy of 1 GiB")  # fmt: skip


def _cuda_seconds(call: Any) -> float:
    import torch

    def timed() -> None:
        call()
        torch.cuda.synchronize()

    return _best_seconds(timed)
