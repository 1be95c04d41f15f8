"""Bearer tokens with one role each: hashed at load, compared in constant time, never logged.

Every view declares who may call it with `@requires(...)` or `@public`; a test walks the URL map
to make sure no route forgets. `@requires` goes right under `@blp.route`, so that the caller is
known (401/403) before the body is read or validated.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar

from flask import current_app, g, request

from config.settings import Token
from controller.domain.errors import ControllerError

F = TypeVar("F", bound=Callable[..., Any])
ROLE_ATTR = "_baton_roles"
STARTER, VIEWER, OPERATOR = "starter", "viewer", "operator"
READERS = (STARTER, VIEWER, OPERATOR)


class Unauthorized(ControllerError):
    status, title = 401, "Unauthorized"


class Forbidden(ControllerError):
    status, title = 403, "Forbidden"


@dataclass(frozen=True)
class Actor:
    name: str
    role: str

    @property
    def only_own(self) -> bool:
        """A starter reads only the workflows it started."""
        return self.role == STARTER


def authenticate(header: str | None, tokens: tuple[Token, ...]) -> Actor:
    if not header or not header.startswith("Bearer ") or not header[7:].strip():
        raise Unauthorized("an Authorization: Bearer <token> header is required")
    digest = hashlib.sha256(header[7:].strip().encode()).hexdigest()
    found = None
    for token in tokens:  # no early exit: the time taken does not depend on which token matched
        if hmac.compare_digest(digest, token.sha256):
            found = token
    if found is None:
        raise Unauthorized("unknown token")
    return Actor(found.name, found.role)


def requires(*roles: str) -> Callable[[F], F]:
    def decorate(view: F) -> F:
        @wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            actor = authenticate(request.headers.get("Authorization"),
                                 current_app.extensions["baton"].settings.tokens)
            if actor.role not in roles:
                raise Forbidden(f"role {actor.role} may not {request.method} {request.path}")
            g.actor = actor
            return view(*args, **kwargs)
        setattr(guarded, ROLE_ATTR, roles)
        return guarded  # type: ignore[return-value]
    return decorate


def public(view: F) -> F:
    setattr(view, ROLE_ATTR, ())
    return view


def current_actor() -> Actor:
    actor: Actor = g.actor
    return actor
