"""Instructions per record, counted by valgrind's cachegrind: figures this shared VM's noise does not move.

Run: python -m benchmarks.instructions [--records N] [--tree CHECKOUT ...] [--only worker,publish] [--functions K]

Why: the µs figures of `python -m benchmarks` move two- or threefold between days on this VM for the same code
(benchmarks/NOTES.md, round 4), and ±30% within an hour, so a lever worth 10% cannot be told from noise by timing,
and a goal set on one day ("19 µs a row") cannot be checked on another. An instruction count is the same on every
run of the same code on the same records; it is not time (a cache miss or a page fault costs time and few
instructions), so it complements the timed suite rather than replacing it. The host has no hardware performance
counters here (no `cpu` under /sys/bus/event_source/devices), so the count comes from valgrind's emulation:
`valgrind --tool=cachegrind --cache-sim=no` counts every user-space instruction the process executes, in all its
threads (the kernel's work for its system calls is not counted).

What is counted, each for this checkout and every `--tree` (a `git worktree` of another commit, whose
`interactionlog` is imported from it, with this checkout's records and servers, as `--worker-tree` does):
- worker: `interactionlog worker` (default settings) draining the newest N entries of the suite's prefilled
  stream into a fresh database, under cachegrind, for two N; instructions per row are the difference of the two
  totals over the difference of N, so start-up, migrations and shutdown cancel out. Chores that run by the clock
  (pending claims, gauges) run more often under valgrind's slowdown and stay in the figure: an over-count.
- publish: `Publisher.publish_many` of the suite's records as plain dicts, batches of 1000, onto a scratch stream,
  the same way (two N, the difference).

`--functions K` lists each count's top K functions by instructions a record (`cg_diff` of the two runs, so again
start-up cancels out): where the remaining instructions go, C extensions by name, Python code as the interpreter.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import drain
from .drain import REPO, Target, run_processes, worker_commands
from .records import Prefilled, prefill
from .servers import Servers, start_servers

PARTS = ("worker", "publish")
BATCH = 1000
# Under valgrind a worker's graceful shutdown (finish the batch, close pools) takes seconds, not milliseconds.
VALGRIND_STOP_S = 300.0


@dataclass(frozen=True)
class Count:
    """Instructions per record of one part, for one checkout."""

    part: str
    tree: Path
    per_record: float
    records: int  # the difference of the two runs' record counts the figure is taken over
    out_files: tuple[Path, Path]  # cachegrind's files of the smaller and the larger run


def by_function(count: Count, top: int) -> list[tuple[float, str]]:
    """The `top` functions by instructions a record, with their share: `cg_diff` of the two runs (start-up and
    shutdown cancel out, as in the total), read by `cg_annotate`. Python code shows as the interpreter's own
    functions (`_PyEval_EvalFrameDefault`, ...); C extensions (msgspec, hiredis, pydantic-core, psycopg's C, libpq)
    by name."""
    small, large = count.out_files
    diff = large.with_suffix(".diff")
    with diff.open("w") as out:
        subprocess.run(["cg_diff", str(small), str(large)], check=True, stdout=out)
    listing = subprocess.run(["cg_annotate", "--auto=no", str(diff)], check=True, capture_output=True, text=True).stdout
    rows: list[tuple[float, str]] = []
    for line in listing.splitlines():
        # A function line: "<Ir with commas> (<share>%)  <file>:<function>" (valgrind 3.19 and later).
        match = re.match(r"^\s*(-?[\d,]+)\s+\(\s*-?[\d.]+%\)\s+(\S.*)$", line)
        if match:
            rows.append((int(match[1].replace(",", "")) / count.records, match[2]))
    return sorted(rows, reverse=True)[:top]


def valgrind_argv(out_file: Path) -> list[str]:
    """The prefix that runs a command under cachegrind, counting instructions only, into `out_file`."""
    return ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out_file}", "--quiet"]


def instructions(out_file: Path) -> int:
    """The total instruction count cachegrind wrote in `out_file` (its `summary:` line)."""
    for line in out_file.read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"no summary in {out_file}: did the process end before cachegrind could write it?")


def per_record(totals: dict[int, int]) -> float:
    """Instructions per record from {records: total} of two runs: the difference over the difference."""
    (small, small_total), (large, large_total) = sorted(totals.items())
    return (large_total - small_total) / (large - small)


def count_worker(servers: Servers, filled: Prefilled, tree: Path, sizes: Sequence[int], workdir: Path) -> Count:
    """The default worker's instructions per row, from drains of each of `sizes` newest entries (two sizes)."""
    totals: dict[int, int] = {}
    previous, drain.WORKER_TREE = drain.WORKER_TREE, tree
    try:
        for size in sizes:
            out_file = workdir / f"worker-{size}.cachegrind"
            wrapped = worker_commands(servers)

            def commands(target: Target, out: Path = out_file, inner: drain.Commands = wrapped) -> list[list[str]]:
                return [[*valgrind_argv(out), *argv] for argv in inner(target)]

            result = run_processes(
                servers, filled, label=f"worker under cachegrind, {size:,}", slug=f"instructions_{size}",
                commands=commands, count=size, max_s=3600.0, stop_timeout_s=VALGRIND_STOP_S,
            )  # fmt: skip
            if not result.drained or result.rows != size:
                raise RuntimeError(f"the worker under cachegrind stored {result.rows:,} of {size:,}: {result.note}")
            totals[size] = instructions(out_file)
    finally:
        drain.WORKER_TREE = previous
    files = (workdir / f"worker-{min(sizes)}.cachegrind", workdir / f"worker-{max(sizes)}.cachegrind")
    return Count("worker", tree, per_record(totals), max(sizes) - min(sizes), files)


# Run by `count_publish` as a script, so that `interactionlog` comes from the tree on PYTHONPATH while the records
# come from this checkout's `benchmarks/records.py` (as `benchmarks/publish_ab.py` does).
_PUBLISH_SCRIPT = f"""
import gc
import sys
sys.path.insert(0, sys.argv[1])
from records import records
from interactionlog.client.publisher import Publisher
count = int(sys.argv[3])
items = list(records(int(sys.argv[4]), seed=7))  # as many in every run: making them cancels out
publisher = Publisher.from_url(sys.argv[2], stream="instructions:publish", maxlen=10 * len(items))
gc.freeze()  # the collector's passes over what start-up made would differ between the runs, not cancel out
for start in range(0, count, {BATCH}):
    publisher.publish_many(items[start : start + {BATCH}])
publisher.close()
"""


def count_publish(redis_url: str, tree: Path, sizes: Sequence[int], workdir: Path) -> Count:
    """`Publisher.publish_many`'s instructions per record (plain dicts, batches of 1000), from two runs."""
    totals: dict[int, int] = {}
    for size in sizes:
        out_file = workdir / f"publish-{size}.cachegrind"
        # From a file, not `-c`: cachegrind writes the command line into its file, where a newline breaks the format
        # (cg_diff and cg_annotate then refuse it).
        path = workdir / "publish_script.py"
        path.write_text(_PUBLISH_SCRIPT)
        script = [sys.executable, str(path), str(REPO / "benchmarks"), redis_url, str(size)]
        argv = [*valgrind_argv(out_file), *script, str(max(sizes))]
        subprocess.run(argv, check=True, cwd=tree, env=drain.checkout_env(tree), capture_output=True)
        totals[size] = instructions(out_file)
    files = (workdir / f"publish-{min(sizes)}.cachegrind", workdir / f"publish-{max(sizes)}.cachegrind")
    return Count("publish", tree, per_record(totals), max(sizes) - min(sizes), files)


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    workdir = Path(tempfile.mkdtemp(prefix="interactionlog-instructions-"))
    try:
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Count, print one line per part and checkout, and each other checkout's figure as a ratio to this one's."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions", description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=20_000, help="the larger run's records [20000]")
    parser.add_argument("--tree", type=Path, action="append", default=[], help="another checkout to count too")
    parser.add_argument("--only", default=",".join(PARTS), help=f"parts to count, of {','.join(PARTS)}")
    parser.add_argument("--functions", type=int, default=0, help="also list the top N functions of each count")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (Debian: apt-get install valgrind)")
    only = set(args.only.split(","))
    sizes = (args.records // 10, args.records)
    trees = [REPO, *(tree.resolve() for tree in args.tree)]
    counts: list[Count] = []
    with start_servers() as servers, _scratch() as workdir:
        filled = prefill(servers.redis_url, max(sizes), copy_rows_per_block=1000) if "worker" in only else None
        for tree in trees:
            if filled is not None:
                counts.append(count_worker(servers, filled, tree, sizes, workdir))
                _report(counts[-1], counts, args.functions)
            if "publish" in only:
                counts.append(count_publish(servers.redis_url, tree, sizes, workdir))
                _report(counts[-1], counts, args.functions)
    return 0


def _report(count: Count, counts: Sequence[Count], functions: int) -> None:
    print(_line(count, counts), flush=True)
    for instructions_a_record, function in by_function(count, functions) if functions else []:
        print(f"  {instructions_a_record:10,.0f}  {instructions_a_record / count.per_record:6.1%}  {function}")


def _line(count: Count, counts: Sequence[Count]) -> str:
    here = next(c for c in counts if c.part == count.part and c.tree == REPO)
    ratio = "" if count.tree == REPO else f" ({count.per_record / here.per_record:.2f}x this checkout's)"
    return f"{count.part:8} {count.tree}: {count.per_record:,.0f} instructions a record over {count.records:,}{ratio}"


if __name__ == "__main__":
    sys.exit(main())
