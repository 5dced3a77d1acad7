"""Scrubbing secrets out of record payloads: what is replaced, what is kept, and the worker's exact pass."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interactionlog.scrub import DEFAULT_SCRUBBER, Scrubber, looks_like_card, scrub_stored_json

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----"


def _scrub(value: Any, scrubber: Scrubber = DEFAULT_SCRUBBER) -> tuple[Any, Counter[str]]:
    counts: Counter[str] = Counter()
    return scrubber.scrub_value(value, counts), counts


@pytest.mark.parametrize(
    "key", ["password", "Password", "user_password", "githubToken", "X-Api-Key", "apiKey", "client_secret",
            "Authorization", "set-cookie", "private_key", "AWS_SECRET_ACCESS_KEY", "refresh_token", "auth"],
)  # fmt: skip
def test_values_under_denied_keys_are_replaced_whole(key: str) -> None:
    """A value under a denylisted key (matched by words, any case or separator) becomes the key marker."""
    scrubbed, counts = _scrub({key: {"nested": "anything"}, "keep": "me"})
    assert scrubbed == {key: "[redacted:key]", "keep": "me"}
    assert counts == {"key": 1}


@pytest.mark.parametrize("key", ["max_tokens", "author", "tokens_used", "keyboard", "session_id", "monkey"])
def test_keys_that_only_look_alike_are_kept(key: str) -> None:
    """Keys that contain a denied word only as part of another word keep their values."""
    assert _scrub({key: "value 42"}) == ({key: "value 42"}, Counter())


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        (f"token is {JWT} ok", "jwt"),
        ("Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345", "bearer_token"),
        (f"key:\n{PEM}\n", "private_key"),
        ("id AKIAIOSFODNN7EXAMPLE here", "aws_access_key"),
        ("gh token ghp_" + "a" * 36, "github_token"),
        ("pay with 4111-1111-1111-1111 today", "card_number"),
        ("postgresql://app:s3cret@db:5432/x", "url_password"),
        ('{"password": "hunter2"}', "key"),
        ("retry with api_key=abc123&x=1", "key"),
    ],
)
def test_credentials_are_replaced_wherever_they_appear_in_text(text: str, kind: str) -> None:
    """A credential inside any string is replaced by its kind's marker, the rest of the text kept."""
    scrubbed, counts = _scrub({"note": text})
    assert f"[redacted:{kind}]" in scrubbed["note"]
    assert counts[kind] == 1


def test_numbers_that_are_not_cards_are_kept() -> None:
    """Epoch timestamps and numbers failing the Luhn check are not taken for card numbers."""
    values = {"ts_ms": 1700000000000, "ts": "1700000000000123456", "bad_luhn": "4111 1111 1111 1112"}
    assert _scrub(values) == (values, Counter())
    assert looks_like_card("4111111111111111")
    assert _scrub({"n": 4111111111111111}) == ({"n": "[redacted:card_number]"}, Counter({"card_number": 1}))


def test_configuration_adds_keys_patterns_allowlist_callback_and_can_switch_off() -> None:
    """Extra keys and patterns are scrubbed, allowlisted keys kept, the callback runs last, and off is off."""
    scrubber = Scrubber(
        extra_keys=["ssn"],
        extra_patterns=[re.compile(r"EMP-\d{6}"), r"pin (?P<secret>\d{4})"],
        allow_keys=["token"],
        callback=lambda payload: {**payload, "response": "replaced"},
    )
    record, counts = scrubber.scrub_record(
        {"mcp_id": "m", "request": {"ssn": "123-45-6789", "token": "public", "who": "EMP-123456 pin 1234"},
         "response": "anything"}
    )  # fmt: skip
    assert record["request"] == {"ssn": "[redacted:key]", "token": "public",
                                 "who": "[redacted:pattern] pin [redacted:pattern]"}  # fmt: skip
    assert record["response"] == "replaced"
    assert record["metadata"]["interactionlog.redacted"] == {"key": 1, "pattern": 2}
    assert counts == {"key": 1, "pattern": 2}
    off = Scrubber(enabled=False)
    assert off.scrub_record({"mcp_id": "m", "request": {"password": "x"}}) == (
        {"mcp_id": "m", "request": {"password": "x"}}, Counter())  # fmt: skip


def test_a_second_pass_counts_nothing_the_first_pass_did() -> None:
    """Markers are never scrubbed again, so the worker's pass after the publisher's changes nothing."""
    first, counts = DEFAULT_SCRUBBER.scrub_record({"mcp_id": "m", "request": {"password": "x", "note": JWT}})
    second, again = DEFAULT_SCRUBBER.scrub_record(first)
    assert second == first
    assert not again
    assert counts == {"key": 1, "jwt": 1}


def test_the_worker_pass_keeps_the_json_as_sent_apart_from_scrubbed_values() -> None:
    """A record without secrets comes back as the very same text; one with secrets keeps key order and numbers'
    digits, with only the secret replaced and the note added."""
    clean = '{"mcp_id":"m","request":{"city":"Oslo","x":1.10}}'
    assert scrub_stored_json(clean) is clean
    dirty = '{"mcp_id":"m","request":{"b":1.10,"password":"p","a":12345678901234567890123}}'
    scrubbed = scrub_stored_json(dirty)
    assert scrubbed == ('{"mcp_id":"m","request":{"b":1.10,"password":"[redacted:key]","a":12345678901234567890123},'
                        '"metadata":{"interactionlog.redacted":{"key":1}}}')  # fmt: skip
    assert json.loads(scrubbed)["request"]["a"] == 12345678901234567890123
    assert scrub_stored_json(dirty, Scrubber(enabled=False)) is dirty


def test_the_worker_pass_leaves_alone_a_record_its_publisher_scrubbed() -> None:
    """A record stamped by a scrubbing publisher keeps what that publisher's configuration allowed (an allowlisted
    key), while the same record unstamped is scrubbed with the defaults."""
    stamped = '{"mcp_id":"m","request":{"token":"public-token"},"metadata":{"interactionlog.scrubbed":true}}'
    assert scrub_stored_json(stamped) is stamped
    unstamped = '{"mcp_id":"m","request":{"token":"public-token"}}'
    assert json.loads(scrub_stored_json(unstamped))["request"] == {"token": "[redacted:key]"}


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(DEFAULT_SCRUBBER.anchor_bytes + Scrubber(extra_keys=("x_ray",)).anchor_bytes),
            st.binary(max_size=12),
            st.sampled_from([b"pas", b"toke", b"aut", b"://"[:2], b"eyj"[:2], b"sk", b"-", b"_"]),
        ),
        max_size=12,
    )
)
def test_the_anchor_automaton_answers_whether_any_anchor_occurs(pieces: list[bytes]) -> None:
    """`holds_anchor` is the pre-check's whole say on key words and pattern anchors: it must find an anchor
    wherever one occurs (a miss would store a secret), including where matches overlap or one anchor starts
    inside another's prefix, and answer no only for text holding none."""
    lowered = b"".join(pieces).lower()
    for scrubber in (DEFAULT_SCRUBBER, Scrubber(extra_keys=("x_ray",))):
        expected = any(anchor in lowered for anchor in scrubber.anchor_bytes)
        assert scrubber.holds_anchor(lowered) is expected
