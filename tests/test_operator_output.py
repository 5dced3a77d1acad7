"""What operators read is safe and exact: no terminal escapes from names anyone can choose, and `dlq replay`
of one id replays that dead letter only."""

from __future__ import annotations

import redis
from click.testing import CliRunner

from interactionlog.cli import main
from interactionlog.ops.terminal import printable

STREAM, GROUP = "interactions", "interactionlog"


def test_printable_shows_control_characters_as_escapes() -> None:
    """ESC, BEL, CR and a right-to-left override become visible escapes; ordinary text is unchanged."""
    assert printable("w-1 caf\u00e9") == "w-1 caf\u00e9"
    assert printable("\x1b[2Jhi\x07\r\u202e") == "\\x1b[2Jhi\\x07\\x0d\\u202e"


def test_status_never_prints_a_consumer_name_s_escape_codes(redis_url: str) -> None:
    """A consumer named with an escape sequence (anyone with XREADGROUP can create one) is shown escaped."""
    client = redis.Redis.from_url(redis_url)
    client.xadd(STREAM, {"v": "1", "data": '{"mcp_id": "a"}'})
    client.xgroup_create(STREAM, GROUP, id="0")
    client.xreadgroup(GROUP, "evil\x1b[2J\x1b]0;pwned\x07", {STREAM: ">"}, count=1)
    result = CliRunner().invoke(main, ["status", "--redis-url", redis_url])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output
    assert "\x07" not in result.output
    assert "evil\\x1b[2J\\x1b]0;pwned\\x07" in result.output


def test_dlq_list_never_prints_escape_codes_from_a_dead_letter(redis_url: str) -> None:
    """A dead letter's fields come from the publisher: their control characters are shown escaped."""
    client = redis.Redis.from_url(redis_url)
    client.xadd(
        f"{STREAM}:dlq",
        {"source_id": "1-0", "error_type": "invalid_json", "deliveries": "1", "error": "bad \x1b[31mred\x1b[0m"},
    )
    result = CliRunner().invoke(main, ["dlq", "list", "--redis-url", redis_url])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output
    assert "bad \\x1b[31mred\\x1b[0m" in result.output


def test_replaying_an_id_without_its_sequence_replays_that_id_only(redis_url: str) -> None:
    """`dlq replay 1796050769612` means 1796050769612-0, never every dead letter of that millisecond."""
    client = redis.Redis.from_url(redis_url)
    dlq = f"{STREAM}:dlq"
    for seq in (1, 2):
        client.xadd(dlq, {"v": "1", "data": '{"mcp_id": "a"}', "source_id": f"5-{seq}"}, id=f"1796050769612-{seq}")
    result = CliRunner().invoke(main, ["dlq", "replay", "1796050769612", "--redis-url", redis_url])
    assert result.exit_code != 0, "no dead letter has the id 1796050769612-0"
    assert client.xlen(dlq) == 2
    assert client.xlen(STREAM) == 0
