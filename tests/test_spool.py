"""The durable local spool: order, leases, the size cap's two policies, several processes on one directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from interactionlog.client.spool import Spool


def _entry(index: int, size: int = 10) -> dict[bytes, bytes]:
    return {b"v": b"1", b"data": f"{index:0{size}d}".encode()}


def test_entries_come_back_in_order_and_leased_ones_are_not_taken_twice(tmp_path: Path) -> None:
    """take() returns the oldest entries of a stream in order and leases them; others see only the rest."""
    spool, other = Spool(tmp_path), Spool(tmp_path)
    spool.append("s", [_entry(i) for i in range(5)])
    spool.append("elsewhere", [_entry(99)])
    first = spool.take("s", 3)
    assert [row.fields for row in first] == [_entry(0), _entry(1), _entry(2)]
    assert [row.fields for row in other.take("s", 10)] == [_entry(3), _entry(4)]
    spool.release([first[0].seq])
    assert [row.fields for row in other.take("s", 10)] == [_entry(0)]
    spool.remove([row.seq for row in first])
    assert spool.depth("s").entries == 2
    assert spool.depth("elsewhere").entries == 1


def test_bytes_survive_exactly_including_non_utf8(tmp_path: Path) -> None:
    """Entry fields are stored and returned byte for byte."""
    fields = {b"v": b"1", b"data": bytes(range(256))}
    Spool(tmp_path).append("s", [fields])
    assert Spool(tmp_path).take("s", 1)[0].fields == fields


@pytest.mark.parametrize(("policy", "kept"), [("drop_newest", [0, 1, 2]), ("drop_oldest", [2, 3, 4])])
def test_a_full_spool_drops_by_its_policy_and_says_how_many(tmp_path: Path, policy: str, kept: list[int]) -> None:
    """At the byte cap, drop_newest refuses the new entries and drop_oldest deletes the oldest; both count them."""
    one = len('{"v": "1", "data": "0000000000"}')
    spool = Spool(tmp_path, max_bytes=3 * one, full_policy=policy)  # type: ignore[arg-type]
    assert spool.append("s", [_entry(0), _entry(1)]) == 0
    assert spool.append("s", [_entry(2), _entry(3), _entry(4)]) == 2
    assert [row.fields for row in spool.take("s", 10)] == [_entry(i) for i in kept]


def test_several_processes_append_to_one_directory_without_losing_an_entry(tmp_path: Path) -> None:
    """Four processes appending 200 entries each concurrently leave all 800 in the spool."""
    script = (
        "import sys; from interactionlog.client.spool import Spool; s = Spool(sys.argv[1]); n = int(sys.argv[2])\n"
        "for i in range(200): s.append('s', [{b'v': b'1', b'data': f'{n}-{i}'.encode()}])"
    )
    processes = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(n)]) for n in range(4)]
    assert [process.wait(timeout=120) for process in processes] == [0, 0, 0, 0]
    rows = Spool(tmp_path).take("s", 1000)
    assert len(rows) == 800
    assert len({row.fields[b"data"] for row in rows}) == 800
