"""What a model file's zeros are worth: the sparsity of its weights and its gzip size.

Unstructured pruning and weight sharing leave the file the same size for a dense runtime;
what they change is how well it compresses (for download or storage) and how many weights
are zero. Both are measured on the deployed file itself, so the claim is the file's.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

GZIP_LEVEL = 9


def compressed_bytes(path: Path) -> int:
    """The file's size after ``gzip -9``: what it costs to ship when compressed."""
    return len(gzip.compress(path.read_bytes(), compresslevel=GZIP_LEVEL, mtime=0))


def weight_sparsity(path: Path) -> float:
    """The share of exact zeros among the weights of an ONNX file (its initializers of two
    or more dimensions: convolution kernels and matrices, not biases or scales)."""
    import onnx
    from onnx import numpy_helper

    if path.suffix != ".onnx":
        return 0.0
    zeros = total = 0
    for tensor in onnx.load(str(path)).graph.initializer:
        if len(tensor.dims) < 2:
            continue
        values = numpy_helper.to_array(tensor)
        zeros += int(np.count_nonzero(values == 0))
        total += values.size
    return zeros / total if total else 0.0
