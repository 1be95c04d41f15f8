"""Forgetting the consumers that replicas left behind: a replica named `<host>-<pid>` is a new
consumer after every restart, and each would stay in its groups for good. A consumer is removed
only when it owns no pending entry (XGROUP DELCONSUMER would drop them, and nobody could reclaim
them) and has not read for a long while; checked and removed in one script, so that it cannot
read in between. A live consumer removed all the same is created again by its next read."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis

# KEYS[1] the stream; ARGV: the group, the idle time in ms, the name of the caller (kept).
_FORGET = """
local consumers = redis.pcall('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if type(consumers) ~= 'table' or consumers['err'] then return 0 end
local removed = 0
for _, c in ipairs(consumers) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if info['name'] ~= ARGV[3] and tonumber(info['pending']) == 0
      and tonumber(info['idle']) > tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed = removed + 1
  end
end
return removed
"""


def forget_idle(client: redis.Redis, streams: Iterable[str], group: str, idle_seconds: float,
                keep: str) -> int:
    """Remove from `group` on each stream every consumer but `keep` that owns no pending entry
    and has been idle longer than `idle_seconds`; returns how many were removed."""
    removed = 0
    for stream in streams:  # one key per script: each stream may live on its own cluster node
        got: Any = client.eval(_FORGET, 1, stream, group, int(idle_seconds * 1000), keep)
        removed += int(got)
    return removed


def idle_limit(visibility_timeout: float) -> float:
    """Idle this long with nothing pending: gone (a live consumer reads every BATON_BLOCK_MS)."""
    return max(600.0, 10 * visibility_timeout)
