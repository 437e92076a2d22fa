"""Every Python example in README.md runs, as written, against the test server.

Only three things are substituted: the example connection string becomes the test server's, the
example database becomes this test's, and Strands' default (Bedrock) model becomes an offline echo
model, so no cloud account is needed. Each block runs in a fresh namespace that offers the names
the prose around it assumes (``manager``, ``session_id``, ``logger``); ``manager`` has had one turn
with an agent, unless the block attaches its own agent to it.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import strands

from mongodb_session_manager import MongoDBConnectionPool, MongoDBSessionManager, close_global_factory
from tests.support.scripted_model import EchoModel

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


class OfflineAgent(strands.Agent):
    """``strands.Agent`` with an offline model and no console output unless told otherwise."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("model", EchoModel())
        kwargs.setdefault("callback_handler", None)
        super().__init__(*args, **kwargs)


@pytest.fixture
def offline_agents(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(strands, "Agent", OfflineAgent)
    yield
    close_global_factory()
    MongoDBConnectionPool.close()


def test_the_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(index: int, offline_agents: None, mongodb_uri: str, database_name: str) -> None:
    code = BLOCKS[index].replace("mongodb://localhost:27017", mongodb_uri)
    code = code.replace('database_name="chat"', f"database_name={database_name!r}")
    session_id = f"readme-{uuid.uuid4().hex[:8]}"
    manager = MongoDBSessionManager(session_id, connection_string=mongodb_uri, database_name=database_name)
    manager.update_metadata({"priority": "high"})
    if "session_manager=manager" not in code:
        # Blocks that use `manager` without attaching an agent of their own see one that has talked.
        OfflineAgent(session_manager=manager)("Hello")
    namespace: dict[str, Any] = {
        "manager": manager,
        "session_id": session_id,
        "logger": logging.getLogger("readme"),
        "Agent": OfflineAgent,
        "MongoDBSessionManager": MongoDBSessionManager,
    }
    exec(compile(code, f"README.md block {index}", "exec"), namespace)
