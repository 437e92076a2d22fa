"""Pure: the export format's value encoding, JSON that gives back exactly the value MongoDB stored.

No I/O here. A stored value may hold what JSON cannot say (``bytes``, datetimes, 64-bit integers,
non-finite floats, any other BSON type) and keys that a JSON reader of MongoDB data would take for
its own (``$ref``, ``$date``, ``$binary``...). The encoding is MongoDB Extended JSON, canonical mode,
for the values JSON lacks, plus one escape for objects with ``$``-keys:

* ``None``, ``bool``, ``str``, lists, objects, ``int`` and finite ``float`` are plain JSON (an
  ``int`` that BSON stores as int32 or int64 comes back as the same kind; a float keeps every bit,
  ``-0.0`` included);
* ``bson.Int64`` is ``{"$numberLong": "<digits>"}`` (so a small Int64 stays an int64 in BSON);
* ``NaN`` and the infinities are ``{"$numberDouble": "NaN" | "Infinity" | "-Infinity"}``;
* ``bytes`` are ``{"$binary": {"base64": "...", "subType": "00"}}``; BSON binaries of other subtypes
  keep theirs;
* datetimes are ``{"$date": {"$numberLong": "<milliseconds since the epoch>"}}`` (BSON's precision);
* any other BSON value (``ObjectId``, ``Decimal128``, regular expressions, timestamps...) is its
  canonical Extended JSON form;
* an object with at least one key starting with ``$`` is written as
  ``{"$msm:object": [[key, value], ...]}``, its items in order, so no key of a user's value is ever
  read as a type marker (and an object whose own key is ``$msm:object`` is escaped the same way).
  Every other object is written as itself; key order is kept everywhere.

Reading parses the Extended JSON markers first (``bson.json_util``), then undoes the escapes. The
two steps never meet: after the escape, no object of a user's value has a ``$``-key left.
"""

from __future__ import annotations

import json
import math
from datetime import UTC
from typing import Any

from bson import json_util
from bson.errors import BSONError
from bson.int64 import Int64
from bson.json_util import JSONMode, JSONOptions

__all__ = ["ESCAPE_KEY", "ValueFormatError", "dumps", "from_json", "loads", "to_json"]

#: Key of an escaped object: ``{ESCAPE_KEY: [[key, value], ...]}``.
ESCAPE_KEY = "$msm:object"
_OPTIONS = JSONOptions(json_mode=JSONMode.CANONICAL, tz_aware=True, tzinfo=UTC)
_INT64 = (-(2**63), 2**63)


class ValueFormatError(ValueError):
    """A line or value is not in the export format (or holds a value BSON cannot store)."""


def to_json(value: Any) -> Any:
    """The JSON tree (dicts, lists, str, int, float, bool, None) that stands for ``value``.

    Raises:
        ValueFormatError: ``value`` holds something no BSON document can (an integer beyond 64
            bits, a non-string key).
    """
    if isinstance(value, dict):
        items: dict[str, Any] = {}
        escape = False
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueFormatError(f"object key {key!r} is not a string")
            escape = escape or key.startswith("$")
            items[key] = to_json(item)
        return {ESCAPE_KEY: [[key, item] for key, item in items.items()]} if escape else items
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, Int64):
        return {"$numberLong": str(int(value))}
    if isinstance(value, int):
        if not _INT64[0] <= value < _INT64[1]:
            raise ValueFormatError(f"integer {value} does not fit in 64 bits")
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {"$numberDouble": "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")}
    try:
        converted: Any = json.loads(json_util.dumps(value, json_options=_OPTIONS))
    except (TypeError, ValueError) as e:
        raise ValueFormatError(f"a value of type {type(value).__name__} cannot be exported: {e}") from e
    return converted


def from_json(tree: Any) -> Any:
    """Undo the escapes of a JSON tree whose Extended JSON markers are already parsed (see :func:`loads`).

    Raises:
        ValueFormatError: An escaped object is malformed.
    """
    if isinstance(tree, dict):
        if len(tree) == 1 and ESCAPE_KEY in tree:
            pairs = tree[ESCAPE_KEY]
            if not isinstance(pairs, list) or not all(
                isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str) for pair in pairs
            ):
                raise ValueFormatError(f"{ESCAPE_KEY} must hold a list of [key, value] pairs")
            return {pair[0]: from_json(pair[1]) for pair in pairs}
        return {key: from_json(item) for key, item in tree.items()}
    if isinstance(tree, list):
        return [from_json(item) for item in tree]
    return tree


def dumps(value: Any) -> str:
    """One line of the export format (no newline inside) holding ``value``."""
    return json.dumps(to_json(value), ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def loads(text: str | bytes) -> Any:
    """The value a line written by :func:`dumps` holds.

    Raises:
        ValueFormatError: The text is not JSON, or a marker or escape in it is malformed.
    """
    try:
        tree = json_util.loads(text, json_options=_OPTIONS)
    except (TypeError, ValueError, KeyError, OverflowError, BSONError) as e:  # json.JSONDecodeError is a ValueError
        raise ValueFormatError(f"not a line of the export format: {e}") from e
    return from_json(tree)
