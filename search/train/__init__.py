"""The Task protocol (what a user's task provides) and the training loop (fine-tuning,
distillation, prediction).

May import: ``search.common``. The techniques build their recipes on these.
"""
