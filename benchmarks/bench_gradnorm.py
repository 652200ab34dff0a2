"""Gradient norms: fused ``torch._foreach_norm`` + one ``.tolist()`` (what
``GradientMonitorCallback`` does) against one ``.norm().item()`` per parameter.

Two parameter sets: the small MLP of bench_lightning (6 tensors) and ResNet-18's parameter
shapes (62 tensors, 11.7 M values; built directly, torchvision is not needed). Both methods
return the same numbers (checked). Interleaved repetitions; medians and their ratio.
On CUDA (when present) the same runs on the GPU, where each ``.item()`` is a device sync.

    python benchmarks/bench_gradnorm.py [--repeats 300]
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

from collector.lightning.gradients import gradient_norms, gradient_norms_per_parameter_loop


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


def compare(label: str, shapes: list[tuple[int, ...]], device: torch.device, repeats: int) -> None:
    named = parameters(shapes, device)
    fused_result = gradient_norms(named, max_layers=len(named))
    loop_result = gradient_norms_per_parameter_loop(named, max_layers=len(named))
    assert fused_result is not None and loop_result is not None
    assert abs(fused_result.total - loop_result.total) <= 1e-3 * loop_result.total
    fused, loop = [], []
    for _ in range(10):  # warm-up
        gradient_norms(named)
        gradient_norms_per_parameter_loop(named)
    for _ in range(repeats):
        fused.append(timed(lambda: gradient_norms(named), device))
        loop.append(timed(lambda: gradient_norms_per_parameter_loop(named), device))
    fused_us = statistics.median(fused) * 1e6
    loop_us = statistics.median(loop) * 1e6
    values = sum(torch.Size(s).numel() for s in shapes)
    print(
        f"{label:<34} {len(shapes):>3} tensors {values / 1e6:6.2f} M values   "
        f"fused {fused_us:9.1f} µs   per-parameter .item() {loop_us:9.1f} µs   "
        f"loop/fused {loop_us / fused_us:5.2f}x"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    for device in devices:
        repeats = args.repeats if device.type == "cuda" else max(args.repeats // 10, 20)
        compare(f"small MLP ({device.type})", mlp_shapes(), device, args.repeats)
        compare(f"ResNet-18 shapes ({device.type})", resnet18_shapes(), device, repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
