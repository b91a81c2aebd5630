"""Built-in tasks. ``digits`` is the embedded default: no download, trains in a minute."""
