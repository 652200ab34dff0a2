"""The federated app's settings, carried as Flower run config (``[tool.flwr.app.config]``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from collector.ids import validate_run_id
from trainer.defaults import DEFAULT_SEED

ENGINES = ("simulation", "deployment")
"""How the Flower app runs: in-process simulation, or a local SuperLink with SuperNodes."""
DEFAULT_TIMEOUT_S = 1800.0
"""Seconds a whole federated run may take."""

RunConfigValue = bool | int | float | str

# dataclass field -> run-config key (Flower's convention is kebab-case)
_KEYS = {
    "num_rounds": "num-server-rounds",
    "num_clients": "num-clients",
    "local_epochs": "local-epochs",
    "batch_size": "batch-size",
    "lr": "lr",
    "hidden": "hidden",
    "seed": "seed",
    "experiment": "experiment",
    "run_id": "run-id",
    "telemetry": "telemetry",
    "round_timeout_s": "round-timeout-s",
}


@dataclass(frozen=True)
class FederatedConfig:
    num_rounds: int = 3
    num_clients: int = 2
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    hidden: int = 64
    seed: int = DEFAULT_SEED
    experiment: str = "federated"
    run_id: str = ""
    """Empty: the server makes a new one."""
    telemetry: bool = True
    """False runs the same training with no wrapper and no callbacks (benchmark baseline)."""
    round_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if self.num_rounds < 1:
            raise ValueError(f"num-server-rounds must be at least 1, got {self.num_rounds}")
        if self.num_clients < 1:
            raise ValueError(f"num-clients must be at least 1, got {self.num_clients}")
        if self.local_epochs < 1:
            raise ValueError(f"local-epochs must be at least 1, got {self.local_epochs}")
        if self.run_id:
            validate_run_id(self.run_id)  # it names the run's directory under RUNWATCH_HOME

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, object]) -> FederatedConfig:
        """Read the keys that are present (others keep their defaults), coercing types."""
        values: dict[str, RunConfigValue] = {}
        for spec in fields(cls):
            key = _KEYS[spec.name]
            if key in run_config:
                values[spec.name] = _coerce(run_config[key], type(getattr(cls(), spec.name)))
        return cls(**values)  # type: ignore[arg-type]

    def to_run_config(self) -> dict[str, RunConfigValue]:
        return {_KEYS[spec.name]: getattr(self, spec.name) for spec in fields(self)}

    def hyperparams(self) -> dict[str, object]:
        params: dict[str, object] = {
            name: getattr(self, name)
            for name in ("num_rounds", "num_clients", "local_epochs", "batch_size", "lr")
        }
        params.update(hidden=self.hidden, seed=self.seed, strategy="FedAvg")
        return params


def _coerce(raw: object, kind: type) -> RunConfigValue:
    if kind is bool:
        if isinstance(raw, str):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        return bool(raw)
    if kind is int:
        return int(raw)  # type: ignore[call-overload,no-any-return]
    if kind is float:
        return float(raw)  # type: ignore[arg-type]
    return str(raw)


def write_run_config(config: FederatedConfig, path: Path) -> Path:
    """The settings as a TOML file for ``flwr run --run-config FILE`` (no quoting pitfalls)."""
    import tomli_w

    path.write_text(tomli_w.dumps(config.to_run_config()), encoding="utf-8")
    return path
