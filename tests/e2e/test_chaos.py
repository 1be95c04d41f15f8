"""The chaos run (issue 7) in a reduced size, run by CI: `bench/chaos.py` with 300 workflows, 12
`kill -9`s of random processes, one restart of Redis on its AOF and one `pg_ctl stop -m immediate`
of PostgreSQL, then the same reconciliation as the full run (`bench/reconcile.py`).

It starts its own PostgreSQL and Redis (it must restart them; the servers of scripts/test.sh are
shared). The figures are printed; run with `-s` to see them when it passes.
"""

from __future__ import annotations

import pytest

from bench.chaos import Chaos, Config, report

pytestmark = [pytest.mark.slow, pytest.mark.chaos]


def test_chaos_nothing_lost_nothing_done_twice() -> None:
    config = Config(workflows=300, kills=12, seed=7, window=30, garbage=4, converge_timeout=90.0,
                    durable=False, visibility_timeout=2.0, quiet=True)
    chaos = Chaos(config)
    result = chaos.run()
    figures = chaos.figures
    summary = report(figures, result)
    print(summary)

    assert result.violations == [], summary
    assert result.converged, summary
    assert len(figures.accepted) == config.workflows and not figures.refused, summary
    assert sum(figures.kills.values()) == config.kills, summary
    assert figures.redis_restarts == 1 and figures.pg_restarts == 1, summary
    assert len(figures.garbage) == config.garbage and result.dead_letters >= config.garbage, summary
    # the mix really happened: successes, declines or shortages, and breaches
    reasons = {outcome for (_, outcome) in result.outcomes}
    assert {"completed/-", "compensated/step_failed"} <= reasons, summary
