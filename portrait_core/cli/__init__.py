"""Command-line entry points of ``python -m portrait_core`` (one module per command)."""
