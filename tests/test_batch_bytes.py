"""Batches are bounded by bytes as well as by count, so a backlog of large records never outgrows memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from interactionlog import Publisher
from interactionlog.errors import ConfigurationError
from interactionlog.settings import load_settings

from .pipeline import count_rows, migrate, running_worker, wait_until

RECORD_BYTES = 200_000


def _large(index: int) -> dict[str, object]:
    return {"mcp_id": "big", "interaction_id": f"big-{index}", "response": {"text": "x" * RECORD_BYTES}}


def test_a_backlog_of_large_records_is_read_in_batches_within_the_byte_budget(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """With a 1 MiB budget and a 256 KiB record cap, no batch holds more than 4 records of 200 KB, while a batch
    of small records still fills up to batch_size; every record is stored."""
    migrate(database_url)
    with Publisher.from_url(redis_url) as publisher:
        for index in range(40):
            publisher.publish(_large(index))
        publisher.publish_many([{"mcp_id": "small", "interaction_id": f"s-{i}"} for i in range(300)])
    with running_worker(
        redis_url, database_url, tmp_path, batch_max_bytes=str(2**20), batch_size="300", concurrency="1"
    ) as worker:
        wait_until(lambda: count_rows(database_url) == 340, what="every record stored")
        assert worker.stop() == 0
    batches = [
        json.loads(line)
        for line in worker.log_text().splitlines()
        if '"batch_processed"' in line and '"entries"' in line
    ]
    sizes = [batch["entries"] for batch in batches]
    assert sum(sizes) == 340
    large_batches = sizes[: 40 // 4]
    assert max(large_batches) <= 4, sizes
    assert max(sizes) > 100, f"small records must still make large batches: {sizes}"


def test_a_budget_smaller_than_one_record_is_refused_at_start() -> None:
    """batch_max_bytes under max_record_bytes could never hold the largest record: a clear settings error."""
    with pytest.raises(ConfigurationError, match="batch_max_bytes"):
        load_settings({"batch_max_bytes": 100_000, "max_record_bytes": 262_144})
