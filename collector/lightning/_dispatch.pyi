"""Types of the compiled hook dispatch (``_dispatch.c``); absent where it was not built."""

from collections.abc import Callable
from typing import Any

class Dispatch:
    @property
    def calls(self) -> tuple[tuple[Any, Callable[..., Any], str | None], ...]: ...
    def __init__(
        self,
        calls: tuple[tuple[Any, Callable[..., Any], str | None], ...],
        report: Callable[[Any, str, Exception], None],
        passthrough: type[BaseException] | tuple[type[BaseException], ...],
    ) -> None: ...
    def __call__(self, *args: Any, **kwargs: Any) -> None: ...
