"""Build the ``event_loop_metrics`` stored with the final assistant message of each agent turn.

Pure functions over Strands' ``EventLoopMetrics``; no I/O.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class TurnStart:
    """The agent's counters when a turn (one invocation) began, to compute that turn's share."""

    started: float
    tool_calls: dict[str, dict[str, Any]]
    latency_ms: int
    cycle_count: int


def tool_counts(tool_metrics: Any) -> dict[str, Any]:
    return {
        "call_count": tool_metrics.call_count,
        "success_count": tool_metrics.success_count,
        "error_count": tool_metrics.error_count,
        "total_time": tool_metrics.total_time,
    }


def _add_usage(total: dict[str, Any], usage: dict[str, Any] | None) -> dict[str, Any]:
    result = dict(total)
    for key, value in (usage or {}).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            result[key] = result.get(key, 0) + value
    return result


def turn_metrics(agent: Any, turn: TurnStart, call_usage: Any, call_metrics: Any) -> dict[str, Any]:
    """Build the ``event_loop_metrics`` document for a finished turn.

    ``call_usage``/``call_metrics`` are those of a final model call that the agent has not yet added
    to its own totals (``None`` when it has).
    """
    metrics = agent.event_loop_metrics
    invocation = metrics.latest_agent_invocation
    turn_usage = _add_usage(dict(invocation.usage) if invocation else {}, call_usage)
    accumulated_usage = _add_usage(dict(metrics.accumulated_usage), call_usage)
    accumulated_metrics = _add_usage(dict(metrics.accumulated_metrics), call_metrics)
    tool_usage: dict[str, dict[str, Any]] = {}
    for name, tool_metrics in metrics.tool_metrics.items():
        now = tool_counts(tool_metrics)
        before = turn.tool_calls.get(name, dict.fromkeys(now, 0))
        delta = {field: now[field] - before[field] for field in now}
        if delta["call_count"]:
            tool_usage[name] = delta
    return copy.deepcopy(
        {
            "usage": turn_usage,
            "latency_ms": accumulated_metrics.get("latencyMs", 0) - turn.latency_ms,
            "duration_ms": round((time.monotonic() - turn.started) * 1000, 3),
            "cycle_count": metrics.cycle_count - turn.cycle_count,
            "tool_usage": tool_usage,
            "accumulated_usage": accumulated_usage,
            "accumulated_metrics": accumulated_metrics,
            "total_cycles": metrics.cycle_count,
        }
    )
