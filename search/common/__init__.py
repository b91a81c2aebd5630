"""What every layer may use: the error types, the file lock, the interrupt flag, how a
latency is written for people (``units``).

Imports nothing else of the project's.
"""
