"""What every layer may use: the error types, the file lock, the interrupt flag.

Imports nothing else of the project's.
"""
