"""The suite's one command: `python -m benchmarks [--quick] [--records N] ...` from the repository root.

Order: publish side; prefill; the machine's bound; the per-message loop; FastStream; interactionlog's worker with
its defaults; sweeps of --concurrency, --batch-size and processes over the newest `--sweep-records` entries; the
best settings found, over everything. Contenders run one at a time, each into its own fresh database.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg
import redis

from . import drain
from .drain import Commands, DrainResult, module_commands, run_bound, run_processes, worker_commands
from .publish_side import PublishFigures, measure_publish
from .records import prefill
from .report import print_report
from .servers import start_servers

TIE = 0.05  # sweep results closer than this to the best count as equally good
# The parts of a run, in order; --only picks some (sweeps also run the best settings found over all records).
PARTS = ("publish", "bound", "permsg", "faststream", "default", "sweeps")


@dataclass(frozen=True)
class WorkerConfig:
    """One way of running interactionlog's worker."""

    processes: int
    batch_size: int
    concurrency: int

    def describe(self) -> str:
        """As the flags that select it."""
        return f"{self.processes} proc x --concurrency {self.concurrency} --batch-size {self.batch_size}"


@dataclass
class Results:
    """Everything one run measured, printed as a table and optionally saved as JSON."""

    environment: dict[str, str]
    publish: PublishFigures | None = None
    bound: list[DrainResult] = field(default_factory=list)
    contenders: list[DrainResult] = field(default_factory=list)
    default_worker: DrainResult | None = None
    best_worker: DrainResult | None = None
    best_config: WorkerConfig | None = None
    concurrency_sweep: list[tuple[int, DrainResult]] = field(default_factory=list)
    batch_sweep: list[tuple[int, DrainResult]] = field(default_factory=list)
    process_sweep: list[tuple[int, DrainResult]] = field(default_factory=list)
    sweep_records: int = 0


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Sizes and sweeps; --quick shrinks everything to a smoke run of well under a minute."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: proves the suite works, figures meaningless")
    parser.add_argument("--records", type=int, help="records prefilled and drained by each contender [1000000]")
    parser.add_argument("--sweep-records", type=int, help="records drained by each sweep run [200000]")
    parser.add_argument("--publish-records", type=int, help="records published each way [50000]")
    parser.add_argument("--concurrency-sweep", type=_ints, help="--concurrency values to try [1,2,4,8,16]")
    parser.add_argument("--batch-sweep", type=_ints, help="--batch-size values to try [100,500,1000,2000]")
    parser.add_argument("--process-sweep", type=_ints, help="worker process counts to try [1,2,3]")
    parser.add_argument("--bound-connections", type=_ints, help="parallel COPY connections for the bound [1,2]")
    parser.add_argument("--per-message-s", type=float, help="time cap of the (slow) per-message loop [60]")
    parser.add_argument("--max-drain-s", type=float, default=1800.0, help="time cap of any other drain [1800]")
    parser.add_argument("--skip-faststream", action="store_true", help="leave out the FastStream contender")
    parser.add_argument(
        "--only",
        type=lambda text: set(text.split(",")),
        default=set(PARTS),
        help=f"run only these parts, comma-separated, of: {','.join(PARTS)} [all]",
    )
    parser.add_argument("--json-out", type=Path, help="also write the figures as JSON to this file")
    parser.add_argument(
        "--worker-tree",
        type=Path,
        help="run `interactionlog worker` (and `migrate` of each contender's database) from this checkout, a "
        "`git worktree` of another commit, instead of this one: a same-minute A/B of two commits' workers",
    )
    args = parser.parse_args(argv)
    if args.worker_tree is not None:
        drain.WORKER_TREE = args.worker_tree.resolve()
    quick = args.quick
    defaults: dict[str, object] = {
        "records": 3000 if quick else 1_000_000,
        "sweep_records": 2000 if quick else 200_000,
        "publish_records": 2000 if quick else 50_000,
        "concurrency_sweep": [1, 4] if quick else [1, 2, 4, 8, 16],
        "batch_sweep": [] if quick else [100, 500, 1000, 2000],
        "process_sweep": [2] if quick else [1, 2, 3],
        "bound_connections": [1] if quick else [1, 2],
        "per_message_s": 5.0 if quick else 60.0,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def _environment(redis_url: str, database_url: str, records: int, mean_bytes: float) -> dict[str, str]:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        pg_version = str(row[0]) if row else "?"
    redis_version = str(redis.Redis.from_url(redis_url).info("server")["redis_version"])
    load = os.getloadavg()
    return {
        "cpus": str(os.cpu_count()),
        "postgresql": f"{pg_version} (fsync on, synchronous_commit on)",
        "redis": redis_version,
        "records": f"{records:,} of {mean_bytes:.0f} B mean JSON",
        "load_at_start": f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
    }


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> Results:
    """Run every benchmark against throwaway servers and return the figures."""
    faststream = not args.skip_faststream and importlib.util.find_spec("faststream") is not None
    slug_counter = iter(range(1_000))

    def slug(name: str) -> str:
        return f"{next(slug_counter):02d}_{name}"

    only = args.only
    with start_servers() as servers:
        publish = None
        if "publish" in only:
            _progress("publish side")
            publish = measure_publish(servers.redis_url, args.publish_records)
        _progress(f"prefilling {args.records:,} records")
        filled = prefill(servers.redis_url, args.records, copy_rows_per_block=1000)
        results = Results(_environment(servers.redis_url, servers.admin_url, args.records, filled.mean_record_bytes))
        results.publish = publish
        results.sweep_records = min(args.sweep_records, args.records)

        def drain(label: str, name: str, commands: Commands, count: int, max_s: float) -> DrainResult:
            _progress(f"draining {count:,} with {label}")
            result = run_processes(
                servers, filled, label=label, slug=slug(name), commands=commands, count=count, max_s=max_s
            )
            rate = f"{result.rate:,.0f}/s" if result.rate else "n/a"
            _progress(f"  {result.rows:,} rows, {rate} {result.note}")
            return result

        def worker(config: WorkerConfig, count: int, label: str | None = None) -> DrainResult:
            commands = worker_commands(
                servers, processes=config.processes, batch_size=config.batch_size, concurrency=config.concurrency
            )
            return drain(label or f"interactionlog {config.describe()}", "worker", commands, count, args.max_drain_s)

        for fmt in ("text", "binary") if "bound" in only else ():
            for connections in args.bound_connections:
                _progress(f"machine bound, {fmt} COPY, {connections} connection(s)")
                bound = run_bound(servers, filled, connections=connections, fmt=fmt, slug=slug(f"bound{connections}"))
                results.bound.append(bound)

        if "permsg" in only:
            per_message = module_commands(servers, "per_message")
            results.contenders.append(
                drain("per-message loop (XREADGROUP 100; INSERT + XACK each)", "permsg", per_message, args.records,
                      args.per_message_s)
            )  # fmt: skip
        if faststream and "faststream" in only:
            commands = module_commands(servers, "faststream_consumer", "500")
            label = "FastStream StreamSub batch 500 + executemany"
            results.contenders.append(drain(label, "faststream", commands, args.records, args.max_drain_s))

        if "default" in only:
            default_commands = worker_commands(servers)
            results.default_worker = drain(
                "interactionlog worker, default settings", "default", default_commands, args.records, args.max_drain_s
            )
        if "sweeps" in only:
            _sweep(results, args, worker)
        results.environment["load_at_end"] = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return results


def _sweep(results: Results, args: argparse.Namespace, worker: Callable[..., DrainResult]) -> None:
    """--concurrency, then --batch-size at the best concurrency, then processes; then the best over all records."""
    sweep = results.sweep_records
    tried: dict[WorkerConfig, DrainResult] = {}

    def best_so_far() -> WorkerConfig:
        # Rates within TIE of the top are a tie on a shared 2-core machine: take the cheapest of those
        # (fewest processes, then consumers, then the smallest batch), so noise does not pick 16 consumers.
        top = max(result.rate or 0.0 for result in tried.values())
        close = [config for config, result in tried.items() if (result.rate or 0.0) >= (1 - TIE) * top]
        return min(close, key=lambda c: (c.processes, c.concurrency, c.batch_size))

    for concurrency in args.concurrency_sweep:
        config = WorkerConfig(1, 500, concurrency)
        tried[config] = worker(config, sweep)
        results.concurrency_sweep.append((concurrency, tried[config]))
    if not tried:
        tried[WorkerConfig(1, 500, 4)] = worker(WorkerConfig(1, 500, 4), sweep)
    for batch_size in args.batch_sweep:
        config = WorkerConfig(1, batch_size, best_so_far().concurrency)
        tried[config] = tried.get(config) or worker(config, sweep)
        results.batch_sweep.append((batch_size, tried[config]))
    base = best_so_far()
    for processes in args.process_sweep:
        config = WorkerConfig(processes, base.batch_size, base.concurrency)
        tried[config] = tried.get(config) or worker(config, sweep)
        results.process_sweep.append((processes, tried[config]))
    if args.process_sweep and 1 not in args.process_sweep:
        results.process_sweep.insert(0, (1, tried[base]))
    best = best_so_far()
    results.best_config = best
    results.best_worker = worker(best, args.records, f"interactionlog best: {best.describe()}")


def main(argv: list[str] | None = None) -> None:
    """Run the suite and print the figures (and write them as JSON when asked)."""
    # SIGTERM (a CI timeout) unwinds like Ctrl-C, so the throwaway servers and contenders are stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    args = parse_args(argv)
    results = run(args)
    print_report(results)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(asdict(results), indent=2, default=str))
