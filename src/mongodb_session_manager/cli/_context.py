"""What every command shares: the connection (never printed), output to people or to scripts, progress.

Exit codes (:data:`OK`, :data:`PROBLEMS`, :data:`USAGE`, :data:`FAILURE`) mean the same for every
command.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

from .._encryption import ClientSideEncryption, Encryption
from .._secrets import redact_uri, scrub, uri_secrets
from ..mongodb_connection_pool import SharedClientLease, acquire_shared_client
from ..mongodb_session_repository import MongoDBSessionRepository
from ._progress import Progress
from ._source import Source

__all__ = ["FAILURE", "OK", "PROBLEMS", "USAGE", "Context", "UsageError"]

#: Everything was done and nothing is wrong.
OK = 0
#: Problems were found (damage, a session missing, one that could not be exported or imported).
PROBLEMS = 1
#: The command line is wrong (an unknown option, a bad value, no connection string, no such collection).
USAGE = 2
#: The server could not be reached, refused us, or failed: nothing could be checked.
FAILURE = 3


class UsageError(Exception):
    """The command line asks for something that cannot be done as asked (exit status 2)."""


@dataclass
class Context:
    """The connection and the output of one command.

    Attributes:
        uri: The connection string (``--uri`` or ``MONGODB_URI``); only ever shown redacted.
        database: ``--database``.
        collection: ``--collection``.
        overflow_collection: ``--overflow-collection`` (default ``<collection>_overflow``).
        tenant: ``--tenant``: the tenant whose sessions are addressed (``None``: no tenant).
        master_key_file: ``--master-key-file``: a local master key (96 bytes, raw or base64) to read
            content encrypted at rest; ``key_vault``: ``--key-vault``, its key vault namespace.
        client_options: ``MongoClient`` options from the command line (``timeoutMS``).
        repository_options: ``binary_offload_bytes`` and ``overflow_threshold_bytes`` for writes.
        json: Print JSON for scripts instead of text for people.
        progress: Draw progress bars on stderr.
    """

    uri: str
    database: str
    collection: str
    overflow_collection: str | None = None
    tenant: str | None = None
    master_key_file: str | None = None
    key_vault: str = "encryption.__keyVault"
    client_options: dict[str, Any] = field(default_factory=dict)
    repository_options: dict[str, Any] = field(default_factory=dict)
    json: bool = False
    progress: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    _lease: SharedClientLease | None = None
    _source: Source | None = None
    _repository: MongoDBSessionRepository | None = None

    @property
    def overflow_name(self) -> str:
        return self.overflow_collection or f"{self.collection}_overflow"

    @property
    def where(self) -> str:
        """The collection, for messages: ``database.collection on mongodb://user:***@host``."""
        return f"{self.database}.{self.collection} on {redact_uri(self.uri)}"

    def source(self, must_exist: bool = True) -> Source:
        """The store, read only (no index is created, so read-only credentials suffice).

        Raises:
            UsageError: ``must_exist`` and the sessions collection does not exist (a typo in
                ``--database`` or ``--collection`` must not read as an empty store).
        """
        if self._source is None:
            if self._lease is None:
                self._lease = acquire_shared_client(self.uri, **self.client_options)
            settings = self.encryption()
            self._source = Source(
                self._lease.client,
                self.database,
                self.collection,
                self.overflow_name,
                tenant_id=self.tenant,
                # Read only: no canary (it may create a key), a wrong key shows at the first decryption.
                encryption=None if settings is None else Encryption(settings, self._lease.client),
            )
        if must_exist and not self._source.exists():
            raise UsageError(f"there is no collection {self.where}: check --database and --collection")
        return self._source

    def encryption(self) -> ClientSideEncryption | None:
        """The encryption settings from ``--master-key-file`` and ``--key-vault`` (``None`` without a key).

        Raises:
            UsageError: The key file cannot be read.
        """
        if self.master_key_file is None:
            return None
        try:
            key = Path(self.master_key_file).read_bytes()
        except OSError as e:
            raise UsageError(f"cannot read --master-key-file: {e.strerror}") from None
        if len(key) != 96:  # otherwise base64 text (a trailing newline allowed)
            key = key.strip()
        return ClientSideEncryption(
            kms_providers={"local": {"key": key if len(key) == 96 else key.decode("ascii", "replace")}},
            key_vault_namespace=self.key_vault,
        )

    def repository(self) -> MongoDBSessionRepository:
        """The repository (for writes: import, delete, repair, migrate); it ensures the collections' indexes."""
        if self._repository is None:
            self._repository = MongoDBSessionRepository(
                connection_string=self.uri,
                database_name=self.database,
                collection_name=self.collection,
                overflow_collection_name=self.overflow_name,
                encryption=self.encryption(),
                **self.repository_options,
                **self.client_options,
            )
        return self._repository

    def progress_bar(self, label: str, total: int | None, unit: str = "sessions") -> Progress:
        return Progress(label, total, self.err, self.progress, unit)

    def emit(self, value: Any) -> None:
        """Print one JSON document (``--json``)."""
        self.out.write(json.dumps(value, ensure_ascii=False, indent=2) + "\n")

    def say(self, line: str = "") -> None:
        """Print a line for people on stdout."""
        self.out.write(line + "\n")

    def warn(self, line: str) -> None:
        """Print a line on stderr (errors, what went wrong), without the connection string's secrets."""
        self.err.write(self.scrubbed(line) + "\n")

    def scrubbed(self, text: str) -> str:
        return scrub(text, uri_secrets(self.uri)) if self.uri else text

    def close(self) -> None:
        if self._repository is not None:
            self._repository.close()
        if self._lease is not None:
            self._lease.release()
        self._repository = self._source = self._lease = None


def binary_output(path: str | None) -> IO[bytes]:
    """Where an export goes: a file (created or replaced), or stdout."""
    if path is None or path == "-":
        return sys.stdout.buffer
    return open(path, "wb")
