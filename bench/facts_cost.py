"""µs of CPU per workflow for the report's facts in Python, as the kickoff and the tracker make
them for one completed order: the kickoff's facts as rows, then for each of its three events the
facts before and after (`facts.of_workflow`), the rows of those that changed and the rollup's
delta. Best of `--repeat` rounds of `--number` workflows. No database: what is measured is the
Python around the statements (`controller/reporting/store.py` sends them).

    python -m bench.facts_cost
"""

from __future__ import annotations

import argparse
import copy
import itertools
import time

from controller.domain import lifecycle as lc
from controller.reporting import facts
from tests.unit.test_lifecycle import at, begin


def _states() -> list[lc.Workflow]:
    run, _ = begin()
    states = [copy.deepcopy(run.wf)]
    for message_type, seconds in (("inventory.reserved", 1), ("payment.charged", 2),
                                  ("shipment.scheduled", 20)):
        run.send(message_type, at(seconds))
        states.append(copy.deepcopy(run.wf))
    return states


def one_workflow(states: list[lc.Workflow]) -> None:
    [f.row() for f in facts.of_workflow(states[0]).values()]
    for before, after in itertools.pairwise(states):
        old, new = facts.of_workflow(before), facts.of_workflow(after)
        changed = [f for k, f in new.items() if old.get(k) != f]
        [f.row() for f in changed]
        facts.deltas([old[f.key] for f in changed if f.key in old], changed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    states = _states()
    for _ in range(200):
        one_workflow(states)
    best = float("inf")
    for _ in range(args.repeat):
        start = time.process_time()
        for _ in range(args.number):
            one_workflow(states)
        best = min(best, (time.process_time() - start) / args.number)
    print(f"report facts in Python: {best * 1e6:.1f} µs of CPU per completed order")


if __name__ == "__main__":
    main()
