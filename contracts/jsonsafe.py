"""What JSON the wire can carry: orjson writes integers from -2**63 to 2**64 - 1 only, and a
wider one (valid JSON, and a Python int) would fail at the first write, after validation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

SMALLEST, LARGEST = -(2**63), 2**64 - 1
TOO_WIDE = f"an integer beyond 64 bits: from {SMALLEST} to {LARGEST} only"


def wide_integers(value: Any, path: str = "") -> Iterator[str]:
    """The dotted path (`items.0.quantity`) of every integer in `value` orjson cannot write."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from wide_integers(item, f"{path}{key}.")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from wide_integers(item, f"{path}{i}.")
    elif isinstance(value, int) and not isinstance(value, bool) and not SMALLEST <= value <= LARGEST:
        yield path.rstrip(".")


def wide_integer_errors(value: Any, prefix: str) -> dict[str, object]:
    """Errors keyed `<prefix>.<path>`, as the API's 422 names fields."""
    return {f"{prefix}.{p}" if p else prefix: [TOO_WIDE] for p in wide_integers(value)}
