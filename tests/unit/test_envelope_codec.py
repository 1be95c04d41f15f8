"""The msgspec decoder against the marshmallow schema it replaced (`envelope_reference.py`): valid
entries, then one to three fields mutated, must be accepted as the same Envelope or refused with the
same errors, in the same order and words (a dead letter's reason is `str` of them)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.envelope import Envelope, decode_fields, new_command, new_event
from contracts.errors import InvalidMessage
from contracts.timefmt import utcnow
from tests.unit.envelope_reference import reference_decode

FIELDS = ["id", "kind", "type", "version", "correlation_id", "causation_id", "occurred_at",
          "source", "data", "traceparent", "target", "attempt", "deadline"]

_TS = st.from_regex(
    r"\A[0-9]{4}-[01][0-9]-[0-3][0-9][Tt ][0-2][0-9]:[0-6][0-9]:[0-6][0-9](\.[0-9]{0,9})?"
    r"([Zz]|[+-][0-2][0-9]:[0-6][0-9]|[+-][0-9]{2,4})?\Z", fullmatch=True)
_UUIDS = st.builds(uuid.uuid4).flatmap(lambda u: st.sampled_from([
    str(u), str(u).upper(), u.hex, "{" + str(u) + "}", "urn:uuid:" + str(u), str(u)[:-1],
    str(u) + "0", str(u).replace("-", "_"), "1_" + u.hex[2:], " " + u.hex[1:], str(u) + "\n"]))
WORDS = [
    "", "0", "1", "01", "1.0", "+1", " 1", "1\n", "999999999", "1000000000", "-1", "event",
    "command", "Event", "payment", "payment.charged", "Payment.charged", "payment.", "a.b\n",
    "wf 1", "wf/1", "wf-é", "x" * 64, "x" * 65, "x" * 128, "x" * 129, "x" * 256, "x" * 257,
    "a\x00b", "\x00", "{}", "[]", "null", "1", '"s"', "{not json", '{"a": NaN}',
    '{"a": 1, "a": 2}', '{"big": 123456789012345678901234567890}', "\ud800",
    "2026-11-22T10:00:00Z", "2026-11-22T10:00:00+24:00", "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00", "2026-02-29T10:00:00Z", "2026-02-29T10:00:00.000Z",
    "2026-11-22T10:00:60.000Z", "2026-13-01T10:00:00.000Z", "0000-01-01T00:00:00.000Z",
    "controller", "-payment", "p" * 63,
]
_WORDS = st.sampled_from(WORDS)
_VALUES = st.one_of(_WORDS, _TS, _UUIDS, st.text(max_size=40),
                    st.text(min_size=120, max_size=300), st.from_regex(r"\A[a-z_.]{1,20}\Z"))


def _valid(command: bool, traceparent: str | None) -> Envelope:
    if command:
        return new_command("payment.refund", {"order_id": "o-1", "reason": "r"}, target="payment",
                           correlation_id=f"wf-{uuid.uuid4().hex}", causation_id=str(uuid.uuid4()),
                           deadline=utcnow(), source="controller")
    return new_event("payment.charged", {"order_id": "o-1", "amount": 1.5},
                     correlation_id=f"wf-{uuid.uuid4().hex}", source="payment",
                     traceparent=traceparent)


@st.composite
def entries(draw: st.DrawFn) -> dict[Any, Any]:
    base = _valid(draw(st.booleans()), draw(st.none() | st.just("00-abc-def-01"))).to_fields()
    raw: dict[str, Any] = dict(base)
    for name in draw(st.lists(st.sampled_from([*FIELDS, "x_extra"]), max_size=3, unique=True)):
        how = draw(st.sampled_from(["drop", "set", "set", "set", "nul", "bytes"]))
        if how == "drop":
            raw.pop(name, None)
        elif how == "set":
            raw[name] = draw(_VALUES)
        elif how == "nul":
            raw[name] = raw.get(name, "") + "\x00"
        else:
            raw[name] = draw(st.sampled_from([b"\xff", b"ok\xc3", b"\xed\xa0\x80", b"fine"]))
    if draw(st.booleans()):  # as redis-py returns it
        return {k.encode(): v if isinstance(v, bytes) else v.encode("utf-8", "surrogatepass")
                for k, v in raw.items()}
    return raw


def _outcome(decode: Any, raw: dict[Any, Any]) -> tuple[str, Any]:
    try:
        return "accepted", decode(raw)
    except InvalidMessage as exc:
        return "refused", (list(exc.errors.items()), str(exc))


@settings(max_examples=700, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries())
def test_the_decoder_accepts_and_refuses_what_the_marshmallow_schema_did(raw: dict[Any, Any]) -> None:
    assert _outcome(decode_fields, raw) == _outcome(reference_decode, raw)


@pytest.mark.parametrize("command", [False, True])
def test_every_single_field_mutation_agrees(command: bool) -> None:
    """Each field, each value of the word list: not left to chance."""
    base = _valid(command, "00-abc-def-01").to_fields()
    for name in FIELDS:
        for value in [*WORDS, None]:
            raw = dict(base)
            if value is None:
                raw.pop(name, None)
            else:
                raw[name] = value
            assert _outcome(decode_fields, raw) == _outcome(reference_decode, raw), (name, value)
