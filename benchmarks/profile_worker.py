"""Where a draining worker spends its time: py-spy samples it, and the samples are summed by pipeline stage.

Run: python -m benchmarks.profile_worker [--records N] [--concurrency C] [--batch-size B] [--svg out.svg]
(py-spy must be installed: `pip install py-spy`; it needs ptrace rights, which root or the process's owner has).

The worker is started through its CLI on a prefilled stream, as in the drain benchmark; py-spy records while it
drains (idle samples included, so time spent waiting on Redis or PostgreSQL shows as `waiting (event loop idle)`).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path

import redis

from .drain import REPO, Target, _fresh_database, checkout_env, worker_commands
from .records import prefill
from .servers import cpu_seconds, start_servers

# First matching rule wins; each is (stage, substrings any frame of the stack may contain). Order matters: the
# more specific stage comes first (a COPY row written inside persist_batch is "COPY", not "persist other").
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("waiting (event loop idle)", ("select (selectors.py", "epoll", "_run_once (asyncio/base_events.py")),
    ("pydantic validate (model_validate_json)", ("model_validate_json",)),
    ("JSON re-encode (model_dump_json, NUL check)", ("encode_record",)),
    ("model_copy / defaults", ("model_copy",)),
    ("COPY rows: write_row (text encoding)", ("write_row",)),
    ("COPY/INSERT: psycopg other", ("psycopg",)),
    ("redis: reply parsing, commands", ("redis/", "hiredis")),
    ("metrics (prometheus observe)", ("prometheus_client",)),
    ("logging (structlog)", ("structlog",)),
)
# Outside the libraries above, a sample whose innermost frame is asyncio's is the event loop's own overhead
# (task switching, timers, futures); anything else is the worker's Python (decode_entry, triage, bookkeeping).
EVENT_LOOP = "event loop overhead (asyncio)"
WORKER = "worker Python: building rows, batch bookkeeping"


def classify(stack: str) -> str:
    """The pipeline stage a collapsed py-spy stack belongs to."""
    frames = stack.split(";")
    leaf = frames[-1] if frames else ""
    if any(marker in leaf for marker in STAGES[0][1]):
        return STAGES[0][0]
    for stage, markers in STAGES[1:]:
        if any(marker in stack for marker in markers):
            return stage
    if "asyncio/" in leaf:
        return EVENT_LOOP
    return WORKER if "interactionlog" in stack else "other"


def summarise(raw: Path) -> list[tuple[str, int]]:
    """Samples per stage from py-spy's raw (collapsed) output, largest first."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            counts[classify(stack)] += int(count)
    return counts.most_common()


def top_leaves(raw: Path, limit: int = 25) -> list[tuple[str, int]]:
    """The functions most often on top of the stack (self time), ignoring idle waiting."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and classify(stack) != STAGES[0][0]:
            counts[stack.split(";")[-1]] += int(count)
    return counts.most_common(limit)


def main() -> None:
    """Prefill, start one worker, sample it with py-spy until drained, print the stage breakdown."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_worker", description=__doc__)
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="also sample C extensions (py-spy --native)")
    parser.add_argument(
        "--busy",
        action="store_true",
        help="sample only while the worker runs (no --idle): a thread preempted inside a syscall (a loopback send "
        "waking Redis) otherwise shows as time spent in that call",
    )
    parser.add_argument("--raw", type=Path, help="also keep py-spy's collapsed stacks here")
    parser.add_argument("--svg", type=Path, help="also write a flame graph here (a second, identical drain)")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    with start_servers() as servers:
        filled = prefill(servers.redis_url, args.records, copy_rows_per_block=1000)
        outputs = [("raw", servers.workdir / "profile.txt")]
        if args.svg:
            outputs.append(("flamegraph", args.svg.resolve()))
        for index, (fmt, output) in enumerate(outputs):
            target = Target(_fresh_database(servers, f"profile{index}"), f"{filled.stream}:p{index}", f"p{index}")
            client = redis.Redis.from_url(servers.redis_url)
            client.copy(filled.stream, target.stream)
            client.xgroup_create(target.stream, target.group, id="0")
            build = worker_commands(servers, batch_size=args.batch_size, concurrency=args.concurrency)
            (argv,) = build(target)
            worker = subprocess.Popen(argv, stderr=subprocess.DEVNULL, cwd=REPO, env=checkout_env())
            time.sleep(1.0)  # let start-up finish, so the profile is the steady drain
            cpu_pg = cpu_seconds(servers.postgres_pid)
            spy_argv = [py_spy, "record", "--pid", str(worker.pid), "--rate", str(args.rate)]
            spy_argv += [] if args.busy else ["--idle"]
            spy_argv += ["--format", fmt, "--output", str(output)] + (["--native"] if args.native else [])
            spy = subprocess.Popen(spy_argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            started = time.monotonic()
            cpu_worker = cpu_seconds(worker.pid)
            while True:
                (info,) = [g for g in client.xinfo_groups(target.stream) if g["name"].decode() == target.group]
                if info["last-delivered-id"].decode() == filled.last_id and int(info["pending"]) == 0:
                    break
                time.sleep(0.2)
            elapsed = time.monotonic() - started
            cpu_worker = cpu_seconds(worker.pid) - cpu_worker
            cpu_pg = cpu_seconds(servers.postgres_pid) - cpu_pg
            spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
            spy.wait(timeout=60)
            worker.terminate()
            worker.wait(timeout=60)
            client.close()
            if fmt != "raw":
                print(f"flame graph written to {output}")
                continue
            if args.raw:
                shutil.copyfile(output, args.raw)
            print(f"drain after start-up: {elapsed:.1f} s; worker CPU {cpu_worker / elapsed:.0%} of a core, ")
            print(f"PostgreSQL CPU {cpu_pg / elapsed:.0%} of a core (sampling slows the worker a little)")
            total = sum(count for _, count in summarise(output)) or 1
            print("\nworker time by stage (share of samples, idle included)")
            for stage, count in summarise(output):
                print(f"  {count / total:6.1%}  {stage}")
            print("\nhottest functions (self time, idle excluded)")
            for leaf, count in top_leaves(output):
                print(f"  {count / total:6.1%}  {leaf}")


if __name__ == "__main__":
    main()
