"""After the search: promote a trial's deployed file to the MLflow model registry
(re-measured on the test split, with its model card) and serve the champion over HTTP
with dynamic batching.

May import: ``search.core`` and below; never ``search.cli``.
"""
