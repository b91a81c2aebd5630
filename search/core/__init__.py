"""The search itself: run configuration, lever settings, the joint space, the Optuna
study, one trial start to end (``objective``), the run's orchestration (``runner``) and
its worker processes, the one-shot commands, sensitivity and profile.

May import: ``techniques`` and every folder of ``search`` below it (``track``, ``tasks``,
``measure``, ``train``, ``common``); never ``registry`` or ``cli``.
"""
