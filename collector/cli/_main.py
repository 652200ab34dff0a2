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
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

from collector.cli.output import printable
from collector.config import Settings, load_settings
from collector.errors import ConfigError, RunwatchError

log = logging.getLogger("runwatch")

Register = Callable[[Any], None]
ENTRY_POINT_GROUP = "runwatch.commands"


def _core_commands() -> list[Register]:
    from collector.cli import compare, doctor, runs, sync

    return [runs.register, compare.register, sync.register, doctor.register]


def _plugin_commands() -> list[Register]:
    registers: list[Register] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            registers.append(ep.load())
        except Exception as exc:  # a broken plugin must not take the core CLI down
            log.warning("runwatch: command plugin %s failed to load: %s", ep.name, exc)
    return registers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runwatch",
        description="Training telemetry: InfluxDB points, Prometheus gauges, run metadata.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in _core_commands() + _plugin_commands():
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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


def _print_error(exc: RunwatchError, verbose: bool) -> None:
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    print(f"runwatch: error: {printable(exc)}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
