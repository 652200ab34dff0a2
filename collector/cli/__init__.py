"""The ``runwatch`` command line.

Core commands live in this package. Packages that build on collector (``trainer``) add
commands through the ``runwatch.commands`` entry-point group, so collector never imports them.
"""

from collector.cli._main import build_parser, main

__all__ = ["build_parser", "main"]
