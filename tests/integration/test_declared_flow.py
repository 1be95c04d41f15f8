"""A user's own flow whose message types are declared in its flow file (BATON_FLOWS_DIRS): the API
validates its kickoffs and shows its schemas, and a participant run by `run_participant` validates
what it reads and emits with the same declarations. Real Redis, SQLite."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from flask.testing import FlaskClient

from config.settings import load_settings
from contracts.envelope import Envelope, decode_fields, new_event
from contracts.streams import Keys
from controller.api.app import create_app
from controller.db import migrate
from controller.service.bootstrap import build_services
from participants.runtime.connect import connect
from participants.runtime.db import make_engine

T = TypeVar("T")
TOKENS = "sue:starter:t-sue,vic:viewer:t-vic"
FLOW = """
name: loyalty_signup
version: 1
start_event: member.joined
search_attributes: [member_id]
messages:
  member.joined:
    version: 1
    schema:
      type: object
      required: [member_id, email]
      properties:
        member_id: {type: string, minLength: 1}
        email: {type: string, format: email}
        interests:
          type: array
          items:
            type: object
            required: [topic]
            properties: {topic: {type: string}, weight: {type: number}}
  account.created:
    schema:
      type: object
      required: [member_id, account_id]
      properties: {member_id: {type: string}, account_id: {type: string, minLength: 1}}
  account.creation_failed:
    schema: {type: object, required: [member_id, reason], properties: {reason: {type: string}}}
  account.delete:
    kind: command
    schema: {type: object, required: [member_id], properties: {member_id: {type: string}}}
  account.deleted:
    schema: {type: object, required: [member_id], properties: {member_id: {type: string}}}
  welcome.sent:
    schema: {type: object, required: [member_id], properties: {member_id: {type: string}}}
steps:
  - name: create_account
    participant: accounts
    reacts_to: [member.joined]
    done_on: account.created
    failed_on: account.creation_failed
    compensation: {command: account.delete, answer: account.deleted}
  - name: send_welcome
    participant: mailer
    reacts_to: [account.created]
    done_on: welcome.sent
"""

# A participant as a user writes it, run as its own process: no registry of its own.
ACCOUNTS = """
from config.settings import load_settings
from participants.runtime.participant import Participant
from participants.runtime.service import run_participant

accounts = Participant("accounts")


@accounts.on_event("member.joined")
def create_account(message, ctx):
    data = {"member_id": message.data["member_id"]}
    if not message.data.get("forget_the_account_id"):
        data["account_id"] = "acc-" + message.data["member_id"]
    return [ctx.event("account.created", data)]


if __name__ == "__main__":
    settings = load_settings()
    run_participant(accounts, settings, settings.participant_db("accounts"))
"""


def wait_for(probe: Callable[[], T | None], seconds: float, what: str) -> T:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no {what} within {seconds} s")


@pytest.fixture
def keys(redis_url: str) -> Iterator[Keys]:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    yield keys
    client = connect(redis_url)
    for key in client.scan_iter(match=f"{keys.prefix}:*"):
        client.delete(key)
    client.close()


@pytest.fixture
def flows_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "flows"
    directory.mkdir()
    (directory / "loyalty_signup.yaml").write_text(FLOW, encoding="utf-8")
    return directory


def environment(tmp_path: Path, flows_dir: Path, redis_url: str, keys: Keys) -> dict[str, str]:
    return {"DATABASE_URL": f"sqlite:///{tmp_path}/baton.db", "REDIS_URL": redis_url,
            "BATON_STREAM_PREFIX": keys.prefix, "BATON_TOKENS": TOKENS,
            "BATON_DATA_DIR": str(tmp_path / "data"), "BATON_FLOWS_DIRS": str(flows_dir)}


# -- the API ---------------------------------------------------------------------------------------


@dataclass
class Web:
    client: FlaskClient
    raw: redis.Redis
    keys: Keys

    def start(self, data: dict[str, Any]) -> Any:
        return self.client.post("/v1/workflows", json={"flow": "loyalty_signup", "input": data},
                                headers={"Authorization": "Bearer t-sue"})

    def get(self, path: str) -> Any:
        return self.client.get(path, headers={"Authorization": "Bearer t-vic"})


@pytest.fixture
def web(tmp_path: Path, flows_dir: Path, redis_url: str, keys: Keys) -> Iterator[Web]:
    settings = load_settings(environment(tmp_path, flows_dir, redis_url, keys))
    engine = make_engine(settings.database_url)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    services = build_services(settings)
    raw = connect(redis_url)
    try:
        yield Web(create_app(settings, services).test_client(), raw, keys)
    finally:
        raw.close()
        services.close()


def test_a_kickoff_of_a_declared_flow_is_validated_by_its_declared_schema(web: Web) -> None:
    response = web.start({"member_id": "", "email": "not an address",
                          "interests": [{"topic": "tea"}, {"weight": True}]})
    assert response.status_code == 422, response.get_json()
    assert response.mimetype == "application/problem+json"
    errors = response.get_json()["errors"]
    assert set(errors) == {"input.member_id", "input.email", "input.interests.1.topic",
                           "input.interests.1.weight"}, errors
    assert errors["input.interests.1.topic"] == ["Missing data for required field."]


def test_a_good_kickoff_of_a_declared_flow_emits_its_start_event(web: Web) -> None:
    data = {"member_id": "m-1", "email": "ann@example.com", "newer_field": 1}
    response = web.start(data)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["search_attributes"] == {"member_id": "m-1"}
    entries: Any = web.raw.xrange(web.keys.event_stream("member.joined"))
    [start] = [decode_fields(f) for _, f in entries]
    assert (start.type, start.version, start.data) == ("member.joined", 1, data)


def by_type(flow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["type"]: m for m in flow["messages"]}


def test_get_flow_shows_each_declared_message_type_and_its_schema(web: Web) -> None:
    response = web.get("/v1/flows/loyalty_signup")
    assert response.status_code == 200
    messages = by_type(response.get_json())
    assert list(messages) == ["member.joined", "account.created", "account.creation_failed",
                              "account.delete", "account.deleted", "account.delete_failed",
                              "welcome.sent"]
    joined = messages["member.joined"]
    assert joined["kind"] == "event"
    [v1] = joined["versions"]
    assert (v1["version"], v1["declared"]) == (1, True)
    assert v1["schema"]["required"] == ["member_id", "email"]
    assert v1["schema"]["properties"]["email"] == {"type": "string", "format": "email"}
    assert messages["account.delete"]["kind"] == "command"
    assert messages["account.delete_failed"]["versions"][0]["schema"]["required"] == ["reason"]


def test_get_flow_shows_a_shipped_type_as_json_schema_and_so_does_the_list(web: Web) -> None:
    shipped = by_type(web.get("/v1/flows/order_fulfillment").get_json())
    [placed] = shipped["order.placed"]["versions"]
    assert placed["declared"] is False
    assert placed["schema"]["type"] == "object"
    assert set(placed["schema"]["required"]) == {"order_id", "customer_id", "items", "total_amount",
                                                 "currency"}
    assert shipped["inventory.release"]["kind"] == "command"
    listed = {f["name"]: f for f in web.get("/v1/flows").get_json()["items"]}
    assert by_type(listed["loyalty_signup"])["member.joined"]["versions"][0]["declared"] is True
    assert "order.placed" in by_type(listed["order_fulfillment"])


FAST_ORDERS = """
name: fast_orders
version: 1
start_event: order.placed
command_max_attempts: 4
steps:
  - name: reserve
    participant: inventory
    reacts_to: [order.placed]
    done_on: inventory.reserved
    failed_on: inventory.reservation_failed
    compensation:
      command: inventory.release
      answer: inventory.released
      retry: {initial_interval_seconds: 0.5, max_attempts: 3}
  - name: ship
    kind: command
    participant: shipping
    command: shipment.schedule
    reacts_to: [inventory.reserved]
    done_on: shipment.scheduled
    retry: {backoff_coefficient: 3, max_interval_seconds: 10}
"""


def test_get_flow_shows_the_effective_retry_policy_of_each_step(
        flows_dir: Path, request: pytest.FixtureRequest) -> None:
    (flows_dir / "fast_orders.yaml").write_text(FAST_ORDERS, encoding="utf-8")
    web: Web = request.getfixturevalue("web")  # built after the file is there
    steps = {s["name"]: s for s in web.get("/v1/flows/fast_orders").get_json()["steps"]}
    assert steps["reserve"]["retry"] is None  # an event step: its participant retries its own work
    assert steps["reserve"]["compensation"]["retry"] == {
        "initial_interval_seconds": 0.5, "backoff_coefficient": 2.0, "max_interval_seconds": 30.0,
        "max_attempts": 3}
    assert steps["ship"]["retry"] == {  # max_attempts from the flow's command_max_attempts
        "initial_interval_seconds": 1.0, "backoff_coefficient": 3.0, "max_interval_seconds": 10.0,
        "max_attempts": 4}
    shipped = {s["name"]: s for s in web.get("/v1/flows/price_change").get_json()["steps"]}
    defaults = {"initial_interval_seconds": 1.0, "backoff_coefficient": 2.0,
                "max_interval_seconds": 30.0, "max_attempts": 5}
    assert shipped["evaluate_rules"]["retry"] == shipped["publish_price"]["retry"] == defaults
    assert shipped["publish_price"]["compensation"]["retry"] == defaults
    assert shipped["approve"]["retry"] is None


def test_the_openapi_document_describes_the_message_types(web: Web) -> None:
    document = web.client.get("/v1/openapi.json").get_json()
    schemas = document["components"]["schemas"]
    flow = next(s for name, s in schemas.items() if name.startswith("Flow") and "messages" in
                s.get("properties", {}))
    assert flow["properties"]["messages"]["type"] == "array"
    assert any("versions" in s.get("properties", {}) for s in schemas.values())


# -- a participant run by run_participant ----------------------------------------------------------


def test_a_participant_validates_with_the_declared_types_of_baton_flows_dirs(
        tmp_path: Path, flows_dir: Path, redis_url: str, keys: Keys) -> None:
    script = tmp_path / "accounts.py"
    script.write_text(ACCOUNTS, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    env.update(environment(tmp_path, flows_dir, redis_url, keys))
    env.update({"BATON_PARTICIPANT_DATABASE_URL": f"sqlite:///{tmp_path}/{{name}}.db",
                "BATON_MAX_DELIVERIES": "1", "BATON_VISIBILITY_TIMEOUT": "0.2",
                "BATON_BLOCK_MS": "50", "BATON_LOG_LEVEL": "WARNING"})
    client = connect(redis_url, decode_responses=True)
    samples: dict[str, dict[str, Any]] = {
        "good": {"member_id": "m-1", "email": "ann@example.com"},
        "emits a bad event": {"member_id": "m-2", "email": "bob@example.com",
                              "forget_the_account_id": True},
        "is a bad event": {"member_id": "m-3", "email": "not an address"},
    }
    sent = {name: joined(client, keys, data) for name, data in samples.items()}
    log = (tmp_path / "accounts.log").open("w")
    process = subprocess.Popen([sys.executable, str(script)], env=env, stdout=log, stderr=log,
                               cwd=tmp_path)
    try:
        created: Any = wait_for(lambda: client.xrange(keys.event_stream("account.created")), 30,
                                "account.created")
        dead = wait_for(lambda: _two(client.xrange(keys.dead_stream("accounts"))), 30,
                        "two dead letters")
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()
        client.close()
    [event] = [decode_fields(f) for _, f in created]
    assert event.data == {"member_id": "m-1", "account_id": "acc-m-1"}
    assert event.causation_id == sent["good"].id
    reasons = {f["id"]: f["dead_reason"] for _, f in dead}
    assert "data.account_id" in reasons[sent["emits a bad event"].id]
    assert "data.email" in reasons[sent["is a bad event"].id]
    assert process.returncode == 0, (tmp_path / "accounts.log").read_text()


def joined(client: redis.Redis, keys: Keys, data: dict[str, Any]) -> Envelope:
    event = new_event("member.joined", data, correlation_id=str(uuid.uuid4()), source="test")
    client.xadd(keys.event_stream("member.joined"), event.to_fields())  # type: ignore[arg-type]
    return event


def _two(entries: Any) -> Any:
    return entries if len(entries) >= 2 else None
