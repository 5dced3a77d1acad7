"""One fault-injection run: workers, a producer, a seeded fault schedule, then the checker.

The run reads top to bottom in `run_scenario`: prepare the database and the group, start the workers and the
producer, play the schedule (each fault an event, and its end, such as a restart, another), stop the producer,
wait for the pipeline to catch up (that wait, from the end of the last fault, is the recovery time), wait for
departed consumers to be removed, judge, and shut the workers down cleanly.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis
from redis.exceptions import RedisError

from tests.servers import PostgresServer, RedisServer

from .checker import Verdict, await_consumers_within, await_quiescence, judge
from .producer import Producer
from .schedule import ALL_FAULTS, Fault, FaultKind, describe, plan
from .workers import FAST_FLAGS, Worker, WorkerFleet

STREAM, GROUP, DEAD_LETTERS = "interactions", "interactionlog", "interactions:dlq"
CRASH_POINTS = {FaultKind.CRASH_AFTER_READ: "after_read", FaultKind.CRASH_AFTER_COMMIT: "after_commit"}
TICK_S = 0.05
HOOKED_CRASH_TIMEOUT_S = 30.0  # a worker set to crash that received no batch by then is killed instead


@dataclass(frozen=True)
class ScenarioConfig:
    """Everything that shapes a run; with the seed, enough to replay it."""

    seed: int
    records: int = 3000  # published over span_s; the producer keeps that rate until the last fault is over
    span_s: float = 45.0
    faults: int = 14
    kinds: tuple[FaultKind, ...] = ALL_FAULTS
    workers: int = 3
    concurrency: int = 2
    observed_workers: int = 0  # never killed or frozen by the schedule: their memory is what the soak reads
    batch_size: int = 100
    recovery_slack_s: float = 5.0  # process start-up and a loaded CI machine; see recovery_bound_s
    quiesce_timeout_s: float = 120.0

    def flag(self, name: str) -> float:
        """A worker flag's value, as the fleet passes it."""
        return float(FAST_FLAGS[name])

    @property
    def claim_idle_s(self) -> float:
        """How long an entry must idle before another consumer claims it."""
        return self.flag("claim_idle_ms") / 1000

    @property
    def recovery_bound_s(self) -> float:
        """Claim idle time plus sweep interval (the issue's bound), plus the longest retry backoff (a consumer
        may have just started that wait when the dependency came back) and a slack for a loaded machine."""
        return (
            self.claim_idle_s
            + self.flag("claim_interval_ms") / 1000
            + self.flag("retry_max_backoff_s")
            + self.recovery_slack_s
        )

    @property
    def hygiene_timeout_s(self) -> float:
        """How long departed consumers may linger after the run: idle threshold plus two housekeeping rounds."""
        return self.flag("consumer_idle_timeout_ms") / 1000 + 2 * self.flag("housekeeping_interval_ms") / 1000 + 10


@dataclass
class Servers:
    """The servers of a run; both may be restarted by faults, so they must be the run's own."""

    redis: RedisServer
    postgres: PostgresServer
    dbname: str = "faults"

    @property
    def redis_url(self) -> str:
        """URL of the run's Redis."""
        return self.redis.url

    @property
    def database_url(self) -> str:
        """URL of the run's database."""
        return self.postgres.url(self.dbname)


def prepare(servers: Servers) -> None:
    """Create the run's database and table, and make every acknowledged Redis write survive a SIGKILL."""
    with psycopg.connect(servers.postgres.url(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (servers.dbname,)).fetchone()
    if not exists:
        servers.postgres.create_database(servers.dbname)
    migrate(servers.database_url)
    harden_redis(servers.redis)


def migrate(database_url: str) -> None:
    """Create the table with the real CLI, as an operator would."""
    subprocess.run(
        [sys.executable, "-m", "interactionlog", "migrate", "--database-url", database_url],
        check=True,
        capture_output=True,
    )


def harden_redis(server: RedisServer) -> None:
    """appendfsync always when the append-only file is on: Redis then replies only after the write is on disk,
    so a SIGKILL loses nothing it acknowledged. (everysec, the default, may lose the last second: a setting of
    Redis, not something the pipeline could make up for.) CONFIG SET does not survive a restart: call again."""
    if server.appendonly:
        client = redis.Redis.from_url(server.url)
        try:
            client.config_set("appendfsync", "always")
        finally:
            client.close()


@dataclass(order=True)
class _Event:
    at: float
    order: int
    label: str = field(compare=False)
    action: Callable[[], None] = field(compare=False)
    # Restarting a worker that was killed is the suite tidying up, not part of the fault: the other workers are
    # what recovers its entries, so the recovery time runs from the kill, not from the restart.
    ends_fault: bool = field(default=True, compare=False)


class FaultPlayer:
    """Plays a schedule against the fleet and the servers, restarting what each fault took down."""

    def __init__(self, servers: Servers, fleet: WorkerFleet, say: Callable[[str], None]) -> None:
        self.servers = servers
        self.fleet = fleet
        self.say = say
        self.applied = 0
        self.problems: list[str] = []
        self._events: list[_Event] = []
        self._order = itertools.count()
        self._started = 0.0
        self._hooked: dict[int, tuple[Fault, float]] = {}  # pid -> (fault, when it was set to crash)
        self._handled: set[int] = set()
        self.last_fault_end = 0.0

    def play(self, schedule: list[Fault], on_tick: Callable[[], None] | None = None) -> float:
        """Run every fault and its recovery; returns the monotonic time the last one ended."""
        self._started = time.monotonic()
        for fault in schedule:
            self._at(self._started + fault.at_s, fault.kind.value, functools.partial(self._begin, fault))
        while self._events or self._hooked:
            now = time.monotonic()
            self._supervise(now)
            if on_tick:
                on_tick()
            if self._events and self._events[0].at <= now:
                event = heapq.heappop(self._events)
                event.action()
                if event.ends_fault:
                    self.last_fault_end = time.monotonic()
                continue
            wait = self._events[0].at - now if self._events else TICK_S
            time.sleep(min(max(wait, 0.0), TICK_S))
        return self.last_fault_end

    def _at(self, when: float, label: str, action: Callable[[], None], *, ends_fault: bool = True) -> None:
        heapq.heappush(self._events, _Event(when, next(self._order), label, action, ends_fault))

    def _log(self, message: str) -> None:
        self.say(f"  t={time.monotonic() - self._started:7.2f}s {message}")

    def _pick(self, fault: Fault) -> Worker | None:
        eligible = [w for w in self.fleet.live() if not (w.frozen or w.observed or w.crash_at)]
        return eligible[fault.target % len(eligible)] if eligible else None

    def _begin(self, fault: Fault) -> None:
        kind = fault.kind
        if kind in (FaultKind.KILL_WORKER, FaultKind.FREEZE_WORKER, *CRASH_POINTS):
            self._worker_fault(fault)
        elif kind is FaultKind.KILL_REDIS_CLIENTS:
            self._kill_redis_clients()
        elif kind is FaultKind.TERMINATE_POSTGRES_BACKENDS:
            self._terminate_backends()
        elif kind is FaultKind.RESTART_POSTGRES:
            self._restart_postgres(fault)
        elif kind is FaultKind.RESTART_REDIS:
            self._restart_redis(fault)

    def _worker_fault(self, fault: Fault) -> None:
        worker = self._pick(fault)
        if worker is None:
            self._log(f"{fault.kind.value}: skipped, no eligible worker")
            return
        self.applied += 1
        if fault.kind is FaultKind.FREEZE_WORKER:
            worker.freeze()
            self._log(f"froze {worker.prefix} (SIGSTOP) for {fault.duration_s:.2f}s")
            self._at(time.monotonic() + fault.duration_s, "thaw", worker.thaw)
            return
        worker.kill()
        if fault.kind is FaultKind.KILL_WORKER:
            prefix = worker.prefix if fault.variant else None
            self._log(
                f"killed {worker.prefix} (SIGKILL); restart in {fault.duration_s:.2f}s, "
                f"{'same' if prefix else 'new'} consumer names"
            )
            self._at(
                time.monotonic() + fault.duration_s,
                "restart worker",
                functools.partial(self._restart, prefix),
                ends_fault=False,
            )
            return
        point = CRASH_POINTS[fault.kind]
        hooked = self.fleet.start(worker.prefix if fault.variant else None, crash_at=point)
        self._hooked[hooked.pid] = (fault, time.monotonic())
        self._log(f"replaced {worker.prefix} by {hooked.prefix}, set to SIGKILL itself {point}")

    def _restart(self, prefix: str | None) -> None:
        worker = self.fleet.start(prefix)
        self._log(f"started {worker.prefix}")

    def _supervise(self, now: float) -> None:
        """Restart a hooked worker once it crashed (or kill it if it never gets a batch); flag any other exit."""
        for worker in self.fleet.workers:
            if worker.pid in self._handled:
                continue
            hooked = self._hooked.get(worker.pid)
            if hooked is not None:
                fault, since = hooked
                if worker.running and now - since > HOOKED_CRASH_TIMEOUT_S:
                    worker.kill()
                    self._log(f"{worker.prefix} received no batch to crash on; killed it instead")
                if not worker.running:
                    self.last_fault_end = now  # the crash is the fault
                    self._handled.add(worker.pid)
                    del self._hooked[worker.pid]
                    crashed = bool(worker.events("test_crash_injected"))
                    prefix = worker.prefix if fault.variant else None
                    self._log(
                        f"{worker.prefix} {'crashed as set' if crashed else 'ended'}; restart in "
                        f"{fault.duration_s:.2f}s, {'same' if prefix else 'new'} consumer names"
                    )
                    restart = functools.partial(self._restart, prefix)
                    self._at(now + fault.duration_s, "restart worker", restart, ends_fault=False)
            elif not worker.running and not worker.killed:
                self._handled.add(worker.pid)
                self.problems.append(
                    f"worker {worker.prefix} exited on its own with code "
                    f"{worker.process.returncode}; log: {worker.log_path}"
                )
                self._log(f"{worker.prefix} exited on its own (code {worker.process.returncode}); restarting")
                self._restart(None)

    def _kill_redis_clients(self) -> None:
        try:
            client = redis.Redis.from_url(self.servers.redis_url, socket_timeout=2)
            try:
                killed = client.client_kill_filter(_type="normal", skipme=True)
            finally:
                client.close()
        except RedisError as error:
            self._log(f"kill_redis_clients: skipped, Redis unreachable ({error})")
            return
        self.applied += 1
        self._log(f"killed {killed} Redis client connections")

    def _terminate_backends(self) -> None:
        # A burst, so that one of them lands in the middle of a batch's transaction.
        terminated = 0
        try:
            for _ in range(3):
                terminated += self.servers.postgres.terminate_backends(self.servers.dbname)
                time.sleep(0.1)
        except psycopg.Error as error:
            self._log(f"terminate_postgres_backends: stopped, PostgreSQL unreachable ({error})")
        self.applied += 1
        self._log(f"terminated {terminated} PostgreSQL backends")

    def _restart_postgres(self, fault: Fault) -> None:
        server = self.servers.postgres
        if not server.running:
            self._log("restart_postgres: skipped, already down")
            return
        self.applied += 1
        if fault.variant:
            server.kill()
        else:
            server.stop("fast")
        self._log(
            f"PostgreSQL {'killed (SIGKILL)' if fault.variant else 'stopped (fast)'}; start in {fault.duration_s:.2f}s"
        )
        self._at(time.monotonic() + fault.duration_s, "start postgres", self._start_postgres)

    def _start_postgres(self) -> None:
        self.servers.postgres.start()
        self._log("PostgreSQL started")

    def _restart_redis(self, fault: Fault) -> None:
        server = self.servers.redis
        if not server.running:
            self._log("restart_redis: skipped, already down")
            return
        if not server.appendonly:
            raise AssertionError("restart_redis needs a Redis with appendonly=True: without it the loss is by design")
        self.applied += 1
        if fault.variant:
            server.kill()
        else:
            server.stop()
        self._log(
            f"Redis {'killed (SIGKILL)' if fault.variant else 'stopped (SIGTERM)'}; start in {fault.duration_s:.2f}s"
        )
        self._at(time.monotonic() + fault.duration_s, "start redis", self._start_redis)

    def _start_redis(self) -> None:
        self.servers.redis.start()
        harden_redis(self.servers.redis)
        self._log("Redis started (append-only file replayed)")


def run_scenario(
    config: ScenarioConfig,
    servers: Servers,
    log_dir: Path,
    say: Callable[[str], None] = print,
    on_tick: Callable[[WorkerFleet], None] | None = None,
) -> Verdict:
    """Run the whole scenario and return the checker's verdict (the caller asserts on `problems()`)."""
    prepare(servers)
    schedule = plan(
        config.seed, faults=config.faults, span_s=config.span_s, claim_idle_s=config.claim_idle_s, kinds=config.kinds
    )
    say(describe(config.seed, schedule))
    fleet = WorkerFleet(
        servers.redis_url,
        servers.database_url,
        log_dir,
        concurrency=config.concurrency,
        flags={"batch_size": str(config.batch_size)},
    )
    for index in range(config.workers):
        fleet.start(observed=index < config.observed_workers)
    producer = Producer(
        servers.redis_url,
        mcp_id=f"fault-{config.seed}",
        # Beyond `records` so that traffic continues, at the same rate, until the last fault has played out.
        total=config.records * 2,
        rate_per_s=config.records / config.span_s,
    )
    client = redis.Redis.from_url(servers.redis_url, socket_timeout=5)
    try:
        producer.start()
        player = FaultPlayer(servers, fleet, say)
        last_fault_end = player.play(schedule, (lambda: on_tick(fleet)) if on_tick else None)
        producer.stop()
        ledger = producer.join_and_check()
        say(f"faults done; producer stopped with {ledger.counts()}; waiting for the pipeline to catch up")
        recovery_s = await_quiescence(
            client,
            servers.database_url,
            ledger,
            stream=STREAM,
            group=GROUP,
            since=last_fault_end,
            timeout_s=config.quiesce_timeout_s,
        )
        stray = await_consumers_within(
            client, stream=STREAM, group=GROUP, allowed=fleet.live_consumers(), timeout_s=config.hygiene_timeout_s
        )
        verdict = Verdict(
            seed=config.seed,
            published=ledger.counts(),
            faults_applied=player.applied,
            consumer_bound=len(fleet.live()) * config.concurrency,
            stray_consumers=stray,
            recovery_s=recovery_s,
            recovery_bound_s=config.recovery_bound_s,
        )
        judge(verdict, client, servers.database_url, ledger, stream=STREAM, group=GROUP, dead_letters=DEAD_LETTERS)
        verdict.worker_problems = player.problems + worker_problems(fleet)
        exit_codes = fleet.stop_all()
    finally:
        producer.stop()
        fleet.stop_all()
        client.close()
    verdict.worker_problems += [
        f"worker {prefix} exited with code {code} on SIGTERM after the run (0 expected)"
        for prefix, code in exit_codes.items()
        if code != 0
    ]
    say(verdict.summary())
    return verdict


def worker_problems(fleet: WorkerFleet) -> list[str]:
    """Log events no run may produce: a consumer or housekeeping step that crashed, a traceback that escaped
    structured logging, entries trimmed before they were stored (the stream's cap is far above the run), a group
    recreated (Redis runs with the append-only file and appendfsync always, so it must survive every restart)."""
    problems = []
    forbidden = (
        "consumer_step_crashed",
        "housekeeping_crashed",
        "pending_entries_deleted",
        "entries_lost_to_trimming",
        "group_missing_recreated",
    )
    for name in forbidden:
        events = list(fleet.events(name))
        if events:
            worker, first = events[0]
            detail = str(first.get("exception", first))[-600:]
            problems.append(f"{len(events)} '{name}' events, first in {worker.log_path}: {detail}")
    problems += [f"traceback outside structured logs: {line}" for line in fleet.tracebacks()[:5]]
    return problems
