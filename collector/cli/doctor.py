"""``runwatch doctor``: configuration and reachability of each backend, secrets masked.

Exit 0 when every configured backend answers, 1 when one does not. InfluxDB not configured is
not a failure (spool-only mode), but its unshipped backlog is reported either way.
"""

from __future__ import annotations

import argparse
import json
import socket
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from collector.config import Settings, mask_url

if TYPE_CHECKING:
    from collector.store import RunSummary


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def register(sub: Any) -> None:
    parser = sub.add_parser("doctor", help="show configuration and check each backend")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per network check")
    parser.set_defaults(handler=run_doctor)


def run_doctor(args: argparse.Namespace, settings: Settings) -> int:
    checks = [
        check_database(settings),
        check_influxdb(settings, args.timeout),
        check_prometheus_port(settings),
    ]
    backlog = spool_backlog(settings)
    if args.json:
        print(
            json.dumps(
                {
                    "settings": settings.describe(),
                    "checks": [asdict(c) for c in checks],
                    "backlog": backlog,
                },
                indent=2,
            )
        )
    else:
        print_report(settings, checks, backlog)
    return 0 if all(c.ok for c in checks) else 1


def print_report(settings: Settings, checks: list[Check], backlog: list[dict[str, Any]]) -> None:
    print("Configuration")
    for key, value in settings.describe().items():
        print(f"  {key:<26} {value}")
    print("Backends")
    for check in checks:
        print(f"  [{'ok' if check.ok else 'FAIL':>4}] {check.name:<20} {check.detail}")
    print("Spool backlog (points not yet acknowledged by InfluxDB)")
    if not backlog:
        print("  none")
    for item in backlog:
        print(
            f"  {item['run_id']:<30} {item['unshipped_lines']:>10} lines  {item['unshipped_bytes']:>12} bytes"
        )


def check_database(settings: Settings) -> Check:
    from sqlalchemy import text

    from collector.store import Store

    url = mask_url(settings.db_url)
    store = Store.from_settings(settings)
    try:
        with store.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        runs = store.list_runs()
        return Check("database", True, f"{url} ({_count_by_status(runs)})")
    except Exception as exc:
        return Check("database", False, f"{url}: {_one_line(exc)}")
    finally:
        store.dispose()


def _count_by_status(runs: Sequence[RunSummary]) -> str:
    """``"5 runs: 3 completed, 1 in_progress, 1 crashed"``."""
    counts = Counter(run.status for run in runs)
    if not counts:
        return "0 runs"
    by_status = ", ".join(f"{n} {status}" for status, n in counts.most_common())
    return f"{len(runs)} run{'s' if len(runs) != 1 else ''}: {by_status}"


def check_influxdb(settings: Settings, timeout: float) -> Check:
    import urllib.error  # http.client and the rest: only a doctor's visit needs them
    import urllib.request

    if not settings.influx_url:
        return Check(
            "influxdb", True, "not configured: points stay in the spool (runwatch sync ships them)"
        )
    base = settings.influx_url.rstrip("/")
    url = mask_url(base)
    last_error = "no answer"
    for path in ("/health", "/ping"):
        try:
            with urllib.request.urlopen(base + path, timeout=timeout) as resp:  # noqa: S310 - http(s) validated in config
                if resp.status in (200, 204):
                    return Check("influxdb", True, f"{url} answers {path} ({resp.status})")
        except urllib.error.HTTPError as exc:
            last_error = f"HTTP {exc.code} on {path}"
        except OSError as exc:
            last_error = _one_line(exc)
    return Check("influxdb", False, f"{url}: {last_error}")


def check_prometheus_port(settings: Settings) -> Check:
    if not settings.prometheus_enabled:
        return Check("prometheus", True, "exporter disabled (RUNWATCH_PROMETHEUS_PORT=0)")
    where = f"{settings.prometheus_addr}:{settings.prometheus_port}"
    family = socket.AF_INET6 if ":" in settings.prometheus_addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((settings.prometheus_addr, settings.prometheus_port))
        except OSError:
            return Check(
                "prometheus",
                True,
                f"exporter port {where} is in use (a training run may be serving it)",
            )
    return Check("prometheus", True, f"exporter will listen on {where}")


def spool_backlog(settings: Settings) -> list[dict[str, Any]]:
    from collector.spool import backlog

    return [
        {
            "run_id": b.run_id,
            "unshipped_bytes": b.unshipped_bytes,
            "unshipped_lines": b.unshipped_lines_estimate,
        }
        for b in backlog(settings.spool_dir)
    ]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
