"""The scripted test model drives a real Strands agent offline."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel
from strands import Agent, tool
from strands.types.content import Messages

from tests.support.scripted_model import (
    EchoModel,
    ScriptedModel,
    ScriptedResponse,
    ScriptExhaustedError,
    response,
    text,
    tool_call,
)


@tool
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: First addend.
        b: Second addend.
    """
    return a + b


def _conversation(messages: Messages) -> list[dict[str, Any]]:
    """Messages without the ids and metadata the agent adds."""
    return [{"role": message["role"], "content": message["content"]} for message in messages]


def test_text_turn() -> None:
    model = ScriptedModel([text("Hello there, traveller!")])
    agent = Agent(model=model, system_prompt="Be kind.", callback_handler=None)

    result = agent("Hi")

    assert result.stop_reason == "end_turn"
    assert str(result).strip() == "Hello there, traveller!"
    assert _conversation(agent.messages) == [
        {"role": "user", "content": [{"text": "Hi"}]},
        {"role": "assistant", "content": [{"text": "Hello there, traveller!"}]},
    ]
    # input: "Be kind." (8 chars) -> 2, "Hi" -> 1; output: 23 chars -> 6
    assert agent.event_loop_metrics.accumulated_usage == {"inputTokens": 3, "outputTokens": 6, "totalTokens": 9}
    assert agent.event_loop_metrics.accumulated_metrics["latencyMs"] == 10
    assert model.remaining == 0


def test_tool_turn() -> None:
    model = ScriptedModel(
        [
            tool_call(
                "add",
                {"a": 2, "b": 3},
                tool_use_id="t1",
                usage={"inputTokens": 100, "outputTokens": 20, "cacheReadInputTokens": 80, "cacheWriteInputTokens": 5},
                latency_ms=40,
            ),
            text("2 + 3 = 5", usage={"inputTokens": 130, "outputTokens": 7, "cacheReadInputTokens": 100}),
        ]
    )
    agent = Agent(model=model, tools=[add], callback_handler=None)

    result = agent("What is 2 + 3?")

    assert str(result).strip() == "2 + 3 = 5"
    assert _conversation(agent.messages) == [
        {"role": "user", "content": [{"text": "What is 2 + 3?"}]},
        {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "add", "input": {"a": 2, "b": 3}}}]},
        {
            "role": "user",
            "content": [{"toolResult": {"toolUseId": "t1", "status": "success", "content": [{"text": "5"}]}}],
        },
        {"role": "assistant", "content": [{"text": "2 + 3 = 5"}]},
    ]
    assert agent.event_loop_metrics.accumulated_usage == {
        "inputTokens": 230,
        "outputTokens": 27,
        "totalTokens": 257,
        "cacheReadInputTokens": 180,
        "cacheWriteInputTokens": 5,
    }
    assert agent.event_loop_metrics.accumulated_metrics["latencyMs"] == 50
    # The second call saw the tool result and was offered the tool.
    assert [spec["name"] for spec in model.calls[1].tool_specs or []] == ["add"]
    assert model.calls[1].messages[-1]["content"][0]["toolResult"]["toolUseId"] == "t1"


def test_default_usage_counts_prompt_and_response() -> None:
    model = ScriptedModel([tool_call("add", {"a": 1, "b": 1}, tool_use_id="t1"), "two"])
    agent = Agent(model=model, tools=[add], callback_handler=None)

    agent("1+1?")

    # call 1: in "1+1?" -> 1; out "add" + '{"a": 1, "b": 1}' (19 chars) -> 5
    # call 2: in 1 + 5 + toolResult "2" -> 7; out "two" -> 1
    assert [call.usage for call in model.calls] == [
        {"inputTokens": 1, "outputTokens": 5, "totalTokens": 6},
        {"inputTokens": 7, "outputTokens": 1, "totalTokens": 8},
    ]
    assert agent.event_loop_metrics.accumulated_usage == {"inputTokens": 8, "outputTokens": 6, "totalTokens": 14}


def test_text_is_streamed_in_chunks() -> None:
    deltas: list[str] = []

    def collect(**event: Any) -> None:
        if "data" in event:
            deltas.append(event["data"])

    agent = Agent(model=ScriptedModel([text("one two three four five six")], chunks=3), callback_handler=collect)

    agent("count")

    assert len(deltas) == 3
    assert "".join(deltas) == "one two three four five six"


def test_text_and_parallel_tool_calls_in_one_message() -> None:
    model = ScriptedModel(
        [
            response(
                "Adding twice.", tool_call("add", {"a": 1, "b": 2}, "t1"), tool_call("add", {"a": 3, "b": 4}, "t2")
            ),
            text("3 and 7"),
        ]
    )
    agent = Agent(model=model, tools=[add], callback_handler=None)

    agent("1+2 and 3+4?")

    assert agent.messages[1]["content"] == [
        {"text": "Adding twice."},
        {"toolUse": {"toolUseId": "t1", "name": "add", "input": {"a": 1, "b": 2}}},
        {"toolUse": {"toolUseId": "t2", "name": "add", "input": {"a": 3, "b": 4}}},
    ]
    results = {
        block["toolResult"]["toolUseId"]: block["toolResult"]["content"] for block in agent.messages[2]["content"]
    }
    assert results == {"t1": [{"text": "3"}], "t2": [{"text": "7"}]}


def test_assistant_message_dicts_are_accepted() -> None:
    agent = Agent(
        model=ScriptedModel([{"role": "assistant", "content": [{"text": "from a dict"}]}]), callback_handler=None
    )

    assert str(agent("hi")).strip() == "from a dict"


def test_exhausted_script_raises() -> None:
    agent = Agent(model=ScriptedModel(["only answer"]), callback_handler=None)
    agent("first")

    with pytest.raises(ScriptExhaustedError, match="called 2 times but only 1"):
        agent("second")


def test_scripted_exception_is_raised_by_its_call() -> None:
    model = ScriptedModel(["fine", RuntimeError("model is down")])
    agent = Agent(model=model, callback_handler=None)
    agent("first")

    with pytest.raises(RuntimeError, match="model is down"):
        agent("second")
    assert len(model.calls) == 2


def test_structured_output_through_the_agent() -> None:
    class Weather(BaseModel):
        city: str
        celsius: int

    model = ScriptedModel([tool_call("Weather", {"city": "Oslo", "celsius": 3}, "s1")])
    agent = Agent(model=model, callback_handler=None)

    result = agent("Weather in Oslo?", structured_output_model=Weather)

    assert result.structured_output == Weather(city="Oslo", celsius=3)


def test_echo_model_never_runs_out() -> None:
    agent = Agent(model=EchoModel(["scripted first"]), callback_handler=None)

    assert str(agent("a")).strip() == "scripted first"
    assert str(agent("b")).strip() == "echo: b"
    assert str(agent("c")).strip() == "echo: c"


@pytest.mark.parametrize(
    "content",
    [
        [{"image": {"format": "png", "source": {"bytes": b""}}}],
        [{"text": "a", "toolUse": {"toolUseId": "t", "name": "n", "input": {}}}],
    ],
)
def test_unscriptable_blocks_are_rejected(content: list[Any]) -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        ScriptedResponse(content)


def test_unknown_usage_keys_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown keys"):
        text("x", usage={"inputTokenz": 1})


def test_user_messages_cannot_be_scripted() -> None:
    with pytest.raises(ValueError, match="role 'assistant'"):
        ScriptedModel([{"role": "user", "content": [{"text": "x"}]}])
