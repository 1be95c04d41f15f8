"""The shape of a row of the action table (`interventions.ACTIONS`): everything the REST routes,
the `baton` commands, the bulk action's schema and the OpenAPI document are built from."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from marshmallow import Schema

from controller.domain import lifecycle as lc
from controller.domain.statuses import WorkflowStatus

# The pure decision: `(flow, wf, now=..., **params)`, mutating the workflow; NotApplicable if not.
Decide = Callable[..., list[lc.Effect]]
_PATH_ARG = re.compile(r"<(\w+)>")


@dataclass(frozen=True)
class CliOption:
    """An option of the action's `baton` command that fills one field of the request body."""

    flag: str  # "--at"
    field: str  # the body's field: "deadline"
    help: str | None = None
    type: type = str
    json: bool = False  # the value is JSON, or @file holding it


@dataclass(frozen=True)
class BulkUse:
    """The action may be a bulk action (`POST /v1/workflows/actions`) taking these body fields."""

    params: tuple[str, ...] = ()
    required: tuple[str, ...] = ()


@dataclass(frozen=True)
class Action:
    name: str  # as the audit and a bulk action's body name it
    decide: Decide
    applies_to: tuple[WorkflowStatus, ...]  # the statuses it applies to: 409 on any other
    body: type[Schema]  # the request body
    path: str  # after /v1/workflows/<cid>/, in Flask's syntax: "steps/<step>/skip"
    summary: str | None  # the OpenAPI operation's
    description: str | None = None
    params: tuple[str, ...] = ()  # the body's fields the decision takes, besides the path's
    reason_as: str | None = None  # the decision's name for the body's reason, if it takes it
    bulk: BulkUse | None = None
    cli_help: str = ""
    cli_options: tuple[CliOption, ...] = ()

    @property
    def path_args(self) -> tuple[str, ...]:
        return tuple(_PATH_ARG.findall(self.path))

    def url_path(self, **args: str) -> str:
        """The path with its arguments filled in: `steps/charge_payment/skip`."""
        return _PATH_ARG.sub(lambda m: args[m.group(1)], self.path)

    def decision_params(self, body: Mapping[str, Any], path: Mapping[str, str]) -> dict[str, Any]:
        """What the decision takes from a validated request: the path's arguments, then its
        fields of the body (None where absent)."""
        params: dict[str, Any] = {**path, **{p: body.get(p) for p in self.params}}
        if self.reason_as:
            params[self.reason_as] = body["reason"]
        return params

    def bulk_params(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return {p: body.get(p) for p in (self.bulk.params if self.bulk else ())}


def bulk_actions(actions: Iterable[Action]) -> dict[str, dict[str, bool]]:
    """The bulk actions, each with the body fields it takes, True where required: for the
    schema (`contracts.api.bulk_body`), which may not import the controller."""
    return {a.name: {p: p in a.bulk.required for p in a.bulk.params} for a in actions if a.bulk}
