"""Each payload is validated once per hop: an event built with `ctx.event` (or by the tracker's
effects) is not validated again before it leaves; one built another way is."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from marshmallow import fields

from contracts.envelope import new_event
from contracts.errors import InvalidMessage
from contracts.payloads import Payload, Registry
from contracts.timefmt import utcnow
from participants.runtime.handling import BatchHandler
from participants.runtime.participant import Context, Participant


class _Counted(Payload):
    calls = 0
    order_id = fields.Str(required=True)

    def load(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        type(self).calls += 1
        return super().load(data, *args, **kwargs)


def _world() -> tuple[Registry, Context, BatchHandler]:
    registry = Registry()
    registry.register("order.placed", _Counted())
    registry.register("order.shipped", _Counted())
    cause = new_event("order.placed", {"order_id": "o-1"}, correlation_id="wf-1", source="test")
    ctx = Context(None, cause, utcnow(), "shipping", registry)  # type: ignore[arg-type]
    runtime = BatchHandler(Participant("shipping", registry=registry), None, None, ())  # type: ignore[arg-type]
    _Counted.calls = 0
    return registry, ctx, runtime


def test_an_event_built_with_ctx_event_is_validated_once() -> None:
    _, ctx, runtime = _world()
    out = [ctx.event("order.shipped", {"order_id": "o-1"})]
    assert runtime._checked(out) == out
    assert _Counted.calls == 1


def test_an_event_built_another_way_is_still_validated_before_it_leaves() -> None:
    registry, ctx, runtime = _world()
    built = ctx.event("order.shipped", {"order_id": "o-1"})
    changed = dataclasses.replace(built, data={"no_order_id": True})  # another object: not vouched
    plain = new_event("order.shipped", {"order_id": "o-1"}, correlation_id="wf-1", source="shipping")
    runtime._checked([plain])
    assert _Counted.calls == 2
    assert registry.vouched(built) and not registry.vouched(changed) and not registry.vouched(plain)
    with pytest.raises(InvalidMessage):
        runtime._checked([changed])
