"""Parser assembly: a core command named on the command line is the only one built; help,
plugins and mistakes see every command."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from collector.cli import build_parser, main
from collector.cli._main import CORE_COMMANDS


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    (subparsers,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(subparsers.choices)


def test_a_core_command_builds_only_its_own_parser() -> None:
    for command in CORE_COMMANDS:
        assert _commands(build_parser(command)) == {command}


def test_otherwise_every_command_and_the_plugins_are_built() -> None:
    everything = _commands(build_parser())
    assert set(CORE_COMMANDS) < everything
    assert {"train", "demo"} <= everything  # the trainer's entry point
    assert _commands(build_parser("train")) == everything
    assert _commands(build_parser("no-such-command")) == everything


@pytest.mark.parametrize("argv", [["--help"], ["--help", "runs"], ["-v", "-h", "runs"]])
def test_help_before_a_command_lists_them_all(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    listed = capsys.readouterr().out
    assert all(f"    {command} " in listed for command in [*CORE_COMMANDS, "train"]), listed


def test_options_before_the_command_are_not_taken_for_it(
    runwatch_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["-v", "runs", "list"]) == 0
    assert "no runs recorded yet" in capsys.readouterr().out
