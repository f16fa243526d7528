"""The ``lift3d`` command line (entry point :func:`main`)."""

from lift3d.cli.main import app, main

__all__ = ["app", "main"]
