"""The per-turn metrics document, computed from Strands' own EventLoopMetrics (no server)."""

from __future__ import annotations

import time

from strands.telemetry.metrics import AgentInvocation, EventLoopMetrics, ToolMetrics

from mongodb_session_manager._metrics import TurnStart, tool_counts, turn_metrics


class _Agent:
    def __init__(self, metrics: EventLoopMetrics) -> None:
        self.event_loop_metrics = metrics


def _metrics_after_first_turn() -> EventLoopMetrics:
    metrics = EventLoopMetrics()
    metrics.agent_invocations.append(AgentInvocation())
    metrics.cycle_count = 2
    metrics.update_usage({"inputTokens": 10, "outputTokens": 5, "totalTokens": 15})
    metrics.update_metrics({"latencyMs": 40})
    metrics.tool_metrics["calc"] = ToolMetrics(
        tool={"toolUseId": "t1", "name": "calc", "input": {}}, call_count=1, success_count=1, total_time=0.5
    )
    return metrics


def test_second_turn_counts_only_its_own_share_and_adds_the_unaccounted_last_call() -> None:
    metrics = _metrics_after_first_turn()
    start = TurnStart(
        started=time.monotonic(),
        tool_calls={name: tool_counts(tm) for name, tm in metrics.tool_metrics.items()},
        latency_ms=40,
        cycle_count=2,
    )
    # Second turn: a new invocation, one earlier cycle with a tool call, then the final model call
    # whose usage is on the message but not yet in the agent's totals.
    metrics.agent_invocations.append(AgentInvocation())
    metrics.cycle_count = 4
    metrics.update_usage({"inputTokens": 20, "outputTokens": 2, "totalTokens": 22, "cacheReadInputTokens": 7})
    metrics.update_metrics({"latencyMs": 30})
    metrics.tool_metrics["calc"].add_call(
        {"toolUseId": "t2", "name": "calc", "input": {}}, duration=0.25, success=True, metrics_client=_NoMetrics()
    )
    last_call = {"inputTokens": 25, "outputTokens": 8, "totalTokens": 33, "cacheWriteInputTokens": 3}

    result = turn_metrics(_Agent(metrics), start, last_call, {"latencyMs": 12})

    assert result["usage"] == {
        "inputTokens": 45,
        "outputTokens": 10,
        "totalTokens": 55,
        "cacheReadInputTokens": 7,
        "cacheWriteInputTokens": 3,
    }
    assert result["latency_ms"] == 42
    assert result["cycle_count"] == 2
    assert result["total_cycles"] == 4
    assert result["tool_usage"] == {"calc": {"call_count": 1, "success_count": 1, "error_count": 0, "total_time": 0.25}}
    assert result["accumulated_usage"]["totalTokens"] == 15 + 22 + 33
    assert result["accumulated_metrics"] == {"latencyMs": 82}
    assert result["duration_ms"] >= 0


def test_without_a_pending_call_the_agent_totals_are_used_as_they_are() -> None:
    metrics = _metrics_after_first_turn()
    start = TurnStart(started=time.monotonic(), tool_calls={}, latency_ms=0, cycle_count=0)
    result = turn_metrics(_Agent(metrics), start, None, None)
    assert result["usage"] == {"inputTokens": 10, "outputTokens": 5, "totalTokens": 15}
    assert result["tool_usage"]["calc"]["call_count"] == 1
    assert result["latency_ms"] == 40


class _NoMetrics:
    """Stands in for Strands' OpenTelemetry metrics client."""

    def __getattr__(self, name: str) -> _NoMetrics:
        return self

    def add(self, *args: object, **kwargs: object) -> None:
        pass

    def record(self, *args: object, **kwargs: object) -> None:
        pass
