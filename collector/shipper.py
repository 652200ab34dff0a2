"""Shipping spooled lines to InfluxDB 2 (``/api/v2/write``) and recording what it acknowledged.

The shipper reads batches of complete lines *from the spool file* (never from an in-memory
queue, so memory stays flat however long InfluxDB is down), posts each batch with
influxdb-client's SYNCHRONOUS write API from its own thread (gzip on, about 5,000 lines a
request), and advances the stream's ``.ack`` offset after each acknowledged batch.

Failures:

- connection errors, timeouts, 408, 429 and 5xx are *transient*: retried with exponential
  backoff and full jitter, the batch stays on disk;
- 400, 413 and 422 mean InfluxDB refused *lines* (malformed, too large, outside retention):
  the batch is split in halves until the refused lines are alone, those are moved to
  ``<run>.rejected`` with a warning, the rest is shipped (re-sending the lines InfluxDB
  already took from a partial write is harmless). A 422 saying InfluxDB dropped as many
  points as the request held (``dropped=N``: all beyond the bucket's retention) moves the
  whole request there at once;
- other 4xx (401, 403, 404: token, org or bucket) are *configuration* errors: nothing is
  dropped, the data waits on disk.

influxdb-client traps avoided on purpose: its batching ``WriteApi.flush()`` does nothing and
``InfluxDBClient.close()`` does not flush a batching API (so no batching API here); it drops
NaN/Inf silently (the point builder never produces them).
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from collector.points import to_wire
from collector.spool import (
    SpoolStream,
    quarantine,
    read_ack,
    read_batch,
    split_lines,
    write_ack,
)

log = logging.getLogger("collector.shipper")

DEFAULT_BATCH_LINES = 5_000
DEFAULT_BATCH_BYTES = 4 * 1024 * 1024


class WriteError(Exception):
    """A write InfluxDB did not acknowledge."""

    def __init__(self, message: str, status: int | None = None, dropped: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.dropped = dropped
        """Points InfluxDB says it dropped (its 422 partial write ``dropped=N``), when told."""


class TransientWriteError(WriteError):
    """Worth retrying: the server is down, slow or overloaded."""


class RejectedLinesError(WriteError):
    """The server refused (some of) the lines themselves."""


class ConfigWriteError(WriteError):
    """Token, org or bucket is wrong: retrying the same request will not help."""


_DROPPED = re.compile(r"\bdropped=(\d+)")
# InfluxDB echoes a line it cannot parse before saying why: keep the why within the summary.
_ECHOED_LINE = re.compile(r"(unable to parse '.{60}).*?(': )", re.DOTALL)


def classify_status(status: int, body: str) -> WriteError:
    shortened = _ECHOED_LINE.sub(r"\1...\2", body)
    summary = " ".join(shortened.split())[:300] or "no details"
    message = f"HTTP {status}: {summary}"
    if status in (400, 413, 422):
        dropped = _DROPPED.search(body) if status == 422 else None
        return RejectedLinesError(message, status, int(dropped[1]) if dropped else None)
    if status in (408, 429) or status >= 500:
        return TransientWriteError(message, status)
    return ConfigWriteError(message, status)


class WriteTarget(Protocol):
    def write(self, payload: bytes, timeout_s: float) -> None:
        """Post line protocol; raise a ``WriteError`` unless acknowledged."""

    def close(self) -> None: ...


class InfluxWriteTarget:
    """influxdb-client's SYNCHRONOUS write API, gzip on, imported lazily (it is slow to import)."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None,
        org: str | None,
        bucket: str,
        gzip: bool = True,
    ) -> None:
        self.url = url
        self._token = token
        self._org = org
        self._bucket = bucket
        self._gzip = gzip
        self._client: Any = None
        self._write_api: Any = None

    def _connect(self) -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        self._client = InfluxDBClient(
            url=self.url, token=self._token or "", org=self._org or "", enable_gzip=self._gzip
        )
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, payload: bytes, timeout_s: float) -> None:
        from influxdb_client.rest import ApiException
        from urllib3.exceptions import HTTPError

        if self._client is None:
            self._connect()
        # The sync write API takes no per-call timeout; the client reads this per request.
        self._client.conf.timeout = max(1, int(timeout_s * 1000))
        try:
            self._write_api.write(
                bucket=self._bucket, org=self._org, record=payload, write_precision="ns"
            )
        except ApiException as exc:
            body = exc.body.decode("utf-8", "replace") if isinstance(exc.body, bytes) else exc.body
            raise classify_status(int(exc.status or 0), str(body or exc.reason or "")) from None
        except (HTTPError, OSError) as exc:
            raise TransientWriteError(f"{type(exc).__name__}: {_first_line(exc)}") from None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else ""


_jitter = random.Random()
"""runwatch's own generator: backoff never draws from (or reseeds) the global one that
training code and Flower's node sampling use."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits a random 50-100% of
    ``min(max_delay_s, base_delay_s * 2**(n-1))``, for any n (hours of failures included)."""

    max_attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0

    def delay(self, attempt: int) -> float:
        # 2**64 already dwarfs any max_delay_s; a larger exponent would overflow a float.
        doublings = min(max(0, attempt - 1), 64)
        capped = min(self.max_delay_s, self.base_delay_s * 2.0**doublings)
        return capped * _jitter.uniform(0.5, 1.0)


@dataclass(frozen=True)
class ShipTuning:
    batch_lines: int = DEFAULT_BATCH_LINES
    batch_bytes: int = DEFAULT_BATCH_BYTES
    request_timeout_s: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


def target_for(settings: Any) -> InfluxWriteTarget:
    """The write target configured by ``Settings`` (its ``influx_url`` must be set)."""
    return InfluxWriteTarget(
        settings.influx_url,
        token=settings.influx_token,
        org=settings.influx_org,
        bucket=settings.influx_bucket,
    )


class StreamShipper:
    """Ships one stream's unacknowledged complete lines, batch by batch, from a read descriptor."""

    def __init__(
        self, stream: SpoolStream, fd: int, target: WriteTarget, tuning: ShipTuning
    ) -> None:
        self.stream = stream
        self._fd = fd
        self._target = target
        self._tuning = tuning
        self.acked = read_ack(stream)
        self.lines_shipped = 0
        """Lines InfluxDB took (refused ones are counted in ``lines_rejected`` only)."""
        self.lines_rejected = 0
        self.bytes_shipped = 0

    def ship_batch(self, end: int, timeout_s: float) -> int:
        """Send the next batch below ``end``; the lines it covered (0: nothing complete).

        Raises ``TransientWriteError`` or ``ConfigWriteError`` with the ack unchanged.
        """
        tuning = self._tuning
        batch = read_batch(self._fd, self.acked, end, tuning.batch_lines, tuning.batch_bytes)
        if batch is None:
            return 0
        rejected_before = self.lines_rejected
        self._send(batch.data, timeout_s)
        write_ack(self.stream, batch.end)
        self.acked = batch.end
        self.lines_shipped += batch.lines - (self.lines_rejected - rejected_before)
        self.bytes_shipped += len(batch.data)
        return batch.lines

    def _send(self, data: bytes, timeout_s: float) -> None:
        if not data:
            return
        try:
            self._target.write(to_wire(data), timeout_s)
        except RejectedLinesError as exc:
            lines = data.count(b"\n")
            if exc.dropped is not None and exc.dropped >= lines:
                # InfluxDB refused every line (all beyond retention, say): splitting would
                # cost two requests per line and find the same.
                self._reject(data, lines, exc)
                return
            first, second = split_lines(data)
            if not second:
                self._reject(data, lines, exc)
                return
            self._send(first, timeout_s)
            self._send(second, timeout_s)

    def _reject(self, data: bytes, lines: int, exc: WriteError) -> None:
        what = "this line" if lines == 1 else f"these {lines} lines"
        quarantine(self.stream, data, f"InfluxDB refused {what}: {exc}")
        self.lines_rejected += lines
        log.warning(
            "runwatch: InfluxDB refused %d line%s of run %s (%s); moved to %s",
            lines,
            "" if lines == 1 else "s",
            self.stream.run_id,
            exc,
            self.stream.rejected_path,
        )


@dataclass(frozen=True)
class ShipOutcome:
    caught_up: bool
    error: WriteError | None = None


def ship_until_caught_up(
    shipper: StreamShipper,
    end: Callable[[], int],
    *,
    tuning: ShipTuning,
    deadline: Callable[[], float | None] = lambda: None,
    interrupt: threading.Event | None = None,
    max_attempts: int | None = None,
    on_batch: Callable[[StreamShipper], None] | None = None,
    on_failure: Callable[[WriteError], None] | None = None,
) -> ShipOutcome:
    """Ship until the stream is acknowledged up to ``end()``, the monotonic ``deadline()``
    passes, or ``max_attempts`` consecutive failures (None: keep retrying, capped backoff).

    A configuration error ends at once when ``max_attempts`` is set. A backoff wait wakes
    early when ``interrupt`` becomes set (the deadline is then re-read); once it is set, the
    waits are served in full, so a closing shipper backs off like a live one.
    """
    attempts = 0
    last_error: WriteError | None = None
    while True:
        target = end()
        if shipper.acked >= target:
            return ShipOutcome(True)
        limit = deadline()
        now = time.monotonic()
        if limit is not None and now >= limit:
            return ShipOutcome(False, last_error)
        timeout = (
            tuning.request_timeout_s
            if limit is None
            else min(tuning.request_timeout_s, max(0.5, limit - now))
        )
        try:
            if shipper.ship_batch(target, timeout) == 0:
                return ShipOutcome(True)  # only a torn tail is left: never shipped
        except WriteError as exc:
            attempts += 1
            last_error = exc
            if on_failure is not None:
                on_failure(exc)
            if max_attempts is not None and (
                attempts >= max_attempts or isinstance(exc, ConfigWriteError)
            ):
                return ShipOutcome(False, exc)
            pause = tuning.retry.delay(attempts)
            limit = deadline()
            if limit is not None:
                pause = min(pause, max(0.0, limit - time.monotonic()))
            if interrupt is not None and not interrupt.is_set():
                interrupt.wait(pause)
            else:
                time.sleep(pause)
            continue
        attempts = 0
        last_error = None
        if on_batch is not None:
            on_batch(shipper)


class ShipperThread:
    """The recorder's background shipper for its own stream.

    Woken by ``nudge()`` after each spool flush (and every ``idle_poll_s``); ships what the
    writer has completed (``end()``); retries forever with capped backoff while the run
    lives. ``close(timeout)`` ships what it can until the deadline and returns; what is
    left stays on disk for ``runwatch sync``.
    """

    def __init__(
        self,
        stream: SpoolStream,
        end: Callable[[], int],
        target: WriteTarget,
        tuning: ShipTuning,
        idle_poll_s: float = 5.0,
    ) -> None:
        self._stream = stream
        self._end = end
        self._target = target
        self._tuning = tuning
        self._idle_poll_s = idle_poll_s
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._deadline: float | None = None
        self._fd = os.open(stream.path, os.O_RDONLY)
        self._shipper = StreamShipper(stream, self._fd, target, tuning)
        self._failing = False
        self.last_error: str | None = None
        self.failed_attempts = 0
        """Writes that failed since the thread started (each was retried after a backoff)."""
        self._thread = threading.Thread(
            target=self._run, name=f"runwatch-shipper-{stream.path.stem}", daemon=True
        )
        self._thread.start()

    @property
    def lines_shipped(self) -> int:
        return self._shipper.lines_shipped

    @property
    def lines_rejected(self) -> int:
        return self._shipper.lines_rejected

    @property
    def acked(self) -> int:
        return self._shipper.acked

    def nudge(self) -> None:
        self._wake.set()

    def close(self, timeout: float) -> bool:
        """Ship until caught up or ``timeout`` seconds pass; True when nothing is left."""
        self._deadline = time.monotonic() + max(0.0, timeout)
        self._closing.set()
        self._wake.set()
        self._thread.join(max(0.0, timeout) + 1.0)
        caught_up = not self._thread.is_alive() and self._shipper.acked >= self._end()
        if not self._thread.is_alive():
            self._target.close()
            os.close(self._fd)
        return caught_up

    def _run(self) -> None:
        while True:
            try:
                outcome = ship_until_caught_up(
                    self._shipper,
                    self._end,
                    tuning=self._tuning,
                    deadline=lambda: self._deadline,
                    interrupt=self._closing,
                    on_batch=self._recovered,
                    on_failure=self._failed,
                )
                if outcome.caught_up:
                    self._recovered(self._shipper)
            except Exception as exc:  # a bug here must not stop shipping for the whole run
                self._unexpected(exc)
            if self._closing.is_set():
                return
            self._wake.wait(self._idle_poll_s)
            self._wake.clear()

    def _unexpected(self, exc: Exception) -> None:
        self.last_error = f"shipper error: {type(exc).__name__}: {_first_line(exc)}"
        log.error(
            "runwatch: %s; points stay in %s and shipping is retried",
            self.last_error,
            self._stream.path,
        )
        if not self._closing.is_set():
            self._closing.wait(self._idle_poll_s)

    def _failed(self, exc: WriteError) -> None:
        self.failed_attempts += 1
        self.last_error = str(exc)
        if not self._failing:
            self._failing = True
            log.warning(
                "runwatch: InfluxDB write failed (%s); points wait in the spool %s and are retried",
                exc,
                self._stream.path,
            )

    def _recovered(self, _shipper: StreamShipper) -> None:
        if self._failing:
            self._failing = False
            log.info("runwatch: InfluxDB writes succeed again for run %s", self._stream.run_id)
