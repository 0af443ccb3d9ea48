"""One simple query on the gateway's own upstream connection (catalogue load, lingering sweep): rows as text."""

from __future__ import annotations

import struct

from gateway.pg.codec import Framer
from gateway.pg.messages import ErrorResponse, Query
from gateway.pg.pipe import Pipe

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")


class QueryFailed(Exception):
    """The server answered the query with an ErrorResponse; str() is its message and SQLSTATE."""


async def simple_query(pipe: Pipe, leftover: bytes, sql: str, *, errors: str = "strict") -> list[list[str]]:
    """Send `sql` as one Query; its DataRows as text (NULL as ''; `errors` as for bytes.decode), until ReadyForQuery.

    An ErrorResponse raises QueryFailed once the server is ready again, so the connection stays usable.
    """
    pipe.write(Query(sql).encode())
    framer = Framer(name="upstream message")
    rows: list[list[str]] = []
    error: str | None = None
    data = leftover
    while True:
        chunk, frames = framer.feed(data)
        for tag, start, end in frames:
            body = chunk[start + 5 : end]
            if tag == ord("D"):
                rows.append(data_row(body, errors))
            elif tag == ErrorResponse.TAG:
                err = ErrorResponse.decode(body)
                error = f"{err.message} ({err.sqlstate})"
            elif tag == ord("Z"):
                if error is not None:
                    raise QueryFailed(error)
                return rows
        data = await pipe.read()


def data_row(body: bytes, errors: str = "strict") -> list[str]:
    """A DataRow's values as text; NULL as ''."""
    count = _I16.unpack_from(body, 0)[0]
    pos, out = 2, []
    for _ in range(count):
        n = _I32.unpack_from(body, pos)[0]
        pos += 4
        out.append("" if n < 0 else body[pos : pos + n].decode("utf-8", errors))
        pos += max(n, 0)
    return out
