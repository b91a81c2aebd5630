"""Command-line options shared by several ``search`` commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="A TOML file of run options and lever off/fix settings (command line wins).",
        dir_okay=False,
    ),
]
OffOption = Annotated[
    list[str] | None,
    typer.Option(
        "--off",
        metavar="LEVER",
        help="Keep a lever at its off setting, e.g. --off lora (repeatable).",
    ),
]
FixOption = Annotated[
    list[str] | None,
    typer.Option(
        "--fix",
        metavar="NAME=VALUE",
        help="Fix a parameter or lever option, e.g. --fix prune.ratio=0.5 (repeatable).",
    ),
]
TaskOption = Annotated[
    str | None,
    typer.Option(
        help="digits (the default), digits-vit, pkg.module:factory or path/to/file.py:factory."
    ),
]
StorageOption = Annotated[
    str | None, typer.Option(help="Optuna storage URL (default SQLite in studies/optuna.db).")
]
TrackingOption = Annotated[
    str | None, typer.Option(help="MLflow tracking URI (default SQLite in mlruns/mlflow.db).")
]
DeviceOption = Annotated[
    str | None, typer.Option(help="Where latency is measured: cpu (the default) or cuda.")
]
RuntimeOption = Annotated[
    str | None,
    typer.Option(
        help="What runs the deployed model: onnxruntime (the default), torch (eager) or "
        "torch-compile; each offers the number formats it can run."
    ),
]
