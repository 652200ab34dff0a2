"""Types of the compiled flush (``_lines.c``); absent where it was not built."""

from collections.abc import Callable, Mapping
from typing import Any

def configure(series_type: type, built_type: type, dumps: Callable[[Any], bytes], /) -> None: ...
def queued_lines(
    queued: list[Any],
    start: int,
    fields: Mapping[str, Mapping[object, tuple[str, str, bool] | None]],
    prefixes: Mapping[str, str],
    tag_prefixes: Mapping[tuple[object, ...], str],
    base_tags: Mapping[str, str],
    observed: frozenset[str],
) -> tuple[bytes, int, list[tuple[str, Mapping[str, float], Mapping[str, str]]], int] | None: ...
