"""Gradient norms (fused, and one by one on the CPU) agree with the per-parameter reference."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from collector.lightning.gradients import (
    fused_norms,
    gradient_norms,
    gradient_norms_per_parameter_loop,
    gradient_points,
    norm_values,
    norms_one_by_one,
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
    found = norm_values(model.named_parameters())
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
