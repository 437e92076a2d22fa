"""The one-off encryption of sessions written before encryption was turned on.

A repository built with ``encryption=`` reads such sessions as they are and encrypts each field at
its next write; :func:`encrypt_session` encrypts a whole session at once, in place: every stored
message (moved ones and their binaries included, through the same path as a redaction, so the
overflow documents' bookkeeping and crash safety are the repository's own), agent and multi-agent
state, metadata values and feedback comments. Fields already encrypted are left alone, so running it
again, or after an interruption, only finishes the work.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ._encryption import ENCRYPTED_AGENT_FIELDS, ENCRYPTED_ENTRY_FIELDS, is_ciphertext
from ._validation import validate_id
from .errors import SessionValidationError

if TYPE_CHECKING:
    from .mongodb_session_repository import MongoDBSessionRepository

logger = logging.getLogger(__name__)

__all__ = ["clear_fields", "encrypt_session"]

# Messages read per command while migrating.
_PAGE = 200


def encrypt_session(repository: MongoDBSessionRepository, session_id: str) -> dict[str, int]:
    """Encrypt everything of one session that is still stored in clear.

    Args:
        repository: A repository built with ``encryption=``.
        session_id: The session.

    Returns:
        ``{"messages": ..., "binaries": ..., "fields": ...}``: how many messages were rewritten
        encrypted, how many binaries stored outside the document were re-stored encrypted with them,
        and how many other fields (agent and multi-agent state, metadata values, feedback comments)
        were encrypted. All zero for a session with nothing left in clear.

    Raises:
        SessionValidationError: The repository has no encryption settings.
        SessionNotFoundError: The session does not exist.
        SessionEncryptionError: The session's data key was deleted.
    """
    validate_id(session_id, "session_id")
    if repository.encryption is None:
        raise SessionValidationError("repository", "was built without encryption= settings")
    fields = repository._encrypt_clear_fields(session_id)
    messages = binaries = 0
    for agent_id, count in repository._agent_message_counts(session_id).items():
        offset = 0
        while offset < count:
            start, page = offset, min(_PAGE, count - offset)
            _, entries = repository._reader.read_range(session_id, agent_id, start, page, decode=False)
            for position, entry in enumerate(entries):
                if any(is_ciphertext(entry.get(name)) for name in ENCRYPTED_ENTRY_FIELDS):
                    continue
                (plain,) = repository._reader.decode_entries(session_id, [entry])
                binaries += len(entry.get("blobs") or [])
                repository._rewrite_content(session_id, agent_id, start + position, plain)
                messages += 1
            offset += page
    logger.info(
        "session_id=<%s>, messages=<%d>, binaries=<%d>, fields=<%d> | session encrypted",
        session_id,
        messages,
        binaries,
        fields,
    )
    return {"messages": messages, "binaries": binaries, "fields": fields}


def clear_fields(document: dict[str, Any]) -> list[tuple[str, Any]]:
    """``(path, value)`` of each field of a session document that should be encrypted and is not
    (agent and multi-agent state, metadata values, feedback comments); paths use stored field names."""
    found: list[tuple[str, Any]] = []
    for key, agent in (document.get("agents") or {}).items():
        for name in ENCRYPTED_AGENT_FIELDS:
            if name in agent and agent[name] is not None and not is_ciphertext(agent[name]):
                found.append((f"agents.{key}.{name}", agent[name]))
    for key, multi_agent in (document.get("multi_agents") or {}).items():
        state = multi_agent.get("state")
        if state is not None and not is_ciphertext(state):
            found.append((f"multi_agents.{key}.state", state))
    for key, value in (document.get("metadata") or {}).items():
        if not is_ciphertext(value):
            found.append((f"metadata.{key}", value))
    for index, feedback in enumerate(document.get("feedbacks") or []):
        comment = feedback.get("comment") if isinstance(feedback, dict) else None
        if comment is not None and not is_ciphertext(comment):
            found.append((f"feedbacks.{index}.comment", comment))
    return found
