"""Streaming an agent's answer with ``agent.stream_async`` while the session is stored in MongoDB.

    uv run python examples/example_stream_async.py     # run it twice: the second run resumes

Shows:
* tokens printed as they arrive, tool calls as they happen, and the turn's metrics at the end;
* that there is nothing to store by hand: the session manager is a Strands hook provider, so each
  message is written when the agent adds it to the conversation, and the turn's metrics are written
  with its final answer (no ``append_message`` or ``sync_agent`` calls in your code);
* resuming: a new manager and agent for the same session id stream a follow-up with the whole
  conversation restored.

Uses MONGODB_URI (else an embedded local server, data in .data/) and a Bedrock model when AWS
credentials are configured (else an offline demo model that streams word by word); see
examples/README.md.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _local import database_name, demo_model, mongodb_uri, print_messages, print_metrics, print_setup
from strands import Agent
from strands.agent import AgentResult
from strands_tools import calculator

from mongodb_session_manager import MongoDBSessionManager, create_mongodb_session_manager

SESSION_ID = "stream-async-session"
AGENT_ID = "streaming-agent"
COLLECTION = "stream_sessions"


def open_session(uri: str) -> tuple[MongoDBSessionManager, Agent]:
    """A manager for the session and an agent attached to it (the agent's history is restored)."""
    manager = create_mongodb_session_manager(
        session_id=SESSION_ID, connection_string=uri, database_name=database_name(), collection_name=COLLECTION
    )
    agent = Agent(
        agent_id=AGENT_ID,
        model=demo_model(stream_delay=0.03),
        tools=[calculator],
        system_prompt="You are a concise assistant. Use the calculator tool for any arithmetic.",
        session_manager=manager,
        callback_handler=None,  # we consume the events ourselves
    )
    return manager, agent


async def stream_turn(agent: Agent, prompt: str) -> AgentResult:
    """Stream one turn to the console; return the agent's result."""
    print(f"\nuser:  {prompt}\nagent: ", end="", flush=True)
    result: AgentResult | None = None
    async for event in agent.stream_async(prompt):
        if "data" in event:  # a piece of the answer's text
            print(event["data"], end="", flush=True)
        elif "message" in event:  # a message was added to the conversation (and stored)
            for block in event["message"]["content"]:
                if "toolUse" in block:
                    use = block["toolUse"]
                    print(f"[calling {use['name']} {json.dumps(use['input'])}] ", end="", flush=True)
        elif "result" in event:  # the last event of the turn
            result = event["result"]
    assert result is not None
    usage = result.metrics.accumulated_usage
    print(f"\n       ({usage['totalTokens']} tokens, {result.metrics.cycle_count} cycle(s) in this process so far)")
    return result


async def main() -> None:
    with mongodb_uri() as uri:
        print_setup(uri, COLLECTION)

        manager, agent = open_session(uri)
        with manager:
            if agent.messages:
                print(f"Resumed session {SESSION_ID!r} from an earlier run: {len(agent.messages)} messages restored.")
            else:
                print(f"New session {SESSION_ID!r}. Run this example again to see it resume.")
            first_new = len(agent.messages)
            prompts = ["Hello! Please stream me a short greeting.", "What is (3 + 4) * 6?"]
            for prompt in prompts:
                await stream_turn(agent, prompt)

            print(f"\nStored in MongoDB by this run (read back from session {SESSION_ID!r}):")
            print_messages(manager, AGENT_ID, offset=first_new)
            print("Metrics stored with each turn's final answer:")
            print_metrics(manager, AGENT_ID, last=len(prompts))

        print("\nA new manager and agent for the same session id:")
        manager, agent = open_session(uri)
        with manager:
            print(f"Resumed: {len(agent.messages)} messages restored.")
            await stream_turn(agent, "What did I ask you before?")


if __name__ == "__main__":
    asyncio.run(main())
