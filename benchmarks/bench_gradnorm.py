"""Gradient norms: what ``GradientMonitorCallback`` computes (``ParameterNorms``: on the CPU the
compiled module's sums where it is built, else torch's path), torch's path alone
(``norm_values``: fused on an accelerator, one by one on the CPU), fused ``torch._foreach_norm``
+ one ``.tolist()``, and the naive ``.norm().item()`` per parameter.

Two parameter sets: the small MLP of bench_lightning (6 tensors) and ResNet-18's parameter
shapes (62 tensors, 11.7 M values; built directly, torchvision is not needed). Every method
returns the same numbers (checked). Interleaved repetitions; medians and ratios to the naive
loop. On CUDA (when present) the same runs on the GPU, where each ``.item()`` is a device sync.

Those loops run hot. Inside a training step the caches hold the step's tensors, not the norm
code, and the figures differ: the last table times each method where runwatch runs it, in
``on_before_optimizer_step`` of a Lightning fit of the small MLP, taking turns step by step,
and what one ``vector_norm`` costs there as the hook's first torch call and as its second.

    python benchmarks/bench_gradnorm.py [--repeats 300] [--steps 1800]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from collector.lightning.gradients import (
    ParameterNorms,
    compiled_norms,
    fused_norms,
    gradient_norms_per_parameter_loop,
    norm_values,
)


def mlp_shapes() -> list[tuple[int, ...]]:
    return [(256, 64), (256,), (256, 256), (256,), (2, 256), (2,)]


def resnet18_shapes() -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7), (64,), (64,)]
    in_channels = 64
    for out_channels, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            first_in = in_channels if block == 0 else out_channels
            shapes += [(out_channels, first_in, 3, 3), (out_channels,), (out_channels,)]
            shapes += [(out_channels, out_channels, 3, 3), (out_channels,), (out_channels,)]
            if block == 0 and (stride != 1 or first_in != out_channels):
                shapes += [(out_channels, first_in, 1, 1), (out_channels,), (out_channels,)]
        in_channels = out_channels
    shapes += [(1000, 512), (1000,)]
    return shapes


def parameters(shapes: list[tuple[int, ...]], device: torch.device) -> list[tuple[str, Any]]:
    generator = torch.Generator().manual_seed(0)
    named = []
    for index, shape in enumerate(shapes):
        parameter = nn.Parameter(torch.empty(shape).to(device))
        parameter.grad = torch.randn(shape, generator=generator).to(device)
        named.append((f"p{index}", parameter))
    return named


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def norm_time(grad: torch.Tensor, after: torch.Tensor | None = None) -> float:
    """Seconds of one ``float(vector_norm(grad))``, after one of ``after`` (untimed) if given."""
    with torch.no_grad():
        if after is not None:
            float(torch.linalg.vector_norm(after))
        started = time.perf_counter()
        float(torch.linalg.vector_norm(grad))
        return time.perf_counter() - started


def compare(label: str, shapes: list[tuple[int, ...]], device: torch.device, repeats: int) -> None:
    named = parameters(shapes, device)
    grads = [parameter.grad for _, parameter in named]
    norms = ParameterNorms(named)
    methods: dict[str, Callable[[], object]] = {
        "runwatch": norms.values,
        "torch's path": lambda: norm_values(named),
        "fused": lambda: fused_norms(grads),
        "per-parameter .item()": lambda: gradient_norms_per_parameter_loop(named),
    }
    reference = gradient_norms_per_parameter_loop(named, max_layers=len(named))
    found, by_torch = norms.values(), norm_values(named)
    assert reference is not None and found is not None and by_torch is not None
    expected = list(reference.layers.values())
    for values in (found[1], by_torch[1], fused_norms(grads)):
        assert all(abs(v - e) <= 1e-4 * e for v, e in zip(values, expected, strict=True))
    timings: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(10):  # warm-up
        for method in methods.values():
            method()
    for _ in range(repeats):
        for name, method in methods.items():
            timings[name].append(timed(method, device))
    medians = {name: statistics.median(values) * 1e6 for name, values in timings.items()}
    loop_us = medians["per-parameter .item()"]
    values = sum(torch.Size(s).numel() for s in shapes)
    print(
        f"{label:<30} {len(shapes):>3} tensors {values / 1e6:6.2f} M values  "
        + "  ".join(f"{name} {us:8.1f} µs ({loop_us / us:4.2f}x)" for name, us in medians.items())
    )


def in_training_steps(steps: int) -> None:
    """Each method in turn at ``on_before_optimizer_step`` of one fit (CPU, small MLP)."""
    import logging
    import warnings

    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    class MLP(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 2)
            )

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            features, labels = batch
            return nn.functional.cross_entropy(self.net(features), labels)

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    class TakeTurns(pl.Callback):
        def __init__(self) -> None:
            self.timings: dict[str, list[float]] = {}
            self.norms: ParameterNorms | None = None

        def on_train_start(self, trainer: pl.Trainer, module: Any) -> None:
            self.norms = ParameterNorms(module.named_parameters())  # as the callback does

        def on_before_optimizer_step(self, trainer: pl.Trainer, module: Any, _: Any) -> None:
            named = list(module.named_parameters())
            grads = [parameter.grad for _, parameter in named]
            assert self.norms is not None
            methods: dict[str, Callable[[], object]] = {
                "runwatch": self.norms.values,
                "torch's path": lambda: norm_values(named),
                "fused": lambda: fused_norms(grads),
                "per-parameter .item()": lambda: gradient_norms_per_parameter_loop(named),
            }
            # one vector_norm, timed alone: as the step's first torch call, or after another
            first_calls: dict[str, Callable[[], float]] = {
                "256 values, first": lambda: norm_time(grads[1]),
                "65,536 values, first": lambda: norm_time(grads[2]),
                "65,536 values, second": lambda: norm_time(grads[2], after=grads[1]),
            }
            turns = [*methods, *first_calls]
            name = turns[trainer.global_step % len(turns)]
            if name in methods:
                elapsed = timed(methods[name], torch.device("cpu"))
            else:
                elapsed = first_calls[name]()
            if trainer.global_step >= 30:  # past warm-up
                self.timings.setdefault(name, []).append(elapsed)

    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(steps * 64, 64, generator=generator)
    data = DataLoader(TensorDataset(features, (features[:, 0] > 0).long()), batch_size=64)
    turns = TakeTurns()
    pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        callbacks=[turns],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    ).fit(MLP(), data)
    medians = {name: statistics.median(values) * 1e6 for name, values in turns.timings.items()}
    loop_us = medians.pop("per-parameter .item()")
    methods = ("runwatch", "torch's path", "fused")
    print(
        f"{'small MLP, in training steps':<30} {steps} steps, each method every seventh: "
        + "  ".join(
            f"{name} {medians[name]:8.1f} µs ({loop_us / medians[name]:4.2f}x)" for name in methods
        )
        + f"  per-parameter .item() {loop_us:8.1f} µs"
    )
    print(
        f"{'  one vector_norm in the hook':<30} "
        + "  ".join(f"{name} {us:6.1f} µs" for name, us in medians.items() if name not in methods)
    )


def _compiled_built() -> bool:
    parameter = nn.Parameter(torch.zeros(1))
    parameter.grad = torch.ones(1)
    return compiled_norms([parameter]) is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--steps", type=int, default=1800, help="training steps (last table)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    built = _compiled_built()
    print(
        "medians; (x): how many times faster than one .item() per parameter; compiled module "
        + ("built: runwatch's CPU figures are its sums" if built else "NOT built: torch's path")
    )
    for device in devices:
        repeats = args.repeats if device.type == "cuda" else max(args.repeats // 10, 20)
        compare(f"small MLP ({device.type})", mlp_shapes(), device, args.repeats)
        compare(f"ResNet-18 shapes ({device.type})", resnet18_shapes(), device, repeats)
    in_training_steps(args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
