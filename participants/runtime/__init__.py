"""The participant API: what a service imports to take part in a flow.

    from participants.runtime import Participant, run

`Participant` declares the handlers, `run` runs it as a process configured from the environment,
`upsert` writes a row once on PostgreSQL and SQLite alike. The rest of this package is the
runtime's own.
"""

from participants.runtime.db import upsert
from participants.runtime.participant import Context, Participant
from participants.runtime.service import run, run_participant

__all__ = ["Context", "Participant", "run", "run_participant", "upsert"]
