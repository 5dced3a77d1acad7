"""The `interactionlog` command: migrate, worker, status, dlq list|replay, publish, tail, stats, show, dev, serve,
tokens, retention, partition-convert.

Commands are thin: they load Settings (flags and INTERACTIONLOG_* variables), call one module, and turn
expected failures into a one-line message and an exit code instead of a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from typing import IO, Any, TypeVar

import click
import psycopg
import psycopg.errors
from redis.exceptions import RedisError

from .client.publisher import Publisher
from .errors import (
    ConfigurationError,
    InteractionlogError,
    PublishError,
)
from .gateway_commands import serve, tokens
from .logs import configure_logging
from .ops import dlq, query, status
from .ops.publish_file import read_json_lines
from .ops.terminal import printable
from .redact import redact_text, redact_url
from .settings import WORKER_FIELDS, Settings, load_settings, settings_options, with_database_url_hint
from .worker import conversion, partition_maintenance
from .worker.daemon import run_worker
from .worker.state import PipelineStatus, collect_status
from .worker.store import migrate_and_name
from .worker.streams import connect
from .worker.supervisor import run_supervisor

_T = TypeVar("_T")

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CHECK_FAILED = 3  # `status` thresholds exceeded: distinct from 1 (could not check) and 2 (usage)

REDIS_OPTIONS = ("redis_url", "stream", "dead_letter_stream", "shards", "redis_timeout_s")
LOG_OPTIONS = ("log_format", "log_level")


def _settings(values: dict[str, Any]) -> Settings:
    try:
        settings = load_settings(values)
    except ConfigurationError as error:
        raise click.UsageError(str(error)) from None
    configure_logging(settings.log_format, settings.log_level, secrets=settings.secrets)
    return settings


def _run(awaitable: Awaitable[_T], settings: Settings) -> _T:
    """Run a coroutine, turning an unreachable dependency into a one-line error naming it (without secrets)."""
    urls = (settings.redis_url, settings.database_url)
    try:
        return asyncio.run(awaitable)  # type: ignore[arg-type]
    except RedisError as error:
        click.echo(redact_text(f"error: Redis at {redact_url(settings.redis_url)}: {error}", *urls), err=True)
    except psycopg.Error as error:
        said = f"error: PostgreSQL at {redact_url(settings.database_url)}: {str(error).strip()}"
        click.echo(redact_text(with_database_url_hint(said, error), *urls), err=True)
    except InteractionlogError as error:
        click.echo(redact_text(with_database_url_hint(f"error: {error}", error), *urls), err=True)
    raise SystemExit(EXIT_FAILED)


def _named(keys: list[str], what: str) -> str:
    """One stream's name, or several shards' as "the 6 shard streams of <what> (<first>, ..., <last>)"."""
    if len(keys) == 1:
        return keys[0]
    return f"the {len(keys)} shard {what} ({keys[0]}, ..., {keys[-1]})"


def _redis(settings: Settings) -> Any:
    return connect(
        settings.redis_url,
        socket_timeout_s=settings.redis_timeout_s,
        connect_timeout_s=settings.redis_timeout_s,
        max_connections=4,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="interactionlog")
def main() -> None:
    """Record MCP server interactions: Redis stream -> worker pool -> PostgreSQL, exactly once."""


@main.command()
@settings_options("database_url", "partition_interval", "partition_premake", *LOG_OPTIONS)
def migrate(**values: Any) -> None:
    """Create or upgrade the interaction_logs table (idempotent; safe to run from several places).

    A new table is partitioned by --partition-interval; given explicitly, it changes the interval of an existing
    one from the end of its partitions on. A populated table of an earlier version is left unpartitioned: convert
    it with `interactionlog partition-convert`.
    """
    settings = _settings(values)
    explicit = settings.partition_interval if "partition_interval" in settings.model_fields_set else None
    database, applied = _run(
        migrate_and_name(
            settings.database_url, partition_interval=explicit, partition_premake=settings.partition_premake
        ),
        settings,
    )
    if applied:
        for migration in applied:
            click.echo(f"applied migration {migration.version} to {database}: {migration.description}")
    else:
        click.echo(f"schema of {database} is up to date")
    summary = _run(partition_maintenance.describe(settings.database_url), settings)
    click.echo(summary, err=summary.startswith("warning"))


@main.command()
@settings_options("database_url", "retention_days", "partition_premake", *LOG_OPTIONS)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print what would be dropped and created, and count the rows that would go; change nothing.",
)
def retention(dry_run: bool, **values: Any) -> None:
    """Drop the interaction_logs partitions whose rows are all older than --retention-days (a DROP TABLE each,
    never a DELETE).

    It runs one round of the workers' partition housekeeping: partitions ahead are created and rows in the
    default partition get partitions of their own first, so a record older than the retention is dropped too.
    Exits 2 when retention is off (0 days), 1 when the round could not run or an action was postponed.
    """
    settings = _settings(values)
    if not settings.retention_days:
        raise click.UsageError(
            "retention is off (0 days, keep forever): give --retention-days N or INTERACTIONLOG_RETENTION_DAYS"
        )
    report = _run(
        partition_maintenance.run_round(
            settings.database_url,
            premake=settings.partition_premake,
            retention_days=settings.retention_days,
            dry_run=dry_run,
        ),
        settings,
    )
    if report.skipped:
        click.echo(f"error: {report.skipped}", err=True)
        raise SystemExit(EXIT_FAILED)
    create, drop = ("would create", "would drop") if dry_run else ("created", "dropped")
    for name in report.created:
        click.echo(f"{create} {name}")
    for name in report.dropped:
        click.echo(f"{drop} {name}")
    for reason in report.postponed:
        click.echo(f"postponed: {reason}", err=True)
    click.echo(
        f"{drop} {len(report.dropped)} partition(s) older than {settings.retention_days} days "
        f"({_dropped_rows(report)})",
        err=True,
    )
    if report.postponed:
        raise SystemExit(EXIT_FAILED)


def _dropped_rows(report: partition_maintenance.MaintenanceReport) -> str:
    """How many rows the dropped partitions held: counted by a dry run, estimated by PostgreSQL otherwise."""
    if report.dropped_rows_counted:
        return f"{report.dropped_rows} row(s), counted"
    if report.unanalysed_drops == len(report.dropped) and report.dropped:
        return "rows unknown: PostgreSQL had not analysed those partitions; a --dry-run first counts them"
    unknown = f", plus those of {report.unanalysed_drops} partition(s) not yet analysed" * bool(report.unanalysed_drops)
    return f"about {report.dropped_rows} row(s){unknown}, as PostgreSQL estimated"


@main.command(name="partition-convert")
@settings_options("database_url", "partition_interval", "partition_premake", *LOG_OPTIONS)
@click.option(
    "--rows-per-batch", default=10_000, show_default=True, type=click.IntRange(min=1), help="Rows moved per commit."
)
@click.option(
    "--pause-ms", default=0, show_default=True, type=click.IntRange(min=0), help="Pause between batches, to go easy."
)
def partition_convert(rows_per_batch: int, pause_ms: int, **values: Any) -> None:
    """Convert an unpartitioned interaction_logs of an earlier version to the partitioned layout, online.

    Workers keep running: after a short switch, new rows go to the partitioned table while the old rows move
    over in batches (each row exactly once), then the old table is dropped. Run `migrate` first. Interrupted, run
    it again: it resumes.
    """
    settings = _settings(values)
    explicit = settings.partition_interval if "partition_interval" in settings.model_fields_set else None

    def progress(report: conversion.ConversionReport) -> None:
        click.echo(f"moved {report.moved} row(s) so far", err=True)

    report = _run(
        conversion.convert(
            settings.database_url,
            interval=explicit,
            premake=settings.partition_premake,
            rows_per_batch=rows_per_batch,
            pause_s=pause_ms / 1000,
            on_batch=progress,
        ),
        settings,
    )
    if report.already_partitioned:
        click.echo("interaction_logs is partitioned already: nothing to convert")
        return
    click.echo(
        f"converted interaction_logs: {report.moved} row(s) moved ({report.duplicates} stored twice meanwhile, "
        f"kept once), {report.created} partition(s) created"
    )


@main.command()
@settings_options(*WORKER_FIELDS)
def worker(**values: Any) -> None:
    """Consume the stream and store every entry in PostgreSQL. Stops cleanly on SIGTERM or SIGINT."""
    settings = _settings(values)
    try:
        exit_code = asyncio.run(run_supervisor(settings) if settings.processes > 1 else run_worker(settings))
    except ConfigurationError as error:  # found only once running, e.g. the metrics port is taken
        click.echo(f"error: {error}", err=True)
        raise SystemExit(EXIT_USAGE) from None
    raise SystemExit(exit_code)


@main.command(name="status")
@settings_options(*REDIS_OPTIONS, "group")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@click.option("--max-lag", type=click.IntRange(min=0), help="Fail when the group's lag exceeds this many entries.")
@click.option(
    "--max-pending-age-s",
    type=click.FloatRange(min=0),
    help="Fail when the group's oldest pending entry is older than this, in seconds.",
)
@click.option("--max-dead-letters", type=click.IntRange(min=0), help="Fail when the dead-letter stream holds more.")
@click.option(
    "--fail-on-unknown-lag",
    is_flag=True,
    help="Fail when Redis reports the group's lag as unknown; otherwise --max-lag only warns then.",
)
def status_command(
    as_json: bool,
    max_lag: int | None,
    max_pending_age_s: float | None,
    max_dead_letters: int | None,
    fail_on_unknown_lag: bool,
    **values: Any,
) -> None:
    """Show stream length, each group's lag, pending entries and oldest pending age, and dead letters.

    Given thresholds, it is a check for cron or CI: the output is unchanged, each exceeded threshold is named
    on stderr, and the exit status is 3 (1 when Redis cannot be reached). Lag and pending age are checked for
    --group; a missing group fails those checks.
    """
    settings = _settings(values)

    shards = settings.layouts[0].all()

    async def collect() -> list[PipelineStatus]:
        redis = _redis(settings)
        try:
            return [await collect_status(redis, shard.stream, shard.dead_letter_stream) for shard in shards]
        finally:
            await redis.aclose()

    snapshots = _run(collect(), settings)
    # One shard prints as it always did; several print one section (or JSON object, in a list) per shard.
    if as_json:
        dicts = [snapshot.to_dict() for snapshot in snapshots]
        click.echo(json.dumps(dicts[0] if len(dicts) == 1 else dicts, indent=2))
    else:
        click.echo("\n".join(status.render_status(snapshot) for snapshot in snapshots))
    problems: list[str] = []
    warnings: list[str] = []
    for snapshot in snapshots:
        found, said = status.threshold_problems(
            snapshot,
            settings.group,
            max_lag=max_lag,
            max_pending_age_s=max_pending_age_s,
            max_dead_letters=max_dead_letters,
            fail_on_unknown_lag=fail_on_unknown_lag,
        )
        problems += found
        warnings += said
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    for problem in problems:
        click.echo(f"check failed: {problem}", err=True)
    if problems:
        raise SystemExit(EXIT_CHECK_FAILED)


@main.group(name="dlq")
def dlq_group() -> None:
    """Inspect and replay dead letters (entries that could not be stored, with the reason)."""


@dlq_group.command(name="list")
@settings_options(*REDIS_OPTIONS)
@click.option("--count", default=20, show_default=True, type=click.IntRange(min=1), help="How many, oldest first.")
@click.option("--reason", default=None, help="Only dead letters of this error_type (e.g. invalid_record).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines for machines.")
def dlq_list(count: int, reason: str | None, as_json: bool, **values: Any) -> None:
    """List dead letters, oldest first, with why each failed."""
    settings = _settings(values)

    async def fetch() -> list[dlq.DeadLetterView]:
        redis = _redis(settings)
        views: list[dlq.DeadLetterView] = []
        try:
            for shard in settings.layouts[0].all():  # shard by shard, oldest first within each, `count` in all
                views += await dlq.list_dead_letters(redis, shard.dead_letter_stream, count=count, reason=reason)
                if len(views) >= count:
                    break
            return views[:count]
        finally:
            await redis.aclose()

    views = _run(fetch(), settings)
    if not views:  # on stderr: standard output holds dead letters only (no lines is valid JSON lines)
        layout = settings.layouts[0]
        streams = _named([shard.dead_letter_stream for shard in layout.all()], f"streams of {layout.dead_letters}")
        of_reason = f" of error_type {reason!r}" if reason is not None else ""
        click.echo(f"no dead letters{of_reason} in {streams}", err=True)
    for view in views:
        if as_json:
            click.echo(json.dumps({"id": view.id, **view.fields}))
        else:
            fields = view.fields
            click.echo(
                printable(
                    f"{view.id} source {fields.get('source_id', '?')} [{fields.get('error_type', '?')}] "
                    f"after {fields.get('deliveries', '?')} deliveries: {fields.get('error', '')}"
                )
            )


@dlq_group.command(name="replay")
@settings_options(*REDIS_OPTIONS, "stream_maxlen")
@click.argument("ids", nargs=-1)
@click.option("--count", type=click.IntRange(min=1), default=None, help="Replay the oldest COUNT dead letters.")
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
@click.option("--reason", default=None, help="Only dead letters of this error_type.")
def dlq_replay(ids: tuple[str, ...], count: int | None, replay_all: bool, reason: str | None, **values: Any) -> None:
    """Put dead letters back on the main stream (as originally published) and remove them from the DLQ.

    Name dead-letter IDS, or choose with --count N or --all (optionally narrowed by --reason).
    """
    if not ids and count is None and not replay_all:
        raise click.UsageError("say which dead letters to replay: IDS, --count N or --all")
    settings = _settings(values)

    async def replay() -> dlq.ReplayOutcome:
        redis = _redis(settings)
        total = dlq.ReplayOutcome()
        try:
            # Each shard's dead letters go back onto that shard's stream; ids not found in one may be in another.
            for shard in settings.layouts[0].all():
                left = None if replay_all or count is None else count - len(total.replayed)
                if left == 0:
                    break
                outcome = await dlq.replay_dead_letters(
                    redis,
                    dead_letter_stream=shard.dead_letter_stream,
                    stream=shard.stream,
                    maxlen=settings.stream_maxlen,
                    count=left,
                    ids=ids,
                    reason=reason,
                )
                total.replayed += outcome.replayed
                total.taken_by_another += outcome.taken_by_another
                total.not_found = (
                    outcome.not_found if shard.index == 0 else sorted(set(total.not_found) & set(outcome.not_found))
                )
        except ValueError as error:
            raise click.UsageError(str(error)) from None
        finally:
            await redis.aclose()
        return total

    outcome = _run(replay(), settings)
    for old_id, new_id in outcome.replayed:
        click.echo(f"replayed {old_id} as {new_id}")
    streams = _named([shard.stream for shard in settings.layouts[0].all()], f"streams of {settings.stream}")
    click.echo(f"replayed {len(outcome.replayed)} dead letter(s) onto {streams}", err=True)
    failed = False
    for missing in outcome.not_found:
        click.echo(f"error: no dead letter {missing} in {settings.dead_letter_stream_key}", err=True)
        failed = True
    if outcome.taken_by_another:
        click.echo(
            f"skipped {len(outcome.taken_by_another)} dead letter(s) another replay moved first "
            f"({', '.join(outcome.taken_by_another[:5])}{', ...' if len(outcome.taken_by_another) > 5 else ''})",
            err=True,
        )
    if reason is not None and not ids and not outcome.replayed and not outcome.taken_by_another:
        click.echo(
            f"error: no dead letter in {settings.dead_letter_stream_key} has error_type {reason!r}; "
            "`interactionlog dlq list` shows what is there",
            err=True,
        )
        failed = True
    if failed:
        raise SystemExit(EXIT_FAILED)


@main.command()
@settings_options("redis_url", "stream", "shards", "stream_maxlen", "max_record_bytes", "redis_timeout_s", *LOG_OPTIONS)
@click.argument("source", type=click.File("rb"), default="-")
@click.option(
    "--chunk-size", default=500, show_default=True, type=click.IntRange(min=1), help="Records per round trip."
)
@click.option("--strict", is_flag=True, help="Refuse lines with fields the wire format does not define.")
def publish(source: IO[bytes], chunk_size: int, strict: bool, **values: Any) -> None:
    """Publish JSON lines (one record per line) from SOURCE or standard input, each line's text as it is.

    A bad line is reported with its number and skipped; the others are published. Exits 1 if any was rejected.
    A line without interaction_id gets one derived from its text, so running the same file again (after a
    failure, or with bad lines fixed) stores no line twice.
    """
    settings = _settings(values)
    publisher = Publisher.from_url(
        settings.redis_url,
        stream=settings.stream,
        maxlen=settings.stream_maxlen,
        max_record_bytes=settings.max_record_bytes,
        timeout_s=settings.redis_timeout_s,
        shards=settings.shards,
    )
    published = rejected = 0
    chunk: list[dict[bytes, bytes]] = []
    try:
        for number, fields in read_json_lines(source, settings.max_record_bytes, strict=strict):
            if isinstance(fields, str):
                click.echo(f"line {number}: {fields}", err=True)
                rejected += 1
                continue
            chunk.append(fields)
            if len(chunk) >= chunk_size:
                published += len(publisher.publish_encoded(chunk))
                chunk.clear()
        published += len(publisher.publish_encoded(chunk))
    except PublishError as error:
        click.echo(
            f"error: {error} ({published} published before it; publishing the same file again is safe: "
            "no line is stored twice)",
            err=True,
        )
        raise SystemExit(EXIT_FAILED) from None
    finally:
        publisher.close()
    streams = _named([shard.stream for shard in settings.layouts[0].all()], f"streams of {settings.stream}")
    click.echo(f"published {published} record(s) to {streams}, rejected {rejected}", err=True)
    if rejected:
        raise SystemExit(EXIT_FAILED)


# --- Looking at stored interactions: tail, stats, show (ops.query for the SQL, ops.render for the output) ---

DATABASE_OPTIONS = ("database_url", *LOG_OPTIONS)
PIPED_WIDTH = 160
_F = TypeVar("_F", bound=Callable[..., Any])


def _filter_options(command: _F) -> _F:
    """--mcp-id, --tool, --method, --session, --errors, --since, arriving as keyword arguments of those names."""
    options = [
        click.option("--mcp-id", help="Only this MCP server."),
        click.option("--tool", help="Only this tool (or resource URI, or prompt name)."),
        click.option("--method", help="Only this MCP method, e.g. tools/call."),
        click.option("--session", "session_id", help="Only this MCP session (Mcp-Session-Id)."),
        click.option("--errors", "errors_only", is_flag=True, help="Only calls that failed (is_error)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _filters(since: str | None, values: dict[str, Any]) -> query.Filters:
    """The filters out of `values` (removing them, so the rest are settings) and --since."""
    given = {name: values.pop(name) for name in ("mcp_id", "tool", "method", "session_id", "errors_only")}
    try:
        moment = query.parse_since(since) if since is not None else None
    except query.QueryError as error:
        raise click.BadParameter(str(error), param_hint="'--since'") from None
    return query.Filters(since=moment, **given)


@contextlib.contextmanager
def _database(settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    """A connection for reading the table; a missing table, function or server becomes a one-line error."""
    where = f"PostgreSQL at {redact_url(settings.database_url)}"
    try:
        with psycopg.connect(settings.database_url, autocommit=True, connect_timeout=10) as conn:
            yield conn
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedFunction):
        click.echo(f"error: {where} lacks the current schema: run `interactionlog migrate` against it", err=True)
    except psycopg.Error as error:
        click.echo(with_database_url_hint(f"error: {where}: {str(error).strip()}", error), err=True)
    else:
        return
    raise SystemExit(EXIT_FAILED)


def _console() -> Any:
    from rich.console import Console  # noqa: PLC0415 - only the commands that print with rich load it

    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPED_WIDTH  # rich's 80 would fold tables written to a file or a pipe
    return console


@main.command()
@settings_options(*DATABASE_OPTIONS)
@_filter_options
@click.option("--since", help="Only calls from this long ago (90s, 15m, 1h, 2d) or this time (ISO 8601, with zone).")
@click.option("-n", "--lines", "count", default=20, show_default=True, type=click.IntRange(min=0), help="How many.")
@click.option("-f", "--follow", is_flag=True, help="Then print new interactions as they are stored, until Ctrl-C.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line (NDJSON), with the whole record.")
@click.option(
    "--interval-s", default=0.5, show_default=True, type=click.FloatRange(min=0.05), help="How often -f polls."
)
def tail(since: str | None, count: int, follow: bool, as_json: bool, interval_s: float, **values: Any) -> None:
    """Print the newest stored interactions, oldest first; -f follows new ones as they are stored."""
    from .ops import render  # noqa: PLC0415 - rich, only here

    filters = _filters(since, values)
    settings = _settings(values)
    console = _console()

    def emit(row: query.StoredInteraction) -> None:
        if as_json:
            click.echo(render.interaction_json_line(row))
        else:
            console.print(render.interaction_line(row), soft_wrap=True)

    with _database(settings) as conn:
        follower = query.Follower(filters)
        if follow:  # before the listing: a row committed in between is then listed, followed, or both (shown once)
            follower.start(conn)
        listed = query.newest(conn, filters, count) if count else []
        for row in listed:
            emit(row)
        if not follow:
            return
        follower.mark_shown(listed)

        def unavailable(error: psycopg.OperationalError) -> None:
            click.echo(f"warning: PostgreSQL unreachable, retrying: {str(error).strip()}", err=True)

        try:
            for row in query.follow(
                conn,
                follower,
                reconnect=lambda: psycopg.connect(settings.database_url, autocommit=True, connect_timeout=5),
                interval_s=interval_s,
                on_unavailable=unavailable,
            ):
                emit(row)
        except KeyboardInterrupt:
            return


@main.command()
@settings_options(*DATABASE_OPTIONS)
@_filter_options
@click.option("--since", default="1h", show_default=True, help="The window: 90s, 15m, 1h, 2d, or an ISO 8601 time.")
@click.option("--top-errors", default=5, show_default=True, type=click.IntRange(min=0), help="How many messages.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def stats(since: str, top_errors: int, as_json: bool, **values: Any) -> None:
    """Per MCP server and tool over a window: calls, error rate, duration_ms p50/p95/p99, and the top errors."""
    from .ops import render  # noqa: PLC0415 - rich, only here

    filters = _filters(since, values)
    settings = _settings(values)
    with _database(settings) as conn:
        figures = query.stats(conn, filters, top_errors=top_errors)
    if as_json:
        click.echo(json.dumps(render.stats_document(figures), indent=2))
    else:
        _console().print(render.stats_tables(figures))


@main.command()
@settings_options(*DATABASE_OPTIONS)
@click.argument("ident", metavar="ID")
@click.option("--mcp-id", help="The MCP server, when the same interaction id exists under several.")
@click.option("--json", "as_json", is_flag=True, help="Print the row as one JSON object.")
def show(ident: str, mcp_id: str | None, as_json: bool, **values: Any) -> None:
    """Print one interaction in full: ID is its interaction_id (as `tail` prints it) or its row id."""
    from .ops import render  # noqa: PLC0415 - rich, only here

    settings = _settings(values)
    with _database(settings) as conn:
        found = query.find(conn, ident, mcp_id)
    if not found:
        where = f" under mcp_id {mcp_id!r}" if mcp_id else ""
        click.echo(f"error: no interaction {ident!r}{where} (looked for it as interaction_id and as row id)", err=True)
        raise SystemExit(EXIT_FAILED)
    if len(found) > 1:
        servers = ", ".join(row.mcp_id for row in found)
        click.echo(f"error: interaction {ident!r} exists under several MCP servers ({servers}): add --mcp-id", err=True)
        raise SystemExit(EXIT_USAGE)
    (row,) = found
    if as_json:
        click.echo(json.dumps(render.interaction_document(row), indent=2, ensure_ascii=False))
    else:
        _console().print(render.interaction_detail(row))


# --- The whole stack on this machine (ops.dev) ---


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM takes Ctrl-C's way out, through the teardown


@main.command()
@settings_options(*LOG_OPTIONS)
@click.option("--redis-port", default=0, type=click.IntRange(0, 65535), help="Redis's port; 0 picks a free one.")
@click.option(
    "--postgres-port", default=0, type=click.IntRange(0, 65535), help="PostgreSQL's port; 0 picks a free one."
)
def dev(redis_port: int, postgres_port: int, **values: Any) -> None:
    """Run Redis, PostgreSQL (migrated), a worker and the HTTP gateway on this machine, no Docker, and print
    interactions as they are stored. Ctrl-C stops everything and deletes its data.

    The gateway (`interactionlog serve`, when the gateway extra is installed) listens on a free loopback port
    without tokens; the banner prints its URL and a curl line that POSTs a record. Needs redis-server and
    PostgreSQL's server binaries (initdb, postgres); says how to install them if missing.
    """
    from .ops import dev as dev_stack  # noqa: PLC0415 - rich, only here
    from .ops import render  # noqa: PLC0415

    _settings(values)
    console = _console()
    # Python leaves SIGINT alone when it starts ignored (a `&` in a script); Ctrl-C must always tear down.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        with dev_stack.running_stack(redis_port=redis_port or None, postgres_port=postgres_port or None) as stack:
            click.echo(dev_stack.banner(stack))
            try:
                with psycopg.connect(stack.database_url, autocommit=True) as conn:
                    follower = query.Follower(query.Filters())
                    follower.start(conn)
                    for row in query.follow(
                        conn,
                        follower,
                        reconnect=lambda: psycopg.connect(stack.database_url, autocommit=True),
                        interval_s=0.3,
                        on_unavailable=lambda error: click.echo(f"warning: PostgreSQL: {error}", err=True),
                        between_polls=lambda: dev_stack.check_worker(stack),
                    ):
                        console.print(render.interaction_line(row), soft_wrap=True)
            except KeyboardInterrupt:
                # A second Ctrl-C must not cut the teardown short and leave servers or directories behind.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                click.echo("stopping: the worker, then PostgreSQL and Redis", err=True)
    except dev_stack.DevError as error:
        click.echo(f"error: {error}", err=True)
        raise SystemExit(EXIT_FAILED) from None
    except KeyboardInterrupt:  # during start-up: the servers started so far are gone already
        pass
    click.echo("stopped; nothing is left running", err=True)


# The gateway's commands live in their own module (the servers' dependencies are an optional extra).
main.add_command(serve)
main.add_command(tokens)
