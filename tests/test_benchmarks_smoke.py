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


def _run(module: str, *args: str, timeout_s: float) -> str:
    """`python -m <module> <args>` from the repository root, without the caller's INTERACTIONLOG_* settings; its
    output, once it exits 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERACTIONLOG_")}
    argv = [sys.executable, "-m", module, *args]
    completed = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def test_quick_benchmark_prints_every_figure_and_target() -> None:
    """A quick run exits 0 and prints the drain table, both sweeps, the publish side and every target."""
    out = _run("benchmarks", "--quick", timeout_s=120)
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


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="scripts/setup installs valgrind")
def test_instruction_counts_run_end_to_end() -> None:
    """`python -m benchmarks.instructions` counts the worker's and publish_many's instructions per record (a small
    run: about a minute under valgrind); each figure is within what a record can plausibly cost, which a parse of
    the wrong line or a run that counted nothing (a difference of two equal totals) would not be; `--functions`
    lists the same total first, then functions in falling order."""
    out = _run("benchmarks.instructions", "--records", "2000", "--functions", "3", timeout_s=600)
    every = out.splitlines()
    lines = [line for line in every if "instructions a record over 1,800" in line]
    assert [line.split()[0] for line in lines] == ["worker", "publish"], out
    for line in lines:
        figure = float(line.split(": ", 1)[1].split()[0].replace(",", ""))
        assert 10_000 < figure < 2_000_000, line
        # --functions 3: the totals of the two runs' difference (the same figure), then the two costliest functions.
        totals, first, second = every[every.index(line) + 1 : every.index(line) + 4]
        assert totals.split()[0] == f"{figure:,.0f}", totals
        assert totals.endswith("PROGRAM TOTALS"), totals
        assert float(first.split()[0].replace(",", "")) >= float(second.split()[0].replace(",", "")) > 0, out


def test_mixed_batches_time_every_kind_of_odd_record() -> None:
    """`benchmarks/mixed_batches.py` decodes its batches (each row checked there) and prints a figure for each
    kind of odd record, from this checkout."""
    lines = _run("benchmarks.mixed_batches", timeout_s=300).splitlines()
    assert lines[0] == f"interactionlog from {REPO}", lines
    kinds = [line.split("one in 100 ", 1)[1].rsplit(" ", 5)[0].strip() for line in lines[1:]]
    assert kinds == [
        "none",
        "no interaction_id",
        "6 KB tool result",
        "150-object tool result",
        "a wire version 2 entry",
    ], lines
    assert all(float(line.split()[-5]) > 0 for line in lines[1:]), lines
