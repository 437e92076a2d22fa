"""The server under test answers and stores documents."""

from __future__ import annotations

import os
from typing import Any

from pymongo import MongoClient

from tests.support.server import start_server


def test_server_answers_ping(mongo_client: MongoClient[dict[str, Any]]) -> None:
    assert mongo_client.admin.command("ping")["ok"] == 1.0


def test_document_round_trip(mongo_client: MongoClient[dict[str, Any]], database_name: str) -> None:
    collection = mongo_client[database_name]["smoke"]
    document = {"_id": "session-1", "messages": [{"role": "user", "text": "hello"}], "count": 1}

    collection.insert_one(document)

    assert collection.find_one({"_id": "session-1"}) == document
    assert mongo_client[database_name].list_collection_names() == ["smoke"]


def test_test_server_restarts_on_same_port_and_data() -> None:
    with start_server() as server:
        client: MongoClient[dict[str, Any]] = MongoClient(server.uri, serverSelectionTimeoutMS=10_000)
        try:
            client["msm_restart"]["docs"].insert_one({"_id": 1})
            port, first_pid = server.port, server.pid

            server.stop()
            assert not server.is_running
            server.start()

            assert (server.port, server.is_running) == (port, True)
            assert server.pid != first_pid
            assert client["msm_restart"]["docs"].find_one({"_id": 1}) == {"_id": 1}
        finally:
            client.close()
        data_dir = server.data_dir
    assert not server.is_running
    assert not os.path.exists(data_dir)
