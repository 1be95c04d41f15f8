"""`quick_start` against the schema it stands in for (`start_body`): whatever it decodes, the schema
loads to the same dict; whatever the schema refuses, it leaves to the schema (None), so the 422 is
the schema's own. And the plain valid bodies the kickoff sends are all decoded quickly."""

from __future__ import annotations

import json
import math
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from contracts.api import CHECKED, start_body
from contracts.quick_start import quick_start


def check(flow: str, data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A stand-in for the flows' input check: `bad` is a bad field, flow `gone` is not loaded."""
    if "bad" in data:
        return {"input.bad": ["Unknown field."]}, None
    return {}, None if flow == "gone" else {**data, "checked": True}


SCHEMA = start_body(check)()
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2, 366 * 86400 + 2),
                     st.sampled_from([0, 1, 366 * 86400, 366 * 86400 + 1, 2**63, -(2**63), 1.0, 5.5]),
                     st.text(max_size=3), st.sampled_from(["", "a" * 64, "a" * 65, "b-1", "b 1",
                                                           "x\n", "a" * 128, "a" * 129, "é", "a:b.c_d-e"]))
_INPUTS = st.one_of(_SCALARS, st.lists(_SCALARS, max_size=2),
                    st.dictionaries(st.sampled_from(["order_id", "bad", "n", ""]), _SCALARS, max_size=3))
_KEYS = st.sampled_from(["flow", "input", "sla_seconds", "correlation_id", CHECKED, "extra", "Flow"])


def _loaded(body: Any) -> dict[str, Any] | None:
    try:
        loaded: dict[str, Any] = SCHEMA.load(body)
        return loaded
    except ValidationError:
        return None


def _agree(body: Any) -> None:
    quick = quick_start(check, body)
    if quick is not None:
        assert quick == _loaded(body), body


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_SCALARS, st.lists(_SCALARS, max_size=2),
                 st.dictionaries(_KEYS, st.one_of(_SCALARS, _INPUTS), max_size=5)))
def test_anything_quick_decodes_loads_the_same(body: Any) -> None:
    _agree(body)


@settings(max_examples=800, suppress_health_check=[HealthCheck.too_slow])
@given(flow=st.one_of(st.sampled_from(["order_fulfillment", "gone", "", "a" * 65]), _SCALARS),
       data=_INPUTS, sla=st.one_of(st.none(), _SCALARS), cid=st.one_of(st.none(), _SCALARS))
def test_near_valid_bodies_agree(flow: Any, data: Any, sla: Any, cid: Any) -> None:
    body = {"flow": flow, "input": data}
    if sla is not None:
        body["sla_seconds"] = sla
    if cid is not None:
        body["correlation_id"] = cid
    _agree(body)


def test_the_kickoffs_bodies_are_decoded_quickly_as_the_schema_loads_them() -> None:
    bodies: list[dict[str, Any]] = [
        {"flow": "order_fulfillment", "input": {"order_id": "o-1", "n": 1}},
        {"flow": "order_fulfillment", "input": {}, "correlation_id": "b-1:x.y_z"},
        {"flow": "order_fulfillment", "input": {"n": [1, {"a": None}]}, "sla_seconds": 366 * 86400},
        {"flow": "gone", "input": {"order_id": "o-2"}, "sla_seconds": 1, "correlation_id": "c" * 128},
    ]
    for body in bodies:
        quick = quick_start(check, body)
        assert quick is not None and quick == SCHEMA.load(body)
    assert CHECKED not in quick_start(check, bodies[3])  # type: ignore[operator]


def test_what_the_schema_refuses_is_left_to_it() -> None:
    refused: list[Any] = [
        None, [], "x", {}, {"flow": "f"}, {"input": {}}, {"flow": "f", "input": {"bad": 1}},
        {"flow": "f", "input": {}, "extra": 1}, {"flow": "f", "input": {}, CHECKED: {}},
        {"flow": "f", "input": {}, "sla_seconds": True}, {"flow": "f", "input": {}, "sla_seconds": 1.0},
        {"flow": "f", "input": {}, "sla_seconds": 0}, {"flow": "f", "input": {}, "sla_seconds": None},
        {"flow": "f", "input": {}, "correlation_id": "a\n"}, {"flow": "f", "input": {}, "correlation_id": ""},
        {"flow": "f", "input": None}, {"flow": "f", "input": []}, {"flow": "", "input": {}},
        {"flow": 1, "input": {}}, {"flow": "a" * 65, "input": {}},
    ]
    for body in refused:
        assert quick_start(check, body) is None, body
        assert _loaded(body) is None, body


_JSON_TEXT = st.recursive(
    st.one_of(st.sampled_from(["null", "true", "1", "-0", "-0.0", "1e400", "1e-400", "NaN", "Infinity",
                               "18446744073709551616", "1000000000000000000000000000000", "0.1",
                               '"\\ud800"', '"\\u0000"', '"a"', "01", "1.", '"\\x"']),
              st.integers().map(str), st.floats().map(repr)),
    lambda inner: st.one_of(st.lists(inner, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]"),
                            st.lists(st.tuples(st.sampled_from(['"a"', '"b"', '"a"']), inner), max_size=3)
                            .map(lambda kv: "{" + ",".join(f"{k}:{v}" for k, v in kv) + "}")),
    max_leaves=6)


@settings(max_examples=600)
@given(_JSON_TEXT)
def test_what_msgspec_decodes_json_loads_alike(text: str) -> None:
    """The lean route decodes with msgspec; webargs, behind it, with `json.loads`."""
    try:
        quick = msgspec.json.decode(text.encode())
    except msgspec.DecodeError:
        return
    slow = json.loads(text)
    assert quick == slow or (isinstance(slow, float) and math.isnan(slow)), text
    assert repr(quick) == repr(slow), text
