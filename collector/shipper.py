"""Shipping spooled lines to InfluxDB 2 (``/api/v2/write``) and recording what it acknowledged.

The shipper reads batches of complete lines *from the spool file* (never from an in-memory
queue, so memory stays flat however long InfluxDB is down), posts each batch from its own
thread with the standard library's ``http.client`` (keep-alive, 5,000 lines a request at
first, up to 20,000 while the server acknowledges them, gzip at level 1 unless the server is
on this machine; the next batch is read and compressed while the server answers the one in
flight), and advances the stream's ``.ack`` offset over acknowledged batches, in spool order.
A closing shipper gives up early when the server does not answer: what is left stays on disk
for ``runwatch sync``.

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

Why not influxdb-client for writes: its import costs seconds and ~30 MiB, its synchronous
write cannot overlap two requests, its batching ``WriteApi.flush()`` does nothing and
``InfluxDBClient.close()`` does not flush a batching API. (Queries still use it.)
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import os
import random
import re
import threading
import time
import urllib.parse
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from collector.points import to_wire
from collector.spool import (
    Batch,
    SpoolStream,
    StreamReader,
    quarantine,
    read_ack,
    read_batch,
    split_lines,
    write_ack,
)

log = logging.getLogger("collector.shipper")

DEFAULT_BATCH_LINES = 20_000
"""Lines a request at most. influxd 2.9 spends less CPU per point on fewer, larger requests:
record() -> acknowledged ships ~9% faster at 20,000 than at 5,000 (benchmarks/
bench_pipeline_throughput.py); 50,000 was slower again. A smaller backlog goes as it is."""
DEFAULT_FIRST_BATCH_LINES = 5_000
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


class PendingWrite(Protocol):
    def result(self) -> None:
        """Wait for the answer; raise a ``WriteError`` unless acknowledged."""

    def cancel(self) -> None:
        """Forget the answer (its connection is closed)."""


@runtime_checkable
class PipelinedWriteTarget(WriteTarget, Protocol):
    """A target that takes a request before the previous one is answered: the shipper reads
    and compresses the next batch while the server works on this one."""

    def encode(self, payload: bytes) -> bytes:
        """The request body for ``payload`` (gzip, when on)."""

    def send(self, body: bytes, timeout_s: float) -> PendingWrite:
        """Post an ``encode``d body; raise ``TransientWriteError`` when it cannot be sent."""


DEFAULT_GZIP_LEVEL = 1
"""zlib level 1 compresses a 5,000-line batch about 8x in 3 ms; level 9 (influxdb-client's)
gains 10 % more for 15 ms (benchmarks/bench_pipeline_throughput.py)."""
CONNECT_TIMEOUT_S = 1.0
ACK_SAVE_INTERVAL_S = 0.5
"""How often a busy shipper rewrites the ``.ack`` file (and whenever it stops or waits):
replacing it costs ~3 ms on ext4, which flushes a file renamed over another. A crash
re-sends at most this much acknowledged data, which is harmless."""
_STALE_CONNECTION = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class InfluxWriteTarget:
    """POSTs to InfluxDB 2's ``/api/v2/write`` with the standard library's ``http.client``:
    keep-alive connections, gzip at ``gzip_level``, ``precision=ns``, ``Authorization: Token``.

    Not influxdb-client: its import costs 2.7 s and 30 MiB, and its synchronous write cannot
    start a request before the previous one is answered (see docs/design.md, "Shipping").
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None,
        org: str | None,
        bucket: str,
        gzip: bool = True,
        gzip_level: int = DEFAULT_GZIP_LEVEL,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.url = url
        parts = urllib.parse.urlsplit(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "localhost"
        self._port = parts.port
        query = urllib.parse.urlencode({"org": org or "", "bucket": bucket, "precision": "ns"})
        self._path = f"{parts.path.rstrip('/')}/api/v2/write?{query}"
        self._headers = {
            "Content-Type": "text/plain; charset=utf-8",
            "Accept": "application/json",
            "User-Agent": "runwatch",
        }
        if token:
            self._headers["Authorization"] = f"Token {token}"
        if gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._gzip_level = gzip_level if gzip else None
        self._connect_timeout_s = connect_timeout_s
        self._idle: list[http.client.HTTPConnection] = []

    def encode(self, payload: bytes) -> bytes:
        if self._gzip_level is None:
            return payload
        return zlib.compress(payload, self._gzip_level, wbits=31)  # wbits 31: gzip framing

    def write(self, payload: bytes, timeout_s: float) -> None:
        self.send(self.encode(payload), timeout_s).result()

    def send(self, body: bytes, timeout_s: float) -> _HttpPendingWrite:
        if self._idle:
            connection = self._idle.pop()
            try:
                self._post(connection, body, timeout_s)
                return _HttpPendingWrite(self, connection, body, timeout_s, reused=True)
            except _STALE_CONNECTION:
                connection.close()  # the server closed an idle keep-alive: one fresh try
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                raise _unreachable(exc) from None
        connection = self._connect(timeout_s)
        try:
            self._post(connection, body, timeout_s)
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise _unreachable(exc) from None
        return _HttpPendingWrite(self, connection, body, timeout_s, reused=False)

    def _connect(self, timeout_s: float) -> http.client.HTTPConnection:
        connect_timeout = min(self._connect_timeout_s, timeout_s)
        connection: http.client.HTTPConnection
        if self._https:
            connection = http.client.HTTPSConnection(
                self._host, self._port, timeout=connect_timeout, context=_ssl_context()
            )
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=connect_timeout)
        try:
            connection.connect()
        except OSError as exc:
            connection.close()
            raise _unreachable(exc) from None
        return connection

    def _post(self, connection: http.client.HTTPConnection, body: bytes, timeout_s: float) -> None:
        connection.timeout = timeout_s
        if connection.sock is not None:
            connection.sock.settimeout(timeout_s)
        connection.request("POST", self._path, body, self._headers)

    def _answer(self, pending: _HttpPendingWrite) -> None:
        connection = pending.connection
        try:
            response = connection.getresponse()
            text = response.read()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            if pending.reused and isinstance(exc, _STALE_CONNECTION):
                # an idle keep-alive the server had closed: one more try, on a new connection
                self.send(pending.body, pending.timeout_s).result()
                return
            raise _unreachable(exc) from None
        if response.will_close:
            connection.close()
        else:
            self._idle.append(connection)
        if not 200 <= response.status < 300:
            raise classify_status(response.status, text.decode("utf-8", "replace"))

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


@dataclass
class _HttpPendingWrite:
    target: InfluxWriteTarget
    connection: http.client.HTTPConnection
    body: bytes
    timeout_s: float
    reused: bool

    def result(self) -> None:
        self.target._answer(self)

    def cancel(self) -> None:
        self.connection.close()


def _unreachable(exc: BaseException) -> TransientWriteError:
    """A request that got no HTTP answer (refused, reset, timed out): status None."""
    return TransientWriteError(f"{type(exc).__name__}: {_first_line(exc)}")


def _ssl_context() -> Any:
    import ssl

    return ssl.create_default_context()


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
    """Lines a request at most, once the server has acknowledged full batches."""
    first_batch_lines: int = DEFAULT_FIRST_BATCH_LINES
    """Lines a request at most at first and after a request failed; each acknowledged full
    batch doubles it, up to ``batch_lines``. A shipper whose server is down reads no more
    than this for each attempt (``close()`` against a down server keeps its RSS flat)."""
    batch_bytes: int = DEFAULT_BATCH_BYTES
    request_timeout_s: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    requests_in_flight: int = 1
    """Requests posted before the oldest is answered, each on its own connection. 1 keeps
    the wire order the spool order; 2 lets the server parse one batch while it stores the
    other (the recorder's and ``runwatch sync``'s default, ``PARALLEL_TUNING``). The
    acknowledged offset only ever advances over answered batches, in spool order."""


PARALLEL_TUNING = ShipTuning(requests_in_flight=2)


def target_for(settings: Any) -> InfluxWriteTarget:
    """The write target configured by ``Settings`` (its ``influx_url`` must be set); gzip
    as ``settings.influx_gzip`` says (by default, only to a server on another machine)."""
    gzip = settings.influx_gzip
    return InfluxWriteTarget(
        settings.influx_url,
        token=settings.influx_token,
        org=settings.influx_org,
        bucket=settings.influx_bucket,
        gzip=not is_loopback(settings.influx_url) if gzip is None else gzip,
    )


def is_loopback(url: str) -> bool:
    """Whether ``url``'s host is this machine by name or address (no name is resolved)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class _Prepared:
    batch: Batch
    body: bytes


@dataclass(frozen=True)
class _Posted:
    batch: Batch
    pending: PendingWrite


class StreamShipper:
    """Ships one stream's unacknowledged complete lines, batch by batch; ``fd`` is a read
    descriptor of the stream's head (its other segments are opened as they are reached).

    With a ``PipelinedWriteTarget``, the next batch is read and compressed while the server
    works on the one posted (up to ``tuning.requests_in_flight`` posted at once); batches are
    acknowledged strictly in spool order. ``settle()`` forgets what is still in flight.
    """

    def __init__(
        self, stream: SpoolStream, fd: int, target: WriteTarget, tuning: ShipTuning
    ) -> None:
        self.stream = stream
        self._reader = StreamReader(stream, head_fd=fd)
        self._target = target
        self._pipelined = target if isinstance(target, PipelinedWriteTarget) else None
        self._tuning = tuning
        self.acked = read_ack(stream)
        self._saved_ack = self.acked
        self._ack_saved_at = time.monotonic()
        self.lines_shipped = 0
        """Lines InfluxDB took (refused ones are counted in ``lines_rejected`` only)."""
        self.lines_rejected = 0
        self.bytes_shipped = 0
        self._posted: deque[_Posted] = deque()
        self._prepared: _Prepared | None = None
        self._first_batch_lines = max(1, min(tuning.first_batch_lines, tuning.batch_lines))
        self._batch_lines = self._first_batch_lines

    def ship_batch(self, end: int, timeout_s: float) -> int:
        """Ship the next batch below ``end``; the lines it covered (0: nothing complete).

        Raises ``TransientWriteError`` or ``ConfigWriteError`` with the ack unchanged.
        """
        if self._pipelined is None:
            batch = self._read(self.acked, end)
            if batch is None:
                return 0
            rejected_before = self.lines_rejected
            try:
                self._send(batch.data, timeout_s)
            except BaseException:
                self._batch_lines = self._first_batch_lines
                raise
            return self._acknowledge(batch, rejected_before)
        return self._ship_pipelined(self._pipelined, end, timeout_s)

    def settle(self) -> None:
        """Give up the requests still in flight (their batches stay unacknowledged) and
        save the acknowledged offset."""
        while self._posted:
            self._posted.popleft().pending.cancel()
        self._prepared = None
        self.save_ack()

    def _failed(self) -> None:
        """A request failed: settle, and start again from first-size batches."""
        self.settle()
        self._batch_lines = self._first_batch_lines

    def close(self) -> None:
        """Close the segment files it opened (not the head descriptor it was given)."""
        self._reader.close()

    def save_ack(self) -> None:
        """Write the acknowledged offset to the stream's ``.ack`` file, if it moved."""
        if self.acked != self._saved_ack:
            write_ack(self.stream, self.acked)
            self._saved_ack = self.acked
        self._ack_saved_at = time.monotonic()

    def _ship_pipelined(self, target: PipelinedWriteTarget, end: int, timeout_s: float) -> int:
        self._post_up_to(target, end, timeout_s)
        if not self._posted:
            return 0
        oldest = self._posted.popleft()
        rejected_before = self.lines_rejected
        try:
            oldest.pending.result()
        except RejectedLinesError as exc:
            self.settle()
            self._split_rejected(oldest.batch.data, exc, timeout_s)
        except BaseException:
            self._failed()
            raise
        return self._acknowledge(oldest.batch, rejected_before)

    def _post_up_to(self, target: PipelinedWriteTarget, end: int, timeout_s: float) -> None:
        """Post batches until ``requests_in_flight`` are out, then prepare the next one."""
        while len(self._posted) < max(1, self._tuning.requests_in_flight):
            prepared = self._take_prepared(end) or self._prepare(target, self._next_start(), end)
            if prepared is None:
                return
            try:
                pending = target.send(prepared.body, timeout_s)
            except BaseException:
                self._failed()
                raise
            self._posted.append(_Posted(prepared.batch, pending))
        self._prepared = self._prepare(target, self._next_start(), end)

    def _next_start(self) -> int:
        return self._posted[-1].batch.end if self._posted else self.acked

    def _take_prepared(self, end: int) -> _Prepared | None:
        prepared, self._prepared = self._prepared, None
        if prepared is None or prepared.batch.start != self._next_start():
            return None
        short = prepared.batch.lines < self._batch_lines and prepared.batch.end < end
        return None if short else prepared  # a short batch read before the writer appended

    def _prepare(self, target: PipelinedWriteTarget, start: int, end: int) -> _Prepared | None:
        batch = self._read(start, end)
        return None if batch is None else _Prepared(batch, target.encode(to_wire(batch.data)))

    def _read(self, start: int, end: int) -> Batch | None:
        return read_batch(self._reader, start, end, self._batch_lines, self._tuning.batch_bytes)

    def _acknowledge(self, batch: Batch, rejected_before: int) -> int:
        self.acked = batch.end
        if batch.lines >= self._batch_lines:  # a full batch went through: try larger ones
            self._batch_lines = min(2 * self._batch_lines, self._tuning.batch_lines)
        if time.monotonic() - self._ack_saved_at >= ACK_SAVE_INTERVAL_S:
            self.save_ack()
        self.lines_shipped += batch.lines - (self.lines_rejected - rejected_before)
        self.bytes_shipped += len(batch.data)
        return batch.lines

    def _send(self, data: bytes, timeout_s: float) -> None:
        if not data:
            return
        try:
            self._target.write(to_wire(data), timeout_s)
        except RejectedLinesError as exc:
            self._split_rejected(data, exc, timeout_s)

    def _split_rejected(self, data: bytes, exc: RejectedLinesError, timeout_s: float) -> None:
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
    try:
        return _ship_until(
            shipper,
            end,
            tuning=tuning,
            deadline=deadline,
            interrupt=interrupt,
            max_attempts=max_attempts,
            on_batch=on_batch,
            on_failure=on_failure,
        )
    finally:
        shipper.settle()  # a request still in flight at the deadline is not waited for


def _ship_until(
    shipper: StreamShipper,
    end: Callable[[], int],
    *,
    tuning: ShipTuning,
    deadline: Callable[[], float | None],
    interrupt: threading.Event | None,
    max_attempts: int | None,
    on_batch: Callable[[StreamShipper], None] | None,
    on_failure: Callable[[WriteError], None] | None,
) -> ShipOutcome:
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


_CLOSE_STRIKES = 2


class ShipperThread:
    """The recorder's background shipper for its own stream.

    Woken by ``nudge()`` after each spool flush (and every ``idle_poll_s``); ships what the
    writer has completed (``end()``); retries forever with capped backoff while the run
    lives. ``close(timeout)`` ships what it can until the deadline and returns; what is
    left stays on disk for ``runwatch sync``. A closing shipper stops early when the server
    is down: at its first unanswered request (refused, reset, timed out) when the server was
    already unreachable before ``close``, else at its second in a row.
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
        self._unreachable_strikes = 0
        """Requests in a row that got no HTTP answer."""
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
        """Ship until caught up, ``timeout`` seconds pass or the server proves down; True
        when nothing is left."""
        if self._unreachable_strikes:  # down before close: one more unanswered try ends it
            self._unreachable_strikes = _CLOSE_STRIKES - 1
        self._deadline = time.monotonic() + max(0.0, timeout)
        self._closing.set()
        self._wake.set()
        self._thread.join(max(0.0, timeout) + 1.0)
        caught_up = not self._thread.is_alive() and self._shipper.acked >= self._end()
        if not self._thread.is_alive():
            self._target.close()
            self._shipper.close()
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
        self._give_up_closing_when_down(exc)
        if not self._failing:
            self._failing = True
            log.warning(
                "runwatch: InfluxDB write failed (%s); points wait in the spool %s and are retried",
                exc,
                self._stream.path,
            )

    def _give_up_closing_when_down(self, exc: WriteError) -> None:
        unanswered = isinstance(exc, TransientWriteError) and exc.status is None
        if not unanswered:
            self._unreachable_strikes = 0
            return
        self._unreachable_strikes += 1
        if self._closing.is_set() and self._unreachable_strikes >= _CLOSE_STRIKES:
            self._deadline = time.monotonic()  # down: what is left stays for `runwatch sync`

    def _recovered(self, _shipper: StreamShipper) -> None:
        self._unreachable_strikes = 0
        if self._failing:
            self._failing = False
            log.info("runwatch: InfluxDB writes succeed again for run %s", self._stream.run_id)
