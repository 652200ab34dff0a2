"""Argument types for argparse, shared by runwatch's commands and plugins: a bad value is a
usage error (exit 2) with one line saying why."""

from __future__ import annotations

import argparse
import math

from collector.errors import InvalidRunIdError
from collector.ids import validate_run_id


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = _finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def run_id_arg(text: str) -> str:
    try:
        return validate_run_id(text)
    except InvalidRunIdError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
