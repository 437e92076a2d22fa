"""Read an encrypted session in a process of its own (a fresh process: no data key cached).

Used by ``tests/integration/test_encryption.py``: a restore in a new process decrypts what an earlier
one wrote, and a copy of a deleted session's documents (a backup) cannot be decrypted there.

Run from the repository root::

    python -m tests.support.encryption_worker REQUEST.json

The request names ``uri``, ``database``, ``collection``, ``vault``, ``key`` (the local master key, hex),
``session_id`` and ``agent_id``; the answer, on stdout, is JSON: ``{"session": ..., "agent": ...,
"messages": [...], "metadata": ..., "feedbacks": [...], "multi_agent": ...}`` (``bytes`` tagged, see
``restore_worker.to_jsonable``) or ``{"error": <class name>, "message": <text>}``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

from mongodb_session_manager import ClientSideEncryption, MongoDBSessionError, MongoDBSessionRepository
from tests.support.restore_worker import to_jsonable


def read(request: dict[str, Any]) -> dict[str, Any]:
    """Everything stored for the session, decrypted."""
    encryption = ClientSideEncryption(
        kms_providers={"local": {"key": bytes.fromhex(request["key"])}}, key_vault_namespace=request["vault"]
    )
    with MongoDBSessionRepository(
        request["uri"], database_name=request["database"], collection_name=request["collection"], encryption=encryption
    ) as repo:
        session_id, agent_id = request["session_id"], request["agent_id"]
        agent = repo.read_agent(session_id, agent_id)
        return {
            "agent": None if agent is None else dataclasses.asdict(agent),
            "messages": [dataclasses.asdict(m) for m in repo.list_messages(session_id, agent_id)],
            "metadata": repo.get_metadata(session_id),
            "feedbacks": [{k: v for k, v in f.items() if k != "created_at"} for f in repo.get_feedbacks(session_id)],
            "multi_agent": repo.read_multi_agent(session_id, request.get("multi_agent_id", "graph")),
        }


def main(argv: list[str]) -> int:
    from tests.support.command_audit import install_in_worker

    install_in_worker()  # this process's commands are audited too (see command_audit)
    with open(argv[0], encoding="utf-8") as handle:
        request = json.load(handle)
    try:
        answer = to_jsonable(read(request))
    except MongoDBSessionError as e:
        answer = {"error": type(e).__name__, "message": str(e)}
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
