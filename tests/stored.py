"""Storing known interactions through the worker's own code (encode, decode, Store), without a stream between."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from interactionlog.client.publisher import encode_fields
from interactionlog.settings import DEFAULT_MAX_RECORD_BYTES
from interactionlog.worker.decode import decode_entry
from interactionlog.worker.store import Store, migrate

_entry_numbers = iter(range(1, 10**9))


def store_records(database_url: str, records: Sequence[dict[str, Any]]) -> None:
    """Validate and store `records` as a worker would, in one batch; the schema is migrated first."""

    async def run() -> None:
        await migrate(database_url)
        store = await Store.open(database_url, max_connections=1)
        try:
            rows = [
                decode_entry(
                    f"{next(_entry_numbers)}-0",
                    encode_fields(record, DEFAULT_MAX_RECORD_BYTES),
                    DEFAULT_MAX_RECORD_BYTES,
                )
                for record in records
            ]
            result = await store.persist_batch(rows)
            assert result.inserted == len(rows), result
        finally:
            await store.close()

    asyncio.run(run())
