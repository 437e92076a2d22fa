"""The export format's value encoding gives back exactly what MongoDB stored (no server).

Exactness is checked twice: as Python values (types, contents and key order) and as BSON (the
bytes pymongo would store for the value read back are the bytes of the value written).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import bson
import pytest
from bson.binary import Binary
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.objectid import ObjectId
from hypothesis import given, settings
from hypothesis import strategies as st

from mongodb_session_manager.cli._values import ESCAPE_KEY, ValueFormatError, dumps, loads, to_json
from tests.support.json_values import JSON_VALUES, KEYS

_BSON_SCALARS: st.SearchStrategy[Any] = st.one_of(
    st.binary(max_size=40),
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(Int64),
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)).map(
        lambda moment: moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    ),
    st.sampled_from([math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308]),
    st.builds(lambda data, subtype: Binary(data, subtype), st.binary(max_size=20), st.sampled_from([3, 4, 5, 0x80])),
    st.builds(ObjectId),
    st.sampled_from([Decimal128("1.10"), Decimal128("-0")]),
)
_STORED: st.SearchStrategy[Any] = st.recursive(
    st.one_of(JSON_VALUES, _BSON_SCALARS),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(KEYS, children, max_size=4)),
    max_leaves=12,
)


def _bson(value: Any) -> bytes:
    return bson.encode({"v": value})


@settings(max_examples=400, deadline=None)
@given(_STORED)
def test_every_value_bson_stores_comes_back_as_the_same_bson(value: Any) -> None:
    line = dumps(value)
    assert "\n" not in line and "\r" not in line
    json.loads(line)  # strict JSON: no NaN or Infinity tokens
    assert _bson(loads(line)) == _bson(value)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_json_values_with_dollar_keys_dots_and_escape_lookalikes_come_back_exactly(value: Any) -> None:
    back = loads(dumps(value))
    assert json.dumps(back, ensure_ascii=False) == json.dumps(value, ensure_ascii=False)
    assert _bson(back) == _bson(value)


def test_types_json_lacks_are_extended_json_and_plain_values_stay_plain() -> None:
    moment = datetime(2026, 11, 27, 10, 0, 0, 123000, tzinfo=UTC)
    tree = to_json({"n": 5, "big": Int64(5), "f": 1.5, "nan": math.nan, "b": b"\x00\xff", "t": moment})
    assert tree == {
        "n": 5,
        "big": {"$numberLong": "5"},
        "f": 1.5,
        "nan": {"$numberDouble": "NaN"},
        "b": {"$binary": {"base64": "AP8=", "subType": "00"}},
        "t": {"$date": {"$numberLong": str(int(moment.timestamp() * 1000))}},
    }
    back = loads(dumps({"small": Int64(5), "plain": 5, "t": moment, "b": b"x"}))
    assert type(back["small"]) is Int64 and type(back["plain"]) is int
    assert back["t"] == moment and back["b"] == b"x"


def test_objects_with_dollar_keys_are_escaped_so_no_user_key_reads_as_a_type_marker() -> None:
    value = {"$date": "not a date", "$binary": 1, "$numberLong": "x", "k": {"$msm:object": [["a", 1]]}}
    tree = to_json(value)
    assert list(tree) == [ESCAPE_KEY]
    assert loads(dumps(value)) == value
    assert to_json({"plain": {"a.b": 1, "ünï": 2}}) == {"plain": {"a.b": 1, "ünï": 2}}


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b'{"$msm:object": "not pairs"}',
        b'{"$msm:object": [["k"]]}',
        b'{"$numberLong": "x"}',
        b'{"$binary": {"base64": "AA==", "subType": "zz"}}',
    ],
)
def test_malformed_lines_are_format_errors(line: bytes) -> None:
    with pytest.raises(ValueFormatError):
        loads(line)


def test_values_bson_cannot_store_are_refused() -> None:
    with pytest.raises(ValueFormatError, match="64 bits"):
        to_json(2**64)
    with pytest.raises(ValueFormatError, match="not a string"):
        to_json({1: "x"})
