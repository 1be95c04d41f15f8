"""A participant for the partition tests, run as a process (`python -m tests.e2e.partition_probe`):
it reacts to `probe.changed`, partitioned by `key` in the flow file PROBE_FLOW, and records each
message it handles (key, seq, consumer) in its own table, in the handler's transaction."""

from __future__ import annotations

import os
import socket
import time

from sqlalchemy import Column, Integer, MetaData, String, Table

from contracts.envelope import Envelope
from participants.runtime import Participant, run
from participants.runtime.participant import Context

PROBE_FLOW = """
messages:
  probe.changed:
    partition_by: key
    partitions: 8
    schema:
      type: object
      required: [key, seq]
      properties:
        key: {type: string}
        seq: {type: integer}
"""

metadata = MetaData()
handled = Table(
    "probe_handled", metadata,
    Column("n", Integer, primary_key=True, autoincrement=True),
    Column("key", String(64), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("consumer", String(128), nullable=False),
)
probe = Participant("probe", metadata=metadata)
_ME = f"{socket.gethostname()}-{os.getpid()}"


@probe.on_event("probe.changed")
def changed(message: Envelope, ctx: Context) -> None:
    ctx.conn.execute(handled.insert().values(key=message.data["key"], seq=message.data["seq"],
                                             consumer=_ME))
    time.sleep(float(os.environ.get("PROBE_SLEEP", "0.002")))  # so that replicas overlap in time


if __name__ == "__main__":
    run(probe)
