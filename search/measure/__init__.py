"""Deployed files and how they are run and measured: the artifact types, ONNX Runtime and
PyTorch back ends (``runtimes`` chooses), latency with its protocol and hardware
fingerprint, peak memory, compressed size.

May import: ``search.common``, ``search.train``.
"""
