"""The worker's validation of realistic batches that hold a few records its batch path is not sure of.

Run as a script, so that `interactionlog` is imported from PYTHONPATH while the records come from here (alternate
two checkouts in the same minutes, as with `publish_ab.py`):

    .venv/bin/python benchmarks/mixed_batches.py                       # this checkout
    PYTHONPATH=/work/wt/before .venv/bin/python benchmarks/mixed_batches.py

It times `worker.decode.decode_entries` (what the worker runs on every batch it reads: the fast path's checks,
msgspec's decoding, the scrubbing pre-check, the rows) over batches of 1000 of the suite's ~700-byte records, with
one record in every `EVERY` replaced by an odd one of each kind, and prints this process's CPU per record. The odd
kinds are what real streams hold: a raw XADD without `interaction_id` (the model's path adds it), a long tool
result (6 KB of text, over the 4,300 bytes an integer too long to parse could need), and a tool result listing 150
objects (over 300 brackets, 3 levels deep), and an entry in a wire version this worker does not read (a newer
publisher during an upgrade: dead-lettered).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from interactionlog.worker.decode import decode_entries

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `records`, this checkout's, as a plain module
from records import encode, records

BATCH = 1000
BATCHES = 20
EVERY = 100  # one odd record in a hundred
REPEATS = 5
MAX_RECORD_BYTES = 256 * 1024

_HEAD = {"mcp_id": "files", "timestamp": "2026-12-01T10:00:00.123456Z", "method": "tools/call", "tool": "list"}
ODD: dict[str, bytes] = {
    "none": b"",
    "no interaction_id": json.dumps({**_HEAD, "request": {"path": "/srv"}}).encode(),
    "6 KB tool result": json.dumps(
        {**_HEAD, "interaction_id": "long", "response": {"content": [{"type": "text", "text": "word " * 1200}]}}
    ).encode(),
    "150-object tool result": json.dumps(
        {
            **_HEAD,
            "interaction_id": "wide",
            "response": {"files": [{"name": f"f{index}.txt", "size": index, "tags": ["a"]} for index in range(150)]},
        }
    ).encode(),
}


# An entry of a newer publisher, in a wire version this worker does not read (dead-lettered, as in an upgrade).
NEWER = "a wire version 2 entry"


def cpu_per_record(datas: list[bytes], newer: bool = False) -> float:
    """The best of `REPEATS` runs of decode_entries over `datas` in batches of `BATCH`: CPU µs per record; with
    `newer`, the odd records' entries are in wire version 2."""
    fields = [{b"v": b"1", b"data": data} for data in datas]
    if newer:
        fields = [
            {b"v": b"2", b"data": entry[b"data"]} if index % EVERY == EVERY // 2 else entry
            for index, entry in enumerate(fields)
        ]
    ids = [f"1700000000000-{index}" for index in range(len(datas))]
    best = float("inf")
    for _ in range(REPEATS):
        started = time.process_time()
        for start in range(0, len(datas), BATCH):
            rows, errors = decode_entries(ids[start : start + BATCH], fields[start : start + BATCH], MAX_RECORD_BYTES)
            assert len(errors) == (BATCH // EVERY if newer else 0), errors
            assert len(rows) + len(errors) == len(fields[start : start + BATCH])
        best = min(best, time.process_time() - started)
    return best / len(datas) * 1e6


def main() -> None:
    """Print one line per odd kind."""
    base = [encode(record) for record in records(BATCH * BATCHES, seed=7)]
    import interactionlog  # noqa: PLC0415  # which checkout, for the line

    print(f"interactionlog from {Path(interactionlog.__file__).parent.parent}")
    for kind, odd in ODD.items():
        datas = [odd if odd and index % EVERY == EVERY // 2 else data for index, data in enumerate(base)]
        print(f"  one in {EVERY} {kind:24} {cpu_per_record(datas):6.2f} µs CPU a record", flush=True)
    print(f"  one in {EVERY} {NEWER:24} {cpu_per_record(base, newer=True):6.2f} µs CPU a record", flush=True)


if __name__ == "__main__":
    main()
