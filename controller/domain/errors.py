"""The controller's errors; each carries the HTTP status one Flask handler maps it to."""

from __future__ import annotations


class ControllerError(Exception):
    status = 500
    title = "Internal Server Error"
    headers: dict[str, str] | None = None

    def __init__(self, detail: str, errors: dict[str, object] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors


class NotFound(ControllerError):
    status, title = 404, "Not Found"


class Conflict(ControllerError):
    status, title = 409, "Conflict"


class InvalidInput(ControllerError):
    status, title = 422, "Unprocessable Entity"


class Overloaded(ControllerError):
    status, title = 429, "Too Many Requests"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after)}
