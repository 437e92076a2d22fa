"""An agent with a calculator tool whose conversation lives in MongoDB.

    uv run python examples/example_calculator_tool.py     # run it twice: the second run resumes

Shows:
* ``create_mongodb_session_manager`` + ``Agent(session_manager=...)``: every message (questions,
  tool calls, tool results, answers) is stored as it happens, one MongoDB document per session;
* the metrics stored with each turn's final answer: tokens, model latency, cycles, tool use;
* resuming: a new manager and agent for the same session id get the whole conversation back, as a
  new process, container or Lambda invocation would.

Uses MONGODB_URI (else an embedded local server, data in .data/) and a Bedrock model when AWS
credentials are configured (else an offline demo model); see examples/README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _local import (
    database_name,
    demo_model,
    mongodb_uri,
    print_messages,
    print_metrics,
    print_setup,
    text_of,
)
from strands import Agent
from strands_tools import calculator

from mongodb_session_manager import MongoDBSessionManager, create_mongodb_session_manager

SESSION_ID = "calculator-session"
AGENT_ID = "calculator-agent"
COLLECTION = "calculator_sessions"
QUESTIONS = ["What is 10 + 10?", "And 11 + 12?"]


def open_session(uri: str) -> tuple[MongoDBSessionManager, Agent]:
    """A manager for the session and an agent attached to it (the agent's history is restored)."""
    manager = create_mongodb_session_manager(
        session_id=SESSION_ID,
        connection_string=uri,
        database_name=database_name(),
        collection_name=COLLECTION,
    )
    agent = Agent(
        agent_id=AGENT_ID,
        model=demo_model(),
        tools=[calculator],
        system_prompt="You are a concise assistant. Use the calculator tool for any arithmetic.",
        session_manager=manager,
        callback_handler=None,  # no console streaming: we print the answers ourselves
    )
    return manager, agent


def main() -> None:
    with mongodb_uri() as uri:
        print_setup(uri, COLLECTION)

        manager, agent = open_session(uri)
        with manager:  # closing the manager releases its (shared, pooled) MongoDB client
            if agent.messages:
                print(f"Resumed session {SESSION_ID!r} from an earlier run: {len(agent.messages)} messages restored.")
            else:
                print(f"New session {SESSION_ID!r}. Run this example again to see it resume.")
            first_new = len(agent.messages)

            for question in QUESTIONS:
                result = agent(question)
                print(f"\nuser:  {question}\nagent: {str(result).strip()}")

            print(f"\nStored in MongoDB by this run (read back from session {SESSION_ID!r}):")
            print_messages(manager, AGENT_ID, offset=first_new)
            print("Metrics stored with each turn's final answer:")
            print_metrics(manager, AGENT_ID, last=len(QUESTIONS))

        # Later, elsewhere: nothing but the session id is needed to carry on.
        print("\nA new manager and agent for the same session id:")
        manager, agent = open_session(uri)
        with manager:
            print(
                f"Resumed: {len(agent.messages)} messages restored; the last answer was {text_of(agent.messages[-1])!r}"
            )
            question = "What did I ask you before?"
            print(f"\nuser:  {question}\nagent: {str(agent(question)).strip()}")


if __name__ == "__main__":
    main()
