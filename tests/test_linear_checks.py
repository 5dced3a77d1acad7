"""Every check on a record is linear in its size: adversarial shapes cost what an ordinary record of the same
size costs, on the publisher and in the worker alike (one crafted record must not stall the event loop)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from interactionlog.client.publisher import encode_fields
from interactionlog.record import MAX_INT_DIGITS
from interactionlog.worker.decode import decode_entry

SIZE = 250_000
LIMIT = 10**7

ADVERSARIAL: dict[str, str] = {
    # Runs of digits just under the big-integer limit: a non-anchored `\d{4301,}` search retried from every digit.
    "digit runs just under the limit": ",".join(["9" * MAX_INT_DIGITS] * (SIZE // (MAX_INT_DIGITS + 1))),
    # Long runs of backslashes, each followed by something that is almost an escaped NUL.
    "backslash runs before u0000 look-alikes": ("\\" * 999 + "u000") * (SIZE // 1003),
    # Many short digit runs and escapes mixed: the most match attempts per byte.
    "dense digits and escapes": ("1\\u00002" * 2 + "\\n") * (SIZE // 18),
}


def _best_of(runs: int, work: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def _publish_and_decode(text: str) -> Callable[[], object]:
    def work() -> object:
        try:
            fields = encode_fields({"mcp_id": "m", "request": {"s": text}}, LIMIT)
        except ValueError:
            return None  # refused is fine (a NUL); what matters is how long deciding took
        return decode_entry("1700000000000-0", fields, LIMIT)

    return work


@pytest.mark.parametrize("shape", sorted(ADVERSARIAL))
def test_an_adversarial_record_costs_no_more_than_an_ordinary_one_of_its_size(shape: str) -> None:
    """Validating, encoding and decoding a 250 KB adversarial record takes at most 5x an ordinary 250 KB record
    (the quadratic digit-run check took 1.8 s, about 60x)."""
    adversarial = ADVERSARIAL[shape]
    ordinary = "a" * len(adversarial)
    baseline = _best_of(3, _publish_and_decode(ordinary))
    cost = _best_of(3, _publish_and_decode(adversarial))
    assert cost < 5 * baseline + 0.02, f"{shape}: {cost * 1000:.1f} ms against {baseline * 1000:.1f} ms"


def test_a_digit_run_over_the_limit_is_still_refused_and_one_at_the_limit_is_not() -> None:
    """The anchored check finds the same runs: 4301 digits refused, 4300 accepted."""
    encode_fields({"mcp_id": "m", "request": {"n": 10**MAX_INT_DIGITS - 1}}, LIMIT)
    too_long = 10 ** (MAX_INT_DIGITS + 1) - 1  # built by arithmetic: int("9" * 4301) itself refuses
    with pytest.raises(ValueError, match=f"more than {MAX_INT_DIGITS} digits"):
        encode_fields({"mcp_id": "m", "request": {"n": too_long}}, LIMIT)
