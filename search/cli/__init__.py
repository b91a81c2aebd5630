"""The command line: the typer app (``app``), shared options, the one-shot and serve
commands, and the rich tables it prints. No logic of its own: options become a config
and one call into the layers below, and errors become one line and exit code 2.

May import anything in the project.
"""
