"""Scrubbing: secrets in a record's payload are replaced by a marker before the record is stored.

Sentry calls this scrubbing; interactionlog runs it twice, in the MCP process before a record leaves it
(`client.background`) and in the worker before a row is written (`worker.decode`), so records from publishers
in other languages are covered too. `redact.py` is the other kind of redaction: passwords in connection URLs.

What is scrubbed, in the payload fields `request`, `response`, `error` and `metadata` (never the identifying
fields `mcp_id`, `interaction_id`, `method`, `tool`, ...):

- **by key**: the whole value under a key whose words match the denylist (`password`, `secret`, `token`,
  `api_key`, `authorization`, `cookie`, `private_key`, ... compare Sentry's default denylist). Keys are split
  into words (`githubToken`, `X-Api-Key`, `client_secret`) so `max_tokens` or `author` are left alone;
- **by pattern**, wherever a string holds one: bearer tokens, JWTs, PEM private keys, cloud access keys
  (AWS, Google, GitHub, Slack, Stripe, OpenAI/Anthropic style) and card numbers that pass the Luhn check.

A scrubbed value becomes the marker ``[redacted:<kind>]`` (``[redacted:key]``, ``[redacted:jwt]``, ...);
the record notes what happened in ``metadata["interactionlog.redacted"]``, a count per kind. Values under
allowlisted keys are kept as they are. A user callable runs last on the payload fields and may change them.

A scrub never raises on odd input: it walks JSON values (dicts, lists, strings, numbers) and leaves anything
else alone. Markers are never scrubbed again, so the second pass counts nothing the first pass did.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import ahocorasick_rs

PAYLOAD_FIELDS = ("request", "response", "error", "metadata")
REDACTED_NOTE = "interactionlog.redacted"
# Set by a publisher that scrubbed the record (BackgroundPublisher, so `instrument` too): the worker's pass then
# leaves the record alone, so the publisher's own configuration (allowlist, callback) is the one that counts.
SCRUBBED_NOTE = "interactionlog.scrubbed"
SCRUBBED_STAMP = b'"interactionlog.scrubbed":true'
MARKER_PREFIX = "[redacted:"

# Sentry's default denylist (sentry_sdk.scrubber.DEFAULT_DENYLIST), as words and word pairs, plus the
# cloud-key names MCP tools take as arguments. A key matches when one of its words, or two adjacent words
# joined by "_", is in this set.
DEFAULT_DENY_KEYS = frozenset(
    {
        "password", "passwd", "pwd", "passphrase", "secret", "token", "api_key", "apikey", "auth",
        "authorization", "credentials", "credential", "cookie", "set_cookie", "private_key", "privatekey",
        "access_key", "secret_key", "session_token", "csrf", "csrftoken", "xsrf", "sessionid", "mysql_pwd",
        "client_secret", "refresh_token", "access_token", "id_token", "bearer", "signature",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Pattern:
    """A credential shape searched for in every string.

    `anchors` are lower-case literals one of which every match contains: the regular expression only runs on
    a string whose lower-case text holds one (a substring test costs far less than a regex scan); no anchors
    means a run of 13 digits (cards) or, for user patterns, always. `check` may veto a match (Luhn for cards).
    """

    kind: str
    regex: re.Pattern[str]
    anchors: tuple[str, ...] = ()
    check: Callable[[str], bool] | None = None


def looks_like_card(candidate: str) -> bool:
    """13 to 19 digits (spaces or dashes between them allowed), a card network's first digit (2-6), and a valid
    Luhn check digit; the first-digit rule keeps epoch timestamps in milli- or nanoseconds (leading 1) out."""
    digits = [int(char) for char in candidate if char.isdigit()]
    if not 13 <= len(digits) <= 19 or not 2 <= digits[0] <= 6:
        return False
    total = 0
    for index, digit in enumerate(reversed(digits)):
        doubled = digit * 2 if index % 2 == 1 else digit
        total += doubled - 9 if doubled > 9 else doubled
    return total % 10 == 0


_CARD = "card_number"
DEFAULT_PATTERNS: tuple[Pattern, ...] = (
    Pattern(
        "private_key",
        re.compile(r"-----BEGIN[A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END[A-Z ]*PRIVATE KEY-----|$)"),
        ("private key-----",),
    ),
    Pattern("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), ("eyj",)),
    Pattern("bearer_token", re.compile(r"\b(?i:bearer)\s+[A-Za-z0-9\-._~+/]{12,}=*"), ("bearer",)),
    Pattern("basic_auth", re.compile(r"\b(?i:basic)\s+[A-Za-z0-9+/]{12,}=*"), ("basic",)),
    Pattern(
        "aws_access_key",
        re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b"),
        ("akia", "asia", "agpa", "aida", "aroa"),
    ),
    Pattern("google_api_key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"), ("aiza",)),
    Pattern(
        "github_token",
        re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})\b"),
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    ),
    Pattern("slack_token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), ("xox",)),
    Pattern("stripe_key", re.compile(r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}\b"), ("_live_", "_test_")),
    Pattern("api_key", re.compile(r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}"), ("sk-",)),
    Pattern("url_password", re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"), ("://",)),
    # "password=hunter2", "api_key: abc", '"token": "abc"' inside a text (a tool that returns JSON or logs as text).
    Pattern(
        "key",
        re.compile(
            r"(?i:\b(?:[a-z0-9]+[_-])?(?:password|passwd|pwd|passphrase|secret|token|api[_-]?key|auth|authorization"
            r"|credentials?|cookie|private[_-]?key|access[_-]?key|csrf|xsrf|sessionid|signature)(?:[_-][a-z0-9]+)?)"
            r"[\"']?\s*[:=]\s*[\"']?(?P<secret>(?!\[redacted:)[^\"'\s,;&}]{3,})"
        ),
        (
            "pass",
            "pwd",
            "secret",
            "token",
            "auth",
            "cred",
            "cookie",
            "csrf",
            "xsrf",
            "sessionid",
            "signature",
            "apikey",
            "api_key",
            "api-key",
            "privatekey",
            "private_key",
            "private-key",
            "accesskey",
            "access_key",
            "access-key",
        ),
    ),
    Pattern(_CARD, re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"), (), looks_like_card),
)

# bytes.translate maps digits, spaces and dashes to "0" and all else to "x": 13 zeros in a row are the trace
# of a possible card number. Over-matching (a run of spaces) only costs the regex scan.
_DIGIT_TRACE = bytes.maketrans(b"0123456789 -", b"000000000000").translate(
    bytes.maketrans(bytes(b for b in range(256) if b not in b"0123456789 -"), b"x" * (256 - 12))
)
_DIGIT_RUN = b"0" * 13


_CARD_CANDIDATE = re.compile(rb"(?<![\d-])[2-6](?:[ -]?\d){12,18}(?![\d-])")


def may_hold_card(text: bytes) -> bool:
    """Whether `text` holds a card number: 13 to 19 digits (spaces or dashes between them) passing the Luhn check.

    A translate finds digit runs cheaply; only text that has one is searched for candidates and checked.
    """
    if _DIGIT_RUN not in text.translate(_DIGIT_TRACE):
        return False
    return any(looks_like_card(match.group(0).decode()) for match in _CARD_CANDIDATE.finditer(text))


# No default pattern matches fewer characters than this ("a://b:c@" for a URL password).
_SHORTEST_MATCH = 8
_KEY_CACHE_SIZE = 4096
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


def key_words(key: str) -> list[str]:
    """The lower-case words of a key: `githubToken` -> [github, token], `X-Api-Key` -> [x, api, key]."""
    return [word.lower() for word in _WORD.findall(key)]


def marker(kind: str) -> str:
    """The text that replaces a scrubbed value: ``[redacted:<kind>]``."""
    return f"{MARKER_PREFIX}{kind}]"


@dataclass(frozen=True)
class Scrubber:
    """What to scrub and how; the defaults are the documented ones. Immutable, safe to share between threads.

    - `extra_keys`: more key names (words or `word_word` pairs, any case) whose values are scrubbed;
    - `extra_patterns`: more regular expressions (text or compiled) whose matches in any string are scrubbed,
      marked ``[redacted:pattern]`` (only the group named `secret`, if the expression has one);
    - `allow_keys`: key names whose values are never scrubbed (exact, case-insensitive), e.g. `token_count`;
    - `callback`: runs last with the record's payload fields (a dict holding those of `request`, `response`,
      `error`, `metadata` the record has) and returns them, changed as it likes;
    - `enabled=False` turns scrubbing off entirely.
    """

    enabled: bool = True
    extra_keys: Iterable[str] = ()
    extra_patterns: Iterable[str | re.Pattern[str]] = ()
    allow_keys: Iterable[str] = ()
    callback: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    _deny: frozenset[str] = field(init=False, repr=False)
    _allow: frozenset[str] = field(init=False, repr=False)
    _patterns: tuple[Pattern, ...] = field(init=False, repr=False)
    _shortest: int = field(init=False, repr=False)
    _key_anchors: tuple[str, ...] = field(init=False, repr=False)
    _anchor_bytes: tuple[bytes, ...] = field(init=False, repr=False)
    _anchor_search: re.Pattern[bytes] = field(init=False, repr=False)
    _anchor_automaton: ahocorasick_rs.BytesAhoCorasick = field(init=False, repr=False, compare=False)
    _unanchored: bool = field(init=False, repr=False)
    _key_cache: dict[str, bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        extra = frozenset("_".join(key_words(key)) for key in self.extra_keys)
        compiled = tuple(
            Pattern("pattern", re.compile(pattern) if isinstance(pattern, str) else pattern)
            for pattern in self.extra_patterns
        )
        object.__setattr__(self, "_deny", DEFAULT_DENY_KEYS | extra)
        object.__setattr__(self, "_allow", frozenset(key.lower() for key in self.allow_keys))
        patterns = DEFAULT_PATTERNS + compiled
        object.__setattr__(self, "_patterns", patterns)
        object.__setattr__(self, "_shortest", _SHORTEST_MATCH if not compiled else 0)
        object.__setattr__(self, "_key_cache", {})
        object.__setattr__(self, "_key_anchors", _anchors_of(self._deny))
        anchors = {*self._key_anchors, *(anchor for pattern in patterns for anchor in pattern.anchors)}
        # An anchor holding a shorter one adds nothing ("password" holds "pass").
        kept = sorted(a for a in anchors if not any(b != a and b in a for b in anchors))
        object.__setattr__(self, "_anchor_bytes", tuple(anchor.encode() for anchor in kept))
        object.__setattr__(self, "_anchor_search", re.compile(_trie(self._anchor_bytes)))
        # The same anchors as one Aho-Corasick automaton: one pass over the text whatever their number, where the
        # trie above still tries every branch at every byte (0.4 us against 7.4 us on a 700-byte record).
        # Leftmost-first, not the standard semantics: the question is only whether any anchor occurs, which both
        # answer alike (a text holding an anchor has a leftmost match), and leftmost-first lets the automaton
        # skip ahead with its prefilter: 1.5 -> 0.55 ns a byte of payload (benchmarks/NOTES.md, round 8).
        automaton = ahocorasick_rs.BytesAhoCorasick(
            list(self._anchor_bytes), matchkind=ahocorasick_rs.MatchKind.LeftmostFirst
        )
        object.__setattr__(self, "_anchor_automaton", automaton)
        unanchored = any(not pattern.anchors and pattern.kind != _CARD for pattern in patterns)
        object.__setattr__(self, "_unanchored", unanchored)

    @property
    def patterns(self) -> tuple[Pattern, ...]:
        """The default credential patterns followed by the user's."""
        return self._patterns

    @property
    def key_anchors(self) -> tuple[str, ...]:
        """The spellings of the denied keys, for substring pre-checks."""
        return self._key_anchors

    @property
    def anchor_bytes(self) -> tuple[bytes, ...]:
        """Every key spelling and pattern anchor as bytes: one of them is in any text that holds a secret."""
        return self._anchor_bytes

    @property
    def anchor_search(self) -> re.Pattern[bytes]:
        """One expression finding any anchor, shaped as a trie: far fewer steps per byte than one search each."""
        return self._anchor_search

    @property
    def unanchored(self) -> bool:
        """Whether a user pattern has no anchor (so no pre-check can rule it out)."""
        return self._unanchored

    def holds_anchor(self, lowered: bytes) -> bool:
        """Whether the lower-cased text `lowered` holds any of `anchor_bytes`."""
        return bool(self._anchor_automaton.find_matches_as_indexes(lowered))

    def is_denied_key(self, key: str) -> bool:
        """Whether the value under `key` is scrubbed whole."""
        denied = self._key_cache.get(key)
        if denied is None:
            denied = self._decide_key(key)
            if len(self._key_cache) >= _KEY_CACHE_SIZE:  # keys come from payloads: keep the cache bounded
                self._key_cache.clear()
            self._key_cache[key] = denied
        return denied

    def _decide_key(self, key: str) -> bool:
        if key.lower() in self._allow:
            return False
        words = key_words(key)
        if any(word in self._deny for word in words):
            return True
        return any(f"{first}_{second}" in self._deny for first, second in itertools.pairwise(words))

    def scrub_text(self, text: str, counts: Counter[str]) -> str:
        """`text` with every credential pattern's match replaced by its marker; counts what it replaced."""
        if len(text) < self._shortest or text.startswith(MARKER_PREFIX):
            return text
        lowered = text.lower()
        for pattern in self._patterns:
            if pattern.anchors:
                if not any(anchor in lowered for anchor in pattern.anchors):
                    continue
            elif pattern.kind == _CARD and not may_hold_card(text.encode("utf-8", "surrogatepass")):
                continue
            if pattern.regex.search(text) is None:
                continue

            def replace(match: re.Match[str], pattern: Pattern = pattern) -> str:
                if pattern.check is not None and not pattern.check(match.group(0)):
                    return match.group(0)
                counts[pattern.kind] += 1
                if "secret" not in match.re.groupindex:
                    return marker(pattern.kind)
                # Only the value is replaced: the key before it stays, saying what was there.
                start, end = match.start("secret") - match.start(), match.end("secret") - match.start()
                return match.group(0)[:start] + marker(pattern.kind) + match.group(0)[end:]

            text = pattern.regex.sub(replace, text)
            lowered = text.lower()
        return text

    def scrub_value(self, value: Any, counts: Counter[str]) -> Any:
        """A copy of the JSON value with denied keys' values and credential patterns replaced."""
        if isinstance(value, str):
            return self.scrub_text(value, counts)
        if isinstance(value, Mapping):
            out: dict[Any, Any] = {}
            for key, item in value.items():
                if isinstance(key, str) and self.is_denied_key(key) and not _is_marker(item) and item is not None:
                    counts["key"] += 1
                    out[key] = marker("key")
                else:
                    out[key] = self.scrub_value(item, counts)
            return out
        if isinstance(value, list | tuple):
            return [self.scrub_value(item, counts) for item in value]
        if _is_card_number(value):  # a card number sent as a JSON number
            counts["card_number"] += 1
            return marker("card_number")
        return value

    def scrub_record(self, record: Mapping[str, Any]) -> tuple[dict[str, Any], Counter[str]]:
        """The record (a dict of wire fields) with its payload fields scrubbed, and the counts per kind.

        When anything was scrubbed, ``metadata["interactionlog.redacted"]`` holds the counts (added to any
        counts an earlier pass left there). A disabled scrubber returns the record unchanged.
        """
        counts: Counter[str] = Counter()
        if not self.enabled:
            return dict(record), counts
        out = dict(record)
        payload = {name: out[name] for name in PAYLOAD_FIELDS if name in out}
        scrubbed = {name: self.scrub_value(value, counts) for name, value in payload.items()}
        if self.callback is not None:
            scrubbed = dict(self.callback(scrubbed))
        out.update(scrubbed)
        if counts:
            metadata = dict(out.get("metadata") or {})
            earlier = metadata.get(REDACTED_NOTE)
            total = Counter(earlier) if isinstance(earlier, Mapping) else Counter()
            total.update(counts)
            metadata[REDACTED_NOTE] = dict(total)
            out["metadata"] = metadata
        return out, counts


def _anchors_of(keys: frozenset[str]) -> tuple[str, ...]:
    """Substrings one of which the lower-cased spelling of any denied key holds (`api_key`: apikey, api-key, ...)."""
    spellings: set[str] = set()
    for key in keys:
        words = key.split("_")
        spellings.update(separator.join(words) for separator in ("", "_", "-", " "))
    # A spelling that holds a shorter one adds nothing ("csrftoken" holds "token").
    return tuple(sorted(a for a in spellings if not any(b != a and b in a for b in spellings)))


def _trie(words: Iterable[bytes]) -> bytes:
    """A regular expression matching any of `words`, factored by common prefixes (`a(?:pikey|uth)|...`)."""
    branches: dict[bytes, list[bytes]] = {}
    for word in words:
        branches.setdefault(word[:1], []).append(word[1:])
    parts = []
    for first, rests in sorted(branches.items()):
        if b"" in rests:  # a word ends here: the shorter one already matches whatever the longer ones would
            parts.append(re.escape(first))
        elif len(rests) == 1:
            parts.append(re.escape(first) + re.escape(rests[0]))
        else:
            parts.append(re.escape(first) + b"(?:" + _trie(rests) + b")")
    return b"|".join(parts)


def _is_card_number(value: object) -> bool:
    if not isinstance(value, int | Decimal) or isinstance(value, bool):
        return False
    magnitude = abs(int(value)) if value == int(value) else 0
    if not 10**12 <= magnitude < 10**19:
        return False
    return value == int(value) and looks_like_card(str(int(value)))


def _is_marker(value: object) -> bool:
    return isinstance(value, str) and value.startswith(MARKER_PREFIX)


DEFAULT_SCRUBBER = Scrubber()


def scrub_text(text: str) -> str:
    """`text` with the default credential patterns scrubbed: for error messages that quote a value."""
    return DEFAULT_SCRUBBER.scrub_text(text, Counter())


# `\u0041`: an ASCII character written as an escape, which no encoder needs to do but any sender may, spelling
# "token" as "\u0074oken" past the substring tests; such text is walked, where the escape is decoded.
_BACKSLASH = ord("\\")  # `int in bytes` is one memchr, cheaper than any substring test
_ESCAPED_ASCII = re.compile(rb"\\u00[2-7]")


def might_hold_secrets(scrubber: Scrubber, data: bytes) -> bool:
    """The cheap pre-check over a record's JSON: could a denied key or a credential be in it?

    Substring tests on the lower-cased bytes (key words such as "token", pattern anchors such as "eyj") and one
    translate for digit runs; over-matching costs a walk, never a miss. Text writing an ASCII character as an
    escape is always walked. A scrubber with a callback or an anchorless user pattern always answers True.
    """
    if scrubber.callback is not None or scrubber.unanchored:
        return True
    if _BACKSLASH in data and _ESCAPED_ASCII.search(data):
        return True
    return scrubber.holds_anchor(data.lower()) or may_hold_card(data)


def payload_might_hold_secrets(scrubber: Scrubber, spans: Iterable[Any]) -> bool:
    """`might_hold_secrets` over the raw JSON of a record's payload fields only (`PAYLOAD_FIELDS`, the only ones
    scrubbed): a fraction of the record's bytes, and no false alarm from its ids (a UUID or trace id often holds
    a digit run a card number could be). `spans` are bytes-like (msgspec.Raw)."""
    return might_hold_secrets(scrubber, b"\n".join(spans))  # a newline is in no anchor: no match spans two fields


def scrub_stored_json(data: str, scrubber: Scrubber = DEFAULT_SCRUBBER) -> str:
    """The record's JSON text with its secrets scrubbed, for storage; `data` itself when nothing was found.

    A record stamped `"interactionlog.scrubbed":true` by the publisher that scrubbed it is left as it is.
    Exact except for what is scrubbed: numbers keep their text (parsed as Decimal, written back as written),
    keys keep their order. Only a record in which a trigger appears is parsed, so the common record costs one
    pre-check. Raises ValueError if `data` is not JSON, TypeError if not an object (the worker checked both).
    """
    raw = data.encode()
    if not scrubber.enabled or SCRUBBED_STAMP in raw or not might_hold_secrets(scrubber, raw):
        return data
    record = json.loads(data, parse_float=Decimal, parse_int=Decimal)
    if not isinstance(record, dict):
        raise TypeError("a record's JSON must be an object")
    scrubbed, counts = scrubber.scrub_record(record)
    if not counts and scrubber.callback is None:
        return data
    return _dump(scrubbed)


def _dump(value: Any) -> str:
    """Compact JSON in which Decimals are written with the digits they were parsed from."""
    if isinstance(value, dict):
        members = (f"{json.dumps(str(key), ensure_ascii=False)}:{_dump(item)}" for key, item in value.items())
        return "{" + ",".join(members) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dump(item) for item in value) + "]"
    if isinstance(value, Decimal):
        return str(value)
    return json.dumps(value, ensure_ascii=False)
