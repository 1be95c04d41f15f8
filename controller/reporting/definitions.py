"""What "judged" and "SLA met %" mean, in one sentence each: the README, the text report, the CSV
and the HTML page say the same (how they are computed: `facts.py`, and the live counts of
`sla.py` for what is still open past its deadline)."""

from __future__ import annotations

JUDGED = (
    "judged: a workflow that has finished (completed, compensated or needs_attention) or a step "
    "that started and has ended (done, failed or compensated), or either one still open past its "
    "deadline; one still open within its deadline is not judged yet, and a skipped step never is."
)
SLA_MET_PCT = (
    "SLA met %: of those judged, the share that completed at or before its deadline; a "
    "compensated or needs_attention workflow is judged and never met, even with no breach."
)
PROGRESS_COUNTS = ("skus", "published", "done", "failed", "reverted")  # bulk_repricing's
PROGRESS = (
    "progress: per flow that reports it, the sum over its workflows in the range of the counts "
    "each one's latest progress event carried, those still running included."
)
# (CSV column, sentence), in the order the CSV's definition rows give them
DEFINITIONS = (("sla_judged", JUDGED), ("sla_met_pct", SLA_MET_PCT))
