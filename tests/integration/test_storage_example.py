"""``examples/example_snapshot_storage.py`` runs as a user runs it, twice, and stores what it says.

Run as ``python examples/example_snapshot_storage.py`` with ``MONGODB_URI`` set to the test server,
``STRANDS_MODEL=offline`` and a database of its own; MongoDB is then read directly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from mongodb_session_manager.storage import _layout as layout

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "example_snapshot_storage.py"
PREFIX = "session/snapshot-session/scopes/agent/snapshot-agent/snapshots/"


def test_the_snapshot_storage_example_resumes_and_migrates(
    mongodb_uri: str, mongo_client: MongoClient[dict[str, Any]]
) -> None:
    database = f"msm_examples_snapshot_{uuid.uuid4().hex[:6]}"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "STRANDS_"))}
    env.update(MONGODB_URI=mongodb_uri, STRANDS_MODEL="offline", EXAMPLES_DATABASE=database, PYTHONUNBUFFERED="1")
    try:
        runs = [
            subprocess.run(
                [sys.executable, str(EXAMPLE)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
            )
            for _ in range(2)
        ]
        for run in runs:
            assert run.returncode == 0, run.stderr
        first, second = (run.stdout for run in runs)
        assert "New session 'snapshot-session'" in first
        assert "The calculator says: 42." in first and "The calculator says: 48." in first
        assert "Immutable checkpoints of 'snapshot-agent': 2" in first
        assert "Time travel to the first: 4 messages, ending '(offline demo model) The calculator says: 42.'" in first
        assert "search: ['preferences.md']" in first
        assert "the same as the message log: True" in first
        assert "Resumed 'snapshot-session' from its latest snapshot: 8 messages restored." in second
        assert "Immutable checkpoints of 'snapshot-agent': 4" in second

        keys = mongo_client[database]["snapshot_storage"]
        latest = keys.find_one({"_id": f"{PREFIX}snapshot_latest.json"}, {"expires": 1, "size": 1})
        assert latest is not None and latest["size"] > 0
        assert layout.aware(latest["expires"]) < layout.NO_EXPIRY  # session snapshots expire (30 days)
        memory = keys.find_one({"_id": "memory/facts/preferences.md"}, {"expires": 1})
        assert memory is not None and layout.aware(memory["expires"]) == layout.NO_EXPIRY
        history = keys.count_documents({"_id": {"$regex": f"^{PREFIX}immutable_history/"}})
        assert history == 4
        assert keys.find_one({"_id": "session/message-log-session/scopes/agent/logged/snapshots/snapshot_latest.json"})
    finally:
        mongo_client.drop_database(database)
