"""``runwatch sync``: ships the spool's backlog (VictoriaMetrics as the InfluxDB write peer)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from collector import Recorder, load_settings, new_run_id
from collector.backlog import ship_backlog
from collector.cli import main
from collector.cli.sync import ProgressBar, render_bar
from collector.errors import ConfigError, UnknownRunError
from collector.spool import backlog
from tests.servers.victoriametrics import VictoriaMetrics


def spool_run(count: int, start_ms: int, run_id: str | None = None) -> str:
    """Record ``count`` points with no InfluxDB configured (spool only)."""
    run_id = run_id or new_run_id()
    with Recorder(run_id, experiment="sync-tests", settings=load_settings()) as rec:
        for i in range(count):
            rec.record("batch", {"step": i}, time=(start_ms + i) * 1_000_000)
    return run_id


def steps(server: VictoriaMetrics, run_id: str) -> dict[int, float]:
    found: dict[int, float] = {}
    for samples in server.samples(f'batch_step{{run_id="{run_id}"}}').values():
        found.update(samples)
    return found


def test_without_influxdb_url_one_error_line(
    runwatch_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spool_run(3, 1_700_000_000_000)
    assert main(["sync"]) == 2  # a configuration error
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("runwatch: error: INFLUXDB_V2_URL is not set")
    with pytest.raises(ConfigError):
        ship_backlog(load_settings())


def test_unknown_run_is_an_error(
    runwatch_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("INFLUXDB_V2_URL", "http://127.0.0.1:9")
    assert main(["sync", "20200101T000000Z-0000000000"]) == 1
    assert capsys.readouterr().err.strip() == (
        "runwatch: error: unknown run: '20200101T000000Z-0000000000'"
    )
    with pytest.raises(UnknownRunError):
        ship_backlog(load_settings(), "nope")


@pytest.mark.integration
def test_sync_ships_every_run_then_nothing_and_reshipping_is_harmless(
    runwatch_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    victoriametrics: VictoriaMetrics,
) -> None:
    start_ms = int(time.time() * 1000) - 600_000
    first = spool_run(12_000, start_ms)
    second = spool_run(500, start_ms)
    spool_dir = load_settings().spool_dir
    assert {b.run_id: b.unshipped_lines_estimate for b in backlog(spool_dir)} == {
        first: 12_000,
        second: 500,
    }

    monkeypatch.setenv("INFLUXDB_V2_URL", victoriametrics.url)
    assert main(["sync"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("shipped 12500 points") and "of 2 runs to http://127.0.0.1:" in out
    assert backlog(spool_dir) == []
    assert steps(victoriametrics, first) == {start_ms + i: float(i) for i in range(12_000)}
    assert steps(victoriametrics, second) == {start_ms + i: float(i) for i in range(500)}

    assert main(["sync"]) == 0
    assert capsys.readouterr().out.startswith("shipped 0 points")

    (spool_dir / f"{second}.ack").write_text("0\n")  # forgotten: everything is sent again
    assert main(["sync", second]) == 0
    assert capsys.readouterr().out.startswith("shipped 500 points (")
    assert steps(victoriametrics, second) == {start_ms + i: float(i) for i in range(500)}

    assert main(["sync", "--prune", "7"]) == 0  # shipped, but written minutes ago: kept
    assert capsys.readouterr().out.splitlines()[-1].startswith("pruned 0 spool files")
    assert main(["sync", first, "--prune", "0"]) == 0  # only this run's files
    assert capsys.readouterr().out.splitlines()[-1].startswith("pruned 1 spool file (")
    assert not (spool_dir / f"{first}.lp").exists()
    assert (spool_dir / f"{second}.lp").exists()
    assert steps(victoriametrics, first) == {start_ms + i: float(i) for i in range(12_000)}


@pytest.mark.integration
def test_sync_leaves_a_live_stream_to_its_recorder_and_reports_progress(
    runwatch_env: Path, monkeypatch: pytest.MonkeyPatch, victoriametrics: VictoriaMetrics
) -> None:
    start_ms = int(time.time() * 1000) - 900_000
    done = spool_run(2_000, start_ms)
    live = Recorder(new_run_id(), experiment="sync-tests", settings=load_settings())
    live.record("batch", {"step": 1})
    live.flush()
    monkeypatch.setenv("INFLUXDB_V2_URL", victoriametrics.url)
    try:
        calls: list[tuple[int, int]] = []
        result = ship_backlog(load_settings(), progress=lambda d, t: calls.append((d, t)))
    finally:
        live.close()
    assert result.error is None
    assert result.lines_shipped == 2_000 and result.live_streams == 1
    total = calls[0][1]
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert steps(victoriametrics, done) == {start_ms + i: float(i) for i in range(2_000)}


@pytest.mark.integration
def test_sync_fails_in_one_line_when_influxdb_is_down_and_keeps_the_backlog(
    runwatch_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    victoriametrics_factory,
) -> None:
    server: VictoriaMetrics = victoriametrics_factory()  # never started
    run_id = spool_run(100, 1_700_000_000_000)
    monkeypatch.setenv("INFLUXDB_V2_URL", server.url)
    started = time.monotonic()
    assert main(["sync", "--timeout", "2"]) == 1
    assert time.monotonic() - started < 15
    captured = capsys.readouterr()
    assert captured.out.startswith("shipped 0 points")
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("runwatch: error: could not ship everything")
    assert "stay in the spool" in err[0]
    [left] = backlog(load_settings().spool_dir)
    assert left.run_id == run_id and left.unshipped_lines_estimate == 100


def test_progress_bar_rendering() -> None:
    assert render_bar(0, 100, width=10) == "[..........]   0%  0 B / 100 B"
    assert render_bar(50, 100, width=10) == "[#####.....]  50%  50 B / 100 B"
    assert render_bar(3 << 20, 3 << 20, width=4) == "[####] 100%  3.0 MiB / 3.0 MiB"
    assert render_bar(0, 0, width=4) == "[####] 100%  0 B / 0 B"
    out = io.StringIO()
    bar = ProgressBar(out)
    bar(1, 10)
    bar(2, 10)  # throttled
    bar(10, 10)
    bar.finish()
    assert out.getvalue().count("\r") == 2 and out.getvalue().endswith("100%  10 B / 10 B\n")


@pytest.mark.parametrize("days", ["-1", "soon", "nan"])
def test_prune_needs_a_number_of_days(runwatch_env: Path, days: str) -> None:
    with pytest.raises(SystemExit) as usage:
        main(["sync", "--prune", days])
    assert usage.value.code == 2
