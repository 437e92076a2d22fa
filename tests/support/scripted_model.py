"""An offline Strands model that plays back scripted assistant messages, for tests.

Each call to ``stream()`` takes the next scripted response and streams it the way a real provider
does: ``messageStart``, per block ``contentBlockStart`` / ``contentBlockDelta`` (text in a few chunks,
tool input as chunks of a JSON string) / ``contentBlockStop``, ``messageStop`` and a ``metadata`` event
with usage and latency. Nothing touches the network::

    model = ScriptedModel([
        tool_call("get_weather", {"city": "Oslo"}, tool_use_id="t1"),
        text("It is sunny in Oslo."),
    ])
    agent = Agent(model=model, tools=[get_weather], callback_handler=None)
    agent("Weather in Oslo?")

Token counts are deterministic: ``ceil(chars / 4)`` per text (tool names plus the JSON of their input
count as text) for the response (output) and for the prompt and system prompt (input). A response
can override any of them, including ``cacheReadInputTokens`` and ``cacheWriteInputTokens``. Every call
is recorded in ``model.calls`` with the prompt it received and the usage it reported.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, cast

from pydantic import BaseModel
from strands.models.model import Model
from strands.types.content import ContentBlock, Message, Messages, SystemContentBlock
from strands.types.event_loop import StopReason, Usage
from strands.types.streaming import StreamEvent
from strands.types.tools import ToolChoice, ToolSpec

if TYPE_CHECKING:
    import threading

    from strands.agent.agent_metadata import AgentMetadata

__all__ = [
    "EchoModel",
    "ScriptExhaustedError",
    "ScriptItem",
    "ScriptedCall",
    "ScriptedModel",
    "ScriptedResponse",
    "count_tokens",
    "response",
    "text",
    "tool_call",
]

T = TypeVar("T", bound=BaseModel)

_STREAMED_BLOCK_KINDS = ("text", "toolUse", "reasoningContent")
_USAGE_KEYS = ("inputTokens", "outputTokens", "totalTokens", "cacheReadInputTokens", "cacheWriteInputTokens")


class ScriptExhaustedError(RuntimeError):
    """The model was called more often than responses were scripted."""


@dataclass
class ScriptedResponse:
    """One scripted assistant message.

    Attributes:
        content: Content blocks to stream; each holds one of ``text``, ``toolUse`` or
            ``reasoningContent`` (with ``reasoningText``).
        usage: Token counts overriding the computed ones. Keys may be any of ``inputTokens``,
            ``outputTokens``, ``totalTokens``, ``cacheReadInputTokens``, ``cacheWriteInputTokens``;
            ``totalTokens`` defaults to input plus output.
        latency_ms: Reported ``metrics.latencyMs``; the model's default when ``None``.
        stop_reason: Reported stop reason; ``"tool_use"`` if a toolUse block is present, else
            ``"end_turn"``, when ``None``.
    """

    content: list[ContentBlock]
    usage: Mapping[str, int] | None = None
    latency_ms: int | None = None
    stop_reason: StopReason | None = None

    def __post_init__(self) -> None:
        for index, block in enumerate(self.content):
            kinds = [kind for kind in _STREAMED_BLOCK_KINDS if kind in block]
            if len(kinds) != 1 or len(block) != 1:
                raise ValueError(
                    f"content[{index}]: a scripted block holds exactly one of {_STREAMED_BLOCK_KINDS}, got {block!r}"
                )
            if "reasoningContent" in block and "reasoningText" not in block["reasoningContent"]:
                raise ValueError(f"content[{index}]: only reasoningContent.reasoningText can be scripted")
        unknown = set(self.usage or {}) - set(_USAGE_KEYS)
        if unknown:
            raise ValueError(f"usage: unknown keys {sorted(unknown)}; allowed: {list(_USAGE_KEYS)}")

    @property
    def has_tool_use(self) -> bool:
        """Whether the message asks for a tool."""
        return any("toolUse" in block for block in self.content)


ScriptItem: TypeAlias = ScriptedResponse | Message | str | BaseException
"""What a script may hold: a response, an assistant ``Message`` dict, plain text, or an exception to raise."""


@dataclass
class ScriptedCall:
    """What one model call received and reported.

    Attributes:
        messages: A deep copy of the prompt messages.
        tool_specs: Tool specs offered to the model.
        system_prompt: The system prompt.
        tool_choice: The tool choice constraint, if any.
        response: The scripted response played, or ``None`` when the call raised.
        usage: The usage reported in the ``metadata`` event (empty when the call raised).
    """

    messages: Messages
    tool_specs: list[ToolSpec] | None
    system_prompt: str | None
    tool_choice: ToolChoice | None = None
    response: ScriptedResponse | None = None
    usage: Usage = field(default_factory=lambda: cast(Usage, {}))


def text(value: str, *, usage: Mapping[str, int] | None = None, latency_ms: int | None = None) -> ScriptedResponse:
    """A response made of one text block."""
    return ScriptedResponse([{"text": value}], usage=usage, latency_ms=latency_ms)


def tool_call(
    name: str,
    input: Mapping[str, Any] | None = None,
    tool_use_id: str | None = None,
    *,
    text: str | None = None,
    usage: Mapping[str, int] | None = None,
    latency_ms: int | None = None,
) -> ScriptedResponse:
    """A response asking for one tool, optionally after some text.

    Args:
        name: Tool name.
        input: Tool input; ``{}`` when omitted.
        tool_use_id: Tool use id; a random ``tooluse_...`` id when omitted.
        text: Text streamed before the tool call.
        usage: Token count overrides.
        latency_ms: Reported latency.
    """
    blocks: list[ContentBlock] = [{"text": text}] if text is not None else []
    blocks.append(
        {
            "toolUse": {
                "toolUseId": tool_use_id or f"tooluse_{uuid.uuid4().hex[:12]}",
                "name": name,
                "input": dict(input or {}),
            }
        }
    )
    return ScriptedResponse(blocks, usage=usage, latency_ms=latency_ms)


def response(
    *parts: str | ContentBlock | ScriptedResponse,
    usage: Mapping[str, int] | None = None,
    latency_ms: int | None = None,
    stop_reason: StopReason | None = None,
) -> ScriptedResponse:
    """Join texts, content blocks and responses into one, e.g. text plus two parallel tool calls."""
    blocks: list[ContentBlock] = []
    for part in parts:
        if isinstance(part, str):
            blocks.append({"text": part})
        elif isinstance(part, ScriptedResponse):
            blocks.extend(part.content)
        else:
            blocks.append(part)
    return ScriptedResponse(blocks, usage=usage, latency_ms=latency_ms, stop_reason=stop_reason)


def count_tokens(value: str) -> int:
    """The scripted token count of a text: ``ceil(len / 4)``."""
    return math.ceil(len(value) / 4)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _block_tokens(block: Mapping[str, Any]) -> int:
    tokens = 0
    if "text" in block:
        tokens += count_tokens(block["text"])
    if "toolUse" in block:
        tokens += count_tokens(block["toolUse"]["name"] + _json(block["toolUse"]["input"]))
    if "toolResult" in block:
        for item in block["toolResult"].get("content", []):
            if "text" in item:
                tokens += count_tokens(item["text"])
            if "json" in item:
                tokens += count_tokens(_json(item["json"]))
    if "reasoningContent" in block:
        tokens += count_tokens(block["reasoningContent"].get("reasoningText", {}).get("text", ""))
    return tokens


def _split(value: str, pieces: int) -> list[str]:
    """Split ``value`` into at most ``pieces`` non-empty chunks (one chunk if it is empty)."""
    size = max(1, math.ceil(len(value) / max(1, pieces)))
    return [value[i : i + size] for i in range(0, len(value), size)] or [value]


def _to_response(item: ScriptedResponse | Message | str) -> ScriptedResponse:
    if isinstance(item, ScriptedResponse):
        return item
    if isinstance(item, str):
        return text(item)
    if isinstance(item, Mapping) and "content" in item:
        if item.get("role", "assistant") != "assistant":
            raise ValueError(f"scripted messages must have role 'assistant', got {item.get('role')!r}")
        return ScriptedResponse(list(item["content"]))
    raise TypeError(f"cannot script {item!r}: use a ScriptedResponse, an assistant Message, a str or an exception")


class ScriptedModel(Model):
    """A Strands model that streams scripted assistant messages, one per call, without any network.

    Attributes:
        calls: Every call so far, in order.
    """

    def __init__(
        self,
        responses: Iterable[ScriptItem] = (),
        *,
        chunks: int = 3,
        latency_ms: int = 10,
        chunk_delay: float = 0.0,
        **model_config: Any,
    ) -> None:
        """Create a model that plays ``responses`` in order.

        Args:
            responses: The script. Plain strings become text responses, assistant ``Message`` dicts are
                played as they are, and an exception instance is raised by the call that reaches it.
            chunks: How many deltas each text (and each tool input) is split into.
            latency_ms: Default ``metrics.latencyMs`` of each response.
            chunk_delay: Seconds to sleep before each delta, to make streaming observable in time.
            **model_config: Stored config; ``model_id`` defaults to ``"scripted"`` and
                ``context_window_limit`` to 200,000.
        """
        self._script: deque[ScriptItem] = deque()
        self.add(*responses)
        self.chunks = chunks
        self.latency_ms = latency_ms
        self.chunk_delay = chunk_delay
        self.config: dict[str, Any] = {"model_id": "scripted", "context_window_limit": 200_000, **model_config}
        self.calls: list[ScriptedCall] = []

    def add(self, *responses: ScriptItem) -> None:
        """Append responses to the script (strings and dicts are validated now, not when played)."""
        for item in responses:
            self._script.append(item if isinstance(item, BaseException) else _to_response(item))

    @property
    def remaining(self) -> int:
        """How many scripted responses have not been played yet."""
        return len(self._script)

    def update_config(self, **model_config: Any) -> None:
        """Merge ``model_config`` into the stored config."""
        self.config.update(model_config)

    def get_config(self) -> dict[str, Any]:
        """Return the stored config."""
        return self.config

    def _next_item(self, messages: Messages) -> ScriptItem:
        """The next script entry; raises ``ScriptExhaustedError`` when there is none."""
        if not self._script:
            raise ScriptExhaustedError(
                f"ScriptedModel was called {len(self.calls) + 1} times but only {len(self.calls)} responses "
                f"were scripted; last message: {messages[-1] if messages else None!r}"
            )
        return self._script.popleft()

    def _usage(self, scripted: ScriptedResponse, messages: Messages, system_prompt: str | None) -> Usage:
        input_tokens = count_tokens(system_prompt or "") + sum(
            _block_tokens(block) for message in messages for block in message["content"]
        )
        output_tokens = sum(_block_tokens(block) for block in scripted.content)
        values: dict[str, int] = {"inputTokens": input_tokens, "outputTokens": output_tokens}
        values.update(scripted.usage or {})
        values.setdefault("totalTokens", values["inputTokens"] + values["outputTokens"])
        return cast(Usage, values)

    def _record(
        self,
        messages: Messages,
        tool_specs: list[ToolSpec] | None,
        system_prompt: str | None,
        tool_choice: ToolChoice | None,
    ) -> tuple[ScriptedCall, ScriptedResponse]:
        """Record the call and return the response to play, raising a scripted exception."""
        call = ScriptedCall(copy.deepcopy(messages), copy.deepcopy(tool_specs), system_prompt, tool_choice)
        item = self._next_item(messages)
        self.calls.append(call)
        if isinstance(item, BaseException):
            raise item
        if not isinstance(item, ScriptedResponse):
            item = _to_response(item)
        call.response = item
        call.usage = self._usage(item, messages, system_prompt)
        return call, item

    async def stream(
        self,
        messages: Messages,
        tool_specs: list[ToolSpec] | None = None,
        system_prompt: str | None = None,
        *,
        tool_choice: ToolChoice | None = None,
        system_prompt_content: list[SystemContentBlock] | None = None,
        invocation_state: dict[str, Any] | None = None,
        cancel_signal: threading.Event | None = None,
        agent_metadata: AgentMetadata | None = None,
        structured_output_model: type[BaseModel] | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[StreamEvent, None]:
        """Stream the next scripted response as Bedrock-shaped events.

        Raises:
            ScriptExhaustedError: No scripted response is left.
            BaseException: The scripted exception, when the script holds one at this position.
        """
        call, scripted = self._record(messages, tool_specs, system_prompt, tool_choice)
        yield {"messageStart": {"role": "assistant"}}
        for index, block in enumerate(scripted.content):
            async for event in self._stream_block(index, block):
                yield event
        stop_reason = scripted.stop_reason or ("tool_use" if scripted.has_tool_use else "end_turn")
        yield {"messageStop": {"stopReason": stop_reason}}
        latency = self.latency_ms if scripted.latency_ms is None else scripted.latency_ms
        yield {"metadata": {"usage": call.usage, "metrics": {"latencyMs": latency}}}

    async def _stream_block(self, index: int, block: ContentBlock) -> AsyncGenerator[StreamEvent, None]:
        if "toolUse" in block:
            tool_use = block["toolUse"]
            yield {
                "contentBlockStart": {
                    "contentBlockIndex": index,
                    "start": {"toolUse": {"toolUseId": tool_use["toolUseId"], "name": tool_use["name"]}},
                }
            }
            for piece in _split(json.dumps(tool_use["input"]), self.chunks):
                await self._pause()
                yield {"contentBlockDelta": {"contentBlockIndex": index, "delta": {"toolUse": {"input": piece}}}}
        elif "reasoningContent" in block:
            reasoning = block["reasoningContent"]["reasoningText"]
            yield {"contentBlockStart": {"contentBlockIndex": index, "start": {}}}
            for piece in _split(reasoning.get("text", ""), self.chunks):
                await self._pause()
                yield {
                    "contentBlockDelta": {"contentBlockIndex": index, "delta": {"reasoningContent": {"text": piece}}}
                }
            if "signature" in reasoning:
                yield {
                    "contentBlockDelta": {
                        "contentBlockIndex": index,
                        "delta": {"reasoningContent": {"signature": reasoning["signature"]}},
                    }
                }
        else:
            yield {"contentBlockStart": {"contentBlockIndex": index, "start": {}}}
            for piece in _split(block["text"], self.chunks):
                await self._pause()
                yield {"contentBlockDelta": {"contentBlockIndex": index, "delta": {"text": piece}}}
        yield {"contentBlockStop": {"contentBlockIndex": index}}

    async def _pause(self) -> None:
        if self.chunk_delay:
            await asyncio.sleep(self.chunk_delay)

    async def structured_output(
        self, output_model: type[T], prompt: Messages, system_prompt: str | None = None, **kwargs: Any
    ) -> AsyncGenerator[dict[str, T | Any], None]:
        """Answer the legacy structured-output call with the next scripted response.

        The response's first toolUse input, or else its text parsed as JSON, is validated against
        ``output_model``.

        Raises:
            ScriptExhaustedError: No scripted response is left.
            pydantic.ValidationError: The scripted data does not fit ``output_model``.
        """
        _, scripted = self._record(prompt, None, system_prompt, None)
        for block in scripted.content:
            if "toolUse" in block:
                yield {"output": output_model.model_validate(block["toolUse"]["input"])}
                return
        joined = "".join(block.get("text", "") for block in scripted.content)
        yield {"output": output_model.model_validate_json(joined)}


class EchoModel(ScriptedModel):
    """A model that never runs out: after any scripted responses, it answers ``"echo: <last user text>"``."""

    def _next_item(self, messages: Messages) -> ScriptItem:
        if self.remaining:
            return super()._next_item(messages)
        for message in reversed(messages):
            if message["role"] == "user":
                said = " ".join(block["text"] for block in message["content"] if "text" in block)
                if said:
                    return text(f"echo: {said}")
        return text("echo:")
