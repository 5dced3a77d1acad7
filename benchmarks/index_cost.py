"""What migration 2's indexes (for `tail`, `stats` and the interactions dashboard) cost the worker's inserts.

Stores the same realistic records through `Store.persist_batch` (binary COPY, 1000 rows a batch, as the worker
does) into two fresh databases of one durable PostgreSQL: one with the schema of migration 1 only, one with
migration 2's four indexes too. Prints rows/s and PostgreSQL CPU per row for each, alternating the order.

    python -m benchmarks.index_cost [--rows 200000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import psycopg

from interactionlog.worker.decode import StoredRow, decode_entry
from interactionlog.worker.store import MIGRATIONS, Store, migrate

from .records import encode, records
from .servers import Servers, checkpoint, cpu_seconds, create_database, drop_database, start_servers

BATCH = 1000
_MIGRATION_2_INDEXES = [
    statement.split(" IF NOT EXISTS ")[1].split()[0]
    for migration in MIGRATIONS
    if migration.version == 2
    for statement in migration.statements
    if "CREATE INDEX" in statement
]


async def store_in_batches(url: str, rows: list[StoredRow]) -> None:
    """Store `rows` through the worker's Store, BATCH at a time."""
    store = await Store.open(url, max_connections=1)
    try:
        for start in range(0, len(rows), BATCH):
            await store.persist_batch(rows[start : start + BATCH])
    finally:
        await store.close()


def stored_rows(count: int) -> list[StoredRow]:
    """The rows a worker would store for `count` realistic records (`records.records`)."""
    return [
        decode_entry(f"{index + 1}-0", {b"v": b"1", b"data": encode(record)}, 1 << 20)
        for index, record in enumerate(records(count))
    ]


def measure(servers: Servers, rows: list[StoredRow], *, with_indexes: bool) -> tuple[float, float]:
    """(rows per second, PostgreSQL CPU microseconds per row) storing `rows` into a fresh database."""
    name = "index_cost_with" if with_indexes else "index_cost_without"
    url = create_database(servers, name)
    asyncio.run(migrate(url))
    if not with_indexes:
        with psycopg.connect(url, autocommit=True) as conn:
            for index in _MIGRATION_2_INDEXES:
                conn.execute(f"DROP INDEX {index}")
    checkpoint(servers)
    cpu_before, started = cpu_seconds(servers.postgres_pid), time.perf_counter()
    asyncio.run(store_in_batches(url, rows))
    elapsed, cpu = time.perf_counter() - started, cpu_seconds(servers.postgres_pid) - cpu_before
    drop_database(servers, name)
    return len(rows) / elapsed, cpu / len(rows) * 1e6


def main() -> None:
    """Run the comparison and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rows = stored_rows(args.rows)
    print(f"indexes of migration 2: {', '.join(_MIGRATION_2_INDEXES)}; {args.rows:,} rows, batches of {BATCH}")
    with start_servers() as servers:
        for round_number in range(args.rounds):
            order = (False, True) if round_number % 2 == 0 else (True, False)
            for with_indexes in order:
                rate, cpu_us = measure(servers, rows, with_indexes=with_indexes)
                label = "migrations 1+2" if with_indexes else "migration 1 only"
                print(f"round {round_number + 1}  {label:17} {rate:9,.0f} rows/s  PostgreSQL {cpu_us:5.1f} us/row")


if __name__ == "__main__":
    main()
