"""Parser assembly and dispatch; errors become one line on stderr.

A command module exposes ``register(subparsers)``; the parser it adds sets
``handler=<function(args, settings) -> int>`` through ``set_defaults``, and may set
``unused_settings`` (groups of ``collector.config.SETTING_GROUPS``, e.g. ``("influx",)``) when
it never uses them, so a malformed ``INFLUXDB_V2_*`` variable does not stop it.
Exit codes: 0 success, 1 failure, 2 usage or configuration error. An error is one line on
stderr; ``-v`` adds its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from collector.cli.output import printable
from collector.config import Settings, load_settings
from collector.errors import ConfigError, RunwatchError

log = logging.getLogger("runwatch")

Register = Callable[[Any], None]
ENTRY_POINT_GROUP = "runwatch.commands"


CORE_COMMANDS = {
    "runs": "collector.cli.runs",
    "compare": "collector.cli.compare",
    "sync": "collector.cli.sync",
    "doctor": "collector.cli.doctor",
}
"""Command word -> its module. A core command given on the command line is the only one
built: plugins are looked up (``importlib.metadata``, a tenth of a second) only for help,
a plugin's command or a mistake."""


def _core_commands(names: Sequence[str] = tuple(CORE_COMMANDS)) -> list[Register]:
    return [importlib.import_module(CORE_COMMANDS[name]).register for name in names]


def _plugin_commands() -> list[Register]:
    from importlib.metadata import entry_points

    registers: list[Register] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            registers.append(ep.load())
        except Exception as exc:  # a broken plugin must not take the core CLI down
            log.warning("runwatch: command plugin %s failed to load: %s", ep.name, exc)
    return registers


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of ``command`` alone when it is a core command."""
    parser = argparse.ArgumentParser(
        prog="runwatch",
        description="Training telemetry: InfluxDB points, Prometheus gauges, run metadata.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    if command in CORE_COMMANDS:
        registers = _core_commands([command])
    else:
        registers = _core_commands() + _plugin_commands()
    for register in registers:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_word(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    handler: Callable[[argparse.Namespace, Settings], int] = args.handler
    try:
        settings = load_settings(unused=getattr(args, "unused_settings", ()))
        return handler(args, settings)
    except ConfigError as exc:
        _print_error(exc, args.verbose)
        return 2
    except RunwatchError as exc:
        _print_error(exc, args.verbose)
        return 1
    except KeyboardInterrupt:
        print("runwatch: interrupted", file=sys.stderr)
        return 130


def _command_word(argv: Sequence[str]) -> str | None:
    """The command the arguments name: the first one that is not an option (the top-level
    options take no value); None when help is asked for before it (help lists them all)."""
    for arg in argv:
        if arg in ("-h", "--help"):
            return None
        if not arg.startswith("-"):
            return arg
    return None


def _print_error(exc: RunwatchError, verbose: bool) -> None:
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    print(f"runwatch: error: {printable(exc)}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
