from collections.abc import Callable, Sequence
from typing import Any

def configure(tensor_type: type, float32: Any, float64: Any, strided: Any, /) -> None: ...
def cpu_norms(parameters: Sequence[Any], /) -> list[float | None] | None: ...
def norm_summary(values: list[float], /) -> tuple[float, float, float]: ...
def queue_norms(
    parameters: Sequence[Any],
    names: list[str],
    layers: int,
    step: float,
    put_series: Callable[..., bool],
    /,
) -> bool | None: ...
