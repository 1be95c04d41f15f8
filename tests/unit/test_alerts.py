"""The alerts settings, pure: the webhook retry intervals are validated when the settings load."""

from __future__ import annotations

import pytest

from config.settings import SettingsError, load_settings


def test_retry_intervals_are_validated_at_start() -> None:
    assert load_settings({}).alert_retry_intervals == (1, 5, 15, 60, 300)
    for bad in ("", "1,,5", "-1", "1.5", "soon", ",".join(["1"] * 21)):
        with pytest.raises(SettingsError, match=r"^BATON_ALERT_RETRY_INTERVALS: "):
            load_settings({"BATON_ALERT_RETRY_INTERVALS": bad})
