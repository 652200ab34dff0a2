"""The spool: an append-only line-protocol record per run, on local disk, written before shipping.

Files under ``settings.spool_dir`` (``<RUNWATCH_HOME>/spool``), one *stream* per live writer:

- ``<run>.lp``: the stream's head. Points, one per line (string-field newlines stored as
  U+001E, see ``collector.points``). A second recorder of the same run alive at the same time
  (federated clients of one run on one machine) writes ``<run>.1.lp``, a third ``<run>.2.lp``
  and so on: a live writer holds an exclusive ``flock`` on its head, so two processes never
  interleave in one stream and ``runwatch sync`` leaves a stream alone while its writer lives.
- Segments: after 8 MiB (``DEFAULT_SEGMENT_BYTES``) the writer goes on in
  ``<run>@<offset>.lps`` and compresses the finished part on a background thread into
  ``<run>@<start>-<end>.lps.gz`` (gzip, ~28 bytes per typical point instead of ~170), then
  removes the plain copy; see ``collector.spool._segments``. Offsets are those of the lines
  as written, so everything below reads the same whichever file holds them.
- ``<run>.ack``: the offset up to which InfluxDB acknowledged the stream, as decimal text,
  replaced atomically (temp file + ``os.replace``) at most every 0.5 s while a shipper is busy
  and whenever it stops or waits. Everything after it is re-sent by the stream's next shipper;
  re-sending is harmless (same series and timestamp overwrite).
- ``<run>.rejected``: lines InfluxDB refused (malformed, type conflict, beyond retention) and
  torn tails, each group after a ``#`` comment saying why; kept for people, never shipped.

``<run>`` is the run_id with every character outside ``[A-Za-z0-9_-]`` written ``%XX``.

Durability. The recorder appends whole lines with one ``write()`` at batch boundaries
(its flusher thread every ``flush_interval_s`` and as soon as ``flush_lines`` points wait;
``record()`` itself at ``queue_limit``) and fsyncs on close. A SIGKILL therefore loses only
points recorded since the last append: at most ``flush_interval_s`` of recording and never
more than ``queue_limit`` points (0.5 s, 4,000 points by default; about 1,000 when the flusher
keeps up); what was written stays in the OS page cache and reaches the disk. Only a power
loss can lose more (what was not fsynced yet). A write torn by a kill or a full disk leaves a
last line without its newline: readers never ship past the last newline, and the next writer
of the stream moves the torn bytes to ``.rejected`` and truncates before appending, so a
resumed run never glues new lines onto a torn one. A compressed segment is fsynced before
its plain copy goes, so a crash during compression loses nothing either.
"""

from collector.spool._backlog import (
    Backlog,
    PrunedStream,
    StreamBacklog,
    backlog,
    count_lines,
    prune_shipped,
    stream_backlog,
)
from collector.spool._reading import Batch, complete_end, read_batch, split_lines
from collector.spool._segments import (
    Segment,
    SpoolDamagedError,
    StreamReader,
    compress_finished_segments,
    compress_segment,
    list_segments,
)
from collector.spool._streams import (
    ACK_SUFFIX,
    MAX_STREAMS_PER_RUN,
    REJECTED_SUFFIX,
    SPOOL_SUFFIX,
    SpoolStream,
    decode_run_id,
    encode_run_id,
    list_streams,
    parse_stream,
    quarantine,
    read_ack,
    write_ack,
)
from collector.spool._writer import DEFAULT_SEGMENT_BYTES, SpoolWriter, is_live, locked_for_reading

__all__ = [
    "ACK_SUFFIX",
    "DEFAULT_SEGMENT_BYTES",
    "MAX_STREAMS_PER_RUN",
    "REJECTED_SUFFIX",
    "SPOOL_SUFFIX",
    "Backlog",
    "Batch",
    "PrunedStream",
    "Segment",
    "SpoolDamagedError",
    "SpoolStream",
    "SpoolWriter",
    "StreamBacklog",
    "StreamReader",
    "backlog",
    "complete_end",
    "compress_finished_segments",
    "compress_segment",
    "count_lines",
    "decode_run_id",
    "encode_run_id",
    "is_live",
    "list_segments",
    "list_streams",
    "locked_for_reading",
    "parse_stream",
    "prune_shipped",
    "quarantine",
    "read_ack",
    "read_batch",
    "split_lines",
    "stream_backlog",
    "write_ack",
]
