"""The message types flow files declare, kept in the controller's database: a later start compares
each declaration with the one recorded for its type and version, so that a field removed or
retyped (or a required one added) is refused unless the version changes, across restarts too."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from contracts.declarations import breaking_changes
from contracts.errors import FlowDefinitionError
from contracts.json_payloads import JsonPayload
from contracts.payloads import Registry
from controller.db.tables import declared_schemas
from participants.runtime.db import upsert


def record(conn: Connection, registry: Registry, now: datetime) -> int:
    """Compare every declared schema of `registry` with the recorded one, then record them (an
    identical or compatible one replaces it); FlowDefinitionError naming the file and the type
    for a breaking change. Returns how many are recorded."""
    declared = _declared(registry)
    if not declared:
        return 0
    recorded = {(r.type, r.version): r for r in conn.execute(select(declared_schemas))}
    for (message_type, version), payload in declared.items():
        old = recorded.get((message_type, version))
        if old is None:
            continue
        breaks = breaking_changes(old.schema, payload.schema)
        if breaks:
            raise FlowDefinitionError(payload.source or "flow files", {
                f"messages.{message_type}.schema": [
                    f"{message_type} v{version} was declared differently when last loaded (from "
                    f"{old.source}): this one removes or retypes a field ({'; '.join(breaks)}): "
                    f"declare version {max(v for t, v in declared if t == message_type) + 1}"]})
    statement = upsert(conn, declared_schemas)
    conn.execute(statement.on_conflict_do_update(
        index_elements=["type", "version"],
        set_={c: statement.excluded[c] for c in ("schema", "source", "recorded_at")}), [
        {"type": t, "version": v, "schema": p.schema, "source": p.source or "", "recorded_at": now}
        for (t, v), p in sorted(declared.items())])
    return len(declared)


def _declared(registry: Registry) -> dict[tuple[str, int], Any]:
    """The schemas flow files declared (the shipped ones are code, versioned with Baton)."""
    found: dict[tuple[str, int], JsonPayload] = {}
    for message_type in registry.types():
        for version in registry.versions(message_type):
            schema = registry.schema(message_type, version)
            if isinstance(schema, JsonPayload):
                found[(message_type, version)] = schema
    return found
