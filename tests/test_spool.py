"""The durable local spool: order, leases, the size cap's two policies, several processes on one directory."""

from __future__ import annotations

import sqlite3
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


def _append_from_four_processes(directory: Path) -> None:
    """Four processes append 200 entries each to the spool in `directory`, concurrently."""
    script = (
        "import sys; from interactionlog.client.spool import Spool; s = Spool(sys.argv[1]); n = int(sys.argv[2])\n"
        "for i in range(200): s.append('s', [{b'v': b'1', b'data': f'{n}-{i}'.encode()}])"
    )
    processes = [subprocess.Popen([sys.executable, "-c", script, str(directory), str(n)]) for n in range(4)]
    assert [process.wait(timeout=120) for process in processes] == [0, 0, 0, 0]


def test_several_processes_append_to_one_directory_without_losing_an_entry(tmp_path: Path) -> None:
    """Four processes appending 200 entries each concurrently leave all 800 in the spool."""
    _append_from_four_processes(tmp_path)
    rows = Spool(tmp_path).take("s", 1000)
    assert len(rows) == 800
    assert len({row.fields[b"data"] for row in rows}) == 800


def test_depth_and_the_cap_stay_exact_across_processes_and_removals(tmp_path: Path) -> None:
    """The running totals (kept by triggers) equal what a count over the rows gives, after appends from several
    processes, removals, and drops by the cap."""
    _append_from_four_processes(tmp_path)
    spool = Spool(tmp_path)
    rows = spool.take("s", 300)
    spool.remove([row.seq for row in rows[:250]])
    spool.release([row.seq for row in rows[250:]])
    depth = spool.depth("s")
    with sqlite3.connect(spool.path) as check:
        count, size = check.execute("SELECT count(*), sum(bytes) FROM entries WHERE stream = 's'").fetchone()
    assert (depth.entries, depth.bytes) == (count, size) == (550, size)
    assert 0 <= depth.oldest_age_s < 60
    capped = Spool(tmp_path, max_bytes=size + 10)
    assert capped.append("s", [_entry(1), _entry(2)]) == 2  # the cap reads the totals: no room for 2 x 32 bytes


def test_a_spool_file_of_an_earlier_version_gets_its_totals_from_what_it_holds(tmp_path: Path) -> None:
    """A spool written before the totals existed (entries only) is counted on open, and its cap holds."""
    with sqlite3.connect(tmp_path / "spool.sqlite3") as old:
        old.execute(
            "CREATE TABLE entries (seq INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL, fields TEXT NOT NULL,"
            " bytes INTEGER NOT NULL, spooled_at REAL NOT NULL, leased_until REAL NOT NULL DEFAULT 0)"
        )
        old.executemany(
            "INSERT INTO entries (stream, fields, bytes, spooled_at) VALUES (?, ?, ?, 0)",
            [("s", '{"v": "1", "data": "x"}', 100)] * 3 + [("t", '{"v": "1", "data": "y"}', 50)],
        )
    spool = Spool(tmp_path, max_bytes=400)
    assert (spool.depth("s").entries, spool.depth("s").bytes) == (3, 300)
    assert (spool.depth("t").entries, spool.depth("t").bytes) == (1, 50)
    assert spool.append("s", [_entry(0, size=60)]) == 1  # 350 held + 84 > 400
    assert [row.fields for row in Spool(tmp_path).take("t", 5)] == [{b"v": b"1", b"data": b"y"}]
