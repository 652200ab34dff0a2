"""Gradient norms (fused, one by one on the CPU, and the compiled module's) agree with the
per-parameter reference."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from collector.lightning import gradients
from collector.lightning.gradients import (
    ParameterNorms,
    compiled_norms,
    fused_norms,
    gradient_norms,
    gradient_norms_per_parameter_loop,
    gradient_points,
    norm_values,
    norms_one_by_one,
    summary,
    summary_in_python,
)


def model_with_grads() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    model(torch.randn(4, 8)).sum().backward()
    return model


def test_fused_matches_the_per_parameter_loop() -> None:
    model = model_with_grads()
    fused = gradient_norms(model.named_parameters(), max_layers=2)
    loop = gradient_norms_per_parameter_loop(model.named_parameters(), max_layers=2)
    assert fused is not None and loop is not None
    assert fused.total == pytest.approx(loop.total, rel=1e-6)
    assert fused.max == pytest.approx(loop.max, rel=1e-6)
    assert fused.min == pytest.approx(loop.min, rel=1e-6)
    assert list(fused.layers) == ["0.weight", "0.bias"]  # bounded, in module order
    assert fused.layers == pytest.approx(loop.layers, rel=1e-6)
    expected = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert fused.total == pytest.approx(float(expected), rel=1e-5)


def test_parameters_without_gradient_are_skipped() -> None:
    model = model_with_grads()
    model[2].bias.grad = None
    norms = gradient_norms(model.named_parameters())
    assert norms is not None and "2.bias" not in norms.layers and len(norms.layers) == 3
    for parameter in model.parameters():
        parameter.grad = None
    assert gradient_norms(model.named_parameters()) is None


def test_mixed_precision_gradients() -> None:
    half = nn.Parameter(torch.ones(3, dtype=torch.bfloat16))
    half.grad = torch.ones(3, dtype=torch.bfloat16)
    full = nn.Parameter(torch.ones(4))
    full.grad = torch.full((4,), 2.0)
    norms = gradient_norms([("half", half), ("full", full)])
    assert norms is not None
    assert norms.max == pytest.approx(4.0) and norms.min == pytest.approx(math.sqrt(3), rel=1e-2)


def test_nan_gradient_makes_every_summary_nan() -> None:
    model = model_with_grads()
    model[0].weight.grad[0, 0] = float("nan")
    norms = gradient_norms(model.named_parameters())
    assert norms is not None
    assert math.isnan(norms.total) and math.isnan(norms.max) and math.isnan(norms.min)
    assert math.isnan(norms.layers["0.weight"]) and math.isfinite(norms.layers["0.bias"])


def test_fused_and_one_by_one_norms_are_the_same_numbers() -> None:
    grads = [p.grad for p in model_with_grads().parameters()]
    expected = [float(g.norm()) for g in grads]
    assert fused_norms(grads) == pytest.approx(expected, rel=1e-6)
    assert norms_one_by_one(grads) == pytest.approx(expected, rel=1e-6)


def test_norms_of_gradients_that_require_grad() -> None:
    """A backward with ``create_graph=True`` leaves gradients that require grad."""
    grad = torch.ones(3, requires_grad=True) * 2.0
    assert grad.requires_grad
    plain = torch.ones(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns on float() of a tensor with a graph
        assert norms_one_by_one([plain, grad]) == pytest.approx([2.0, math.sqrt(12)])
        assert fused_norms([grad]) == pytest.approx([math.sqrt(12)])
        assert norms_one_by_one([plain]) == [2.0]


def test_gradient_points_are_the_summary_and_the_first_layers() -> None:
    model = model_with_grads()
    norms = gradient_norms(model.named_parameters(), max_layers=2)
    assert norms is not None
    found = ParameterNorms(model.named_parameters()).values()
    assert found is not None
    names, values = found
    points = gradient_points(names, values, 7.0, 2)
    assert points[0] == (
        "gradient",
        {"total_norm": norms.total, "max_norm": norms.max, "min_norm": norms.min, "step": 7.0},
        None,
    )
    assert points[1:] == [
        ("gradient_layer", {"norm": value, "step": 7.0}, {"layer": name})
        for name, value in norms.layers.items()
    ]
    assert len(gradient_points(names, values, 7.0, 0)) == 1
    nan = gradient_points(["a", "b"], [1.0, math.nan], 1.0, 2)[0][1]
    assert all(math.isnan(nan[key]) for key in ("total_norm", "max_norm", "min_norm"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_norms_of_cpu_gradients_whatever_the_dtype(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(1)
    grad = (torch.randn(300, 70, generator=generator) * 3 + 1).to(dtype)
    exact = math.sqrt(float((grad.double() ** 2).sum()))
    (norm,) = norms_one_by_one([grad])
    assert norm == pytest.approx(exact, rel=1e-4 if grad.element_size() > 2 else 1e-2)


def test_norms_of_strided_and_empty_cpu_gradients() -> None:
    grad = torch.arange(12.0).reshape(3, 4)
    assert norms_one_by_one([grad.t(), grad[:, ::2], torch.zeros(0)]) == pytest.approx(
        [
            math.sqrt(sum(x * x for x in range(12))),
            math.sqrt(sum(x * x for x in range(0, 12, 2))),
            0,
        ]
    )


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_gradient_that_is_not_finite_has_a_norm_that_is_not_finite(value: float) -> None:
    grad = torch.tensor([value, 1.0, value, 2.0], dtype=torch.float32)
    (one,) = norms_one_by_one([grad])
    (fused,) = fused_norms([grad])
    assert not math.isfinite(one) and not math.isfinite(fused)
    assert math.isnan(one) == math.isnan(value) == math.isnan(fused)


# -- the compiled module -----------------------------------------------------------------------


@pytest.fixture
def compiled() -> None:
    """Skips where the compiled module is not built (no C compiler); under CI=true it must be."""
    if gradients._cpu_norms is None:
        if os.environ.get("CI") == "true":
            pytest.fail(
                "collector.lightning._gradnorms is not built (pip install -e . compiles it)"
            )
        pytest.skip("collector.lightning._gradnorms is not built (no C compiler at install)")


def parameter_with(grad: torch.Tensor | None) -> nn.Parameter:
    """A parameter whose gradient is ``grad`` (a CPU float32 value when it is None)."""
    if grad is None:
        return nn.Parameter(torch.zeros(1))
    parameter = nn.Parameter(torch.zeros(grad.shape, dtype=grad.dtype, device=grad.device))
    parameter.grad = grad
    return parameter


def exact_norm(grad: torch.Tensor) -> float:
    return math.sqrt(math.fsum(x * x for x in grad.double().flatten().tolist()))


@pytest.mark.usefixtures("compiled")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 1000, (1 << 20) + 3])
def test_compiled_norms_are_the_exact_norms(dtype: torch.dtype, size: int) -> None:
    """Every length around the eight-value blocks, and one past the size where the sum runs
    with the GIL released."""
    generator = torch.Generator().manual_seed(size)
    grad = (torch.randn(size, generator=generator, dtype=torch.float64) * 3 + 1).to(dtype)
    (norm,) = compiled_norms([parameter_with(grad)]) or [None]
    assert norm == pytest.approx(exact_norm(grad), rel=1e-12, abs=0)


@pytest.mark.usefixtures("compiled")
def test_compiled_norms_of_a_model_match_torch_in_order() -> None:
    model = model_with_grads()
    expected = [float(torch.linalg.vector_norm(p.grad)) for p in model.parameters()]
    found = ParameterNorms(model.named_parameters()).values()
    assert found is not None
    assert found[0] == [name for name, _ in model.named_parameters()]
    assert found[1] == pytest.approx(expected, rel=1e-6)
    assert found[1] == compiled_norms(list(model.parameters()))


@pytest.mark.usefixtures("compiled")
def test_parameters_without_a_gradient_are_skipped_by_the_compiled_module_too() -> None:
    """A parameter that took no part in a step has no gradient: its place holds None, and
    the norms leave it out as torch's path does, still in one compiled call."""
    first, unused, last = (parameter_with(torch.full((n,), 2.0)) for n in (3, 4, 5))
    unused.grad = None
    assert compiled_norms([first, unused, last]) == [math.sqrt(12), None, math.sqrt(20)]
    norms = ParameterNorms([("first", first), ("unused", unused), ("last", last)])
    assert norms.values() == (["first", "last"], [math.sqrt(12), math.sqrt(20)])
    first.grad = last.grad = None
    assert norms.values() is None


@pytest.mark.usefixtures("compiled")
def test_a_view_with_an_offset_is_read_from_where_it_starts() -> None:
    base = torch.arange(20.0)
    view = base[5:12]  # contiguous, its memory starts 5 values in
    assert view.is_contiguous() and view.storage_offset() == 5
    (norm,) = compiled_norms([parameter_with(view)]) or [None]
    assert norm == pytest.approx(exact_norm(view), rel=1e-12)


@pytest.mark.usefixtures("compiled")
@pytest.mark.parametrize(
    "grad",
    [
        torch.ones(4, 4).t()[:, ::2],  # not contiguous
        torch.ones(4, dtype=torch.bfloat16),
        torch.ones(4, dtype=torch.float16),
        torch.ones(4).to_sparse(),
        torch.ones(4, device="meta"),
    ],
    ids=["strided", "bfloat16", "float16", "sparse", "meta"],
)
def test_what_the_compiled_module_cannot_read_takes_torch_s_path(grad: torch.Tensor) -> None:
    readable = parameter_with(torch.full((3,), 2.0))
    other = parameter_with(grad)
    assert compiled_norms([readable, other]) is None
    expected: tuple[list[str], list[float]] | None
    if grad.is_sparse:  # torch's path skips them, as before
        expected = (["readable"], [math.sqrt(12)])
    elif grad.is_meta:
        return  # torch cannot read a meta tensor either
    else:
        expected = (["readable", "other"], [math.sqrt(12), exact_norm(grad)])
    found = ParameterNorms([("readable", readable), ("other", other)]).values()
    assert found is not None and expected is not None
    assert found[0] == expected[0]
    assert found[1] == pytest.approx(expected[1], rel=1e-3)


@pytest.mark.usefixtures("compiled")
def test_a_gradient_whose_memory_cannot_be_read_takes_torch_s_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tensor without storage (a functorch wrapper) refuses ``data_ptr()``; torch's path
    then reads it, or reports what is wrong."""
    parameter = parameter_with(torch.full((3,), 2.0))

    def refuses(self: torch.Tensor) -> int:
        raise RuntimeError("Cannot access data pointer of Tensor that doesn't have storage")

    monkeypatch.setattr(torch.Tensor, "data_ptr", refuses)
    assert compiled_norms([parameter]) is None
    assert ParameterNorms([("p", parameter)]).values() == (
        ["p"],
        [pytest.approx(math.sqrt(12), rel=1e-6)],
    )


@pytest.mark.usefixtures("compiled")
def test_a_grad_getter_that_changes_the_list_does_not_change_what_is_read() -> None:
    """The module reads a snapshot of the list it is given: a ``grad`` written in Python
    (a Parameter subclass) that empties the caller's list leaves the call intact."""
    parameters: list[nn.Parameter] = []

    class Emptying(nn.Parameter):
        @property  # overrides torch's C getter, on purpose
        def grad(self) -> torch.Tensor:
            parameters.clear()
            return torch.full((2,), 3.0)

    parameters.extend([Emptying(torch.zeros(2)), parameter_with(torch.full((3,), 2.0))])
    assert compiled_norms(parameters) == [pytest.approx(math.sqrt(18)), math.sqrt(12)]
    assert parameters == []


@pytest.mark.usefixtures("compiled")
def test_a_tensor_subclass_takes_torch_s_path() -> None:
    class Traced(torch.Tensor):
        pass

    grad = torch.full((3,), 2.0).as_subclass(Traced)
    parameter = nn.Parameter(torch.zeros(3))
    parameter.grad = grad
    assert compiled_norms([parameter]) is None


@pytest.mark.usefixtures("compiled")
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_compiled_norms_of_gradients_that_are_not_finite(value: float) -> None:
    grad = torch.tensor([value, 1.0, value, 2.0] * 5)
    (norm,) = compiled_norms([parameter_with(grad)]) or [None]
    assert norm is not None and not math.isfinite(norm)
    assert math.isnan(norm) == math.isnan(value)


@pytest.mark.usefixtures("compiled")
def test_compiled_norms_do_not_overflow_where_float32_arithmetic_does() -> None:
    """Squares are summed in double precision: finite float32 gradients have a finite norm
    (torch's float32 norm of these is inf)."""
    grad = torch.full((2,), 1e30)
    (norm,) = compiled_norms([parameter_with(grad)]) or [None]
    assert norm == pytest.approx(math.sqrt(2) * 1e30, rel=1e-6)


@pytest.mark.usefixtures("compiled")
def test_compiled_norms_of_gradients_that_require_grad() -> None:
    grad = torch.ones(3, requires_grad=True) * 2.0  # what create_graph=True leaves
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compiled_norms([parameter_with(grad)]) == pytest.approx([math.sqrt(12)])


@pytest.mark.usefixtures("compiled")
@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.floats(min_value=0.0, max_value=1e300, allow_nan=False, allow_infinity=False),
        min_size=1,
        max_size=40,
    )
)
def test_the_compiled_summary_is_python_s(values: list[float]) -> None:
    total, largest, smallest = summary(values)
    expected = summary_in_python(values)
    assert (largest, smallest) == expected[1:]
    assert total == pytest.approx(expected[0], rel=1e-14, abs=0.0)


@pytest.mark.usefixtures("compiled")
@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([3.0, 4.0], (5.0, 4.0, 3.0)),
        ([0.0, 0.0], (0.0, 0.0, 0.0)),
        ([math.inf, 1.0], (math.inf, math.inf, 1.0)),
        ([1e300, 1e300], (math.sqrt(2) * 1e300, 1e300, 1e300)),
    ],
)
def test_the_compiled_summary_at_its_edges(
    values: list[float], expected: tuple[float, float, float]
) -> None:
    assert summary(values) == pytest.approx(expected)
    assert gradients._norm_summary is not None
    assert gradients._norm_summary(values) == pytest.approx(expected)


@pytest.mark.usefixtures("compiled")
def test_the_compiled_summary_of_a_nan_is_all_nan_and_other_input_takes_python_s_path() -> None:
    assert gradients._norm_summary is not None
    assert all(math.isnan(x) for x in gradients._norm_summary([1.0, math.nan, 2.0]))
    assert summary([3, 4]) == (5.0, 4, 3)  # ints: the compiled call refuses, Python answers
    with pytest.raises(TypeError):
        gradients._norm_summary((3.0, 4.0))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        gradients._norm_summary([])


def test_without_the_compiled_module_torch_s_path_gives_the_norms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = model_with_grads()
    monkeypatch.setattr(gradients, "_cpu_norms", None)
    assert compiled_norms(list(model.parameters())) is None
    found = ParameterNorms(model.named_parameters()).values()
    assert found == norm_values(model.named_parameters())


@pytest.mark.parametrize("path", ["compiled", "torch"])
@pytest.mark.parametrize("missing", [(), ("0.bias",), ("0.weight", "0.bias", "2.weight", "2.bias")])
def test_measure_is_the_values_and_their_summary(
    monkeypatch: pytest.MonkeyPatch, path: str, missing: tuple[str, ...]
) -> None:
    """``measure()``, the every-step call, gives what ``values()`` and ``summary()`` give,
    on either path and with parameters that have no gradient; None when none has one."""
    if path == "torch":
        monkeypatch.setattr(gradients, "_cpu_norms", None)
    elif gradients._cpu_norms is None:
        pytest.skip("the compiled module is not built")
    model = model_with_grads()
    for name, parameter in model.named_parameters():
        if name in missing:
            parameter.grad = None
    norms = ParameterNorms(model.named_parameters())
    found = norms.values()
    if found is None:
        assert norms.measure() is None
        return
    names, values = found
    assert norms.measure() == (names, values, *summary(values))
    assert names == [name for name, _ in model.named_parameters() if name not in missing]


@pytest.mark.usefixtures("compiled")
@pytest.mark.parametrize("without_gradient", [(), ("0.bias",)])
@pytest.mark.parametrize("layers", [1, 3, 16])
def test_queued_points_are_the_python_path_s(
    tmp_path: Path, layers: int, without_gradient: tuple[str, ...]
) -> None:
    """``point_queue``'s callable (norms, summary and points made in C, handed to the recorder's
    compiled queue) spools what ``measure()`` and ``record_series`` spool, leaving out a
    parameter without a gradient as they do (its norms are not summed twice)."""
    from collector import Recorder, RecorderTuning, new_run_id
    from tests.collector.test_recorder import make_settings, spool_lines

    model = model_with_grads()
    for name, parameter in model.named_parameters():
        if name in without_gradient:
            parameter.grad = None
    with_gradient = 4 - len(without_gradient)
    norms = ParameterNorms(model.named_parameters())
    tuning = RecorderTuning(flush_interval_s=3600)
    spooled = []
    for path in ("compiled", "python"):
        settings = make_settings(tmp_path / path)
        with Recorder(new_run_id(), experiment="x", settings=settings, tuning=tuning) as rec:
            put_series = rec.compiled_put_series
            if put_series is None:
                pytest.skip("collector._pending is not built")
            if path == "compiled":
                queue = norms.point_queue(layers)
                assert queue is not None and queue(7.0, put_series) is True
            else:
                found = norms.measure()
                assert found is not None
                names, values, total, largest, smallest = found
                head = {"total_norm": total, "max_norm": largest, "min_norm": smallest}
                rec.record_series(
                    "gradient_layer",
                    "norm",
                    values[:layers],
                    "layer",
                    names[:layers],
                    {"step": 7.0},
                    head=("gradient", {**head, "step": 7.0}),
                )
            rec.flush()
            assert rec.stats.points_recorded == 1 + min(layers, with_gradient)
            spooled.append(
                [line.rsplit(" ", 1)[0].replace(rec.run_id, "RUN") for line in spool_lines(rec)]
            )
    assert spooled[0] == spooled[1]
    assert spooled[0][0].startswith("gradient,")
    assert len(spooled[0]) == 1 + min(layers, with_gradient)
    assert not any("layer=0.bias" in line for line in spooled[0] if without_gradient)


@pytest.mark.usefixtures("compiled")
def test_what_the_point_queue_does_not_queue_it_leaves_to_the_python_path(
    tmp_path: Path,
) -> None:
    from collector import Recorder, RecorderTuning, new_run_id
    from tests.collector.test_recorder import make_settings

    model = model_with_grads()
    norms = ParameterNorms(model.named_parameters())
    settings = make_settings(tmp_path)
    rec = Recorder(new_run_id(), experiment="x", settings=settings, tuning=RecorderTuning())
    put_series = rec.compiled_put_series
    if put_series is None:
        pytest.skip("collector._pending is not built")
    assert norms.point_queue(0) is None  # no layer wanted: the head alone
    assert ParameterNorms([]).point_queue(4) is None  # nothing to measure
    queue = norms.point_queue(4)
    assert queue is not None
    for parameter in model.parameters():
        parameter.grad = None
    assert queue(1.0, put_series) is not True  # no gradient at all
    model = model_with_grads()
    queue = ParameterNorms(model.named_parameters()).point_queue(4)
    assert queue is not None
    model[0].bias.grad = torch.ones(32)[::2]  # not contiguous: torch's path
    assert queue(1.0, put_series) is not True
    model[0].bias.grad = torch.ones(16)
    assert rec.stats.points_recorded == 0
    rec.close()
    assert queue(1.0, put_series) is not True  # closed: record_series drops them
    assert rec.stats.points_recorded == 0


@pytest.mark.slow
def test_without_a_c_compiler_the_package_still_builds(tmp_path: Path) -> None:
    """The compiled modules are optional: a wheel built where the C compiler fails holds the
    pure-Python package, without them (the norms then take torch's path, the queue and the
    flush and the hook dispatch the Python ones)."""
    repo = Path(__file__).resolve().parents[2]
    source = tmp_path / "source"
    for name in ("pyproject.toml", "setup.py", "README.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(repo / name, source / name)
    for package in ("collector", "trainer"):
        shutil.copytree(
            repo / package,
            source / package,
            ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info"),
        )
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"),
            *("--wheel-dir", str(tmp_path / "dist"), str(source)),
        ],
        env={**os.environ, "CC": "false", "LDSHARED": "false"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("runwatch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "collector/lightning/gradients.py" in names
    assert "collector/lightning/_gradnorms.pyi" in names
    assert "collector/_lines.pyi" in names
    assert "collector/_pending.pyi" in names and "collector/pending.py" in names
    assert "collector/lightning/_dispatch.pyi" in names
    assert not [name for name in names if name.endswith(".so")]
