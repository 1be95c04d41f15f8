"""N replicas of every process (issue 17, item 1): 3 trackers, 2 webs, 2 clocks, 2 relays, 2
workers, 2 alerters and 2 of each order_fulfillment participant as real processes on one
PostgreSQL and one Redis (started by the test), workflows kicked off across both webs (some
complete, some fail and are compensated, some breach their SLA), replicas killed with `kill -9`
and started again meanwhile, the active clock among them.

Then bench/chaos.py's reconciliation against the participants' own ledgers (every workflow at its
expected terminal status, no effect twice, stock and credit conserved, no entry pending, no
outbox row unsent) and bench/replicas.py's checks that the controller decided each thing once;
and the clock's lease moved to the other clock within seconds. Run with `-s` for the figures.
"""

from __future__ import annotations

import pytest

from bench.chaos import Config, report
from bench.replicas import BREACHES, CLOCK_TTL, REPLICAS, Replicas, line_of, per_copy_table

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def test_replicas_of_every_process_under_kill_9() -> None:
    # a kill per line: a copy of each (web, tracker, each participant, ...) and the active clock
    config = Config(workflows=120, kills=len(REPLICAS), seed=11, window=30, garbage=0, converge_timeout=90.0,
                    durable=False, visibility_timeout=2.0, quiet=False)
    run = Replicas(config)
    result = run.run()
    summary = report(run.figures, result) + f"\nclock lease moved in {run.takeovers}"
    if hasattr(run, "rss"):
        summary += (f"\nPostgreSQL connections {run.pg_connections}, Redis connections "
                    f"{run.redis_connections}\n" + per_copy_table(run.per_copy))
    print(summary)

    assert result.violations == [], summary
    assert result.converged, summary
    assert len(run.figures.accepted) == config.workflows + BREACHES, summary
    assert not run.figures.refused, summary
    assert sum(run.figures.kills.values()) == config.kills, summary
    assert {line_of(n) for n in run.figures.kills.elements()} == set(REPLICAS), summary
    assert not run.figures.crashes, summary
    assert run.takeovers and run.takeovers[0] < CLOCK_TTL + 2, summary
    reasons = {outcome for (_, outcome) in result.outcomes}
    assert {"completed/-", "compensated/step_failed", "compensated/sla_breached"} <= reasons, summary
