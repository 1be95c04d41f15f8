"""The reference participants, pure: built by name, and the delivery date counted in business days."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from participants.reference import NAMES, build, shipping
from participants.runtime.participant import Participant

FRIDAY = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)  # + 3 business days = Wednesday 2026-11-25


def test_build_returns_each_reference_participant_by_name() -> None:
    assert NAMES[:4] == ("inventory", "payment", "shipping", "notification")  # then price_change's
    for name in NAMES:
        participant = build(name)
        assert isinstance(participant, Participant)
        assert participant.name == name
    with pytest.raises(KeyError, match="no reference participant 'billing'; known: inventory, payment"):
        build("billing")


def test_delivery_is_counted_in_business_days() -> None:
    assert shipping.delivery_date(datetime(2026, 11, 16, 23, 59, tzinfo=UTC)) == date(2026, 11, 19)
    assert shipping.delivery_date(FRIDAY) == date(2026, 11, 25)
    assert shipping.delivery_date(datetime(2026, 11, 21, tzinfo=UTC)) == date(2026, 11, 25)
