"""Compressed blocks of a binary stream recording: a run of frames as one independent zstd frame.

A block is written as one outer frame with stream ``z`` whose data is a zstd frame (level 1, content size
in its header); decompressed, it is the same frames a plain file would hold at that place. Blocks are
independent (no shared dictionary or window) and checksummed (XXH64), so a damaged or torn block costs
only itself and the file stays appendable. zstd level 1 rather than LZ4: as fast here (~400 MB/s of log
text, ~1.4 GB/s of random bytes) and a third smaller on text (3.4x vs 2.1x on bench/ssh.py's logs).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import zstandard

CODEC = "zstd"
"""The header's ``compression`` value for files with ``z`` blocks."""
STREAM = b"z"
LEVEL = 1
MIN_BLOCK = 4096
"""Smaller runs (interactive traffic, markers) stay plain frames: nothing to gain, easier to read by eye."""
SHRINK = 0.9
"""A block that does not shrink below this fraction of its input counts as incompressible."""
SKIP_AFTER_INCOMPRESSIBLE = 8
"""Runs written plain after an incompressible block before compression is tried again (random data,
already-compressed archives: the attempt costs ~0.7 ns a byte, the plain write nothing)."""
MAX_BLOCK = 64 << 20
"""Largest decompressed block a reader accepts (the writer's are ~1 MiB): a bigger claim is damage."""
COMPRESS_BELOW = 250e6
"""Bytes/s of recording writes below which runs are compressed (policy "auto"). Compressing costs ~2.8 ms
of CPU a MB and saves 70 % of the write (log text); writing plain costs ~1 ms a MB (os.write + SHA-256) on a
disk that keeps up. So compression pays once writes take longer than ~4 ms a MB: a slow or throttled disk
(dirty page cache full, network volume). On a CPU-bound host with a fast disk it would take ~40 % off the
relay's throughput (bench/ssh.py --plain-recording vs default, docs/benchmarks.md, SSH)."""
POLICIES = ("auto", "always", "never")

_local = threading.local()


class DiskRate:
    """Recent throughput of recording writes (bytes/s, moving average, waits for a CPU not counted): every
    recording shares the disk."""

    __slots__ = ("rate",)

    def __init__(self) -> None:
        self.rate = float("inf")  # nothing measured yet: assume a disk that keeps up

    def observe(self, nbytes: int, seconds: float) -> None:
        """One write of `nbytes` took `seconds` (small writes say nothing about the disk)."""
        if nbytes < 1 << 16 or seconds <= 0:
            return
        now = nbytes / seconds
        self.rate = now if self.rate == float("inf") else 0.8 * self.rate + 0.2 * now


DISK = DiskRate()


def _compressor() -> zstandard.ZstdCompressor:
    """One compression context per thread (the writer thread, and close()'s executor thread)."""
    cctx: zstandard.ZstdCompressor | None = getattr(_local, "cctx", None)
    if cctx is None:
        cctx = _local.cctx = zstandard.ZstdCompressor(level=LEVEL, write_checksum=True)  # damage shows per block
    return cctx


class BlockPacker:
    """Per recording: decides which runs are compressed, and compresses them (writer thread only).

    `policy`: "auto" compresses while recording writes run below COMPRESS_BELOW, "always" and "never" as named.
    """

    __slots__ = ("_policy", "_skip")

    def __init__(self, policy: str = "auto") -> None:
        if policy not in POLICIES:
            raise ValueError(f"compression policy {policy!r}: expected one of {POLICIES}")
        self._policy = policy
        self._skip = 0

    def wants(self, size: int) -> bool:
        """Whether a run of `size` bytes of frames should be compressed (False: write it plain)."""
        if size < MIN_BLOCK or self._policy == "never":
            return False
        if self._policy == "auto" and DISK.rate >= COMPRESS_BELOW:
            return False
        if self._skip:
            self._skip -= 1
            return False
        return True

    def pack(self, parts: Iterable[bytes], size: int) -> bytes:
        """The zstd frame of the concatenation of `parts` (`size` bytes in all), without joining them first."""
        cobj = _compressor().compressobj(size=size)
        out = [cobj.compress(p) for p in parts]
        out.append(cobj.flush())
        packed = b"".join(out)
        if len(packed) > size * SHRINK:
            self._skip = SKIP_AFTER_INCOMPRESSIBLE
        return packed


def unpack(data: bytes) -> bytes:
    """The frames inside one block; ValueError when the block is damaged."""
    try:
        size = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise ValueError(f"not a zstd frame ({exc})") from None
    if size < 0 or size > MAX_BLOCK:
        raise ValueError("block size missing or implausible")
    try:
        out: bytes = zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise ValueError(f"does not decompress ({exc})") from None
    if len(out) != size:
        raise ValueError("block shorter than its header says")
    return out
