"""The publisher's RESP framing and reply reading (`client.resp`): the frames are byte for byte what
`hiredis.pack_command` makes of the same XADD, whatever the entry's shape, and replies are read whole however the
bytes arrive."""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain
from typing import Any, cast

import hiredis
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from redis._parsers import BaseParser
from redis.exceptions import InvalidResponse, RedisError, ResponseError

from interactionlog.client.resp import Replies, XaddFrames
from interactionlog.record import entry_fields
from interactionlog.replies import text

_FIELD_NAMES = st.sampled_from([b"v", b"data", b"identity", b"x", b""]) | st.binary(max_size=8)
_VALUES = st.sampled_from([b"1", b"2", b"exact", b"", b"loose"]) | st.binary(max_size=40)


def _packed(stream: str, maxlen: int, fields: dict[bytes, bytes]) -> bytes:
    flat: list[bytes] = list(chain.from_iterable(fields.items()))
    arguments: tuple[bytes | str, ...] = (b"XADD", stream, b"MAXLEN", b"~", str(maxlen).encode(), b"*", *flat)
    pack = cast(Callable[[tuple[bytes | str, ...]], bytes], hiredis.pack_command)  # its stub wants a 1-tuple
    return pack(arguments)


@given(
    stream=st.text(min_size=1, max_size=20),
    maxlen=st.integers(min_value=1, max_value=10**12),
    data=st.binary(max_size=2000),
    exact=st.booleans(),
)
def test_an_entry_of_either_shape_is_framed_as_pack_command_frames_it(
    stream: str, maxlen: int, data: bytes, exact: bool
) -> None:
    """`record.entry_fields`' two shapes (the ones framed without `pack_command`): the same bytes, any stream name
    (UTF-8), any cap, any data (empty, binary, CRLF inside)."""
    fields = entry_fields(data, exact=exact)
    frames: list[bytes] = []
    XaddFrames(stream, maxlen).extend(frames, fields)
    assert b"".join(frames) == _packed(stream, maxlen, fields)


@given(fields=st.dictionaries(_FIELD_NAMES, _VALUES, max_size=5))
def test_an_entry_of_any_other_shape_is_framed_as_pack_command_frames_it(fields: dict[bytes, bytes]) -> None:
    """Fields in another order, another version, another identity word, extra or missing fields: the same bytes."""
    frames: list[bytes] = []
    XaddFrames("interactions", 100_000).extend(frames, fields)
    assert b"".join(frames) == _packed("interactions", 100_000, fields)


def test_entries_in_another_order_keep_their_order() -> None:
    """An entry whose `data` comes before `v` is not the common shape: it is sent with its fields in its order."""
    fields = {b"data": b"{}", b"v": b"1"}
    frames: list[bytes] = []
    XaddFrames("s", 10).extend(frames, fields)
    assert b"".join(frames).endswith(b"$4\r\ndata\r\n$2\r\n{}\r\n$1\r\nv\r\n$1\r\n1\r\n")


def test_framed_entries_are_added_by_redis_as_sent(redis_url: str) -> None:
    """Frames of many entries joined into one write: Redis adds each entry, to the right stream, with its fields."""
    client = redis.Redis.from_url(redis_url)
    sent = [entry_fields(b'{"n":%d,"text":"a\\r\\nb \xc3\xa9"}' % i, exact=i % 2 == 0) for i in range(50)]
    sent.append({b"v": b"2", b"data": b"{}", b"extra": b"x"})
    frames: list[bytes] = []
    framing = XaddFrames("stre\u00e4m", 1000)
    for fields in sent:
        framing.extend(frames, fields)
    connection: Any = client.connection_pool.get_connection()  # redis-py's connection methods are untyped
    try:
        connection.send_packed_command([b"".join(frames)])
        ids = [connection.read_response() for _ in sent]
    finally:
        client.connection_pool.release(connection)
    stored = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange("stre\u00e4m"))
    assert [entry_id for entry_id, _ in stored] == ids
    assert [fields for _, fields in stored] == sent


def test_replies_fed_a_byte_at_a_time_are_read_whole() -> None:
    """Replies split anywhere (a bulk string, an error, a status, an integer): each is read once complete, error
    replies kept aside and the first raised once all are in, as redis-py's own error class."""
    wire = b"$5\r\n1-2\r\n\r\n-WRONGTYPE Operation against a key\r\n+OK\r\n:7\r\n-ERR second\r\n$0\r\n\r\n"
    replies = Replies(6)
    done = [replies.feed(wire[index : index + 1], 1) for index in range(len(wire))]
    assert done[-1] is True
    assert done.count(True) == 1
    assert replies.found == ["1-2\r\n", "OK", 7, ""]  # as text: entry ids ready to return
    with pytest.raises(ResponseError, match=r"^WRONGTYPE Operation against a key$"):
        replies.result()


def test_replies_are_text_as_replies_text_makes_it() -> None:
    """Replies come as `replies.text` makes a reply: UTF-8, a byte that is not escaped as `\\xNN`, never lost or
    raised on (a stream id is ASCII; this is what any other reply becomes)."""
    wire = b"$4\r\n1-\xff2\r\n$3\r\n1-\xc3\r\n"
    replies = Replies(2)
    assert replies.feed(wire, len(wire))
    assert replies.result() == [text(b"1-\xff2"), text(b"1-\xc3")] == ["1-\\xff2", "1-\\xc3"]


def test_bytes_that_are_not_resp_raise_invalid_response() -> None:
    """A byte no RESP reply starts with: redis-py's InvalidResponse, not a hang waiting for more."""
    with pytest.raises(InvalidResponse):
        Replies(1).feed(b"?what\r\n", 7)


def test_an_empty_read_is_a_closed_connection() -> None:
    """A read of no bytes (the server closed the connection) raises redis-py's ConnectionError."""
    with pytest.raises(redis.exceptions.ConnectionError, match="closed"):
        Replies(1).feed(b"", 0)


def test_a_resp3_push_message_between_replies_is_not_taken_for_one() -> None:
    """A RESP3 push (a client-tracking invalidation, say) arriving between two replies is skipped: the replies
    counted are the commands' own."""
    wire = b"$3\r\n1-1\r\n>2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n$3\r\n1-2\r\n"
    replies = Replies(2)
    assert replies.feed(wire, len(wire))
    assert replies.result() == ["1-1", "1-2"]


@pytest.mark.parametrize(
    "message",
    [
        *(f"{code} 3999 127.0.0.1:6381" for code in BaseParser.EXCEPTION_CLASSES if code != "ERR"),  # as MOVED writes
        *(f"ERR {text}" for text in cast(dict[str, type], BaseParser.EXCEPTION_CLASSES["ERR"])),
        "ERR anything else",
        "NOTACODE at all",
    ],
)
def test_no_error_reply_passes_for_an_entry_id(message: str) -> None:
    """Every error reply, whichever class redis-py's parser gives it (`-LOADING` is a ConnectionError subclass, not a
    ResponseError), is raised by `result` once all replies are read, never returned as a reply."""
    wire = f"$3\r\n1-1\r\n-{message}\r\n$3\r\n1-2\r\n".encode()
    replies = Replies(3)
    assert replies.feed(wire, len(wire))
    with pytest.raises(RedisError) as raised:
        replies.result()
    parse_error = cast(Callable[[str], RedisError], BaseParser.parse_error)  # untyped in redis-py
    assert type(raised.value) is type(parse_error(message))
    assert replies.found == ["1-1", "1-2"]
