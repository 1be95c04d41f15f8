"""Errors raised when a message, payload or flow definition breaks the contract."""

from __future__ import annotations


class ContractError(Exception):
    """Base of every contract violation."""


class InvalidMessage(ContractError):
    """A stream entry or payload failed validation; `errors` is keyed by field."""

    def __init__(self, errors: dict[str, object]) -> None:
        self.errors = errors
        fields = ", ".join(sorted(errors))
        super().__init__(f"invalid message: {fields}: {errors}")


class UnknownMessageType(ContractError):
    def __init__(self, message_type: str) -> None:
        self.message_type = message_type
        super().__init__(f"no schema is registered for message type {message_type!r}")


class UnsupportedVersion(ContractError):
    def __init__(self, message_type: str, version: int, supported: list[int]) -> None:
        self.message_type = message_type
        self.version = version
        self.supported = supported
        super().__init__(
            f"{message_type!r} has no schema version {version}; supported: {supported}"
        )


class FlowDefinitionError(ContractError):
    """A flow file is malformed; names the file and the field at fault."""

    def __init__(self, source: str, errors: dict[str, object]) -> None:
        self.source = source
        self.errors = errors
        super().__init__(f"flow definition {source} is invalid: {errors}")
