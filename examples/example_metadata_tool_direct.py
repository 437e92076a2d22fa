"""Calling the ``manage_metadata`` tool directly, without a model deciding to.

    uv run python examples/example_metadata_tool_direct.py

Shows:
* ``metadata_tool(action=..., ...)``: the very tool an agent gets, called from your own code, with
  the result an agent would see (``{"status": ..., "content": [{"text": ...}]}``);
* "set" changes only the fields it names; "delete" removes only the keys it names; JSON strings
  are accepted (models often send them); bad arguments come back as an error result, never as an
  exception inside the agent's loop, and nothing is stored;
* finding sessions by metadata with ``manager.list_sessions(metadata_filter=...)``;
* resuming: a new manager for the same session id reads the metadata back, and an agent with the
  tool answers from it.

Uses MONGODB_URI (else an embedded local server, data in .data/) and a Bedrock model when AWS
credentials are configured (else an offline demo model); see examples/README.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _local import database_name, demo_model, mongodb_uri, print_setup
from strands import Agent

from mongodb_session_manager import create_mongodb_session_manager

SESSION_ID = "metadata-tool-direct-session"
COLLECTION = "metadata_tool_sessions"


def show(call: str, result: dict[str, Any]) -> None:
    """Print a tool call and the result the tool returned."""
    text = " ".join(item["text"] for item in result["content"])
    print(f"{call}\n    -> {result['status']}: {text}")


def main() -> None:
    with mongodb_uri() as uri:
        print_setup(uri, COLLECTION)
        manager = create_mongodb_session_manager(
            session_id=SESSION_ID, connection_string=uri, database_name=database_name(), collection_name=COLLECTION
        )
        with manager:
            metadata_tool = manager.get_metadata_tool()
            visits = int(manager.get_metadata().get("visits", 0)) + 1
            print(f"Session {SESSION_ID!r}, visit {visits}.\n")

            show(
                'metadata_tool(action="set", metadata={"user_name": ..., "preferences": {...}, "visits": ...})',
                metadata_tool(
                    action="set",
                    metadata={
                        "user_name": "Bob Smith",
                        "preferences": {"theme": "dark", "language": "en", "notifications": True},
                        "visits": visits,
                        "draft": "to be deleted",
                    },
                ),
            )
            show('metadata_tool(action="get")', metadata_tool(action="get"))
            # A JSON string works too; "set" leaves every field it does not name as it is.
            show(
                'metadata_tool(action="set", metadata=\'{"plan": "pro"}\')',
                metadata_tool(action="set", metadata='{"plan": "pro"}'),
            )
            show('metadata_tool(action="delete", keys=["draft"])', metadata_tool(action="delete", keys=["draft"]))

            print("\nRefused, with an error result the model can read; nothing is stored:")
            show(
                'metadata_tool(action="set", metadata={"$where": "1 == 1"})',
                metadata_tool(action="set", metadata={"$where": "1 == 1"}),
            )
            show('metadata_tool(action="rename")', metadata_tool(action="rename"))

            print(f"\nStored metadata (manager.get_metadata()): {json.dumps(manager.get_metadata())}")
            found = manager.list_sessions(metadata_filter={"user_name": "Bob Smith", "plan": "pro"})
            print(
                f"Sessions whose metadata has user_name 'Bob Smith' and plan 'pro': {[s['session_id'] for s in found]}"
            )

        print("\nA new manager for the same session id, and an agent with the tool:")
        manager = create_mongodb_session_manager(
            session_id=SESSION_ID, connection_string=uri, database_name=database_name(), collection_name=COLLECTION
        )
        with manager:
            print(f"Resumed: metadata {json.dumps(manager.get_metadata())}")
            agent = Agent(
                model=demo_model(),
                tools=[manager.get_metadata_tool()],
                system_prompt="Answer questions about the user from the session metadata (manage_metadata, action get).",
                session_manager=manager,
                callback_handler=None,
            )
            prompt = "What do you know about me?"
            print(f"\nuser:  {prompt}\nagent: {str(agent(prompt)).strip()}")


if __name__ == "__main__":
    main()
