"""``python -m search.cli``: the same command line as the ``search`` console script."""

from search.cli.app import main

main()
