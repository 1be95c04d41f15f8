"""Partitioned event types: the stream rule and its test vectors (the same as docs/wire-format.md),
the flow-file keys `partition_by` and `partitions` refused by field, the share of the partitions
each live consumer of a group reads."""

from __future__ import annotations

import time
from typing import Any, cast

import pytest

from contracts.declarations import declare, read_messages
from contracts.errors import FlowDefinitionError
from contracts.registry import default_registry
from contracts.streams import Keys, Partitioning, partition_of
from participants.runtime.leases import Leases, share

# (key, partitions, n): the vectors docs/wire-format.md gives authors in other languages.
VECTORS = [
    ("123456789", 16, 6),  # CRC-32 0xCBF43926, the algorithm's check value
    ("SKU-1", 16, 4),
    ("SKU-2", 16, 14),
    ("sku-000042", 16, 1),
    ("ä-ß", 8, 7),  # UTF-8 bytes, not code points
    ("SKU-1", 1, 0),
    ("42", 256, 136),
]

_SKU = {"type": "object", "required": ["sku", "price"],
        "properties": {"sku": {"type": "string"}, "price": {"type": "number"},
                       "note": {"type": "string"}}}


@pytest.mark.parametrize(("key", "partitions", "n"), VECTORS)
def test_partition_of_matches_the_documented_vectors(key: str, partitions: int, n: int) -> None:
    assert partition_of(key, partitions) == n


def test_the_docs_carry_the_same_vectors() -> None:
    from pathlib import Path
    doc = (Path(__file__).parents[2] / "docs" / "wire-format.md").read_text(encoding="utf-8")
    for key, partitions, n in VECTORS:
        assert f"| `{key}` | {partitions} | {n} |" in doc


def test_a_partitioned_type_has_a_stream_per_partition_and_the_others_stay_as_they_are() -> None:
    keys = Keys("p", {"sku.repriced": Partitioning("sku", 4)})
    assert keys.event_streams("sku.repriced") == [f"p:event:sku.repriced:{n}" for n in range(4)]
    assert keys.stream_of("sku.repriced", {"sku": "SKU-1"}) == "p:event:sku.repriced:0"  # 3993447348 % 4
    assert keys.event_streams("order.placed") == ["p:event:order.placed"]
    assert keys.stream_of("order.placed", {"sku": "SKU-1"}) == "p:event:order.placed"
    assert keys.is_partition("p:event:sku.repriced:3")
    assert not keys.is_partition("p:event:order.placed")
    assert not keys.is_partition("p:command:pricing")


def test_an_integer_key_is_hashed_as_its_decimal_string() -> None:
    keys = Keys("p", {"t.done": Partitioning("n", 256)})
    assert keys.stream_of("t.done", {"n": 42}) == "p:event:t.done:136"


def _declare(entry: dict[str, Any], message_type: str = "sku.repriced") -> Any:
    registry = default_registry()
    declare(registry, read_messages({message_type: entry}, "f.yaml"))
    return registry


def test_a_declared_partitioning_reaches_the_registry() -> None:
    registry = _declare({"schema": _SKU, "partition_by": "sku", "partitions": 16})
    assert registry.partitioning("sku.repriced") == Partitioning("sku", 16)
    assert registry.partitioned() == {"sku.repriced": Partitioning("sku", 16)}


@pytest.mark.parametrize(("entry", "field", "words"), [
    ({"partition_by": "sku"}, "partitions", "go together"),
    ({"partitions": 4}, "partition_by", "go together"),
    ({"partition_by": "sku", "partitions": 0}, "partitions", "greater than or equal"),
    ({"partition_by": "sku", "partitions": 257}, "partitions", "greater than or equal"),
    ({"partition_by": "nope", "partitions": 4}, "partition_by", "not a property"),
    ({"partition_by": "note", "partitions": 4}, "partition_by", "must be required"),
    ({"partition_by": "price", "partitions": 4}, "partition_by", "string or integer"),
    ({"partition_by": "sku", "partitions": 4, "kind": "command"}, "partition_by", "only an event"),
])
def test_a_bad_partitioning_is_refused_naming_the_field(entry: dict[str, Any], field: str,
                                                        words: str) -> None:
    with pytest.raises(FlowDefinitionError) as caught:
        _declare({"schema": _SKU, **entry})
    problems = caught.value.errors
    assert f"messages.sku.repriced.{field}" in problems, problems
    assert words in str(problems[f"messages.sku.repriced.{field}"])


def test_two_files_may_not_partition_one_type_differently() -> None:
    registry = _declare({"schema": _SKU, "partition_by": "sku", "partitions": 16})
    with pytest.raises(FlowDefinitionError, match="partitioned by sku in 16"):
        declare(registry, read_messages({"sku.repriced": {"schema": _SKU, "partition_by": "sku",
                                                          "partitions": 8}}, "g.yaml"))


def test_a_shipped_type_cannot_be_partitioned_by_a_flow_file() -> None:
    published = {"type": "object", "required": ["change_id"], "properties": {"change_id": {"type": "string"}}}
    with pytest.raises(FlowDefinitionError, match="unpartitioned"):
        _declare({"version": 2, "schema": published, "partition_by": "change_id", "partitions": 4},
                 "price.published")


def test_the_live_consumers_share_the_partitions_round_robin() -> None:
    partitions = [f"s:{n}" for n in range(16)]
    live = ["c", "a", "b"]
    shares = {c: share(partitions, live, c) for c in live}
    assert sorted(len(s) for s in shares.values()) == [5, 5, 6]
    assert set().union(*shares.values()) == set(partitions)
    assert not shares["a"] & shares["b"] and not shares["b"] & shares["c"]
    assert share(partitions, [], "a") == set(partitions)  # alone, before its first beat is seen


def test_a_consumer_that_missed_its_refresh_reads_none_of_its_partitions() -> None:
    """Its leases may have expired and been taken by another copy meanwhile: reading on would put
    two readers on one partition (the entries of one key handled out of order)."""
    leases = Leases(cast(Any, None), Keys("t"), "g", "c1", ["t:event:x:0", "t:event:x:1"], ttl=3.0,
                    owned={"t:event:x:0"})
    leases._valid_until = time.monotonic() + 1.0
    assert leases.held() == {"t:event:x:0"}
    leases._valid_until = time.monotonic() - 0.001
    assert leases.held() == set()
