"""Read-your-writes on a replica set when reads may go to secondaries.

By default every read goes to the primary (pymongo's default read preference), which sees every
acknowledged write: nothing to do. A user who configures another read preference on the client or
the database (``secondaryPreferred``, ...) would otherwise risk a restore that misses the session's
last turn (a secondary lags). Then the reads of a session run in a causally consistent
``ClientSession`` advanced to the ``operationTime`` (and ``$clusterTime``) of the last write this
process made to that session, so the server holding the read waits until it has applied that write
(``readConcern.afterClusterTime``). Writes run in such a session too, to learn that time.

The times are kept per session key in a bounded, process-wide map: managers built per request in
one process chain their reads to each other's writes. A process that never wrote a session has
nothing to chain to: across processes, read from the primary (the default) or give the client
``readConcernLevel="majority"`` with ``w="majority"`` writes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pymongo import MongoClient
from pymongo.client_session import ClientSession
from pymongo.collection import Collection
from pymongo.read_preferences import ReadPreference

__all__ = ["Causality", "session_option"]

#: Sessions whose last write time a process remembers (least recently used forgotten first).
REMEMBERED = 100_000

_lock = threading.Lock()
_last: OrderedDict[tuple[Any, ...], tuple[Any, Any]] = OrderedDict()


def _hashable(key: Any) -> Any:
    return tuple(sorted(key.items())) if isinstance(key, dict) else key


def session_option(session: ClientSession | None) -> dict[str, Any]:
    """``{"session": session}`` when there is one (test doubles need not accept the argument)."""
    return {} if session is None else {"session": session}


class Causality:
    """Whether a collection's reads may go to a secondary, and the causal sessions that then chain a
    session's reads to its last write (see the module docstring).

    Args:
        client: The client (sessions are started from it).
        collection: The sessions collection (its read preference decides).
    """

    def __init__(self, client: MongoClient[Any], collection: Collection[dict[str, Any]]) -> None:
        self.client = client
        preference = getattr(collection, "read_preference", ReadPreference.PRIMARY)
        self.enabled = getattr(preference, "mode", 0) != ReadPreference.PRIMARY.mode
        database = getattr(collection, "database", None)
        self._scope = (id(client), getattr(database, "name", None), getattr(collection, "name", None))

    @contextmanager
    def session(self, key: Any) -> Iterator[ClientSession | None]:
        """A causally consistent session for one operation on the session ``key``, advanced to its last
        known write; ``None`` when reads go to the primary."""
        if not self.enabled:
            yield None
            return
        slot = (*self._scope, _hashable(key))
        with self.client.start_session(causal_consistency=True) as session:
            with _lock:
                known = _last.get(slot)
            if known is not None:
                session.advance_cluster_time(known[0])
                session.advance_operation_time(known[1])
            yield session
            if session.operation_time is not None and session.cluster_time is not None:
                with _lock:
                    previous = _last.get(slot)
                    if previous is None or previous[1] <= session.operation_time:
                        _last[slot] = (session.cluster_time, session.operation_time)
                    _last.move_to_end(slot)
                    while len(_last) > REMEMBERED:
                        _last.popitem(last=False)
