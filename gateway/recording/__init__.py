"""Session recorders: streaming, append-only, fail-closed writers of one session's recording file.

Three formats, one writer:

* ``AsciicastRecorder`` -- asciicast v2 (https://docs.asciinema.org/manual/asciicast/v2/) for SSH
  sessions with a terminal: a JSON header line, then one ``[t, code, data]`` line per event,
  codes ``o`` (output), ``i`` (input), ``r`` (resize, ``"WxH"``) and ``m`` (marker).
* ``StatementRecorder`` -- JSON lines for SQL sessions: ``{"type": "header", ...}`` first, then one
  JSON object per event, each with ``t`` (seconds since the start).

What the lines hold (and the version every header carries) is ``gateway.recording.schema``, the one
encoder of each line; ``gateway.recording.reader`` is the one reader (replay, show, search, the console).
* ``BinaryStreamRecorder`` -- raw bytes for exec sessions without a terminal (tar, scp, pg_dump):
  JSON-escaping random bytes runs at ~50 MB/s and would throttle the relay, and text decoding
  would lose bytes. The file is one JSON header line (``"format": "gateway-binary-stream"``),
  then frames, all integers big-endian::

      stream: 1 byte  b"o" stdout, b"e" stderr, b"i" stdin, b"m" marker (UTF-8), b"r" resize ("WxH")
      t_ms:   u32     milliseconds since the start
      length: u32     bytes of data that follow
      data:   length bytes

  A frame with stream ``b"z"`` is a compressed block (``gateway.recording.blocks``): its data is one zstd
  frame holding a run of the frames above, its ``t_ms`` that of the run's first. The writer compresses a
  ~1 MiB write slice of a bulk stream while the recordings disk is slow (policy ``auto``, see ``blocks``;
  header ``"compression": "zstd"``); small runs and incompressible data stay plain frames. The reader opens
  blocks transparently, so replay, search and the console see frames either way.
  ``binary_to_asciicast`` converts such a file for replay (stdout and stderr both become ``o``).

How writing works (the relay must never block on a disk):

* ``output()``/``input()``/``record()``... only append to an in-memory list under a short lock.
  Chunks of one stream less than ``COALESCE_WINDOW`` (10 ms) apart are merged into one event that
  keeps the first chunk's time, so a bulk transfer makes ~100 events a second, not one per chunk.
* One shared daemon thread (``_Writer``) writes every dirty recorder ~``FLUSH_DELAY`` after it
  became dirty (sooner when its backlog grows past ``URGENT_BACKLOG``), so data reaches the file
  within ~100 ms. One thread rather than one per recorder: idle sessions cost no thread and no
  wake-ups. ``StatementRecorder`` lines are encoded on the event loop and handed over as one bytes
  object every ~50 ms, so for them the thread only hashes and writes (both release the GIL: a
  thread encoding under the GIL made the relay wait for it after every send).
* A UTF-8 incremental decoder per stream (errors="replace") keeps a character split across two
  chunks whole.
* Every write appends whole lines (or whole frames): a crash leaves at most one torn last line,
  detectable because it does not parse or lacks its newline. The SHA-256 is updated with exactly the
  bytes written, so ``close()`` never re-reads the file.
* Fail closed: an ``OSError`` (disk full, file removed, permission...), an encoder error, or a
  backlog above ``max_backlog`` (the writer fell behind) calls ``on_failure(reason)`` once, on the
  event loop thread; every later call is a no-op and ``close()`` raises ``RecordingError``.
  A front end that prefers slowing the client to ending the session awaits ``drain()`` when
  ``needs_drain`` is true.

Recorders never see secrets: the front ends keep tokens out of what they pass in, and nothing here
logs recorded data.
"""

from gateway.recording.formats import AsciicastRecorder, BinaryStreamRecorder, StatementRecorder
from gateway.recording.reader import Frame, binary_to_asciicast, read_binary_stream
from gateway.recording.writer import (
    COALESCE_WINDOW,
    DEFAULT_MAX_BACKLOG,
    FLUSH_DELAY,
    Recorder,
    RecordingError,
)

__all__ = [
    "COALESCE_WINDOW",
    "DEFAULT_MAX_BACKLOG",
    "FLUSH_DELAY",
    "AsciicastRecorder",
    "BinaryStreamRecorder",
    "Frame",
    "Recorder",
    "RecordingError",
    "StatementRecorder",
    "binary_to_asciicast",
    "read_binary_stream",
]
