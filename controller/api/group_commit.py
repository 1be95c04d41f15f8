"""Group commit of single kickoffs: the `POST /v1/workflows` that arrive in one web process while a
start commits wait, then share the next `start_workflows` call: one transaction, one multi-row
insert per table, one XADD pipeline, as a batch does. Each request still gets its own outcome.

No timer and no thread of its own: the first request that finds no commit under way leads, takes
whatever is queued (itself included) and commits it; the requests queued meanwhile wait, and one of
them leads the next group. So a group is what arrived during the previous commit, never held back
to wait for more. A group that fails as a whole is run again request by request, so each answers
as it would alone, unless the database failed (down, deadlocking, or lost during the COMMIT):
then each request answers that error, since the group may have committed. A request is answered
only after its group committed: a crash before that
answers nothing, and loses nothing that was answered.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.exc import InterfaceError, OperationalError

from controller.service.start import Outcome, StartRequest

Run = Callable[[Sequence[StartRequest]], list[Outcome]]


@dataclass
class _Slot:
    request: StartRequest
    outcome: Outcome | None = None
    alone: bool = False  # the group failed as a whole: this request goes again on its own
    error: BaseException | None = None  # the group's, raised by each of its requests

    @property
    def answered(self) -> bool:
        return self.outcome is not None or self.alone or self.error is not None


class GroupCommit:
    def __init__(self, run: Run) -> None:
        self._run = run
        self._ready = threading.Condition()
        self._queue: list[_Slot] = []
        self._busy = False

    def start(self, request: StartRequest) -> Outcome:
        """This request's outcome, from the group it joined; an exception the whole group raised
        (the database is down, an unexpected error) is re-raised by each request on its own."""
        slot = _Slot(request)
        with self._ready:
            self._queue.append(slot)
            while self._busy and not slot.answered:
                self._ready.wait()
            if not slot.answered:
                self._busy, group, self._queue = True, self._queue, []
        if not slot.answered:
            self._lead(group)
        if slot.error is not None:
            raise slot.error
        if slot.alone:  # the error, or the outcome, it gets when it is the only one
            return self._run([request])[0]
        assert slot.outcome is not None
        return slot.outcome

    def _lead(self, group: list[_Slot]) -> None:
        outcomes: list[Outcome] | None = None
        error: BaseException | None = None
        try:
            outcomes = self._run([s.request for s in group])
        except (OperationalError, InterfaceError) as exc:
            # The database is down, or kept deadlocking, or the COMMIT's outcome is unknown (its
            # connection was lost during it): running each again could start twice what did
            # commit. Each request answers the error (503), as one alone would.
            error = exc
        except Exception:
            if len(group) == 1:  # alone already: its error is its own
                raise
        finally:
            self._done(group, outcomes, error)

    def _done(self, group: list[_Slot], outcomes: list[Outcome] | None,
              error: BaseException | None) -> None:
        with self._ready:
            for i, slot in enumerate(group):
                if error is not None:
                    slot.error = error
                elif outcomes is None:
                    slot.alone = len(group) > 1
                else:
                    slot.outcome = outcomes[i]
            self._busy = False
            self._ready.notify_all()
