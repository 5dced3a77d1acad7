"""`interactionlog status`: the pipeline's state (`worker.state`) for people, and its thresholds as a check."""

from __future__ import annotations

from ..worker.state import PipelineStatus
from .terminal import printable


def render_status(status: PipelineStatus) -> str:
    """The human-readable form of `interactionlog status`."""
    lines = [
        f"stream {printable(status.stream)}: "
        + (f"{status.length} entries" if status.stream_exists else "does not exist yet (no entry published)"),
        f"dead letters ({status.dead_letter_stream}): {status.dead_letters}",
    ]
    if status.stream_exists and not status.groups:
        lines.append("no consumer group: start `interactionlog worker` to create it")
    for group in status.groups:
        lag = "unknown" if group.lag is None else str(group.lag)
        age = "-" if group.oldest_pending_age_s is None else f"{group.oldest_pending_age_s:.1f}s"
        live = sum(consumer.live is True for consumer in group.consumers)
        known = all(consumer.live is not None for consumer in group.consumers)
        split = f" ({live} live, {len(group.consumers) - live} departed)" if group.consumers and known else ""
        lines.append(
            f"group {printable(group.name)}: lag {lag}, pending {group.pending}, oldest pending age {age}, "
            f"consumers {len(group.consumers)}{split}"
        )
        lines.extend(
            f"  consumer {printable(c.name)}: {_liveness(c.live)}pending {c.pending}, idle {c.idle_s:.1f}s"
            for c in group.consumers
        )
    return "\n".join(lines)


def _liveness(live: bool | None) -> str:
    if live is None:
        return ""
    return "live, " if live else "departed (no running worker holds it), "


def threshold_problems(
    snapshot: PipelineStatus,
    group_name: str,
    *,
    max_lag: int | None,
    max_pending_age_s: float | None,
    max_dead_letters: int | None,
    fail_on_unknown_lag: bool,
) -> tuple[list[str], list[str]]:
    """(exceeded thresholds, warnings) for `status`; an unknown lag fails only with --fail-on-unknown-lag."""
    problems: list[str] = []
    warnings: list[str] = []
    if max_dead_letters is not None and snapshot.dead_letters > max_dead_letters:
        problems.append(
            f"{snapshot.dead_letters} dead letters in {snapshot.dead_letter_stream} exceed --max-dead-letters "
            f"{max_dead_letters}: see `interactionlog dlq list`"
        )
    if max_lag is None and max_pending_age_s is None and not fail_on_unknown_lag:
        return problems, warnings
    group = next((g for g in snapshot.groups if g.name == group_name), None)
    if group is None:
        problems.append(f"no group {group_name} on stream {snapshot.stream}: no worker has started on it")
        return problems, warnings
    if group.lag is None:
        unknown = f"group {group_name}: Redis reports the lag as unknown (an entry not yet read was deleted)"
        if fail_on_unknown_lag:
            problems.append(unknown)
        elif max_lag is not None:
            warnings.append(f"{unknown}; --max-lag not checked (--fail-on-unknown-lag makes this fail)")
    elif max_lag is not None and group.lag > max_lag:
        problems.append(f"group {group_name}: lag {group.lag} exceeds --max-lag {max_lag}")
    age_s = group.oldest_pending_age_s
    if max_pending_age_s is not None and age_s is not None and age_s > max_pending_age_s:
        problems.append(
            f"group {group_name}: oldest pending entry {group.oldest_pending_id} is {age_s:.1f}s old, "
            f"over --max-pending-age-s {max_pending_age_s:g}"
        )
    return problems, warnings
