"""compression-search: find compressed versions of a model that meet a latency budget.

The folders are layers; a module imports only from its own layer and the ones below it
(``tests/test_imports.py`` holds every module to this, with no import circles):

    cli/        the command line: typer app, options, printed tables        (top)
    registry/   after the search: promote to the MLflow registry, serve the champion
    core/       the search: config, lever settings, space, study, trial objective, runner,
                workers, one-shot commands, sensitivity, profile
    track/      what is recorded and read back: MLflow runs, the study's trial record,
                the Pareto front and its plots, status tables
    techniques/ (the top-level package beside this one) the compression levers
    tasks/      the built-in tasks and the loader for a user's task
    measure/    deployed files and their runtimes, latency, memory, compressibility
    train/      the Task protocol and the training loop
    common/     errors, file locks, interrupts                               (bottom)

Kept import-light on purpose: ``search --help`` must not pay for torch or mlflow.
"""

__version__ = "0.1.0"
