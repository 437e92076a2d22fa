"""Keep credentials out of logs, reprs and exception text.

A MongoDB connection string may carry a user name and password (``mongodb://user:pw@host``) and
secret options (``tlsCertificateKeyFilePassword``, ``authMechanismProperties=AWS_SESSION_TOKEN:...``).
Nothing we print or raise should contain them.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
# Options whose values are secrets; matched case-insensitively as in pymongo.
_SECRET_OPTIONS = ("password", "authmechanismproperties", "tlscertificatekeyfilepassword", "sslpemkeypassword")


def _split_userinfo(uri: str) -> tuple[str, str | None, str]:
    """Split ``uri`` into (scheme, userinfo or None, rest) the way pymongo reads it.

    The host part ends at the first ``/``; within it, userinfo runs to the *last* ``@`` (so a
    password may contain ``#``, ``?`` or ``@`` as pymongo accepts).
    """
    match = _SCHEME.match(uri)
    if not match:
        return "", None, uri
    scheme, rest = match.group(), uri[match.end() :]
    host_part = rest.split("/", 1)[0]
    if "@" not in host_part:
        return scheme, None, rest
    userinfo, _, _hosts = host_part.rpartition("@")
    return scheme, userinfo, rest[len(userinfo) + 1 :]


def redact_uri(uri: str) -> str:
    """Return ``uri`` with its password and secret options replaced by ``***``.

    Args:
        uri: A MongoDB connection string.

    Returns:
        The same connection string, safe to print.
    """

    scheme, userinfo, rest = _split_userinfo(uri)
    if userinfo is None:
        redacted = uri
    else:
        user, has_password, _password = userinfo.partition(":")
        redacted = f"{scheme}{user}:***@{rest}" if has_password else f"{scheme}{user}@{rest}"
    base, sep, query = redacted.partition("?")
    if not sep:
        return redacted
    parts = []
    for part in re.split(r"([&;])", query):
        key, eq, _value = part.partition("=")
        parts.append(f"{key}=***" if eq and key.lower() in _SECRET_OPTIONS else part)
    return base + sep + "".join(parts)


def uri_secrets(uri: str) -> list[str]:
    """Return the secret substrings of ``uri`` (password, secret option values), raw and decoded.

    Args:
        uri: A MongoDB connection string.

    Returns:
        Non-empty secret strings, longest first, so that scrubbing replaces whole secrets.
    """
    found: set[str] = set()
    _scheme, userinfo, rest = _split_userinfo(uri)
    if userinfo is not None:
        _user, sep, password = userinfo.partition(":")
        if sep and password:
            found.update({password, unquote(password)})
    _base, sep, query = (rest if userinfo is not None else uri).partition("?")
    if sep:
        for part in re.split(r"[&;]", query):
            key, eq, value = part.partition("=")
            if eq and value and key.lower() in _SECRET_OPTIONS:
                found.update({value, unquote(value)})
    found.add(uri)
    return sorted((s for s in found if s), key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    """Replace every occurrence of each secret in ``text`` by ``***``.

    Args:
        text: Text that may contain secrets (an exception message, say).
        secrets: Secrets as returned by :func:`uri_secrets`.

    Returns:
        The text without the secrets.
    """
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, redact_uri(secret) if "://" in secret else "***")
    return text
