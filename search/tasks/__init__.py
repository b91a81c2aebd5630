"""The built-in tasks (``digits``: no download, trains in a minute; ``digits-vit``), their
models, and the loader that turns a ``--task`` spec into a Task.

May import: ``search.common``, ``search.train``, ``search.measure``. No technique imports
from here: a lever must work on the user's model, not only on ours.
"""
