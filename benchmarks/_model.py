"""An offline Strands model for benchmarks: the same short reply every call, with usage and latency.

It does as little as a model can (no copying of the prompt, no network), so the time of a turn is
Strands' own work plus the session manager's.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from strands.models.model import Model


class ReplyModel(Model):
    """Answers every prompt with ``reply``, streamed in one delta, reporting token usage."""

    def __init__(self, reply: str = "Noted. Anything else?") -> None:
        self.reply = reply
        self.config: dict[str, Any] = {"model_id": "benchmark-reply"}

    def update_config(self, **model_config: Any) -> None:
        self.config.update(model_config)

    def get_config(self) -> dict[str, Any]:
        return self.config

    async def structured_output(self, *args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        raise NotImplementedError("the benchmark model does not do structured output")
        yield  # pragma: no cover

    async def stream(
        self, messages: list[Any], tool_specs: list[Any] | None = None, system_prompt: str | None = None, **kwargs: Any
    ) -> AsyncGenerator[Any, None]:
        input_tokens = 12 * len(messages)
        output_tokens = len(self.reply) // 4
        yield {"messageStart": {"role": "assistant"}}
        yield {"contentBlockStart": {"start": {}}}
        yield {"contentBlockDelta": {"delta": {"text": self.reply}}}
        yield {"contentBlockStop": {}}
        yield {"messageStop": {"stopReason": "end_turn"}}
        yield {
            "metadata": {
                "usage": {
                    "inputTokens": input_tokens,
                    "outputTokens": output_tokens,
                    "totalTokens": input_tokens + output_tokens,
                },
                "metrics": {"latencyMs": 1},
            }
        }
