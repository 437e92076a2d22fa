"""Keep credentials out of logs, reprs and exception text.

A MongoDB connection string may carry a user name and password (``mongodb://user:pw@host``) and
secret options (``tlsCertificateKeyFilePassword``, ``authMechanismProperties=AWS_SESSION_TOKEN:...``).
Nothing we print or raise should contain them.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

_USERINFO = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^@/?#]*)@")
# Options whose values are secrets; matched case-insensitively as in pymongo.
_SECRET_OPTIONS = ("password", "authmechanismproperties", "tlscertificatekeyfilepassword", "sslpemkeypassword")


def redact_uri(uri: str) -> str:
    """Return ``uri`` with its password and secret options replaced by ``***``.

    Args:
        uri: A MongoDB connection string.

    Returns:
        The same connection string, safe to print.
    """

    def _userinfo(match: re.Match[str]) -> str:
        user, _, _password = match.group("userinfo").partition(":")
        return f"{match.group('scheme')}{user}:***@" if _ else f"{match.group('scheme')}{user}@"

    redacted = _USERINFO.sub(_userinfo, uri, count=1)
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
    match = _USERINFO.match(uri)
    if match:
        _user, sep, password = match.group("userinfo").partition(":")
        if sep and password:
            found.update({password, unquote(password)})
    _base, sep, query = uri.partition("?")
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
