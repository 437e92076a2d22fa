"""Tenants: two applications sharing the collections, with equal session ids, never meet.

Each test builds three repositories on the same collections (tenant ``acme``, tenant ``globex`` and
one without a tenant), writes the same session id through each, and checks that every read, write,
listing and deletion of one leaves the others exactly as they were: sessions, messages, moved
messages and offloaded binaries, metadata, feedback. ``MongoDBStorage`` gets the same treatment.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient
from strands.types.session import Session, SessionAgent, SessionMessage, SessionType

from mongodb_session_manager import (
    MongoDBSessionManager,
    MongoDBSessionManagerFactory,
    MongoDBSessionRepository,
    MongoDBStorage,
    SessionNotFoundError,
    SessionValidationError,
)
from tests.support.cli_run import main_json, run_main

THRESHOLD = 16 * 1024
OFFLOAD = 2048
TENANTS = ("acme", "globex", None)


@pytest.fixture
def client(mongodb_uri: str) -> Iterator[MongoClient[dict[str, Any]]]:
    with MongoClient(mongodb_uri) as own:
        yield own


@pytest.fixture
def repos(client: MongoClient[dict[str, Any]], database_name: str) -> dict[str | None, MongoDBSessionRepository]:
    options = {"overflow_threshold_bytes": THRESHOLD, "binary_offload_bytes": OFFLOAD}
    return {
        tenant: MongoDBSessionRepository(client=client, database_name=database_name, tenant_id=tenant, **options)
        for tenant in TENANTS
    }


def _message(tenant: str | None, index: int, size: int = 600) -> SessionMessage:
    role = "user" if index % 2 == 0 else "assistant"
    return SessionMessage(
        message={"role": role, "content": [{"text": f"{tenant} {index} " + "x" * size}]}, message_id=index
    )


def _image(tenant: str | None, index: int) -> SessionMessage:
    data = (str(tenant).encode() * 2000)[:5000]
    content: list[Any] = [{"text": f"{tenant} picture"}, {"image": {"format": "png", "source": {"bytes": data}}}]
    return SessionMessage(message={"role": "user", "content": content}, message_id=index)


def _fill(repo: MongoDBSessionRepository, tenant: str | None, session_id: str = "same") -> list[SessionMessage]:
    """A session with moved messages (a small threshold) and an offloaded binary, under ``tenant``."""
    repo.create_session(Session(session_id=session_id, session_type=SessionType.AGENT))
    repo.create_agent(session_id, SessionAgent(agent_id="a", state={"tenant": tenant}, conversation_manager_state={}))
    messages = [_image(tenant, 0)] + [_message(tenant, i) for i in range(1, 60)]
    for message in messages:
        repo.create_message(session_id, "a", message)
    repo.update_metadata(session_id, {"owner": str(tenant)})
    repo.add_feedback(session_id, {"rating": "up", "comment": f"from {tenant}"})
    return messages


def _texts(messages: list[SessionMessage]) -> list[Any]:
    return [m.message["content"] for m in messages]


def test_equal_session_ids_of_two_tenants_and_no_tenant_are_three_sessions(
    repos: dict[str | None, MongoDBSessionRepository],
) -> None:
    written = {tenant: _fill(repo, tenant) for tenant, repo in repos.items()}
    for tenant, repo in repos.items():
        assert _texts(repo.list_messages("same", "a")) == _texts(written[tenant])
        agent = repo.read_agent("same", "a")
        assert agent is not None and agent.state == {"tenant": tenant}
        assert repo.get_metadata("same") == {"owner": str(tenant)}
        assert [f["comment"] for f in repo.get_feedbacks("same")] == [f"from {tenant}"]
        listed = repo.list_sessions()
        assert [s["session_id"] for s in listed] == ["same"] and listed[0]["metadata"] == {"owner": str(tenant)}
    # Every tenant's session moved messages out and offloaded its image: each overflow document
    # belongs to exactly one of them.
    acme = repos["acme"]
    keys = {str(doc["session_id"]) for doc in acme.overflow.find({}, {"session_id": 1})}
    assert keys == {"same", str({"tenant": "acme", "session": "same"}), str({"tenant": "globex", "session": "same"})}
    stored = acme.collection.find_one({"_id": {"tenant": "acme", "session": "same"}})
    assert stored is not None and stored["tenant"] == "acme" and stored["session_id"] == "same"


def test_one_tenant_cannot_change_or_delete_another_tenants_session(
    repos: dict[str | None, MongoDBSessionRepository],
) -> None:
    _fill(repos["globex"], "globex")
    globex_before = _texts(repos["globex"].list_messages("same", "a"))
    acme = repos["acme"]
    assert acme.read_session("same") is None
    assert acme.read_agent("same", "a") is None
    assert acme.list_sessions() == []
    with pytest.raises(SessionNotFoundError):
        acme.list_messages("same", "a")
    with pytest.raises(SessionNotFoundError):
        acme.delete_session("same")
    with pytest.raises(SessionNotFoundError):
        acme.update_metadata("same", {"owner": "acme"})
    with pytest.raises(SessionNotFoundError):
        acme.add_feedback("same", {"rating": "down"})
    with pytest.raises(SessionNotFoundError):
        acme.create_agent("same", SessionAgent(agent_id="b", state={}, conversation_manager_state={}))
    with pytest.raises(SessionNotFoundError):
        acme.create_message("same", "a", _message("acme", 60))
    with pytest.raises(SessionNotFoundError):
        acme.repair_session("same")
    # Creating acme's own "same" and deleting it removes only acme's documents.
    _fill(acme, "acme")
    acme.delete_session("same")
    assert acme.read_session("same") is None
    globex = repos["globex"]
    assert _texts(globex.list_messages("same", "a")) == globex_before
    assert globex.get_metadata("same") == {"owner": "globex"}
    assert repos[None].read_session("same") is None
    # Redacting a moved message and the binary one of globex's session leaves acme unaffected.
    globex.update_message("same", "a", _message("globex-redacted", 2))
    globex.update_message("same", "a", _message("globex-redacted", 0))
    after = _texts(globex.list_messages("same", "a"))
    assert after[0] == _texts([_message("globex-redacted", 0)])[0]
    assert after[2] == _texts([_message("globex-redacted", 2)])[0]


def test_listing_pages_stay_within_the_tenant(repos: dict[str | None, MongoDBSessionRepository]) -> None:
    for tenant, repo in repos.items():
        for index in range(5):
            repo.create_session(Session(session_id=f"s{index}", session_type=SessionType.AGENT))
            repo.update_metadata(f"s{index}", {"tenant": str(tenant)})
    for tenant, repo in repos.items():
        first = repo.list_sessions(limit=2)
        second = repo.list_sessions(limit=2, after=first[-1]["session_id"])
        third = repo.list_sessions(limit=2, after=second[-1]["session_id"])
        pages = [s["session_id"] for s in first + second + third]
        assert pages == ["s0", "s1", "s2", "s3", "s4"]
        assert {s["metadata"]["tenant"] for s in first + second + third} == {str(tenant)}
        assert [s["session_id"] for s in repo.list_sessions(metadata_filter={"tenant": "acme"})] == (
            pages if tenant == "acme" else []
        )


def test_managers_and_the_factory_take_a_tenant(
    client: MongoClient[dict[str, Any]], database_name: str, mongodb_uri: str
) -> None:
    acme = MongoDBSessionManager("chat", client=client, database_name=database_name, tenant_id="acme")
    assert acme.mongodb_repository.tenant_id == "acme"
    acme.update_metadata({"who": "acme"})
    with MongoDBSessionManagerFactory(mongodb_uri, database_name=database_name, tenant_id="globex") as factory:
        globex = factory.create_session_manager("chat")
        assert globex.mongodb_repository.tenant_id == "globex"
        assert globex.get_metadata() == {}
        initech = factory.create_session_manager("chat", tenant_id="initech")
        assert initech.mongodb_repository.tenant_id == "initech"
        initech.update_metadata({"who": "initech"})
        assert factory.repository.list_sessions() == [] or factory.repository.list_sessions()[0]["metadata"] == {}
    assert acme.get_metadata() == {"who": "acme"}
    assert "tenant_id='acme'" in repr(acme.mongodb_repository)


@pytest.mark.parametrize("bad", ["", "a/b", "a\\b", "a\x00b", 5])
def test_a_bad_tenant_id_is_refused_naming_it(
    client: MongoClient[dict[str, Any]], database_name: str, bad: Any
) -> None:
    with pytest.raises(SessionValidationError) as caught:
        MongoDBSessionRepository(client=client, database_name=database_name, tenant_id=bad)
    assert caught.value.field == "tenant_id"
    with pytest.raises(SessionValidationError) as caught:
        MongoDBStorage(client=client, database_name=database_name, tenant_id=bad)
    assert caught.value.field == "tenant_id"


def test_storage_tenants_never_see_each_others_keys(client: MongoClient[dict[str, Any]], database_name: str) -> None:
    asyncio.run(_storage_tenants(client, database_name))


async def _storage_tenants(client: MongoClient[dict[str, Any]], database_name: str) -> None:
    stores = {
        tenant: MongoDBStorage(client=client, database_name=database_name, tenant_id=tenant) for tenant in TENANTS
    }
    big = os.urandom(17 * 1024 * 1024)  # chunked
    for tenant, storage in stores.items():
        await storage.write("session/s1/snapshot.json", f"value of {tenant}".encode())
        await storage.write("memory/notes.md", f"notes about zebra from {tenant}".encode())
    await stores["acme"].write("blob.bin", big)
    for tenant, storage in stores.items():
        assert await storage.read("session/s1/snapshot.json") == f"value of {tenant}".encode()
        expected = ["blob.bin"] if tenant == "acme" else []
        assert await storage.list() == [*expected, "memory/notes.md", "session/s1/snapshot.json"]
        assert await storage.namespace("memory").list() == ["notes.md"]
        found = await storage.search("zebra")
        assert [(r.key, r.data) for r in found] == [("memory/notes.md", f"notes about zebra from {tenant}".encode())]
    assert await stores["globex"].read("blob.bin") is None
    await stores["globex"].delete("blob.bin")
    assert await stores["acme"].read("blob.bin") == big
    await stores[None].delete("session/s1/snapshot.json")
    assert await stores[None].read("session/s1/snapshot.json") is None
    assert await stores["acme"].read("session/s1/snapshot.json") == b"value of acme"
    assert stores["acme"].prefix == "" and stores["acme"].namespace("memory").prefix == "memory/"


def test_the_operator_cli_addresses_one_tenant(
    repos: dict[str | None, MongoDBSessionRepository], mongodb_uri: str, database_name: str
) -> None:
    _fill(repos["acme"], "acme")
    _fill(repos[None], None, session_id="plain")
    acme = main_json(mongodb_uri, "list", "--database", database_name, "--tenant", "acme")
    plain = main_json(mongodb_uri, "list", "--database", database_name)
    assert [row["session_id"] for row in _rows(acme)] == ["same"]
    assert [row["session_id"] for row in _rows(plain)] == ["plain"]
    shown = main_json(mongodb_uri, "show", "same", "--database", database_name, "--tenant", "acme")
    assert "acme 1 " in json.dumps(shown)
    missing = run_main(mongodb_uri, "show", "same", "--database", database_name)  # not without the tenant
    assert missing.returncode == 1 and "same" in missing.stderr


def _rows(listing: Any) -> list[dict[str, Any]]:
    return listing["sessions"] if isinstance(listing, dict) else listing
