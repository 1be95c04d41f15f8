"""Payload schemas of the reference `order_fulfillment` flow (contract v1)."""

from __future__ import annotations

from marshmallow import fields, validate

from contracts.payloads import Amount, EmptyPayload, FailedPayload, Payload, Registry

CURRENCY = validate.Regexp(r"^[A-Z]{3}$", error="must be an ISO 4217 code such as EUR")


class _Order(Payload):
    order_id = fields.Str(required=True, validate=validate.Length(min=1, max=128))


class Item(Payload):
    product_id = fields.Str(required=True, validate=validate.Length(min=1, max=128))
    quantity = fields.Int(required=True, strict=True, validate=validate.Range(min=1))
    unit_price = Amount(required=True, validate=validate.Range(min=0))


class OrderPlaced(_Order):
    customer_id = fields.Str(required=True, validate=validate.Length(min=1, max=128))
    items = fields.List(fields.Nested(Item), required=True, validate=validate.Length(min=1))
    total_amount = Amount(required=True, validate=validate.Range(min=0))
    currency = fields.Str(required=True, validate=CURRENCY)


class Reservation(Payload):
    reservation_id = fields.Str(required=True)
    product_id = fields.Str(required=True)
    quantity = fields.Int(required=True, strict=True, validate=validate.Range(min=1))


class InventoryReserved(_Order):
    reservations = fields.List(fields.Nested(Reservation), required=True)


class PaymentCharged(_Order):
    payment_id = fields.Str(required=True)
    amount = Amount(required=True, validate=validate.Range(min=0))
    currency = fields.Str(required=True, validate=CURRENCY)


class ShipmentScheduled(_Order):
    shipment_id = fields.Str(required=True)
    estimated_delivery = fields.Date(required=True)


class NotificationSent(_Order):
    channel = fields.Str(required=True)


class OrderFailed(_Order, FailedPayload):
    pass


class OrderCommand(_Order, EmptyPayload):
    pass


class RefundPayment(_Order):
    reason = fields.Str(required=True)


class InventoryReleased(_Order):
    released_reservations = fields.List(fields.Str(), required=True)


class PaymentRefunded(_Order):
    payment_id = fields.Str(required=True)
    amount = Amount(required=True, validate=validate.Range(min=0))


class ShipmentCancelled(_Order):
    shipment_id = fields.Str(required=True)


def register(registry: Registry) -> None:
    events = {
        "order.placed": OrderPlaced(),
        "inventory.reserved": InventoryReserved(),
        "inventory.reservation_failed": OrderFailed(),
        "payment.charged": PaymentCharged(),
        "payment.charge_failed": OrderFailed(),
        "shipment.scheduled": ShipmentScheduled(),
        "shipment.scheduling_failed": OrderFailed(),
        "notification.sent": NotificationSent(),
        "inventory.released": InventoryReleased(),
        "payment.refunded": PaymentRefunded(),
        "shipment.cancelled": ShipmentCancelled(),
    }
    commands = {
        "inventory.release": OrderCommand(),
        "payment.refund": RefundPayment(),
        "shipment.cancel": OrderCommand(),
        # The same work as the choreographed steps, for flows that orchestrate a link.
        "inventory.reserve": OrderPlaced(),
        "payment.charge": OrderPlaced(),
        "shipment.schedule": _Order(),
    }
    registry.register_all(events, commands, failed_schema=OrderFailed())
