"""Flow definitions: the shipped catalog, and every malformed file refused at load time by file and field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.flows import SHIPPED, Catalog, load_catalog, load_file
from contracts.errors import FlowDefinitionError
from contracts.flows import COMMAND_STEP, Compensation, RetryPolicy, load_flow
from contracts.payloads import Registry
from contracts.registry import default_registry

REFERENCE = SHIPPED / "order_fulfillment.yaml"


@pytest.fixture
def registry() -> Registry:
    return default_registry()


def reference_document() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(REFERENCE.read_text(encoding="utf-8"))
    return document


def small_flow(**overrides: Any) -> dict[str, Any]:
    """A valid two-step flow over the reference message types, under a name of its own."""
    document: dict[str, Any] = {
        "name": "small_order",
        "version": 1,
        "start_event": "order.placed",
        "steps": [
            {"name": "reserve", "participant": "inventory", "reacts_to": ["order.placed"],
             "done_on": "inventory.reserved", "failed_on": "inventory.reservation_failed",
             "compensation": {"command": "inventory.release", "answer": "inventory.released"}},
            {"name": "charge", "participant": "payment", "reacts_to": ["inventory.reserved"],
             "done_on": "payment.charged", "failed_on": "payment.charge_failed"},
        ],
    }
    document.update(overrides)
    return document


def write(directory: Path, name: str, document: dict[str, Any] | str) -> Path:
    path = directory / name
    text = document if isinstance(document, str) else yaml.safe_dump(document, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def refused(path: Path, registry: Registry) -> FlowDefinitionError:
    """Loaded both alone and as part of a catalog: refused the same way, naming the file."""
    with pytest.raises(FlowDefinitionError) as alone:
        load_file(path, registry)
    with pytest.raises(FlowDefinitionError) as in_catalog:
        load_catalog(registry, [path.parent])
    for error in (alone.value, in_catalog.value):
        assert error.source == str(path)
        assert str(path) in str(error)
    assert alone.value.errors == in_catalog.value.errors
    return alone.value


# -- the shipped catalog ---------------------------------------------------------------------------


def test_the_shipped_catalog_loads_the_reference_flow(registry: Registry) -> None:
    catalog = load_catalog(registry)
    assert catalog.names() == ["bulk_repricing", "order_fulfillment", "price_change"]
    flow = catalog.latest("order_fulfillment")
    assert catalog.get("order_fulfillment", 1) is flow
    assert [f.name for f in catalog.all_latest()] == ["bulk_repricing", "order_fulfillment", "price_change"]
    assert (flow.version, flow.start_event, flow.sla_seconds) == (1, "order.placed", 300)
    assert flow.completes_when == ("schedule_shipment",)
    assert flow.search_attributes == ("order_id", "customer_id")
    assert [(s.name, s.kind, s.participant) for s in flow.steps] == [
        ("reserve_inventory", "event", "inventory"),
        ("charge_payment", "event", "payment"),
        ("schedule_shipment", "event", "shipping"),
        ("send_confirmation", "event", "notification"),
    ]
    assert all(s.sla_seconds == 60 for s in flow.steps)
    assert flow.step("schedule_shipment").reacts_to == ("inventory.reserved", "payment.charged")
    assert flow.step("charge_payment").compensation == Compensation("payment.refund", "payment.refunded")
    assert flow.step("charge_payment").compensation.failed_answer == "payment.refund_failed"  # type: ignore[union-attr]
    confirmation = flow.step("send_confirmation")
    assert (confirmation.required, confirmation.failed_on, confirmation.compensation) == (False, None, None)
    with pytest.raises(KeyError):
        flow.step("no_such_step")
    with pytest.raises(KeyError):
        catalog.latest("no_such_flow")


def test_the_event_types_of_order_fulfillment(registry: Registry) -> None:
    flow = load_catalog(registry).latest("order_fulfillment")
    types = flow.event_types()
    assert len(types) == len(set(types))
    assert types[0] == "order.placed"
    assert set(types) == {
        "order.placed",
        "inventory.reserved", "inventory.reservation_failed", "inventory.released",
        "inventory.release_failed",
        "payment.charged", "payment.charge_failed", "payment.refunded", "payment.refund_failed",
        "shipment.scheduled", "shipment.scheduling_failed", "shipment.cancelled", "shipment.cancel_failed",
        "notification.sent",
    }
    assert all(registry.kind(t) == "event" for t in types)
    assert set(types) <= set(load_catalog(registry).event_types())  # with price_change's


def test_a_command_step_gets_its_failed_answer_as_failed_on(registry: Registry) -> None:
    document = reference_document()
    step = document["steps"][2]
    step.update(kind="command", command="shipment.schedule")
    del step["failed_on"]
    flow = load_flow(document, registry, "inline")
    shipment = flow.step("schedule_shipment")
    assert (shipment.kind, shipment.command, shipment.failed_on) == (
        COMMAND_STEP, "shipment.schedule", "shipment.schedule_failed")
    assert "shipment.schedule_failed" in flow.event_types()


def test_defaults_apply_when_a_flow_omits_them(registry: Registry) -> None:
    flow = load_flow(small_flow(), registry, "inline")
    assert (flow.sla_seconds, flow.command_timeout_seconds, flow.command_max_attempts) == (300, 10.0, 5)
    assert [s.sla_seconds for s in flow.steps] == [60, 60]
    assert flow.completes_when == ("reserve", "charge")  # every required step
    assert (flow.search_attributes, flow.alert_webhook, flow.description) == ((), None, "")


def test_an_extra_directory_adds_flows_and_versions(tmp_path: Path, registry: Registry) -> None:
    write(tmp_path, "small_v1.yaml", small_flow())
    write(tmp_path, "small_v2.yml", small_flow(version=2, sla_seconds=90))
    write(tmp_path, "README.txt", "not a flow: ignored")
    catalog = load_catalog(registry, [tmp_path])
    assert catalog.names() == ["bulk_repricing", "order_fulfillment", "price_change", "small_order"]
    assert catalog.latest("small_order").version == 2
    assert catalog.get("small_order", 1).sla_seconds == 300
    assert catalog.get("small_order", 2).sla_seconds == 90


def test_the_same_definition_in_two_files_is_accepted(tmp_path: Path, registry: Registry) -> None:
    write(tmp_path, "copy.yaml", reference_document())
    catalog = load_catalog(registry, [tmp_path])
    assert list(catalog.flows) == [("bulk_repricing", 1), ("order_fulfillment", 1), ("price_change", 1)]
    assert isinstance(catalog, Catalog)


# -- refused at load time, naming the file and the field -------------------------------------------


def test_a_yaml_syntax_error(tmp_path: Path, registry: Registry) -> None:
    path = write(tmp_path, "broken.yaml", "name: broken\nsteps: [\n  - {name: a\n")
    error = refused(path, registry)
    assert set(error.errors) == {"_file"}


@pytest.mark.parametrize("text", ["- just\n- a list\n", "just a string\n", ""])
def test_a_document_that_is_not_a_mapping(tmp_path: Path, registry: Registry, text: str) -> None:
    error = refused(write(tmp_path, "odd.yaml", text), registry)
    assert error.errors == {"_file": ["must be a mapping at the top level"]}


def test_an_unknown_top_level_field(tmp_path: Path, registry: Registry) -> None:
    error = refused(write(tmp_path, "colour.yaml", small_flow(colour="blue")), registry)
    assert set(error.errors) == {"colour"}
    assert "Unknown field" in str(error.errors["colour"])


def test_an_unknown_step_field(tmp_path: Path, registry: Registry) -> None:
    document = small_flow()
    document["steps"][1]["retries"] = 3
    error = refused(write(tmp_path, "retries.yaml", document), registry)
    assert error.errors == {"steps": {1: {"retries": ["Unknown field."]}}}


@pytest.mark.parametrize("field", ["done_on", "failed_on"])
def test_an_undeclared_event_type(tmp_path: Path, registry: Registry, field: str) -> None:
    document = small_flow()
    document["steps"][1][field] = "payment.teleported"
    error = refused(write(tmp_path, "undeclared.yaml", document), registry)
    assert error.errors == {f"steps.1.{field}": ["payment.teleported is not a declared message type"]}


def test_an_undeclared_start_event(tmp_path: Path, registry: Registry) -> None:
    document = small_flow(start_event="order.dreamed")
    document["steps"][0]["reacts_to"] = ["order.dreamed"]
    error = refused(write(tmp_path, "start.yaml", document), registry)
    assert error.errors["start_event"] == ["order.dreamed is not a declared message type"]
    assert "steps.0.reacts_to" in error.errors


def test_a_join_on_an_event_no_step_emits(tmp_path: Path, registry: Registry) -> None:
    document = small_flow()
    # declared, and an event, but emitted by no step of this flow: the step could never start
    document["steps"][1]["reacts_to"] = ["inventory.reserved", "notification.sent"]
    error = refused(write(tmp_path, "join.yaml", document), registry)
    assert error.errors == {"steps.1.reacts_to": ["notification.sent is emitted by no step of this flow"]}


def test_a_step_with_no_done_on(tmp_path: Path, registry: Registry) -> None:
    document = small_flow()
    del document["steps"][1]["done_on"]
    error = refused(write(tmp_path, "endless.yaml", document), registry)
    assert error.errors == {"steps": {1: {"done_on": ["Missing data for required field."]}}}


def test_a_step_that_reacts_to_nothing(tmp_path: Path, registry: Registry) -> None:
    document = small_flow()
    document["steps"][1]["reacts_to"] = []
    error = refused(write(tmp_path, "orphan.yaml", document), registry)
    assert set(error.errors["steps"][1]) == {"reacts_to"}  # type: ignore[index]


def test_a_command_step_without_its_command(tmp_path: Path, registry: Registry) -> None:
    document = small_flow()
    document["steps"][1]["kind"] = "command"
    error = refused(write(tmp_path, "mute.yaml", document), registry)
    assert error.errors == {"steps.1.command": ["a step of kind command needs the command it sends"]}


def test_a_command_on_a_step_that_is_not_of_kind_command(tmp_path: Path, registry: Registry) -> None:
    document = small_flow()
    document["steps"][1]["command"] = "payment.charge"
    error = refused(write(tmp_path, "chatty.yaml", document), registry)
    assert error.errors == {"steps.1.command": ["only steps of kind command send one, not event"]}


def test_a_command_that_is_registered_as_an_event(tmp_path: Path, registry: Registry) -> None:
    document = small_flow()
    document["steps"][1].update(kind="command", command="payment.charged")
    error = refused(write(tmp_path, "event_as_command.yaml", document), registry)
    assert error.errors == {"steps.1.command": ["payment.charged is a event, not a command"]}


def test_a_done_on_that_is_a_command(tmp_path: Path, registry: Registry) -> None:
    document = small_flow()
    document["steps"][1]["done_on"] = "payment.charge"
    error = refused(write(tmp_path, "command_as_event.yaml", document), registry)
    assert error.errors == {"steps.1.done_on": ["payment.charge is a command, not a event"]}


def test_a_compensation_whose_command_is_an_event(tmp_path: Path, registry: Registry) -> None:
    document = small_flow()
    document["steps"][0]["compensation"] = {"command": "inventory.released", "answer": "inventory.released"}
    error = refused(write(tmp_path, "compensation.yaml", document), registry)
    assert set(error.errors) == {"steps.0.compensation.command"}


def test_duplicate_step_names(tmp_path: Path, registry: Registry) -> None:
    document = small_flow()
    document["steps"][1]["name"] = "reserve"
    error = refused(write(tmp_path, "twins.yaml", document), registry)
    assert error.errors == {"steps": ["step names must be unique"]}


def test_completes_when_naming_a_missing_step(tmp_path: Path, registry: Registry) -> None:
    error = refused(write(tmp_path, "ghost.yaml", small_flow(completes_when=["charge", "ship"])), registry)
    assert error.errors == {"completes_when": ["no such step: ship"]}


@pytest.mark.parametrize(("field", "value"), [
    ("version", 0), ("version", "1"), ("sla_seconds", 0), ("name", "Small Order"),
    ("command_max_attempts", 0), ("steps", []),
])
def test_a_malformed_value_names_its_field(tmp_path: Path, registry: Registry, field: str,
                                           value: object) -> None:
    error = refused(write(tmp_path, "bad.yaml", small_flow(**{field: value})), registry)
    assert set(error.errors) == {field}


def test_two_files_defining_the_same_name_and_version_differently(tmp_path: Path, registry: Registry) -> None:
    first = write(tmp_path, "a_small.yaml", small_flow())
    second = write(tmp_path, "b_small.yaml", small_flow(sla_seconds=120))
    assert load_file(first, registry) != load_file(second, registry)
    with pytest.raises(FlowDefinitionError) as caught:
        load_catalog(registry, [tmp_path])
    assert caught.value.source == str(second)
    assert caught.value.errors == {"version": ["small_order v1 is already defined"]}


def test_an_extra_file_redefining_the_shipped_flow_is_refused(tmp_path: Path, registry: Registry) -> None:
    document = copy.deepcopy(reference_document())
    document["sla_seconds"] = 30
    path = write(tmp_path, "order_fulfillment.yaml", document)
    with pytest.raises(FlowDefinitionError) as caught:
        load_catalog(registry, [tmp_path])
    assert caught.value.source == str(path)
    assert "order_fulfillment v1 is already defined" in str(caught.value)


def test_a_bad_file_stops_the_whole_catalog(tmp_path: Path, registry: Registry) -> None:
    write(tmp_path, "a_good.yaml", small_flow())
    bad = write(tmp_path, "b_bad.yaml", small_flow(name="other", completes_when=["nope"]))
    with pytest.raises(FlowDefinitionError) as caught:
        load_catalog(registry, [tmp_path])
    assert caught.value.source == str(bad)


def test_load_flow_names_the_source_it_was_given(registry: Registry) -> None:
    with pytest.raises(FlowDefinitionError, match="flow definition from-the-api is invalid"):
        load_flow(small_flow(version=-1), registry, "from-the-api")


# -- a step with no way to finish ------------------------------------------------------------------


def test_a_step_that_reacts_to_its_own_done_on(tmp_path: Path, registry: Registry) -> None:
    document = small_flow()
    document["steps"][1]["reacts_to"] = ["payment.charged"]
    error = refused(write(tmp_path, "ouroboros.yaml", document), registry)
    assert error.errors == {
        "steps.1.done_on": [
            "payment.charged is also what the step reacts to: what starts it would finish it"],
        "steps.1.reacts_to": ["the step can never start: nothing that can run emits payment.charged"],
    }


def test_two_steps_each_waiting_for_the_other(tmp_path: Path, registry: Registry) -> None:
    document = reference_document()  # the steps after them can never start either
    document["steps"][0]["reacts_to"] = ["payment.charged"]
    document["steps"][1]["reacts_to"] = ["inventory.reserved"]
    error = refused(write(tmp_path, "deadlock.yaml", document), registry)
    assert error.errors == {
        "steps.0.reacts_to": ["the step can never start: nothing that can run emits payment.charged"],
        "steps.1.reacts_to": ["the step can never start: nothing that can run emits inventory.reserved"],
        "steps.2.reacts_to": ["the step can never start: nothing that can run emits "
                              "inventory.reserved, payment.charged"],
        "steps.3.reacts_to": ["the step can never start: nothing that can run emits payment.charged"],
    }


def test_reachability_does_not_depend_on_the_order_of_the_steps(registry: Registry) -> None:
    document = reference_document()
    document["steps"].reverse()
    flow = load_flow(document, registry, "inline")
    assert flow.steps[0].name == "send_confirmation"


@pytest.mark.parametrize("field", ["done_on", "failed_on"])
def test_an_outcome_that_is_the_start_event(tmp_path: Path, registry: Registry, field: str) -> None:
    document = small_flow()
    document["steps"][1][field] = "order.placed"
    error = refused(write(tmp_path, "instant.yaml", document), registry)
    assert error.errors == {
        f"steps.1.{field}": ["order.placed is the flow's start event, published when a workflow starts"]}


def test_an_outcome_that_is_a_lifecycle_event(tmp_path: Path, registry: Registry) -> None:
    document = small_flow()
    document["steps"][1]["done_on"] = "workflow.completed"
    error = refused(write(tmp_path, "lifecycle.yaml", document), registry)
    assert error.errors == {"steps.1.done_on": [
        "workflow.completed is announced by the controller about the workflow, not by payment"]}


def test_an_event_that_would_finish_two_steps(tmp_path: Path, registry: Registry) -> None:
    document = small_flow()
    document["steps"][1]["failed_on"] = "inventory.reservation_failed"
    error = refused(write(tmp_path, "shared.yaml", document), registry)
    assert error.errors == {"steps.1.failed_on": [
        "inventory.reservation_failed is already the failed_on of step reserve: one event, one step"]}


def test_a_step_done_and_failed_on_the_same_event(tmp_path: Path, registry: Registry) -> None:
    document = small_flow()
    document["steps"][1]["failed_on"] = "payment.charged"
    error = refused(write(tmp_path, "both.yaml", document), registry)
    assert error.errors == {"steps.1.failed_on": [
        "payment.charged is already the done_on of step charge: one event, one step"]}


# -- retry policies (contract v1.1) ----------------------------------------------------------------


def with_retry(step: dict[str, Any] | None = None, compensation: dict[str, Any] | None = None,
               **overrides: Any) -> dict[str, Any]:
    """small_flow whose second step is a command step; `step` and `compensation` are its policies."""
    document = small_flow(**overrides)
    document["steps"][1] = {"name": "ship", "kind": "command", "participant": "shipping",
                            "command": "shipment.schedule", "reacts_to": ["inventory.reserved"],
                            "done_on": "shipment.scheduled",
                            "compensation": {"command": "shipment.cancel", "answer": "shipment.cancelled"}}
    if step is not None:
        document["steps"][1]["retry"] = step
    if compensation is not None:
        document["steps"][1]["compensation"]["retry"] = compensation
    return document


def test_every_command_and_compensation_gets_the_default_retry_policy(registry: Registry) -> None:
    flow = load_flow(with_retry(), registry, "test")
    default = RetryPolicy(initial_interval_seconds=1.0, backoff_coefficient=2.0,
                          max_interval_seconds=30.0, max_attempts=5)
    ship = flow.step("ship")
    assert ship.retry == default and ship.compensation is not None and ship.compensation.retry == default
    reserve = flow.step("reserve")
    assert reserve.retry is None, "an event step's participant retries its own work"
    assert reserve.compensation is not None and reserve.compensation.retry == default


def test_a_retry_policy_overrides_the_defaults_and_command_max_attempts_is_its_default(
        registry: Registry) -> None:
    flow = load_flow(with_retry({"initial_interval_seconds": 0.5, "backoff_coefficient": 3},
                                {"max_attempts": 2}, command_max_attempts=7), registry, "test")
    ship = flow.step("ship")
    assert ship.retry == RetryPolicy(0.5, 3.0, 30.0, 7)
    assert ship.compensation is not None and ship.compensation.retry == RetryPolicy(1.0, 2.0, 30.0, 2)
    assert [ship.retry.interval(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.5, 4.5, 13.5, 30.0]


@pytest.mark.parametrize(("policy", "field"), [
    ({"initial_interval": 1}, "initial_interval"),  # unknown key
    ({"initial_interval_seconds": 0}, "initial_interval_seconds"),
    ({"initial_interval_seconds": "soon"}, "initial_interval_seconds"),
    ({"backoff_coefficient": 0.5}, "backoff_coefficient"),
    ({"max_interval_seconds": -1}, "max_interval_seconds"),
    ({"initial_interval_seconds": 60}, "max_interval_seconds"),  # above the default 30 s cap
    ({"max_attempts": 0}, "max_attempts"),
    ({"max_attempts": 1.5}, "max_attempts"),
    ({"max_attempts": 1000}, "max_attempts"),
])
@pytest.mark.parametrize("where", ["step", "compensation"])
def test_a_malformed_retry_policy_is_refused_at_load_naming_its_field(
        tmp_path: Path, registry: Registry, policy: dict[str, Any], field: str, where: str) -> None:
    document = with_retry(**{where: policy})
    error = refused(write(tmp_path, "bad.yaml", document), registry)
    found: Any = error.errors
    for key in ["steps", 1, *(["retry"] if where == "step" else ["compensation", "retry"])]:
        found = found[key]
    assert set(found) == {field}


def test_a_retry_policy_on_an_event_step_is_refused(tmp_path: Path, registry: Registry) -> None:
    document = small_flow()
    document["steps"][0]["retry"] = {"max_attempts": 3}
    error = refused(write(tmp_path, "bad.yaml", document), registry)
    assert error.errors == {"steps": {0: {"retry": [
        "only a step of kind command is retried by the controller; an event step's participant "
        "retries its own work"]}}}


def test_progress_on_names_declared_events_which_the_flow_then_reads(
        tmp_path: Path, registry: Registry) -> None:
    good = load_file(write(tmp_path, "a.yaml", small_flow(progress_on=["order.placed"])), registry)
    assert good.progress_on == ("order.placed",)
    aside = load_file(write(tmp_path, "c.yaml", small_flow(name="aside",
                                                           progress_on=["payment.refunded"])), registry)
    assert "payment.refunded" in aside.event_types()  # no step waits for it: read all the same
    with pytest.raises(FlowDefinitionError) as caught:
        load_file(write(tmp_path, "b.yaml", small_flow(name="other",
                                                       progress_on=["payment.refund", "no.such"])),
                  registry)
    assert caught.value.errors == {"progress_on": ["payment.refund is not a declared event",
                                                   "no.such is not a declared event"]}
