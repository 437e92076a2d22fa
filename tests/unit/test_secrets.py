"""Credentials never survive ``redact_uri``, are all found by ``uri_secrets`` and removed by ``scrub``."""

from __future__ import annotations

import pytest
from pymongo.uri_parser import parse_uri

from mongodb_session_manager._secrets import redact_uri, scrub, uri_secrets

NO_CREDENTIALS = [
    "mongodb://127.0.0.1:27999/?directConnection=true",
    "mongodb://db1.example.com:27017,db2.example.com:27018/app?replicaSet=rs0&w=majority",
    "mongodb+srv://cluster0.example.net/app?retryWrites=true",
    "mongodb://localhost",
    # An "@" after the host is not userinfo.
    "mongodb://localhost/app?appName=billing@eu",
]


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("mongodb://app:s3cretPW@db.example.com:27017/sessions", "mongodb://app:***@db.example.com:27017/sessions"),
        ("mongodb://app:p%40ss@db.example.com/", "mongodb://app:***@db.example.com/"),
        (
            "mongodb+srv://app:s3cretPW@cluster0.example.net/sessions?retryWrites=true&w=majority",
            "mongodb+srv://app:***@cluster0.example.net/sessions?retryWrites=true&w=majority",
        ),
        ("mongodb://app:@db.example.com/", "mongodb://app:***@db.example.com/"),
        (
            "mongodb://db.example.com/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:tok3n",
            "mongodb://db.example.com/?authMechanism=MONGODB-AWS&authMechanismProperties=***",
        ),
        (
            "mongodb://db.example.com/?tls=true;tlsCertificateKeyFilePassword=keyPW;appName=x",
            "mongodb://db.example.com/?tls=true;tlsCertificateKeyFilePassword=***;appName=x",
        ),
        (
            "mongodb://db.example.com/?tlscertificatekeyfilepassword=keyPW",
            "mongodb://db.example.com/?tlscertificatekeyfilepassword=***",
        ),
        (
            "mongodb://app:s3cretPW@db.example.com/?authMechanismProperties=AWS_SESSION_TOKEN:tok3n&tls=true",
            "mongodb://app:***@db.example.com/?authMechanismProperties=***&tls=true",
        ),
    ],
)
def test_redact_uri_hides_password_and_secret_options(uri: str, expected: str) -> None:
    assert redact_uri(uri) == expected


def test_redact_uri_keeps_a_user_without_password() -> None:
    uri = "mongodb://CN%3Dclient@db.example.com/?authMechanism=MONGODB-X509&tls=true"

    assert redact_uri(uri) == uri


@pytest.mark.parametrize("uri", NO_CREDENTIALS)
def test_redact_uri_leaves_uri_without_credentials_unchanged(uri: str) -> None:
    assert redact_uri(uri) == uri


def test_redact_uri_hides_password_containing_hash() -> None:
    uri = "mongodb://app:pa#ssPW@db.example.com/"
    assert parse_uri(uri)["password"] == "pa#ssPW"  # the driver takes this as the password

    assert "ssPW" not in redact_uri(uri)
    assert "pa#ssPW" in uri_secrets(uri)


def test_uri_secrets_has_password_raw_and_percent_decoded() -> None:
    uri = "mongodb://app:p%40ss@db.example.com/"

    secrets = uri_secrets(uri)

    assert "p%40ss" in secrets
    assert "p@ss" in secrets
    assert uri in secrets
    assert "app" not in secrets


def test_uri_secrets_of_srv_uri() -> None:
    uri = "mongodb+srv://app:s3cretPW@cluster0.example.net/sessions"

    assert set(uri_secrets(uri)) == {uri, "s3cretPW"}


def test_uri_secrets_user_without_password_has_only_the_uri() -> None:
    uri = "mongodb://app@db.example.com/"

    assert uri_secrets(uri) == [uri]


@pytest.mark.parametrize("uri", NO_CREDENTIALS)
def test_uri_secrets_without_credentials_is_only_the_uri(uri: str) -> None:
    assert uri_secrets(uri) == [uri]


def test_uri_secrets_has_secret_option_values() -> None:
    uri = (
        "mongodb://db.example.com/?authMechanism=MONGODB-AWS"
        "&authMechanismProperties=AWS_SESSION_TOKEN%3Atok3n&tlsCertificateKeyFilePassword=keyPW"
    )

    secrets = uri_secrets(uri)

    assert {"AWS_SESSION_TOKEN%3Atok3n", "AWS_SESSION_TOKEN:tok3n", "keyPW"} <= set(secrets)
    assert "MONGODB-AWS" not in secrets


def test_uri_secrets_are_longest_first() -> None:
    uri = "mongodb://app:pw@db.example.com/?tlsCertificateKeyFilePassword=longer-key-password"

    secrets = uri_secrets(uri)

    assert secrets == sorted(secrets, key=len, reverse=True)
    assert secrets[0] == uri


def test_scrub_replaces_every_occurrence_of_the_password() -> None:
    secrets = uri_secrets("mongodb://app:p%40ss@db.example.com/")

    text = scrub("auth failed for p@ss (encoded p%40ss); retrying with p@ss", secrets)

    assert text == "auth failed for *** (encoded ***); retrying with ***"


def test_scrub_shows_a_whole_uri_redacted() -> None:
    uri = "mongodb://app:s3cretPW@db.example.com/sessions"

    text = scrub(f"cannot connect to {uri}: password s3cretPW rejected", uri_secrets(uri))

    assert text == "cannot connect to mongodb://app:***@db.example.com/sessions: password *** rejected"


def test_scrub_removes_secret_option_value() -> None:
    uri = "mongodb://db.example.com/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:tok3n"

    text = scrub("bad property AWS_SESSION_TOKEN:tok3n", uri_secrets(uri))

    assert "tok3n" not in text
    assert text == "bad property ***"


def test_scrub_leaves_text_without_secrets_unchanged() -> None:
    text = "The value of maxPoolSize must be an integer"

    assert scrub(text, uri_secrets("mongodb://app:s3cretPW@db.example.com/")) == text
    assert scrub(text, []) == text
