"""An agent that keeps notes about the user in the session's metadata, through ``manage_metadata``.

    uv run python examples/example_metadata_tool.py     # run it twice: the notes are still there

Shows:
* ``manager.get_metadata_tool()``: a Strands tool with which the agent reads ("get"), adds or
  changes ("set") and removes ("delete") fields of the session's metadata;
* the metadata as stored, read back with ``manager.get_metadata()``; other fields are never touched
  by a "set", so your application can keep its own fields beside the agent's notes;
* resuming: a new manager and agent for the same session id answer from the stored notes.

With the offline demo model, "my name is ...", "remember that my ... is ...", "what do you know about
me?" and "forget my ..." become tool calls; a real model decides for itself from the system prompt.
Uses MONGODB_URI (else an embedded local server, data in .data/) and a Bedrock model when AWS
credentials are configured (else the offline demo model); see examples/README.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _local import database_name, demo_model, mongodb_uri, print_messages, print_setup
from strands import Agent

from mongodb_session_manager import MongoDBSessionManager, create_mongodb_session_manager

SESSION_ID = "metadata-tool-session"
AGENT_ID = "notes-agent"
COLLECTION = "metadata_tool_sessions"
SYSTEM_PROMPT = """You are a friendly assistant with a memory.
When the user tells you something about themselves (name, preferences, favourites), store it with the
manage_metadata tool (action "set", short snake_case keys). When they ask what you know about them,
read it with action "get". When they ask you to forget something, use action "delete"."""


def open_session(uri: str) -> tuple[MongoDBSessionManager, Agent]:
    manager = create_mongodb_session_manager(
        session_id=SESSION_ID, connection_string=uri, database_name=database_name(), collection_name=COLLECTION
    )
    agent = Agent(
        agent_id=AGENT_ID,
        model=demo_model(),
        tools=[manager.get_metadata_tool()],  # the tool acts on this manager's session
        system_prompt=SYSTEM_PROMPT,
        session_manager=manager,
        callback_handler=None,
    )
    return manager, agent


def main() -> None:
    with mongodb_uri() as uri:
        print_setup(uri, COLLECTION)

        manager, agent = open_session(uri)
        with manager:
            print(f"Metadata of session {SESSION_ID!r} at the start: {json.dumps(manager.get_metadata())}")
            # The application's own field, beside whatever the agent notes down.
            manager.update_metadata({"channel": "web"})
            first_new = len(agent.messages)
            for prompt in [
                "My name is Ada and I prefer e-mail notifications.",
                "Remember that my favourite colour is green.",
                "Actually, forget my favourite colour.",
            ]:
                print(f"\nuser:  {prompt}\nagent: {str(agent(prompt)).strip()}")
                print(f"       metadata now: {json.dumps(manager.get_metadata())}")

            print(f"\nStored in MongoDB by this run (messages of session {SESSION_ID!r}, read back):")
            print_messages(manager, AGENT_ID, offset=first_new)

        print("\nA new manager and agent for the same session id:")
        manager, agent = open_session(uri)
        with manager:
            print(f"Resumed: {len(agent.messages)} messages restored; metadata {json.dumps(manager.get_metadata())}")
            prompt = "What do you know about me?"
            print(f"\nuser:  {prompt}\nagent: {str(agent(prompt)).strip()}")


if __name__ == "__main__":
    main()
