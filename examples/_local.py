"""Defaults that let every example run anywhere, and stay the real thing when pointed at your own setup.

* Database: ``MONGODB_URI`` when set. Otherwise a local SecantusDB server (a MongoDB wire-protocol
  server installed with the project's dev dependencies) is started in this process, with its data
  in ``.data/mongodb`` under the project, so a second run finds the first run's sessions.
* Model: ``STRANDS_MODEL=bedrock`` (or AWS credentials in the environment) uses Strands' default
  Bedrock model; otherwise an offline demo model that says so, answers arithmetic through the
  calculator tool and otherwise reflects what it was told. Persistence is always real.
"""

from __future__ import annotations

import ast
import contextlib
import json
import operator
import os
import re
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

from strands import tool
from strands.models.model import Model

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT_ROOT / ".data" / "mongodb"


@contextlib.contextmanager
def mongodb_uri() -> Iterator[str]:
    """Yield a MongoDB connection string: ``MONGODB_URI``, or an embedded local server for the duration."""
    uri = os.environ.get("MONGODB_URI")
    if uri:
        yield uri
        return
    from secantus import SecantusDBServer  # dev dependency: only needed when no MONGODB_URI is given

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    server = SecantusDBServer(host="127.0.0.1", port=0, storage_path=str(DATA_DIR), cache_size="256M")
    server.start()
    try:
        host, port = server.address[:2]
        yield f"mongodb://{host}:{port}/?directConnection=true"
    finally:
        server.stop()


def describe_database(uri: str) -> str:
    """A one-line, password-free description of where data goes."""
    if os.environ.get("MONGODB_URI"):
        from mongodb_session_manager._secrets import redact_uri

        return f"MongoDB at {redact_uri(uri)} (MONGODB_URI)"
    return f"embedded SecantusDB, data in {DATA_DIR.relative_to(PROJECT_ROOT)}/"


def use_bedrock() -> bool:
    """Whether to use Strands' default (Bedrock) model rather than the offline demo model."""
    choice = os.environ.get("STRANDS_MODEL", "").lower()
    if choice:
        return choice == "bedrock"
    return bool(os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE"))


def demo_model() -> Model | None:
    """The model for examples: ``None`` (Strands' default Bedrock model) or the offline demo model."""
    return None if use_bedrock() else OfflineDemoModel()


_OPERATORS: dict[type, Any] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.Mod: operator.mod,
    ast.FloorDiv: operator.floordiv,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def evaluate(expression: str) -> float | int:
    """Evaluate plain arithmetic safely (numbers, + - * / // % ** and parentheses only)."""

    def walk(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](walk(node.operand))
        raise ValueError(f"not plain arithmetic: {expression!r}")

    return walk(ast.parse(expression, mode="eval"))  # type: ignore[no-any-return]


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as "(17 + 25) * 2".

    Args:
        expression: The arithmetic expression to evaluate.
    """
    result = evaluate(expression)
    return str(int(result) if isinstance(result, float) and result.is_integer() else result)


_ARITHMETIC = re.compile(r"[\d(][\d\s.()+\-*/%]*[\d)]")


class OfflineDemoModel(Model):
    """A tiny offline stand-in for a real model, so examples run without a cloud account.

    It calls the ``calculator`` tool when the user's message contains arithmetic, reports the tool's
    result, and otherwise answers with a short reflection of the message. Every answer starts with
    ``(offline demo model)`` so nobody mistakes it for a real model.
    """

    def __init__(self) -> None:
        self.config: dict[str, Any] = {"model_id": "offline-demo"}
        self._calls = 0

    def update_config(self, **model_config: Any) -> None:
        self.config.update(model_config)

    def get_config(self) -> dict[str, Any]:
        return self.config

    async def structured_output(self, *args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        raise NotImplementedError("the offline demo model does not do structured output")
        yield  # pragma: no cover

    def _reply(self, messages: list[Any], tool_names: set[str]) -> dict[str, Any]:
        last = messages[-1] if messages else {"content": []}
        for block in last.get("content", []):
            if "toolResult" in block:
                result = " ".join(item.get("text", "") for item in block["toolResult"]["content"])
                return {"text": f"(offline demo model) The calculator says: {result}."}
        said = " ".join(block["text"] for block in last.get("content", []) if "text" in block).strip()
        match = _ARITHMETIC.search(said)
        if match and "calculator" in tool_names and any(op in match.group() for op in "+-*/%"):
            self._calls += 1
            return {
                "toolUse": {
                    "toolUseId": f"demo-{self._calls}",
                    "name": "calculator",
                    "input": {"expression": match.group().strip()},
                }
            }
        turns = sum(
            1 for message in messages if message["role"] == "user" and any("text" in b for b in message["content"])
        )
        return {
            "text": f"(offline demo model) You said: {said!r}. This conversation has {turns} user message(s) so far."
        }

    async def stream(
        self, messages: list[Any], tool_specs: list[Any] | None = None, system_prompt: str | None = None, **kwargs: Any
    ) -> AsyncGenerator[Any, None]:
        tool_names = {spec["name"] for spec in tool_specs or []}
        block = self._reply(messages, tool_names)
        prompt_chars = sum(len(json.dumps(m.get("content", []), default=str)) for m in messages)
        yield {"messageStart": {"role": "assistant"}}
        if "toolUse" in block:
            use = block["toolUse"]
            yield {"contentBlockStart": {"start": {"toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}}}}
            yield {"contentBlockDelta": {"delta": {"toolUse": {"input": json.dumps(use["input"])}}}}
            out_chars, stop = len(json.dumps(use)), "tool_use"
        else:
            words = block["text"].split(" ")
            yield {"contentBlockStart": {"start": {}}}
            for i, word in enumerate(words):
                yield {"contentBlockDelta": {"delta": {"text": word if i == 0 else " " + word}}}
            out_chars, stop = len(block["text"]), "end_turn"
        yield {"contentBlockStop": {}}
        yield {"messageStop": {"stopReason": stop}}
        input_tokens, output_tokens = max(1, prompt_chars // 4), max(1, out_chars // 4)
        yield {
            "metadata": {
                "usage": {
                    "inputTokens": input_tokens,
                    "outputTokens": output_tokens,
                    "totalTokens": input_tokens + output_tokens,
                },
                "metrics": {"latencyMs": 5},
            }
        }
