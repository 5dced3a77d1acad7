"""RESP, the Redis protocol, on the publisher's hot path: capped XADDs framed in one step each, and their replies
read off the connection's socket by one hiredis reader.

redis-py (and `hiredis.pack_command`) frame a command from a tuple of its arguments, each written on its own; a
stream entry as `record.entry_fields` builds it has one of two shapes, so the frame of everything but its `data`
is made once per stream, and an entry costs one format and its bytes (0.5 us a record against 2.3-2.8 for
`pack_command`, benchmarks/NOTES.md). Any other entry (fields of another shape) is framed by `pack_command`.

redis-py reads replies one call at a time, each with its own checks (1.9 us a reply against 0.9 here); here the
socket is read in large chunks and hiredis hands out every reply they hold, as text (entry ids, decoded as
`replies.text` decodes a reply). Errors are redis-py's own: an error
reply is the exception redis-py's parser would make of it (`ResponseError` and its subclasses), a timeout is
`redis.exceptions.TimeoutError`, a closed or failed socket `redis.exceptions.ConnectionError`; then, and when
the read is cancelled or interrupted, the connection is closed (as redis-py closes it), so that replies left on
the wire never reach the next command. The RESP specification:
https://redis.io/docs/latest/develop/reference/protocol-spec/.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Mapping
from itertools import chain
from typing import Any, cast

import hiredis
from redis._parsers import BaseParser  # the error-reply classes redis-py's own parsers map replies to
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..record import DATA_FIELD, EXACT_IDENTITY, IDENTITY_FIELD, VERSION_FIELD, WIRE_VERSION

# The two shapes of `record.entry_fields`, in its order: everything around `data` is the same for every entry.
_PLAIN = (VERSION_FIELD, DATA_FIELD)
_EXACT = (VERSION_FIELD, DATA_FIELD, IDENTITY_FIELD)
# Bytes read from the socket at a time: a thousand XADD replies (entry ids) are about 25 KiB.
_READ_SIZE = 65536
# hiredis's "no complete reply yet" (a reply of False or None is a legitimate value in RESP3).
_NOT_ENOUGH_DATA = object()


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


class XaddFrames:
    """The RESP frames of `XADD <stream> MAXLEN ~ <maxlen> * <field> <value> ...` for one stream."""

    def __init__(self, stream: str, maxlen: int) -> None:
        """Frames for `stream` (encoded as UTF-8, as redis-py encodes a key), capped at about `maxlen` entries."""
        self._command = (b"XADD", stream.encode(), b"MAXLEN", b"~", str(maxlen).encode(), b"*")
        before_data = (VERSION_FIELD, WIRE_VERSION, DATA_FIELD)
        # Each ends with the `$` of the data's bulk string: its length, the data and the rest follow.
        framed = b"".join(map(_bulk, (*self._command, *before_data)))
        self._plain_head = b"*%d\r\n%s$" % (len(self._command) + 4, framed)
        self._exact_head = b"*%d\r\n%s$" % (len(self._command) + 6, framed)
        self._exact_tail = b"\r\n" + _bulk(IDENTITY_FIELD) + _bulk(EXACT_IDENTITY)

    def extend(self, frames: list[bytes], fields: Mapping[bytes, bytes]) -> None:
        """Append to `frames` the parts of the XADD of `fields` (an entry's fields, in their order), to be joined."""
        shape = tuple(fields)
        data = fields.get(DATA_FIELD)
        if type(data) is bytes and fields.get(VERSION_FIELD) == WIRE_VERSION:  # bytes: its length is its size
            if shape == _PLAIN:
                frames.extend((b"%s%d\r\n" % (self._plain_head, len(data)), data, b"\r\n"))
                return
            if shape == _EXACT and fields[IDENTITY_FIELD] == EXACT_IDENTITY:
                frames.extend((b"%s%d\r\n" % (self._exact_head, len(data)), data, self._exact_tail))
                return
        # hiredis's stub types the argument as a 1-tuple; any tuple of str, bytes and numbers is what it packs.
        pack = cast(Callable[[tuple[bytes, ...]], bytes], hiredis.pack_command)
        frames.append(pack((*self._command, *chain.from_iterable(fields.items()))))


class Replies:
    """The replies of `expected` pipelined commands, collected from the bytes fed in, in order; error replies (as
    redis-py's parser classes them: `ResponseError` and its subclasses, or a `ConnectionError` subclass for
    LOADING, NOAUTH, WRONGPASS...) are kept aside and the first one raised by `result`, once all are read (so the
    connection stays in step)."""

    def __init__(self, expected: int) -> None:
        # Replies as text, as `replies.text` makes them (UTF-8, an invalid byte escaped): entry ids, ready to return.
        self._reader = hiredis.Reader(
            protocolError=InvalidResponse,
            replyError=BaseParser.parse_error,
            notEnoughData=_NOT_ENOUGH_DATA,
            encoding="utf-8",
            errors="backslashreplace",
        )
        self._missing = expected
        self.found: list[Any] = []
        self._refused: RedisError | None = None

    def feed(self, data: bytes | bytearray, length: int) -> bool:
        """Take the first `length` bytes of `data`, a read from the socket; True once every expected reply is in.

        Raises `InvalidResponse` for bytes that are not RESP, `redis.exceptions.ConnectionError` for an empty read
        (the server closed the connection)."""
        if not length:
            raise RedisConnectionError("Connection closed by server.")
        reader = self._reader
        reader.feed(data, 0, length)  # type: ignore[arg-type]  # a bytearray too, as redis-py's parser feeds it
        found = self.found
        while self._missing:
            reply = reader.gets()
            if reply is _NOT_ENOUGH_DATA:
                return False
            if isinstance(reply, hiredis.PushNotification):  # RESP3 out-of-band (invalidations...): not a reply
                continue
            # Every error reply, whatever class redis-py's parser gives it: LOADING, NOAUTH or WRONGPASS make a
            # ConnectionError subclass, not a ResponseError, and must never pass for an entry id.
            if isinstance(reply, RedisError):
                self._refused = self._refused or reply
            else:
                found.append(reply)
            self._missing -= 1
        return True

    def result(self) -> list[Any]:
        """Every reply that was not an error; raises the first error reply, if any."""
        if self._refused is not None:
            raise self._refused
        return self.found


def read_replies(conn: Any, expected: int) -> list[Any]:
    """Read `expected` replies from `conn`, a connected sync redis-py connection, within its socket timeout per
    read; see the module docstring for what is raised."""
    sock: socket.socket = conn._sock  # redis-py's connected socket (set by connect(), None once disconnected)
    buffer = bytearray(_READ_SIZE)
    replies = Replies(expected)
    try:
        while not replies.feed(buffer, sock.recv_into(buffer)):
            pass
    except TimeoutError:  # socket.timeout: the socket's own timeout (redis-py's socket_timeout)
        conn.disconnect()
        raise RedisTimeoutError(f"Timeout reading from {conn.host}:{conn.port}") from None
    except OSError as error:
        conn.disconnect()
        raise RedisConnectionError(f"Error while reading from {conn.host}:{conn.port}: {error}") from error
    except BaseException:  # closed, not RESP, interrupted (a signal handler's exception): unread replies go with it
        conn.disconnect()
        raise
    return replies.result()  # every reply read: an error reply leaves the connection in step, and open


async def read_replies_async(conn: Any, expected: int, timeout_s: float) -> list[Any]:
    """Read `expected` replies from `conn`, a connected asyncio redis-py connection, each read of the socket
    bounded by `timeout_s` (a Redis that says nothing for that long ends the wait, as a socket timeout would);
    see the module docstring for what is raised. One deadline covers all reads, pushed back after each."""
    reader: asyncio.StreamReader = conn._reader  # redis-py's stream reader (None once disconnected)
    replies = Replies(expected)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s) as deadline:
            while not replies.feed(data := await reader.read(_READ_SIZE), len(data)):
                deadline.reschedule(loop.time() + timeout_s)
    except TimeoutError:
        await conn.disconnect(nowait=True)
        raise RedisTimeoutError(f"Timeout reading from Redis: no reply within {timeout_s} s") from None
    except OSError as error:
        await conn.disconnect(nowait=True)
        raise RedisConnectionError(f"Error while reading from Redis: {error}") from error
    except BaseException:  # closed, not RESP, cancelled (a caller's bound, a client gone): unread replies go with it
        await conn.disconnect(nowait=True)
        raise
    return replies.result()  # every reply read: an error reply leaves the connection in step, and open
