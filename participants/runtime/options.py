"""How a runtime reads, retries and dead-letters: its share of the settings, whose documented
defaults (config/settings.py) are the one table of them."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, fields

from config.settings import Settings

_DEFAULTS = Settings()
MAX_ENTRY_BYTES = 1_048_576  # a larger entry is dead-lettered unread


@dataclass(frozen=True)
class Options:
    """Each field is the setting of that name (`from_settings`); one not given takes the setting's
    default."""

    visibility_timeout: float = _DEFAULTS.visibility_timeout
    max_deliveries: int = _DEFAULTS.max_deliveries
    read_count: int = _DEFAULTS.read_count
    block_ms: int = _DEFAULTS.block_ms
    # A batch that is not full is handled no sooner than this after its read began (time blocked
    # waiting counts): under load, fewer and larger batches, each costing one transaction.
    linger_ms: int = _DEFAULTS.linger_ms
    crash_points: Collection[str] = _DEFAULTS.crash_points
    redrive_window: float = _DEFAULTS.redrive_window  # seconds re-published after Redis lost its data
    consumer_name: str = _DEFAULTS.consumer_name  # "" for `<host>-<pid>`
    # Publish this database's outbox rows left unsent. The controller's processes leave that to
    # the relay process; a participant's database has no other reader. Not a setting: a role.
    relay_outbox: bool = True

    @classmethod
    def from_settings(cls, settings: Settings, *, relay_outbox: bool = True) -> Options:
        """`relay_outbox=False` for the controller's processes: the relay process publishes what
        they left unsent; a participant publishes its own."""
        configured = {f.name: getattr(settings, f.name) for f in fields(cls) if f.name != "relay_outbox"}
        return cls(relay_outbox=relay_outbox, **configured)
