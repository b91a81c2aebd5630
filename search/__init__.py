"""compression-search: find compressed versions of a model that meet a latency budget.

Kept import-light on purpose: ``search --help`` must not pay for torch or mlflow.
"""

__version__ = "0.1.0"
