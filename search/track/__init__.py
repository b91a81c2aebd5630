"""What is recorded and read back: MLflow runs through ``MlflowClient`` (tracker), the
study's trial record (objectives, constraints, feasibility, the baseline), the Pareto
front, the study plots and the status tables, tracking and storage URLs.

May import: ``search.common``, ``search.train``, ``search.measure``.
"""
