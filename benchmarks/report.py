"""The printed figures: one table per question, then the targets as the ratios the issue states them in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .drain import TRIM, DrainResult

if TYPE_CHECKING:
    from .run import Results

# Issue 15's targets (issue 4's for the publish p99).
TARGET_WORKER_CPU_US = 8.0
TARGET_PG_VS_BOUND = 1.05
TARGET_VS_PEER = 3.0
TARGET_PUBLISH_MANY = 100_000.0
TARGET_BACKGROUND_US = 10.0
TARGET_PUBLISH_P99_MS = 1.0
TARGET_RSS_MIB = 150.0


def _rate(value: float | None) -> str:
    return f"{value:,.0f}" if value else "n/a"


def _mib(value: float | None) -> str:
    return f"{value:.0f}" if value is not None else "-"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    for index, row in enumerate([headers, *rows]):
        cells = [str(cell).ljust(width) if i == 0 else str(cell).rjust(width) for i, (cell, width) in
                 enumerate(zip(row, widths, strict=True))]  # fmt: skip
        print("  " + "  ".join(cells))
        if index == 0:
            print("  " + "  ".join("-" * width for width in widths))


def _cpu(r: DrainResult) -> str:
    """CPU microseconds per stored row: the contender's processes / PostgreSQL / Redis."""
    if not r.rows:
        return "-"
    per_row = [f"{seconds / r.rows * 1e6:.0f}" for seconds in (r.cpu_contender_s, r.cpu_postgres_s, r.cpu_redis_s)]
    return " / ".join(per_row)


def _drain_rows(results: Sequence[DrainResult]) -> list[list[str]]:
    return [
        [r.label, f"{r.rows:,}", _rate(r.rate), f"{r.wall_s:.1f}", _cpu(r), _mib(r.peak_rss_mib), r.note]
        for r in results
    ]


_DRAIN_HEADERS = ("contender", "rows", "rows/s", "wall s", "CPU us/row self/pg/redis", "peak RSS MiB", "note")


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "NOT MET")


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None


def _cpu_per_row(result: DrainResult | None) -> float | None:
    """All CPU (contender, PostgreSQL, Redis) one stored row cost; what caps the rate on a CPU-bound machine."""
    if result is None or not result.rows:
        return None
    return (result.cpu_contender_s + result.cpu_postgres_s + result.cpu_redis_s) / result.rows


def print_report(results: Results) -> None:
    """Print every figure; rates are rows/s from the table between the trimmed quantiles of stored_at."""
    env = results.environment
    print()
    print("interactionlog benchmarks")
    for key, value in env.items():
        print(f"  {key}: {value}")
    print(
        f"  drain rates: rows/s from the table, between the {TRIM:.0%} and {1 - TRIM:.0%} quantiles of stored_at "
        "(start-up and tail excluded); wall s includes start-up"
    )
    print(
        "  CPU us/row: CPU time per stored row of the contender's processes, of all PostgreSQL processes and of "
        "redis-server, from the first delivery to the end of the drain (2 CPUs give 2,000,000 us of CPU per second)"
    )

    print("\nDrain: each contender into its own fresh database")
    drains = [*results.bound, *results.contenders]
    drains += [r for r in (results.default_worker, results.best_worker) if r is not None]
    _table(_DRAIN_HEADERS, _drain_rows(drains))

    for title, sweep in (
        ("--concurrency (1 process, --batch-size 500)", results.concurrency_sweep),
        ("--batch-size (1 process, best --concurrency)", results.batch_sweep),
        ("worker processes (best --concurrency and --batch-size)", results.process_sweep),
    ):
        if sweep:
            print(f"\nThroughput vs {title}, {results.sweep_records:,} records each")
            _table(
                ("value", "rows/s", "wall s", "CPU us/row self/pg/redis", "peak RSS MiB", "note"),
                [[str(value), _rate(r.rate), f"{r.wall_s:.1f}", _cpu(r), _mib(r.peak_rss_mib), r.note]
                 for value, r in sweep],
            )  # fmt: skip

    publish = results.publish
    if publish is not None:
        print(f"\nPublish side, {publish.records:,} records each way (one process, loopback)")
        _table(
            ("way", "records/s", "p50 ms", "p99 ms"),
            [
                ["Publisher.publish (validate + XADD)", _rate(publish.publish_rate),
                 f"{publish.publish_p50_ms:.3f}", f"{publish.publish_p99_ms:.3f}"],
                ["Publisher.publish_many (batches of 1000)", _rate(publish.publish_many_rate), "", ""],
                [f"  CPU of this process: {publish.publish_many_cpu_us:.1f} us per record", "", "", ""],
                ["  the same, given Interaction objects", _rate(publish.publish_many_models_rate), "", ""],
                ["AsyncPublisher.publish_many (batches of 1000)", _rate(publish.async_publish_many_rate), "", ""],
                [f"  CPU of this process: {publish.async_publish_many_cpu_us:.1f} us per record", "", "", ""],
                ["BackgroundPublisher.publish, per call", "", f"{publish.background_p50_us / 1000:.4f}",
                 f"{publish.background_p99_us / 1000:.4f}"],
                ["  the same, paced (a pause after each call)", "", f"{publish.paced_background_p50_us / 1000:.4f}",
                 f"{publish.paced_background_p99_us / 1000:.4f}"],
                ["redis-py xadd(json.dumps), one at a time", _rate(publish.xadd_rate), "", ""],
                ["redis-py xadd(json.dumps), pipelined 1000", _rate(publish.xadd_pipelined_rate), "", ""],
            ],
        )  # fmt: skip

    _print_targets(results)


def _per_row_us(seconds: float, result: DrainResult | None) -> float | None:
    return seconds / result.rows * 1e6 if result is not None and result.rows else None


def _print_targets(results: Results) -> None:
    best = results.best_worker
    default = results.default_worker
    best_rate = best.rate if best else None
    default_rate = default.rate if default else None
    peer = next((r for r in results.contenders if r.label.startswith("FastStream")), None)
    per_message = next((r for r in results.contenders if r.label.startswith("per-message")), None)
    bound = max((r.rate or 0.0 for r in results.bound), default=0.0) or None
    bound_cpu = [cpu for cpu in map(_cpu_per_row, results.bound) if cpu]
    # PostgreSQL's own cost of the same rows by the bare binary COPY: the cheapest of the binary bounds.
    binary_pg = [_per_row_us(r.cpu_postgres_s, r) for r in results.bound if "binary" in r.label]
    bound_pg = min((cpu for cpu in binary_pg if cpu), default=None)
    rss = [r.peak_rss_mib for r in (default, best) if r is not None and r.peak_rss_mib is not None]
    publish = results.publish
    worker_cpu = _per_row_us(default.cpu_contender_s, default) if default else None
    default_pg = _per_row_us(default.cpu_postgres_s, default) if default else None
    pg_ratio = _ratio(default_pg, bound_pg)
    drain = best_rate or default_rate
    vs_peer = _ratio(drain, peer.rate if peer else None)
    rows: list[list[str]] = [
        ["worker CPU per row, default settings", _fmt(worker_cpu, "us"), f"<= {TARGET_WORKER_CPU_US:.0f} us",
         _verdict(None if worker_cpu is None else worker_cpu <= TARGET_WORKER_CPU_US)],
        ["PostgreSQL CPU per row / bare binary COPY's", _fmt(pg_ratio, "x"), f"<= {TARGET_PG_VS_BOUND:.2f}x",
         _verdict(None if pg_ratio is None else pg_ratio <= TARGET_PG_VS_BOUND)],
        ["  (PostgreSQL us per row: worker default / bound)", f"{_fmt(default_pg, 'us')} / {_fmt(bound_pg, 'us')}",
         "", ""],
        ["best drain / FastStream", _fmt(vs_peer, "x"), f">= {TARGET_VS_PEER:.0f}x",
         _verdict(None if vs_peer is None else vs_peer >= TARGET_VS_PEER)],
        ["default drain / FastStream", _fmt(_ratio(default_rate, peer.rate if peer else None), "x"), "", ""],
        ["best / FastStream, by CPU per row", _fmt(_ratio(_cpu_per_row(peer), _cpu_per_row(best or default)), "x"),
         "", ""],
        ["best drain / machine bound", _fmt(_ratio(drain, bound), "%"), "report", ""],
        ["default drain / machine bound", _fmt(_ratio(default_rate, bound), "%"), "", ""],
        # Wall rates on a shared machine swing by 20% between runs; CPU per row barely moves. When both sides are
        # CPU-bound (they are on 2 cores), bound CPU/row over drain CPU/row is the rate ratio an idle machine gives.
        ["best / bound, by CPU per row", _fmt(_ratio(min(bound_cpu, default=None), _cpu_per_row(best or default)),
         "%"), "", ""],
        ["best drain / per-message loop", _fmt(_ratio(drain, per_message.rate if per_message else None), "x"),
         "", ""],
    ]  # fmt: skip
    if publish is not None:
        rows += [
            ["publish_many records/s, from dicts", _rate(publish.publish_many_rate),
             f">= {TARGET_PUBLISH_MANY:,.0f}", _verdict(publish.publish_many_rate >= TARGET_PUBLISH_MANY)],
            ["  (publish_many CPU per record, this process)", _fmt(publish.publish_many_cpu_us, "us"), "", ""],
            ["BackgroundPublisher.publish per call, p50", _fmt(publish.background_p50_us, "us"),
             f"<= {TARGET_BACKGROUND_US:.0f} us", _verdict(publish.background_p50_us <= TARGET_BACKGROUND_US)],
            ["  (p99)", _fmt(publish.background_p99_us, "us"), "", ""],
            ["  paced calls, p50 (a pause after each)", _fmt(publish.paced_background_p50_us, "us"),
             f"<= {TARGET_BACKGROUND_US:.0f} us", _verdict(publish.paced_background_p50_us <= TARGET_BACKGROUND_US)],
            ["publish p99", f"{publish.publish_p99_ms:.3f} ms", f"< {TARGET_PUBLISH_P99_MS:.0f} ms",
             _verdict(publish.publish_p99_ms < TARGET_PUBLISH_P99_MS)],
        ]  # fmt: skip
    peak = max(rss, default=None)
    records = results.environment.get("records", "").split(" ")[0]
    rows.append(
        [f"worker peak RSS draining {records}", f"{_mib(peak)} MiB", f"< {TARGET_RSS_MIB:.0f} MiB",
         _verdict(None if peak is None else peak < TARGET_RSS_MIB)]
    )  # fmt: skip
    print("\nTargets (ratios from this run)")
    _table(("measure", "value", "target", "verdict"), rows)
    print()


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "us":
        return f"{value:.1f} us"
    return f"{value:.0%}" if unit == "%" else f"{value:.2f}x"
