"""`make demo`: a short conversation with a tool-using agent, stored in MongoDB.

Run it twice: the second run resumes the stored conversation and says so. Then it prints what the
session document holds: its shape, metadata, feedback and per-turn metrics.

Uses MONGODB_URI if set (otherwise an embedded local server, data in .data/), the database named
by EXAMPLES_DATABASE (default "demo"), and a real model if configured (see examples/_local.py),
otherwise an offline demo model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _local import (
    database_name,
    demo_model,
    describe_database,
    describe_model,
    mongodb_uri,
    print_metrics,
    text_of,
)
from strands import Agent
from strands_tools import calculator

from mongodb_session_manager import MongoDBSessionManager

SESSION_ID = "demo-session"
PROMPTS_FIRST_RUN = [
    "Hi! I'm planning a party for 17 + 25 people.",
    "If each needs 3 drinks, how many is (17 + 25) * 3?",
]
PROMPTS_LATER_RUN = ["We invited 8 more. What is (17 + 25 + 8) * 3 now?"]


def shape(value: Any, depth: int = 0) -> Any:
    """Summarise a document: keys and types, arrays by length, deep values elided."""
    if isinstance(value, dict):
        if depth >= 3:
            return f"{{...{len(value)} keys}}"
        return {key: shape(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return f"[{len(value)} items]"
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return type(value).__name__


def main() -> None:
    with mongodb_uri() as uri:
        print(f"Storage: {describe_database(uri)}")
        print(f"Model:   {describe_model()}")
        manager = MongoDBSessionManager(SESSION_ID, connection_string=uri, database_name=database_name("demo"))
        with manager:
            agent = Agent(
                model=demo_model(),
                tools=[calculator, manager.get_metadata_tool()],
                session_manager=manager,
                callback_handler=None,
                system_prompt="You are a concise party-planning assistant. Use the calculator for arithmetic.",
            )
            resumed = len(agent.messages) > 0
            if resumed:
                print(f"Resumed session {SESSION_ID!r}: {len(agent.messages)} stored messages restored.")
                print(f"  last answer was: {text_of(agent.messages[-1])!r}")
                prompts = PROMPTS_LATER_RUN
            else:
                print(f"New session {SESSION_ID!r}. Run `make demo` again to see it resume.")
                prompts = PROMPTS_FIRST_RUN

            for prompt in prompts:
                print(f"\nuser:  {prompt}")
                result = agent(prompt)
                print(f"agent: {str(result).strip()}")

            runs = int(manager.get_metadata().get("runs", 0)) + 1
            manager.update_metadata({"runs": runs, "topic": "party planning"})
            manager.add_feedback({"rating": "up", "comment": f"run {runs}: helpful"})

            document = manager.mongodb_repository.collection.find_one({"_id": SESSION_ID})
            print("\nSession document shape:")
            print(json.dumps(shape(document), indent=2))
            print("\nMetadata:", json.dumps(manager.get_metadata()))
            print("Feedback:")
            for entry in manager.get_feedbacks():
                print(f"  {entry['created_at']:%Y-%m-%d %H:%M:%S}  {entry['rating']!s:5} {entry['comment']}")
            print("Per-turn metrics (final assistant message of each turn):")
            print_metrics(manager)


if __name__ == "__main__":
    main()
