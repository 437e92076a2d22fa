"""``MongoDBStorage`` meets the storage contract (``tests/support/storage_contract.py``) in every mode.

The same cases pass on the SDK's ``InMemoryStorage`` and ``LocalFileStorage``
(``tests/unit/test_storage_contract_sdk.py``). Here they run:

* ``loop``: on a long-lived event loop (``asyncio.run`` of the whole case): the ``AsyncMongoClient``;
* ``bridge``: inside Strands' sync bridge (``run_async``, as ``Agent.__call__`` runs): the pooled
  ``MongoClient``, blocking;
* ``borrowed``: a ``MongoClient`` passed in, on a loop: commands in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient
from strands._async import run_async

from mongodb_session_manager import MongoDBStorage
from tests.support.storage_contract import CASES

MODES = ("loop", "bridge", "borrowed")


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def storage(
    mode: str, mongodb_uri: str, database_name: str, mongo_client: MongoClient[dict[str, Any]]
) -> Iterator[MongoDBStorage]:
    if mode == "borrowed":
        built = MongoDBStorage(client=mongo_client, database_name=database_name)
    else:
        built = MongoDBStorage(mongodb_uri, database_name=database_name)
    try:
        yield built
    finally:
        built.close()


@pytest.mark.parametrize("name", sorted(CASES))
def test_mongodb_storage_meets_the_contract(name: str, mode: str, storage: MongoDBStorage) -> None:
    if mode == "bridge":
        run_async(lambda: CASES[name](storage))
    else:
        asyncio.run(CASES[name](storage))
