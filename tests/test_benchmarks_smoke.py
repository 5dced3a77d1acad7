"""The benchmark suite runs end to end: `python -m benchmarks --quick` prints every figure and target.

Not a timed test: quick sizes make the figures meaningless; this only proves the suite still works against the
current worker, CLI and publisher, so it cannot rot unnoticed between performance runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.servers import find_pg_bin

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None or find_pg_bin() is None,
    reason="the benchmarks start their own redis-server and PostgreSQL",
)


def test_quick_benchmark_prints_every_figure_and_target() -> None:
    """A quick run exits 0 and prints the drain table, both sweeps, the publish side and every target."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERACTIONLOG_")}
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = completed.stdout
    for expected in (
        "machine bound: text COPY, 1000-row txns",
        "machine bound: binary COPY, 1000-row txns",
        "per-message loop",
        "interactionlog worker, default settings",
        "interactionlog best:",
        "Throughput vs --concurrency",
        "Throughput vs worker processes",
        "Publisher.publish (validate + XADD)",
        "Publisher.publish_many",
        "best drain / machine bound",
        "publish p99",
        "worker peak RSS",
    ):
        assert expected in out, f"missing {expected!r} in:\n{out}"
    assert "LOST ROWS" not in out, f"a contender lost rows:\n{out}"
