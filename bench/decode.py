"""µs of CPU per stream entry to decode an envelope: the msgspec decoder (`contracts.envelope`)
against the marshmallow schema it replaced (`tests/unit/envelope_reference.py`), on an event and a
command as redis-py returns them (bytes), best of `--repeat` rounds of `--number` entries.

    python -m bench.decode
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from contracts.envelope import decode_fields, new_command, new_event
from contracts.registry import default_registry
from contracts.timefmt import utcnow
from tests.unit.envelope_reference import reference_decode


def _entries() -> dict[str, dict[bytes, bytes]]:
    event = new_event("payment.charged", {"order_id": "ord-1001", "payment_id": "pay-1",
                                          "amount": 19.0, "currency": "EUR"},
                      correlation_id=f"wf-{uuid.uuid4().hex}", source="payment",
                      causation_id=str(uuid.uuid4()), traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01")
    command = new_command("payment.refund", {"order_id": "ord-1001", "reason": "step_failed"},
                          target="payment", correlation_id=f"wf-{uuid.uuid4().hex}",
                          causation_id=str(uuid.uuid4()), deadline=utcnow() + timedelta(seconds=60),
                          source="controller")
    return {name: {k.encode(): v.encode() for k, v in e.to_fields().items()}
            for name, e in (("event", event), ("command", command))}


def _cpu_us(decode: Callable[[Any], Any], raw: Any, number: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for _ in range(number):
            decode(raw)
        best = min(best, time.process_time() - start)
    return best / number * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--number", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    registry = default_registry()
    print(f"{'entry':<9}{'marshmallow µs':>16}{'msgspec µs':>12}{'payload µs':>12}")
    for name, raw in _entries().items():
        old = _cpu_us(reference_decode, raw, args.number, args.repeat)
        new = _cpu_us(decode_fields, raw, args.number, args.repeat)
        msg = decode_fields(raw)
        payload = _cpu_us(lambda m: registry.validate(m.type, m.version, m.data), msg,
                          args.number, args.repeat)
        print(f"{name:<9}{old:>16.1f}{new:>12.1f}{payload:>12.1f}")


if __name__ == "__main__":
    main()
