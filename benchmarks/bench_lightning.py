"""Training-step overhead of runwatch's Lightning telemetry against no logger and Lightning's
CSVLogger, TensorBoardLogger and MLFlowLogger (local file store), on a small MLP.

Every configuration trains the same module, which calls ``self.log`` for the same metrics
(loss, accuracy) each step; the trainer's ``log_every_n_steps`` sets the rate for every
logger alike. Two rates:

- default: ``log_every_n_steps=50`` and runwatch's default sampling (batch points every 10
  batches, gradient norms every 20 optimizer steps, step timing for Prometheus every step);
- every step: ``log_every_n_steps=1`` and runwatch sampling batches and gradient norms
  (total, max, min, per layer) at every step;
- every step without gradient norms: the same, ``gradient_every_n=0``.

In the every-step group, "CSV + grad_norm" is CSVLogger with the same data runwatch records
there: per-parameter gradient norms logged the way Lightning documents (``grad_norm`` and
``log_dict`` in ``on_before_optimizer_step``); plain CSVLogger records no gradient norms.
Two reference lines measure the floor under any logger at that rate: "no-op logger" is a
logger that discards what Lightning hands it (Lightning's own per-step logging path, which
every logger pays), and "no-op + norms" adds a callback computing the same per-parameter
norms runwatch computes, the same way, and discarding them (torch's arithmetic on the
training thread). What runwatch adds to a step is its distance from that floor. With
``--bounds``, more lines bound what any change to runwatch's recorder could reach (``BOUNDS``):
runwatch with its flush in Python (the compiled one, ``collector._lines``, declining every
queue), with its drain free (the flusher writes a constant line per point) and with its
recording calls free (``record``, ``record_series`` and ``record_later`` return at once; its
hooks, its gradient norms and Lightning's dispatch of them remain), and a floor for any
telemetry of the same points written in Python: a callback computing the same compiled
norms and their summary and a logger, both appending each step's values to a list.

Configurations run interleaved in one process (order rotated each round); each one's step
time is divided by the bare step time of the same round, and the medians of these paired
ratios are reported (whole-run timings drift by ±30% on a shared machine), each with a 95%
confidence interval of the median; a target counts as met or not met only when that interval
lies wholly on one side of it, else it is within the run's noise (``_stats``). A run is 400
steps, 350 timed, so that it spans a few of the recorder's flushes (one per ~125 steps at
every-step logging with norms), not one or none.

Targets (issue 15): every step with gradient norms <= 1.05x and below CSVLogger in the same
run; every step without gradient norms <= 1.03x; runwatch code on the training thread <= 60 µs
per step at every-step logging. Needs the ``bench`` extra (tensorboard, mlflow-skinny).

``--targets-only`` runs runwatch and CSVLogger alone (what the targets are judged on): about
twice the rounds of a default run in the same time (75 rounds took 23 minutes here, 30 with
``--bounds`` 32), so narrower intervals; ``--code-runs`` sets the instrumented runs per code
figure (six give the median's interval as their whole range; more, a narrower one).

    python benchmarks/bench_lightning.py [--rounds 25] [--steps 400] [--bounds | --targets-only]
        [--code-runs 6]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
warnings.filterwarnings("ignore")

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger  # noqa: E402
from lightning.pytorch.utilities import grad_norm  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from collector import recorder as recorder_module  # noqa: E402
from collector.config import load_settings  # noqa: E402
from collector.lightning import runwatch_telemetry  # noqa: E402
from collector.lightning.gradients import ParameterNorms, summary  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stats import median_interval, paired_differences, verdict  # noqa: E402

WARMUP_STEPS = 50
SELF_RUNS = 6
"""Instrumented runs per figure of code on the training thread (median; fastest shown too),
taken in turns across the configurations: six, the fewest whose range is a 95% interval of
the median."""
CODE_TARGET_S = 60e-6
"""runwatch's code on the training thread per step at every-step logging (issue 15)."""
BATCH = 64
FEATURES = 64


class BenchMLP(pl.LightningModule):
    """64 -> 256 -> 256 -> 2, Adam; logs loss and accuracy every step."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(FEATURES, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 2)
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        features, labels = batch
        logits = self.net(features)
        loss = nn.functional.cross_entropy(logits, labels)
        acc = (logits.argmax(-1) == labels).float().mean()
        self.log("train_loss", loss)
        self.log("train_acc", acc)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class StepClock(pl.Callback):
    """Time per step after warm-up (setup, teardown and epoch ends excluded): wall clock, and
    CPU time of the whole process (every thread, so runwatch's background threads count),
    which other processes on a shared machine barely disturb."""

    def __init__(self) -> None:
        self.wall = (0.0, 0.0)
        self.cpu = (0.0, 0.0)
        self.steps = 0

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        now = (time.perf_counter(), time.process_time())
        if trainer.global_step == WARMUP_STEPS:
            self.wall, self.cpu = (now[0], now[0]), (now[1], now[1])
        self.wall = (self.wall[0], now[0])
        self.cpu = (self.cpu[0], now[1])
        self.steps = trainer.global_step

    def per_step(self) -> tuple[float, float]:
        timed_steps = self.steps - WARMUP_STEPS
        return (
            (self.wall[1] - self.wall[0]) / timed_steps,
            (self.cpu[1] - self.cpu[0]) / timed_steps,
        )


def dataset(steps: int) -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(steps * BATCH, FEATURES, generator=generator)
    labels = (features[:, 0] > 0).long()
    return DataLoader(TensorDataset(features, labels), batch_size=BATCH, shuffle=False)


Factory = Callable[[Path, int], tuple[Logger | bool, list[pl.Callback]]]


def bare(workdir: Path, every: int) -> tuple[Logger | bool, list[pl.Callback]]:
    return False, []


def runwatch(sample_every: int | None, gradients: bool = True) -> Factory:
    def build(workdir: Path, every: int) -> tuple[Logger | bool, list[pl.Callback]]:
        settings = load_settings(
            {"RUNWATCH_HOME": str(workdir / "runwatch"), "RUNWATCH_PROMETHEUS_PORT": "0"},
            dotenv=None,
        )
        port = free_port()
        settings = settings.with_overrides(prometheus_port=port)
        options: dict[str, Any] = {}
        if sample_every is not None:
            options = {"batch_every_n": sample_every, "gradient_every_n": sample_every}
        if not gradients:
            options["gradient_every_n"] = 0
        telemetry = runwatch_telemetry("bench", settings=settings, **options)
        return telemetry.logger, list(telemetry.callbacks)

    return build


_CONSTANT_LINE = "batch,experiment=bench,run_id=bound loss=0.5,step=1.0 1733333333000000000\n"


def _constant_lines(recorder: Any, queued: list[Any], observations: list[Any]) -> Any:
    """The flusher's line building at no cost: one constant line per queued point (observers
    see nothing)."""
    points = 0
    for entry in queued:
        kind = type(entry)
        if kind is recorder_module._Later:
            points += entry.limit
        elif kind is recorder_module._Series:
            points += len(entry.values)
        else:
            points += 1
    return [_CONSTANT_LINE * points], points


def _recording_nothing(recorder: Any, *args: Any, **kwargs: Any) -> None:
    return None


def _compiling_nothing(recorder: Any, queued: list[Any], start: int) -> None:
    """The compiled flush declining every queue: the Python path (``_lines``) writes it."""
    return None


def runwatch_bounded(gradients: bool, **methods: Callable[..., Any]) -> Factory:
    """runwatch at every step, with methods of its ``Recorder`` replaced for the fit: from
    the build until the logger's ``finalize`` has closed the recorder (its last flush runs
    with them too). No callback is added: Lightning's dispatch of one would cost the step
    more than some of what these lines measure."""
    build = runwatch(1, gradients)

    def bounded(workdir: Path, every: int) -> tuple[Logger | bool, list[pl.Callback]]:
        logger, callbacks = build(workdir, every)
        assert isinstance(logger, Logger)
        recorder = recorder_module.Recorder
        saved = {name: vars(recorder)[name] for name in methods}
        for name, method in methods.items():
            setattr(recorder, name, method)
        finalize = logger.finalize

        def finalize_then_restore(status: str) -> None:
            try:
                finalize(status)
            finally:
                for name, method in saved.items():
                    setattr(recorder, name, method)

        logger.finalize = finalize_then_restore  # type: ignore[method-assign]
        return logger, callbacks

    return bounded


def csv_logger(workdir: Path, every: int) -> tuple[Logger | bool, list[pl.Callback]]:
    return CSVLogger(save_dir=str(workdir / "csv")), []


class LightningGradNorms(pl.Callback):
    """Lightning's documented way to track gradient norms: ``grad_norm`` and ``log_dict`` in
    ``on_before_optimizer_step`` (per-parameter L2 norms and their total, every step)."""

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        pl_module.log_dict(grad_norm(pl_module, norm_type=2))


def csv_logger_with_grad_norms(
    workdir: Path, every: int
) -> tuple[Logger | bool, list[pl.Callback]]:
    return CSVLogger(save_dir=str(workdir / "csv")), [LightningGradNorms()]


class DiscardingLogger(Logger):
    """A logger that keeps nothing: what Lightning does per logged step before any logger's
    own code runs."""

    @property
    def name(self) -> str:
        return "discard"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: Any, step: int | None = None) -> None:
        pass

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


class TorchNormsOnly(pl.Callback):
    """The per-parameter L2 norms runwatch computes on the CPU (``float(vector_norm(grad))``
    each, parameters listed once per fit), computed and dropped."""

    def __init__(self) -> None:
        self.parameters: list[torch.nn.Parameter] = []
        self.norms: list[float] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.parameters = [p for p in pl_module.parameters() if p.requires_grad]

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        norm = torch.linalg.vector_norm
        self.norms = [float(norm(p.grad)) for p in self.parameters if p.grad is not None]


def discarding_logger(workdir: Path, every: int) -> tuple[Logger | bool, list[pl.Callback]]:
    return DiscardingLogger(), []


def discarding_logger_with_norms(
    workdir: Path, every: int
) -> tuple[Logger | bool, list[pl.Callback]]:
    return DiscardingLogger(), [TorchNormsOnly()]


class MinimalTelemetry(pl.Callback):
    """What any telemetry of runwatch's every-step points must do on the training thread, and
    nothing more: the compiled gradient norms and their summary (``gradients``), each step's
    values appended to a list as they come. No checks, no queue, no lines, no file, no live
    gauges: a floor, not a logger anyone could use."""

    def __init__(self, kept: list[tuple[Any, ...]], gradients: bool) -> None:
        self.kept = kept
        self.gradients = gradients
        self.norms: ParameterNorms | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.gradients:
            named = pl_module.named_parameters()
            self.norms = ParameterNorms((n, p) for n, p in named if p.requires_grad)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        found = self.norms.values() if self.norms is not None else None
        if found is not None:
            self.kept.append((summary(found[1]), tuple(found[1])))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, *args: Any
    ) -> None:
        self.kept.append((time.perf_counter(), outputs))


class KeepingLogger(DiscardingLogger):
    """A logger that appends what Lightning hands it to a list."""

    def __init__(self, kept: list[tuple[Any, ...]]) -> None:
        super().__init__()
        self.kept = kept

    def log_metrics(self, metrics: Any, step: int | None = None) -> None:
        self.kept.append((step, dict(metrics)))


def minimal_telemetry(gradients: bool) -> Factory:
    def build(workdir: Path, every: int) -> tuple[Logger | bool, list[pl.Callback]]:
        kept: list[tuple[Any, ...]] = []
        return KeepingLogger(kept), [MinimalTelemetry(kept, gradients)]

    return build


def tensorboard_logger(workdir: Path, every: int) -> tuple[Logger | bool, list[pl.Callback]]:
    return TensorBoardLogger(save_dir=str(workdir / "tb")), []


def mlflow_logger(workdir: Path, every: int) -> tuple[Logger | bool, list[pl.Callback]]:
    uri = f"file:{workdir / 'mlruns'}"
    return MLFlowLogger(experiment_name="bench", tracking_uri=uri), []


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_once(factory: Factory, every: int, steps: int, workdir: Path) -> tuple[float, float]:
    torch.manual_seed(0)
    logger, callbacks = factory(workdir, every)
    clock = StepClock()
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=[*callbacks, clock],
        log_every_n_steps=every,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
    )
    trainer.fit(BenchMLP(), train_dataloaders=dataset(steps))
    return clock.per_step()


EVERY_STEP = "every step (log_every_n_steps=1, runwatch batch + gradient norms every step)"
WITHOUT_NORMS = "every step without gradient norms (runwatch gradient_every_n=0)"
GROUPS: dict[str, tuple[int, dict[str, Factory]]] = {
    "default rate (log_every_n_steps=50, runwatch default sampling)": (
        50,
        {
            "runwatch": runwatch(None),
            "CSVLogger": csv_logger,
            "TensorBoardLogger": tensorboard_logger,
            "MLFlowLogger": mlflow_logger,
        },
    ),
    EVERY_STEP: (
        1,
        {
            "runwatch": runwatch(1),
            "CSVLogger": csv_logger,
            "CSV + grad_norm": csv_logger_with_grad_norms,
            "TensorBoardLogger": tensorboard_logger,
            "MLFlowLogger": mlflow_logger,
            "no-op logger": discarding_logger,
            "no-op + norms": discarding_logger_with_norms,
        },
    ),
    WITHOUT_NORMS: (
        1,
        {"runwatch": runwatch(1, gradients=False), "CSVLogger": csv_logger},
    ),
}
_FREE_RECORDER = {
    "record": _recording_nothing,
    "record_series": _recording_nothing,
    "record_later": _recording_nothing,
}
BOUNDS: dict[str, dict[str, Factory]] = {
    EVERY_STEP: {
        "rw, Python flush": runwatch_bounded(True, _compiled_lines=_compiling_nothing),
        "rw, free drain": runwatch_bounded(
            True, _lines=_constant_lines, _compiled_lines=_compiling_nothing
        ),
        "rw, free recorder": runwatch_bounded(True, **_FREE_RECORDER),
        "floor: appends": minimal_telemetry(gradients=True),
    },
    WITHOUT_NORMS: {
        "rw, Python flush": runwatch_bounded(False, _compiled_lines=_compiling_nothing),
        "rw, free recorder": runwatch_bounded(False, **_FREE_RECORDER),
        "floor: appends": minimal_telemetry(gradients=False),
    },
}
"""Reference lines (``--bounds``): runwatch's every-step configurations with parts of its
recorder in Python or free. "Python flush": the flusher builds every flush's lines in Python
(what the compiled flush saves); "free drain": the flusher builds no lines (a constant text
per point), the bound for any cheaper drain (in a writer process, or with observers and the
spool free too); "free recorder": ``record``, ``record_series`` and ``record_later`` return
at once, leaving runwatch's hooks, its gradient norms and Lightning's dispatch of them: the
bound for any recorder. "floor: appends": one callback and a logger that compute the
compiled norms and their summary and append each step's values to a list
(``MinimalTelemetry``): the bound for any telemetry of these points written in Python,
before it stores or shows anything."""
RATIO_TARGETS = {
    "default rate (log_every_n_steps=50, runwatch default sampling)": 1.03,
    EVERY_STEP: 1.05,
    WITHOUT_NORMS: 1.03,
}
"""runwatch's CPU ratio per group that ``verdicts`` holds its median to (the targets' one
statement: each verdict line prints its target)."""


TARGET_CONFIGS = ("runwatch", "CSVLogger")
"""The configurations the targets name (``--targets-only`` runs these alone)."""


def verdicts(group: str, cpu: dict[tuple[str, str], list[float]]) -> list[str]:
    """The group's targets against the 95% confidence interval of runwatch's median CPU
    ratio (``_stats``): met, not met, or within this run's noise; below CSVLogger is judged
    on the rounds' paired differences."""
    limit = RATIO_TARGETS.get(group)
    if limit is None:
        return []
    ours = cpu[(group, "runwatch")]
    interval = median_interval(ours)
    lines = [
        f"runwatch <= {limit:.2f}x: {verdict(interval, limit)} "
        f"(median {statistics.median(ours):.3f}x, 95% CI {interval.low:.3f}..{interval.high:.3f})"
    ]
    if group == EVERY_STEP:
        differences = paired_differences(ours, cpu[(group, "CSVLogger")])
        paired = median_interval(differences)
        lines.append(
            f"runwatch below CSVLogger: {verdict(paired, 0.0)} (runwatch - CSVLogger by round: "
            f"median {statistics.median(differences):+.3f}, "
            f"95% CI {paired.low:+.3f}..{paired.high:+.3f})"
        )
    return lines


class SelfTime:
    """Time spent inside a logger's methods and its callbacks' hooks during the timed steps
    (a call made from inside another timed one counts once)."""

    def __init__(self) -> None:
        self.active = False
        self.seconds = 0.0
        self._depth = 0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.active or self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
                self._depth -= 1

        return timed


class SelfTimeWindow(pl.Callback):
    def __init__(self, self_time: SelfTime) -> None:
        self.self_time = self_time

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == WARMUP_STEPS:
            self.self_time.active = True

    def on_train_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.self_time.active = False


CALLBACK_HOOKS = [n for n in dir(pl.Callback) if n.startswith("on_") or n in ("setup", "teardown")]
LOGGER_METHODS = ("log_metrics", "log_hyperparams", "save", "finalize")


def code_time(build: Factory, every: int, steps: int, workdir: Path) -> float:
    """Seconds per step spent in a configuration's own code on the training thread: its
    logger's methods and its callbacks' hooks (one instrumented run)."""
    self_time = SelfTime()

    def instrumented(workdir: Path, every: int) -> tuple[Logger | bool, list[pl.Callback]]:
        logger, callbacks = build(workdir, every)
        assert isinstance(logger, Logger)
        for name in LOGGER_METHODS:
            setattr(logger, name, self_time.wrap(getattr(logger, name)))
        for callback in callbacks:
            for name in CALLBACK_HOOKS:
                overridden = getattr(type(callback), name) is not getattr(pl.Callback, name)
                if name in vars(callback) or overridden:
                    setattr(callback, name, self_time.wrap(getattr(callback, name)))
        return logger, [SelfTimeWindow(self_time), *callbacks]

    run_once(instrumented, every, steps, workdir)
    return self_time.seconds / (steps - WARMUP_STEPS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--bounds",
        action="store_true",
        help="add the every-step reference lines: runwatch with its drain or whole recorder "
        "free, and the floor of any Python telemetry of the same points",
    )
    parser.add_argument(
        "--targets-only",
        action="store_true",
        help="run only what the targets are judged on (runwatch and CSVLogger in each group): "
        "about twice the rounds in the same time, for narrower intervals",
    )
    parser.add_argument(
        "--code-runs",
        type=int,
        default=SELF_RUNS,
        help=f"instrumented runs per code figure (default {SELF_RUNS})",
    )
    args = parser.parse_args(argv)
    if args.targets_only and args.bounds:
        parser.error("--targets-only and --bounds exclude each other")
    torch.set_num_threads(args.threads)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "mlflow"):
        logging.getLogger(name).setLevel(logging.ERROR)

    groups: dict[str, tuple[int, dict[str, Factory]]] = {
        group: (every, dict(factories)) for group, (every, factories) in GROUPS.items()
    }
    if args.targets_only:
        for _, factories in groups.values():
            for label in [label for label in factories if label not in TARGET_CONFIGS]:
                del factories[label]
    if args.bounds:
        for group, bounds in BOUNDS.items():
            groups[group][1].update(bounds)
    configs: list[tuple[str, str, int, Factory]] = []
    for group, (every, factories) in groups.items():
        for label, factory in factories.items():
            configs.append((group, label, every, factory))

    best: dict[tuple[str, str], float] = {(g, c): math.inf for g, c, _, _ in configs}
    wall: dict[tuple[str, str], list[float]] = {(g, c): [] for g, c, _, _ in configs}
    cpu: dict[tuple[str, str], list[float]] = {(g, c): [] for g, c, _, _ in configs}
    bare_times: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-lightning-") as tmp:
        workdir = Path(tmp)
        run_once(bare, 50, args.steps, workdir)  # warm caches and imports
        for round_index in range(args.rounds):
            shift = round_index % len(configs)
            order = configs[shift:] + configs[:shift]
            # bare, c1, bare, c2, ..., bare: each configuration against the mean of the
            # bare runs right before and after it
            before = run_once(bare, order[0][2], args.steps, workdir)
            bare_times.append(before)
            for group, label, every, factory in order:
                timed = run_once(factory, every, args.steps, workdir)
                best[(group, label)] = min(best[(group, label)], timed[1])
                after = run_once(bare, every, args.steps, workdir)
                bare_times.append(after)
                wall[(group, label)].append(timed[0] / ((before[0] + after[0]) / 2))
                cpu[(group, label)].append(timed[1] / ((before[1] + after[1]) / 2))
                before = after
            print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
        code_configs: dict[str, tuple[Factory, int]] = {
            "default": (runwatch(None), 50),
            "every": (runwatch(1), 1),
            "no gradients": (runwatch(1, gradients=False), 1),
            "csv": (csv_logger, 1),
            "csv norms": (csv_logger_with_grad_norms, 1),
            "floor": (discarding_logger_with_norms, 1),
        }
        # interleaved like the step timings: a noisy minute shifts every configuration alike
        code: dict[str, list[float]] = {name: [] for name in code_configs}
        for _ in range(args.code_runs):
            for name, (build, every) in code_configs.items():
                code[name].append(code_time(build, every, args.steps, workdir))

    bare_best = min(t[1] for t in bare_times)
    bare_wall = statistics.median(t[0] for t in bare_times)
    bare_cpu = statistics.median(t[1] for t in bare_times)
    print(
        f"bare step (median): {bare_wall * 1e3:.3f} ms wall, {bare_cpu * 1e3:.3f} ms CPU; "
        f"{args.steps - WARMUP_STEPS} timed steps x {args.rounds} rounds per configuration, "
        f"torch threads={args.threads}; ratio = step time / mean of the bare runs just before "
        "and after (median over rounds, range); best-of = fastest run / fastest bare run (CPU)"
    )
    names = list(groups)
    self_times = {names[0]: "default", names[1]: "every", names[2]: "no gradients"}

    def code_figure(name: str) -> str:
        spent = code[name]
        return f"{statistics.median(spent) * 1e6:.1f} µs/step (fastest {min(spent) * 1e6:.1f})"

    for group, (_, factories) in groups.items():
        print(f"\n{group}")
        print(
            f"  {'':<18} {'CPU time':>9} {'(range)':<13} {'95% CI':<13} "
            f"{'wall time':>9} {'(range)':<13} best-of"
        )
        for label in factories:
            c, w = cpu[(group, label)], wall[(group, label)]
            low, high, _ = median_interval(c)
            print(
                f"  {label:<18} {statistics.median(c):8.3f}x ({min(c):.2f}..{max(c):.2f})  "
                f"{low:.3f}..{high:.3f}  "
                f"{statistics.median(w):8.3f}x ({min(w):.2f}..{max(w):.2f})  "
                f"{best[(group, label)] / bare_best:6.3f}x"
            )
        for line in verdicts(group, cpu):
            print(f"  {line}")
        spent = statistics.median(code[self_times[group]])
        print(
            f"  runwatch code on the training thread: {code_figure(self_times[group])}, median "
            f"of {args.code_runs} instrumented runs ({spent / bare_wall:.1%} of the bare step)"
        )
        if group == EVERY_STEP:
            interval = median_interval(code["every"])
            print(
                f"  runwatch code <= {CODE_TARGET_S * 1e6:.0f} µs/step: "
                f"{verdict(interval, CODE_TARGET_S)} (95% CI {interval.low * 1e6:.1f}.."
                f"{interval.high * 1e6:.1f} µs)"
            )
            print(
                f"  the same instrumentation, interleaved: CSVLogger code {code_figure('csv')}, "
                f"CSV + grad_norm code {code_figure('csv norms')}, "
                f"no-op + norms code {code_figure('floor')}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
