"""Gradient norms read with one host transfer on an accelerator, in one compiled call or one by
one on the CPU.

On a GPU, ``torch._foreach_norm`` computes every parameter's norm in a few fused launches;
stacking them and calling ``.tolist()`` once means one device synchronisation per sample, where
a loop of ``p.grad.norm().item()`` synchronises once per parameter. On the CPU there is nothing
to synchronise with and foreach falls back to one kernel per tensor anyway: a norm per tensor,
read at once, skips the stack. In a hot loop the two cost the same; inside a training step,
where runwatch computes them, one by one costs 10-20% less (benchmarks/bench_gradnorm.py).

Inside a training step most of a CPU norm's cost is Python and torch's dispatcher, not
arithmetic, so where runwatch's compiled module was built (``_gradnorms``, a C extension that
needs no torch headers) the norms of contiguous float32/float64 CPU gradients are summed
straight from their memory in one call (:class:`ParameterNorms`); anything else takes torch's
path.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

DEFAULT_MAX_LAYERS = 16

_vector_norm = torch.linalg.vector_norm

_cpu_norms: Callable[[list[torch.nn.Parameter]], list[float | None] | None] | None
_norm_summary: Callable[[list[float]], tuple[float, float, float]] | None
_queue_norms: Callable[..., bool | None] | None
try:
    from collector.lightning._gradnorms import configure, cpu_norms, norm_summary, queue_norms
except ImportError:  # installed without a C compiler: torch's path only
    _cpu_norms = _norm_summary = _queue_norms = None
else:
    configure(torch.Tensor, torch.float32, torch.float64, torch.strided)
    _cpu_norms, _norm_summary, _queue_norms = cpu_norms, norm_summary, queue_norms


@dataclass(frozen=True)
class GradientNorms:
    """L2 norms: over all gradients (``total``), the largest and smallest per-parameter norm,
    and per-parameter norms of the first ``max_layers`` parameters in module order."""

    total: float
    max: float
    min: float
    layers: dict[str, float] = field(default_factory=dict)


def gradient_norms(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
    *,
    max_layers: int = DEFAULT_MAX_LAYERS,
) -> GradientNorms | None:
    """Norms of the gradients present (None when no parameter has one)."""
    found = ParameterNorms(named_parameters).values()
    if found is None:
        return None
    names, values = found
    return _summary(names, values, max_layers)


class ParameterNorms:
    """The gradient norms of parameters listed once (per fit): the compiled module's when it
    can read every gradient, torch's otherwise."""

    def __init__(self, named_parameters: Iterable[tuple[str, torch.nn.Parameter]]) -> None:
        self._named = list(named_parameters)
        self._names = [name for name, _ in self._named]
        self._parameters = [parameter for _, parameter in self._named]

    def point_queue(self, layers: int) -> Callable[[float, Callable[..., bool]], object] | None:
        """The norms' ``gradient`` point and the first ``layers`` parameters'
        ``gradient_layer`` points (``gradient_points``), made and handed to a recorder's
        compiled ``put_series`` (``Recorder.compiled_put_series``) by one compiled callable
        bound for a fit: ``queue(step, put_series) is True`` where queued, with no Python
        object made on the way (nor a Python call, which costs ~1 µs in a training step).
        A parameter without a gradient is left out, as ``values()`` leaves it. Anything
        else is the caller's to record (``measure()``): where a gradient is not readable from
        C, no parameter has one or the queue declines, the call returns anything but True. None where it could queue nothing: the compiled modules are not built, there is
        no parameter, or no layer is wanted."""
        if _queue_norms is None or not self._parameters or layers <= 0:
            return None
        return functools.partial(_queue_norms, self._parameters, self._names, layers)

    def measure(self) -> tuple[list[str], list[float], float, float, float] | None:
        """``values()`` and their ``summary()`` at once: (names, norms, total, max, min); None
        when no parameter has a gradient. The gradient hook's path where ``point_queue``'s call
        declines: where the compiled module reads every gradient, two compiled calls and no
        other Python call (each costs ~1 µs inside a training step)."""
        if _cpu_norms is not None and _norm_summary is not None and self._parameters:
            norms = _cpu_norms(self._parameters)
            if norms is not None and None not in norms:
                return (self._names, norms, *_norm_summary(norms))  # type: ignore[arg-type,return-value]
        found = self.values()
        if found is None:
            return None
        names, values = found
        return (names, values, *summary(values))

    def values(self) -> tuple[list[str], list[float]] | None:
        """(names, L2 norms) of the parameters that have a dense gradient, in their order;
        None when none has one. The lists may be shared between calls: read them only."""
        norms = compiled_norms(self._parameters)
        if norms is None:
            return norm_values(self._named)
        if None not in norms:
            return self._names, norms  # type: ignore[return-value]  # (no None in it)
        values = [norm for norm in norms if norm is not None]
        if not values:
            return None
        names = [name for name, norm in zip(self._names, norms, strict=True) if norm is not None]
        return names, values


def compiled_norms(parameters: list[torch.nn.Parameter]) -> list[float | None] | None:
    """Each parameter's gradient norm summed from its memory (double precision), in one call,
    None in the place of a parameter without a gradient; None when the compiled module is not
    built, or a gradient is not a contiguous float32/float64 CPU tensor."""
    if _cpu_norms is None or not parameters:
        return None
    return _cpu_norms(parameters)


def norm_values(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
) -> tuple[list[str], list[float]] | None:
    """(names, L2 norms) of the parameters that have a dense gradient, in their order, read
    with one host transfer; None when none has one."""
    names: list[str] = []
    grads: list[torch.Tensor] = []
    for name, parameter in named_parameters:
        grad = parameter.grad
        if grad is not None and not grad.is_sparse:
            names.append(name)
            grads.append(grad)
    if not grads:
        return None
    if all(grad.is_cpu for grad in grads):
        return names, norms_one_by_one(grads)
    return names, fused_norms(grads)


def norms_one_by_one(grads: list[torch.Tensor]) -> list[float]:
    """L2 norms of CPU tensors, each read as it is computed."""
    if any(grad.requires_grad for grad in grads):  # gradients with a graph (create_graph=True)
        with torch.no_grad():
            return [float(_vector_norm(grad)) for grad in grads]
    # No graph to keep out of: entering no_grad would cost more than a small tensor's norm.
    return [float(_vector_norm(grad)) for grad in grads]


def fused_norms(grads: list[torch.Tensor]) -> list[float]:
    """L2 norms with fused kernels and one host transfer (one device synchronisation)."""
    with torch.no_grad():
        norms = torch._foreach_norm(grads)
        try:
            stacked = torch.stack(norms)
        except RuntimeError:  # parameters spread over devices (model parallel)
            stacked = torch.stack([n.to(norms[0].device, torch.float32) for n in norms])
        values: list[float] = stacked.tolist()  # the one sync
    return values


def summary(values: list[float]) -> tuple[float, float, float]:
    """(total, max, min) of per-parameter norms: the norm over all gradients, the largest and
    the smallest; all NaN when one is NaN (max()/min() would depend on the order). One
    compiled call where the module is built (every step with norms pays this)."""
    if _norm_summary is not None and type(values) is list:
        try:
            return _norm_summary(values)
        except TypeError:  # not all floats (ints from a caller): Python's path
            pass
    return summary_in_python(values)


def summary_in_python(values: list[float]) -> tuple[float, float, float]:
    """``summary`` without the compiled module."""
    if math.isnan(sum(values)):
        return math.nan, math.nan, math.nan
    return math.hypot(*values), max(values), min(values)


def gradient_points(
    names: list[str], values: list[float], step: float, layers: int
) -> list[tuple[str, dict[str, float], dict[str, str] | None]]:
    """The ``gradient`` point (total, max and min norm) and a ``gradient_layer`` point for
    each of the first ``layers`` parameters, as (measurement, fields, tags)."""
    points: list[tuple[str, dict[str, float], dict[str, str] | None]] = [
        ("gradient", gradient_fields(values, step), None)
    ]
    points.extend(
        ("gradient_layer", {"norm": value, "step": step}, {"layer": name})
        for name, value in zip(names[:layers], values[:layers], strict=False)
    )
    return points


def gradient_fields(values: list[float], step: float) -> dict[str, float]:
    """The fields of the ``gradient`` point of per-parameter norms: total, max and min norm."""
    total, largest, smallest = summary(values)
    return {"total_norm": total, "max_norm": largest, "min_norm": smallest, "step": step}


def _summary(names: list[str], values: list[float], max_layers: int) -> GradientNorms:
    total, largest, smallest = summary(values)
    return GradientNorms(
        total=total,
        max=largest,
        min=smallest,
        layers=dict(zip(names[:max_layers], values[:max_layers], strict=False)),
    )


def gradient_norms_per_parameter_loop(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
    *,
    max_layers: int = DEFAULT_MAX_LAYERS,
) -> GradientNorms | None:
    """The naive reference (one ``.item()`` per parameter), kept for tests and the benchmark."""
    names: list[str] = []
    values: list[float] = []
    for name, parameter in named_parameters:
        if parameter.grad is not None and not parameter.grad.is_sparse:
            names.append(name)
            values.append(parameter.grad.norm().item())
    return _summary(names, values, max_layers) if values else None
