"""A declared message type is compared with the one recorded when the flows were last loaded: a
field removed or retyped, or a required one added, is refused unless the version changes, even
when the file was edited in place between two starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.flows import load_registry
from contracts.errors import FlowDefinitionError
from contracts.timefmt import utcnow
from controller.db import declared, migrate
from participants.runtime.db import make_engine

FLOW = """
name: signup
version: 1
start_event: member.signed_up
steps:
  - name: welcome
    participant: mailer
    reacts_to: [member.signed_up]
    done_on: member.welcomed
messages:
  member.signed_up:
    schema:
      type: object
      required: [member_id]
      properties:
        member_id: {type: string}
        {extra}
  member.welcomed:
    schema: {type: object, properties: {member_id: {type: string}}}
"""


def _flows(tmp_path: Path, extra: str) -> Path:
    directory = tmp_path / "flows"
    directory.mkdir(exist_ok=True)
    (directory / "signup.yaml").write_text(FLOW.replace("{extra}", extra), encoding="utf-8")
    return directory


def test_a_field_retyped_in_place_is_refused_at_the_next_load_and_an_optional_one_accepted(
        database_url: str, tmp_path: Path) -> None:
    engine = make_engine(database_url)
    try:
        migrate.upgrade(engine)
        with engine.begin() as conn:  # the shipped flow files declare some too (bulk_repricing)
            shipped = declared.record(conn, load_registry(()), utcnow())
        first = load_registry((_flows(tmp_path, "email: {type: string}"),))
        with engine.begin() as conn:
            assert declared.record(conn, first, utcnow()) == shipped + 2
        retyped = load_registry((_flows(tmp_path, "email: {type: integer}"),))
        with engine.begin() as conn, pytest.raises(FlowDefinitionError) as refused:
            declared.record(conn, retyped, utcnow())
        assert "messages.member.signed_up.schema" in refused.value.errors
        assert "declare version 2" in str(refused.value)
        widened = load_registry((_flows(tmp_path, "email: {type: string}\n        age: {type: integer}"),))
        with engine.begin() as conn:
            assert declared.record(conn, widened, utcnow()) == shipped + 2  # optional field added: fine
        removed = load_registry((_flows(tmp_path, "age: {type: integer}"),))
        with engine.begin() as conn, pytest.raises(FlowDefinitionError):
            declared.record(conn, removed, utcnow())  # compared with the widened one, recorded
    finally:
        engine.dispose()

