"""Encryption at rest: MongoDB client-side field level encryption, explicit, one data key per session.

What users tell an agent is encrypted inside the process before it reaches MongoDB, with MongoDB's
own standard (libmongocrypt through ``pymongo.encryption.ClientEncryption``, explicit encryption,
``AEAD_AES_256_CBC_HMAC_SHA_512-Random``): each sensitive field's value (after the value codec) is
stored as one BSON Binary of subtype 6. It works with any server; the data keys live in a key vault
collection, wrapped by a master key (``local`` for development, a cloud KMS in production).

* **One data key per session**, key alt name :func:`data_key_name` (namespace, tenant, session),
  created by the session's first write, cached per process for a bounded time.
* **Deleting a session deletes its data key**: every copy of its content anywhere (backups, the
  oplog, an overflow document a crash left behind) becomes unreadable (crypto shredding).
* **A key fence**: the session document records the id of its key (``encryption_key``); writes of
  encrypted content filter on it, so content is never encrypted with a key other than the one the
  session's other content uses (for example a key deleted by another process and cached here).
* **Mixed collections**: values that are not ciphertext are read as they are (sessions written
  before encryption was turned on); they are encrypted by their next write, or by
  :func:`mongodb_session_manager._migration.encrypt_session`.

What stays clear, so the library works and operators can query: ids, counters, message ids,
timestamps, sizes, bucket descriptors, metadata keys, feedback ratings, metrics.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import bson
from bson.binary import Binary
from pymongo.errors import EncryptionError, PyMongoError

from ._codec import MAX_MESSAGE_BYTES
from ._overflow import BlobRef, entry_size, is_reference
from .errors import (
    MAX_DOCUMENT_SIZE,
    SessionEncryptionError,
    SessionStorageError,
    SessionTooLargeError,
    SessionValidationError,
)

if TYPE_CHECKING:
    from pymongo import MongoClient
    from pymongo.encryption import ClientEncryption

logger = logging.getLogger(__name__)

__all__ = [
    "ALGORITHM",
    "CANARY_KEY_NAME",
    "ENCRYPTED_AGENT_FIELDS",
    "ENCRYPTED_ENTRY_FIELDS",
    "KEY_FIELD",
    "ClientSideEncryption",
    "Encryption",
    "Sealer",
    "data_key_name",
    "encryption_for",
    "is_ciphertext",
]

#: The one algorithm used: random, so equal values never give equal ciphertexts.
ALGORITHM = "AEAD_AES_256_CBC_HMAC_SHA_512-Random"
#: BSON Binary subtype of client-side encrypted values.
ENCRYPTED_SUBTYPE = 6
#: Key alt name of the key that proves, once per process, that the master key opens the vault's keys.
CANARY_KEY_NAME = "msm:canary"
#: Session document field holding the id of the session's data key (the key fence).
KEY_FIELD = "encryption_key"
#: What recording :data:`KEY_FIELD` adds to a document, for the size estimate.
KEY_FIELD_BYTES = 48
#: Encrypted fields of an agent (its id and timestamps stay clear).
ENCRYPTED_AGENT_FIELDS = ("state", "conversation_manager_state", "_internal_state")
#: Encrypted fields of a message entry (``message_id``, timestamps, metrics and ``blobs`` stay clear,
#: and a copy of the message's ``role`` is kept beside them as ``role``).
ENCRYPTED_ENTRY_FIELDS = ("message", "redact_message")
#: Key providers MongoDB's client-side encryption knows (``name`` or ``name:label``).
_PROVIDERS = frozenset({"local", "aws", "azure", "gcp", "kmip"})
_LOCAL_KEY_BYTES = 96
_KEY_SCOPES = frozenset({"session"})
#: Bounds of the per-process key cache.
MAX_CACHED_KEYS = 10_000


@dataclass(frozen=True, repr=False)
class ClientSideEncryption:
    """Settings of encryption at rest (MongoDB client-side field level encryption, explicit).

    Args:
        kms_providers: pymongo's ``kms_providers``: ``{"local": {"key": <96 bytes>}}`` for
            development, ``{"aws": {...}}`` (or ``azure``, ``gcp``, ``kmip``) in production.
        key_vault_namespace: ``"<database>.<collection>"`` holding the data keys.
        master_key: pymongo's ``master_key`` for creating data keys with a cloud KMS (for ``aws``:
            ``{"region": ..., "key": <ARN>}``); ``None`` for ``local``. With several providers, add
            ``"provider": <name>`` to say which one creates keys.
        key_scope: What one data key covers: ``"session"`` (one key per session; for
            :class:`~mongodb_session_manager.MongoDBStorage`, per session id of a Storage key).
        key_cache_seconds: How long a process keeps a data key it fetched (libmongocrypt's cache)
            and a session's key id (at most 10,000 of them).

    The repr names the providers only; key material never appears in reprs, logs or errors.
    """

    kms_providers: Mapping[str, Any]
    key_vault_namespace: str = "encryption.__keyVault"
    master_key: Mapping[str, Any] | None = None
    key_scope: str = "session"
    key_cache_seconds: float = 600.0

    def __post_init__(self) -> None:
        if not isinstance(self.kms_providers, Mapping) or not self.kms_providers:
            raise SessionValidationError("encryption.kms_providers", "must be a non-empty mapping of key providers")
        providers: dict[str, Any] = {}
        for name, options in self.kms_providers.items():
            if not isinstance(name, str) or name.split(":", 1)[0] not in _PROVIDERS:
                raise SessionValidationError(
                    "encryption.kms_providers", f"unknown key provider; expected one of {sorted(_PROVIDERS)}"
                )
            if not isinstance(options, Mapping):
                raise SessionValidationError("encryption.kms_providers", f"{name!r}: options must be a mapping")
            options = dict(options)
            if name.split(":", 1)[0] == "local":
                options["key"] = _local_master_key(name, options.get("key"))
            providers[name] = MappingProxyType(options)
        object.__setattr__(self, "kms_providers", MappingProxyType(providers))
        if self.master_key is not None:
            if not isinstance(self.master_key, Mapping):
                raise SessionValidationError("encryption.master_key", "must be a mapping or None")
            object.__setattr__(self, "master_key", MappingProxyType(dict(self.master_key)))
        provider = self.provider  # checks that one provider is named when there are several
        if provider.split(":", 1)[0] != "local" and not self.master_key_options:
            raise SessionValidationError("encryption.master_key", f"is required to create data keys with {provider!r}")
        namespace = self.key_vault_namespace
        if not isinstance(namespace, str) or namespace.count(".") < 1 or "" in namespace.split(".", 1):
            raise SessionValidationError("encryption.key_vault_namespace", "must be '<database>.<collection>'")
        if self.key_scope not in _KEY_SCOPES:
            raise SessionValidationError("encryption.key_scope", f"must be one of {sorted(_KEY_SCOPES)}")
        seconds = self.key_cache_seconds
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 1 <= seconds <= 86_400:
            raise SessionValidationError("encryption.key_cache_seconds", "must be a number from 1 to 86400")

    @property
    def provider(self) -> str:
        """The key provider that creates data keys."""
        named = (self.master_key or {}).get("provider")
        if named is not None:
            if named not in self.kms_providers:
                raise SessionValidationError("encryption.master_key", "'provider' must name one of kms_providers")
            return str(named)
        if len(self.kms_providers) != 1:
            raise SessionValidationError(
                "encryption.master_key", "with several kms_providers, 'provider' must say which creates keys"
            )
        return next(iter(self.kms_providers))

    @property
    def master_key_options(self) -> dict[str, Any] | None:
        """``master_key`` as pymongo's ``create_data_key`` takes it (without our ``provider`` entry)."""
        options = {k: v for k, v in (self.master_key or {}).items() if k != "provider"}
        return options or None

    def fingerprint(self) -> bytes:
        """A digest of the settings (key material included), to share one engine per process."""
        document = {
            "kms": {name: dict(options) for name, options in self.kms_providers.items()},
            "vault": self.key_vault_namespace,
            "master": dict(self.master_key or {}),
            "scope": self.key_scope,
            "cache": float(self.key_cache_seconds),
        }
        return hashlib.sha256(bson.encode(document)).digest()

    def __repr__(self) -> str:
        return (
            f"ClientSideEncryption(providers={sorted(self.kms_providers)}, "
            f"key_vault_namespace={self.key_vault_namespace!r}, key_scope={self.key_scope!r})"
        )


def _local_master_key(name: str, key: Any) -> bytes:
    if isinstance(key, str):
        try:
            key = base64.b64decode(key, validate=True)
        except ValueError as e:
            raise SessionValidationError(
                f"encryption.kms_providers[{name!r}].key", "must be 96 bytes (or their base64)"
            ) from e
    if isinstance(key, bytes | bytearray) and len(key) == _LOCAL_KEY_BYTES:
        return bytes(key)
    raise SessionValidationError(
        f"encryption.kms_providers[{name!r}].key", "the local master key is missing or is not 96 bytes"
    )


def data_key_name(session_id: str, tenant_id: str | None = None, *, namespace: str) -> str:
    """The key alt name of a session's data key.

    Derived from the collection's namespace (``"<database>.<collection>"``), the tenant and the
    session id, hashed so that no combination of ids can collide with another.
    """
    digest = hashlib.sha256(json.dumps([namespace, tenant_id, session_id]).encode()).hexdigest()
    return f"msm:v1:{digest}"


def is_ciphertext(value: Any) -> bool:
    """Whether a stored value is client-side encrypted (BSON Binary subtype 6)."""
    return isinstance(value, Binary) and value.subtype == ENCRYPTED_SUBTYPE


def _key_id_of(ciphertext: Binary) -> Binary:
    """The data key id inside a ciphertext (after its one-byte type)."""
    return Binary(bytes(ciphertext[1:17]), 4)


class _KeyIds:
    """A bounded LRU of session key name -> data key id, each entry trusted for a bounded time."""

    def __init__(self, lifetime: float, capacity: int = MAX_CACHED_KEYS) -> None:
        self._lifetime = lifetime
        self._capacity = capacity
        self._ids: OrderedDict[str, tuple[Binary, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str) -> Binary | None:
        with self._lock:
            found = self._ids.get(name)
            if found is None:
                return None
            if found[1] < time.monotonic():
                del self._ids[name]
                return None
            self._ids.move_to_end(name)
            return found[0]

    def put(self, name: str, key_id: Binary) -> None:
        with self._lock:
            self._ids[name] = (key_id, time.monotonic() + self._lifetime)
            self._ids.move_to_end(name)
            while len(self._ids) > self._capacity:
                self._ids.popitem(last=False)

    def drop(self, name: str) -> None:
        with self._lock:
            self._ids.pop(name, None)

    def clear(self) -> None:
        with self._lock:
            self._ids.clear()


class Encryption:
    """Encrypts and decrypts values with per-session data keys (see the module docstring).

    Shared per process by every repository built with the same settings and client
    (:func:`encryption_for`); the master key is checked once, when it is built.
    """

    def __init__(self, settings: ClientSideEncryption, client: MongoClient[Any]) -> None:
        try:
            from pymongo.encryption import ClientEncryption
        except ImportError as e:  # pragma: no cover - the extra is part of the dev environment
            raise SessionEncryptionError(
                "encryption needs the encryption extra: install mongodb-session-manager[encryption]"
            ) from e
        self.settings = settings
        self._client = client
        database, collection = settings.key_vault_namespace.split(".", 1)
        self.vault = client[database][collection]
        self._factory: Callable[[], ClientEncryption] = lambda: ClientEncryption(
            {name: dict(options) for name, options in settings.kms_providers.items()},
            settings.key_vault_namespace,
            client,
            client.codec_options,
            key_expiration_ms=int(settings.key_cache_seconds * 1000),
        )
        try:
            self._ce = self._factory()
        except (ImportError, PyMongoError) as e:
            raise SessionEncryptionError(
                f"cannot start client-side encryption (install mongodb-session-manager[encryption]): {_reason(e)}"
            ) from e
        self._ids = _KeyIds(float(settings.key_cache_seconds))
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Encryption({self.settings!r})"

    # ------------------------------------------------------------------ keys

    def check(self) -> None:
        """Create the key vault's index and prove the master key opens the vault's keys (the canary).

        Raises:
            SessionEncryptionError: The master key does not open the canary key.
        """
        try:
            self.vault.create_index(
                "keyAltNames", unique=True, partialFilterExpression={"keyAltNames": {"$exists": True}}
            )
        except PyMongoError as e:
            raise SessionEncryptionError(f"cannot prepare the key vault: {_reason(e)}") from e
        probe = b"msm canary"
        try:
            sealed = self._encrypt_by_name(CANARY_KEY_NAME, probe)
        except PyMongoError as e:
            if self._find_key(CANARY_KEY_NAME) is not None:
                raise SessionEncryptionError(
                    f"the master key does not open the data keys of {self.settings.key_vault_namespace} "
                    f"(wrong master key?): {_reason(e)}"
                ) from e
            self.create_key(CANARY_KEY_NAME)
            sealed = self._encrypt_by_name(CANARY_KEY_NAME, probe)
        try:
            if self._ce.decrypt(sealed) != probe:
                raise SessionEncryptionError("the key vault's canary did not decrypt to what was encrypted")
        except PyMongoError as e:
            raise SessionEncryptionError(f"the master key does not open the key vault's keys: {_reason(e)}") from e

    def _encrypt_by_name(self, name: str, value: Any) -> Binary:
        sealed: Binary = self._ce.encrypt(value, ALGORITHM, key_alt_name=name)
        return sealed

    def _find_key(self, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] | None = self.vault.find_one({"keyAltNames": name}, {"_id": 1})
        except PyMongoError as e:
            raise SessionEncryptionError(f"cannot read the key vault: {_reason(e)}") from e
        return found

    def create_key(self, name: str) -> Binary:
        """Create the data key called ``name`` (or return the one another process just created)."""
        try:
            key_id: Binary = self._ce.create_data_key(
                self.settings.provider, master_key=self.settings.master_key_options, key_alt_names=[name]
            )
        except PyMongoError as e:
            found = self._find_key(name)
            if found is None:
                raise SessionEncryptionError(f"cannot create a data key: {_reason(e)}") from e
            key_id = found["_id"]
        self._ids.put(name, key_id)
        return key_id

    def delete_key(self, name: str) -> int:
        """Delete the data key called ``name`` from the key vault: what it encrypted is unreadable.

        This process's key cache is dropped too (libmongocrypt cannot evict one key, and a cached
        deleted key would still encrypt and decrypt here): other sessions' keys are fetched again.
        """
        try:
            deleted: int = self.vault.delete_many({"keyAltNames": name}).deleted_count
        except PyMongoError as e:
            raise SessionEncryptionError(f"cannot delete a data key: {_reason(e)}") from e
        finally:
            self.forget()
        return deleted

    def forget(self) -> None:
        """Drop every cached key (a fence found a session's key changed by another process)."""
        with self._lock:
            self._ids.clear()
            self._ce = self._factory()

    # ------------------------------------------------------------------ values

    def sealer(
        self, name: str, session_id: str, on_missing: Callable[[], None] | None = None, create: bool = False
    ) -> Sealer:
        """A :class:`Sealer` for the key called ``name``; see :class:`Sealer`."""
        return Sealer(self, name, session_id, on_missing, create)

    def open(self, session_id: str, value: Any) -> Any:
        """The value stored as ``value``: decrypted if it is ciphertext, as it is otherwise.

        Raises:
            SessionEncryptionError: The data key is gone (the session was deleted) or the master key
                does not open it.
        """
        if not is_ciphertext(value):
            return value
        try:
            return self._ce.decrypt(value)
        except PyMongoError as e:
            _raise_if_unreachable(session_id, "decrypt stored content", e)
            key_id = _key_id_of(value)
            try:
                present = self.vault.find_one({"_id": key_id}, {"_id": 1}) is not None
            except PyMongoError:
                present = True  # cannot tell: word it as the general failure
            if not present:
                raise SessionEncryptionError(
                    f"session_id=<{session_id}> | stored content cannot be decrypted: its data key was deleted "
                    "(the session was deleted, so every copy of its content is unreadable by design)"
                ) from e
            raise SessionEncryptionError(
                f"session_id=<{session_id}> | stored content cannot be decrypted: the master key does not "
                f"open its data key: {_reason(e)}"
            ) from e


class Sealer:
    """Encrypts the values of one write of one session with the session's data key.

    The key is resolved at the first value: this process's cached key id, else the key vault (one
    fetch, cached by libmongocrypt). If the key does not exist: with ``create`` (a new session) it is
    created; otherwise ``on_missing`` decides (it raises for a session whose key was deleted, and
    returns for a session written before encryption, which then gets its key).

    Attributes:
        key_id: The data key's id once a value was sealed (for the key fence), else ``None``.
        created: Whether this sealer created the key.
    """

    def __init__(
        self,
        engine: Encryption,
        name: str,
        session_id: str,
        on_missing: Callable[[], None] | None,
        create: bool,
    ) -> None:
        self.engine = engine
        self.name = name
        self.session_id = session_id
        self._on_missing = on_missing
        self._create = create
        self.key_id: Binary | None = None
        self.created = False

    def seal(self, value: Any) -> Binary:
        """``value`` encrypted with the session's data key (one BSON Binary of subtype 6)."""
        try:
            return self._seal(value)
        except PyMongoError as e:
            _raise_if_unreachable(self.session_id, "encrypt content", e)
            raise SessionEncryptionError(
                f"session_id=<{self.session_id}> | cannot encrypt content: {_reason(e)}"
            ) from e

    def _seal(self, value: Any) -> Binary:
        engine = self.engine
        if self.key_id is None:
            self.key_id = engine._ids.get(self.name)
        if self.key_id is not None:
            try:
                sealed: Binary = engine._ce.encrypt(value, ALGORITHM, key_id=self.key_id)
                return sealed
            except PyMongoError:
                engine._ids.drop(self.name)  # deleted meanwhile, or expired and gone: resolve again
                self.key_id = None
        # A new session: a key of this name can only be a leftover of an interrupted create.
        if self._create and engine._find_key(self.name) is None:
            self.key_id = engine.create_key(self.name)
            self.created = True
            return self._seal(value)
        try:
            sealed = engine._encrypt_by_name(self.name, value)
        except PyMongoError:
            if engine._find_key(self.name) is not None:
                raise
            if self._on_missing is not None:
                self._on_missing()  # raises unless the session may get a key now
            self.key_id = engine.create_key(self.name)
            self.created = True
            sealed = engine._ce.encrypt(value, ALGORITHM, key_id=self.key_id)
            return sealed
        self.key_id = _key_id_of(sealed)
        engine._ids.put(self.name, self.key_id)
        return sealed

    def seal_fields(self, values: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
        """``values`` with the fields in ``names`` sealed (``None`` values stay as they are)."""
        return {
            name: self.seal(value) if name in names and value is not None else value for name, value in values.items()
        }


def seal_entry(
    sealer: Sealer, session_id: str, entry: dict[str, Any], blobs: list[tuple[BlobRef, bytes]], operation: str
) -> tuple[list[tuple[BlobRef, bytes]], int]:
    """Encrypt an encoded message entry in place: its offloaded binaries (each one ciphertext, its
    reference naming the length and SHA-256 of what is stored) and its content fields.

    Returns:
        The binaries to store (encrypted) and the entry's encoded size, encryption included.

    Raises:
        SessionTooLargeError: The encrypted entry is too large for a document.
    """
    swapped: dict[bytes, Binary] = {}
    stored: list[tuple[BlobRef, bytes]] = []
    for ref, data in blobs:
        sealed = bytes(sealer.seal(data))
        new = BlobRef(ref.blob_id, len(sealed), hashlib.sha256(sealed).digest())
        swapped[bytes(ref.to_binary())] = new.to_binary()
        stored.append((new, sealed))
    message = entry.get("message")
    if isinstance(message, dict) and isinstance(message.get("role"), str):
        entry["role"] = message["role"]  # stays readable beside the ciphertext (operators, listings)
    for name in ENCRYPTED_ENTRY_FIELDS:
        value = entry.get(name)
        if value is None:
            continue
        if swapped:
            value = _swap_references(value, swapped)
        entry[name] = sealer.seal(value)
    if swapped:
        entry["blobs"] = [ref.to_binary() for ref, _ in stored]
    size = entry_size(entry)
    if size > MAX_MESSAGE_BYTES:
        raise SessionTooLargeError(
            session_id, size, MAX_DOCUMENT_SIZE, f"{operation}: one message, encrypted, after its binaries moved out"
        )
    return stored, size


def _swap_references(value: Any, swapped: Mapping[bytes, Binary]) -> Any:
    if isinstance(value, dict):
        return {key: _swap_references(child, swapped) for key, child in value.items()}
    if isinstance(value, list):
        return [_swap_references(child, swapped) for child in value]
    if is_reference(value):
        return swapped.get(bytes(value), value)
    return value


def open_entry(engine: Encryption | None, session_id: str, entry: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """A stored entry with its content fields decrypted; and whether it was encrypted (then its
    binaries are ciphertext too)."""
    if engine is None:
        return entry, False
    sealed = any(is_ciphertext(entry.get(name)) for name in ENCRYPTED_ENTRY_FIELDS)
    if not sealed:
        return entry, False
    opened = dict(entry)
    for name in ENCRYPTED_ENTRY_FIELDS:
        opened[name] = engine.open(session_id, entry.get(name)) if name in entry else None
        if name not in entry:
            del opened[name]
    return opened, True


# ---------------------------------------------------------------------------------- the registry

_engines: dict[tuple[int, bytes], tuple[Any, Encryption]] = {}
_engines_lock = threading.Lock()


def encryption_for(settings: Any, client: MongoClient[Any]) -> Encryption | None:
    """The process's :class:`Encryption` for these settings and client (built and checked once).

    Raises:
        SessionValidationError: ``settings`` is not a :class:`ClientSideEncryption`.
        SessionEncryptionError: The master key does not open the key vault's keys.
    """
    if settings is None:
        return None
    if not isinstance(settings, ClientSideEncryption):
        raise SessionValidationError("encryption", "must be a ClientSideEncryption or None")
    key = (id(client), settings.fingerprint())
    with _engines_lock:
        found = _engines.get(key)
        if found is not None and found[0] is client:
            return found[1]
        engine = Encryption(settings, client)
        engine.check()
        _engines[key] = (client, engine)
        logger.debug("key_vault=<%s> | client-side encryption ready", settings.key_vault_namespace)
        return engine


def _raise_if_unreachable(session_id: str, operation: str, error: PyMongoError) -> None:
    """A key fetch that failed because MongoDB did not answer is a storage failure, not a key problem."""
    cause = error.cause if isinstance(error, EncryptionError) else error
    if isinstance(cause, PyMongoError) and not isinstance(cause, EncryptionError):
        raise SessionStorageError(
            f"session_id=<{session_id}> | {operation}: the key vault could not be read: {_reason(cause)}"
        ) from error


def _reason(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text[:300]
