"""Encryption settings, key names and the pure parts of sealing (no server)."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest
from bson.binary import Binary
from bson.objectid import ObjectId

from mongodb_session_manager import ClientSideEncryption, SessionEncryptionError, SessionValidationError, data_key_name
from mongodb_session_manager._encryption import _KeyIds, _swap_references, is_ciphertext, open_entry
from mongodb_session_manager._overflow import BlobRef
from mongodb_session_manager.errors import MongoDBSessionError

KEY = os.urandom(96)


def test_repr_and_errors_never_show_key_material() -> None:
    settings = ClientSideEncryption(kms_providers={"local": {"key": KEY}})
    text = repr(settings) + str(settings)
    assert "local" in text and "encryption.__keyVault" in text
    assert KEY.hex() not in text and repr(KEY) not in text and base64.b64encode(KEY).decode() not in text
    with pytest.raises(SessionValidationError) as caught:
        ClientSideEncryption(kms_providers={"local": {"key": KEY[:95]}})
    assert repr(KEY[:95]) not in str(caught.value) and KEY[:95].hex() not in str(caught.value)


def test_local_key_may_be_base64_and_is_copied() -> None:
    providers: dict[str, Any] = {"local": {"key": base64.b64encode(KEY).decode()}}
    settings = ClientSideEncryption(kms_providers=providers)
    providers["local"]["key"] = "changed"
    assert settings.kms_providers["local"]["key"] == KEY
    assert settings.provider == "local" and settings.master_key_options is None


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"kms_providers": {}}, "encryption.kms_providers"),
        ({"kms_providers": None}, "encryption.kms_providers"),
        ({"kms_providers": {"vault": {}}}, "encryption.kms_providers"),
        ({"kms_providers": {"local": {}}}, "encryption.kms_providers['local'].key"),
        ({"kms_providers": {"local": {"key": "not base64!"}}}, "encryption.kms_providers['local'].key"),
        ({"kms_providers": {"aws": {"accessKeyId": "a", "secretAccessKey": "b"}}}, "encryption.master_key"),
        (
            {"kms_providers": {"local": {"key": KEY}, "aws": {"accessKeyId": "a", "secretAccessKey": "b"}}},
            "encryption.master_key",
        ),
        ({"kms_providers": {"local": {"key": KEY}}, "key_vault_namespace": "nodot"}, "encryption.key_vault_namespace"),
        ({"kms_providers": {"local": {"key": KEY}}, "key_vault_namespace": ".x"}, "encryption.key_vault_namespace"),
        ({"kms_providers": {"local": {"key": KEY}}, "key_scope": "tenant"}, "encryption.key_scope"),
        ({"kms_providers": {"local": {"key": KEY}}, "key_cache_seconds": 0}, "encryption.key_cache_seconds"),
        ({"kms_providers": {"local": {"key": KEY}}, "master_key": "arn"}, "encryption.master_key"),
    ],
)
def test_settings_are_validated(arguments: dict[str, Any], field: str) -> None:
    with pytest.raises(SessionValidationError) as caught:
        ClientSideEncryption(**arguments)
    assert caught.value.field == field


def test_a_cloud_provider_names_its_master_key() -> None:
    settings = ClientSideEncryption(
        kms_providers={"local": {"key": KEY}, "aws": {"accessKeyId": "a", "secretAccessKey": "s"}},
        master_key={"provider": "aws", "region": "eu-west-1", "key": "arn:aws:kms:eu-west-1:1:key/x"},
    )
    assert settings.provider == "aws"
    assert settings.master_key_options == {"region": "eu-west-1", "key": "arn:aws:kms:eu-west-1:1:key/x"}
    assert "secretAccessKey" not in repr(settings) and "arn:" not in repr(settings)


def test_fingerprint_tells_settings_apart() -> None:
    one = ClientSideEncryption(kms_providers={"local": {"key": KEY}})
    same = ClientSideEncryption(kms_providers={"local": {"key": base64.b64encode(KEY).decode()}})
    other = ClientSideEncryption(kms_providers={"local": {"key": os.urandom(96)}})
    assert one.fingerprint() == same.fingerprint() != other.fingerprint()


def test_key_names_are_distinct_per_namespace_tenant_and_session() -> None:
    names = {
        data_key_name("a", namespace="db.sessions"),
        data_key_name("a", "t1", namespace="db.sessions"),
        data_key_name("a", "t2", namespace="db.sessions"),
        data_key_name("b", namespace="db.sessions"),
        data_key_name("a", namespace="db.other"),
        data_key_name("t1:a", namespace="db.sessions"),
        data_key_name("a", "t1:", namespace="db.sessions"),
    }
    assert len(names) == 7
    assert data_key_name("a", "t1", namespace="db.s") == data_key_name("a", "t1", namespace="db.s")
    assert all(name.startswith("msm:v1:") and len(name) == 7 + 64 for name in names)


def test_encryption_error_is_one_of_ours() -> None:
    assert issubclass(SessionEncryptionError, MongoDBSessionError)


def test_key_id_cache_is_bounded_and_expires() -> None:
    ids = _KeyIds(lifetime=60, capacity=2)
    first, second, third = (Binary(os.urandom(16), 4) for _ in range(3))
    ids.put("a", first)
    ids.put("b", second)
    assert ids.get("a") == first  # "a" is now the most recent
    ids.put("c", third)
    assert ids.get("b") is None and ids.get("a") == first and ids.get("c") == third
    expired = _KeyIds(lifetime=-1)
    expired.put("a", first)
    assert expired.get("a") is None


def test_references_inside_content_are_swapped_for_the_stored_ones() -> None:
    old = BlobRef(ObjectId(), 10, b"\x01" * 32).to_binary()
    new = BlobRef(ObjectId(), 90, b"\x02" * 32).to_binary()
    content = {"content": [{"image": {"source": {"bytes": old}}}, {"text": "x"}], "other": b"plain"}
    swapped = _swap_references(content, {bytes(old): new})
    assert swapped["content"][0]["image"]["source"]["bytes"] == new
    assert swapped["content"][1] == {"text": "x"} and swapped["other"] == b"plain"


def test_clear_entries_are_read_as_they_are() -> None:
    entry = {"message_id": 0, "message": {"role": "user"}, "redact_message": None}
    assert open_entry(None, "s", entry) == (entry, False)
    assert not is_ciphertext(b"x") and not is_ciphertext(Binary(b"x", 0)) and is_ciphertext(Binary(b"x", 6))


class _FakeSealer:
    """Stands in for a Sealer: "encrypts" by wrapping the BSON of the value in a subtype-6 Binary."""

    def __init__(self) -> None:
        self.sealed: list[Any] = []

    def seal(self, value: Any) -> Binary:
        import bson

        self.sealed.append(value)
        return Binary(b"\x02" + bytes(16) + bson.encode({"v": value}), 6)


def test_seal_entry_encrypts_content_and_binaries_and_rewrites_references() -> None:
    from mongodb_session_manager._codec import encode_entry
    from mongodb_session_manager._encryption import seal_entry
    from mongodb_session_manager._overflow import find_references

    image = os.urandom(5000)
    entry: dict[str, Any] = {
        "message_id": 0,
        "message": {"role": "user", "content": [{"image": {"source": {"bytes": image}}}, {"text": "secret"}]},
        "redact_message": None,
        "created_at": "2026-12-02T10:00:00+00:00",
        "updated_at": "2026-12-02T10:00:00+00:00",
    }
    blobs, plain_size = encode_entry("s", entry, 1024, "append message")
    sealer = _FakeSealer()
    stored, size = seal_entry(sealer, "s", entry, blobs, "append message")  # type: ignore[arg-type]
    assert sealer.sealed[0] == image  # the binary, whole
    ((ref, data),) = stored
    assert ref.blob_id == blobs[0][0].blob_id and data != image and len(data) == ref.length
    assert is_ciphertext(entry["message"]) and entry["redact_message"] is None
    assert entry["role"] == "user" and entry["message_id"] == 0
    assert find_references([entry]) == [ref]  # the clear list names the stored ciphertext only
    inner = sealer.sealed[1]["content"][0]["image"]["source"]["bytes"]
    assert BlobRef.from_binary(inner) == ref  # and so does the reference inside the encrypted content
    assert size > plain_size - len(b"secret")
