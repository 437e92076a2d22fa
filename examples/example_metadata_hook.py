"""Metadata hooks: audit, validate, enrich and cache every metadata operation of a session.

    uv run python examples/example_metadata_hook.py

A hook is called as ``hook(original_func, action, session_id, **kwargs)`` instead of the operation:

    action     kwargs        call the original as
    "update"   metadata      original_func(kwargs["metadata"])
    "delete"   keys          original_func(kwargs["keys"])
    "get"      (none)        original_func()

What it returns is what ``update_metadata`` / ``delete_metadata`` / ``get_metadata`` return; if it
raises, the caller gets the exception and nothing is stored. The library's own checks run inside the
original, so whatever a hook passes on is still validated. The agent's ``manage_metadata`` tool goes
through the same hook.

Shows: an audit hook (logs keys, never values), a validation hook that refuses protected fields and
stamps who changed what, a read cache, ``chain`` to combine them, the hook at work under an agent's
tool, and what was stored, read back by a new manager with no hook.
Uses MONGODB_URI (else an embedded local server, data in .data/); see examples/README.md.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _local import database_name, demo_model, mongodb_uri, print_setup
from strands import Agent

from mongodb_session_manager import MongoDBSessionManager, SessionValidationError

SESSION_ID = "metadata-hook-session"
COLLECTION = "metadata_hook_sessions"

logger = logging.getLogger("metadata-audit")
# Only so the audit lines show up in this example's output; your application configures logging.
_handler = logging.StreamHandler(sys.stdout)
_handler.setFormatter(logging.Formatter("    [%(name)s] %(message)s"))
logger.addHandler(_handler)
logger.setLevel(logging.INFO)

Hook = Callable[..., Any]


def audit_hook(original_func: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
    """Log every metadata operation: the keys involved, never the values (they may be personal data)."""
    keys = sorted(kwargs["metadata"]) if action == "update" else kwargs.get("keys", [])
    logger.info("session_id=<%s>, action=<%s>, keys=<%s> | metadata", session_id, action, keys)
    if action == "update":
        return original_func(kwargs["metadata"])
    if action == "delete":
        return original_func(kwargs["keys"])
    return original_func()


PROTECTED = {"account_id", "updated_by", "updated_at"}


def validation_hook(original_func: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
    """Refuse changes to protected fields; stamp every update with who made it and when."""
    if action == "update":
        refused = PROTECTED & set(kwargs["metadata"])
        if refused:
            raise ValueError(f"metadata fields {sorted(refused)} are managed by the application")
        stamped = {**kwargs["metadata"], "updated_by": "example-app", "updated_at": datetime.now(UTC).isoformat()}
        return original_func(stamped)
    if action == "delete":
        refused = PROTECTED & set(kwargs["keys"])
        if refused:
            raise ValueError(f"metadata fields {sorted(refused)} cannot be deleted")
        return original_func(kwargs["keys"])
    return original_func()


class CachingHook:
    """Answer ``get_metadata`` from memory until the session's metadata changes."""

    def __init__(self) -> None:
        self.cache: dict[str, dict[str, Any]] = {}
        self.hits = 0

    def __call__(self, original_func: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
        if action == "get":
            if session_id in self.cache:
                self.hits += 1
                return dict(self.cache[session_id])
            self.cache[session_id] = original_func()
            return dict(self.cache[session_id])
        self.cache.pop(session_id, None)  # any change invalidates
        return original_func(kwargs["metadata"] if action == "update" else kwargs["keys"])


def chain(*hooks: Hook) -> Hook:
    """Combine hooks into one; the first runs outermost (it sees the call first and the result last)."""
    argument = {"update": "metadata", "delete": "keys"}  # the keyword each action passes

    def combined(original_func: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
        def wrap(hook: Hook, inner: Callable[..., Any]) -> Callable[..., Any]:
            def call(*args: Any) -> Any:
                return hook(inner, action, session_id, **({argument[action]: args[0]} if args else {}))

            return call

        call = original_func
        for hook in reversed(hooks):
            call = wrap(hook, call)
        return call(*kwargs.values())

    return combined


def main() -> None:
    with mongodb_uri() as uri:
        print_setup(uri, COLLECTION)
        cache = CachingHook()
        manager = MongoDBSessionManager(
            session_id=SESSION_ID,
            connection_string=uri,
            database_name=database_name(),
            collection_name=COLLECTION,
            metadata_hook=chain(audit_hook, validation_hook, cache),  # `metadataHook=` works too
        )
        with manager:
            print("update_metadata({'customer': 'ACME', 'priority': 'high', 'draft': True}):")
            manager.update_metadata({"customer": "ACME", "priority": "high", "draft": True})
            print("get_metadata() twice:")
            manager.get_metadata()
            metadata = manager.get_metadata()
            print(f"  -> {json.dumps(metadata)}  (cache hits so far: {cache.hits})")
            print("delete_metadata(['draft']):")
            manager.delete_metadata(["draft"])

            print("\nRefused, nothing stored:")
            for bad in ({"account_id": "attacker"}, {"$set": {"priority": "low"}}):
                try:
                    manager.update_metadata(bad)
                except SessionValidationError as e:  # the library's own check, run inside the original
                    print(f"  update_metadata({bad}) -> SessionValidationError: {e}")
                except ValueError as e:  # raised by validation_hook
                    print(f"  update_metadata({bad}) -> ValueError from the hook: {e}")

            print("\nAn agent's manage_metadata tool goes through the same hook:")
            agent = Agent(
                model=demo_model(),
                tools=[manager.get_metadata_tool()],
                system_prompt="Store what the user tells you about themselves with manage_metadata.",
                session_manager=manager,
                callback_handler=None,
            )
            prompt = "Remember that my favourite colour is green."
            reply = str(agent(prompt)).strip()
            print(f"user:  {prompt}\nagent: {reply}")

        print("\nA new manager for the same session id, without hooks, reads what was stored:")
        with MongoDBSessionManager(
            SESSION_ID, connection_string=uri, database_name=database_name(), collection_name=COLLECTION
        ) as plain:
            for key, value in sorted(plain.get_metadata().items()):
                print(f"  {key}: {value!r}")


if __name__ == "__main__":
    main()
