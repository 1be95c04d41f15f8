"""Loads the flow definitions (YAML files) shipped under config/flows and any extra directory,
and the message types their `messages:` sections declare."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from contracts.declarations import declare, read_messages
from contracts.errors import FlowDefinitionError
from contracts.flows import Flow, load_flow
from contracts.payloads import Registry
from contracts.registry import default_registry

SHIPPED = Path(__file__).parent / "flows"


@dataclass(frozen=True)
class Catalog:
    """Every loaded version of every flow; a new version applies to workflows started after it."""

    flows: dict[tuple[str, int], Flow] = field(default_factory=dict)

    def latest(self, name: str) -> Flow:
        versions = [f for (n, _), f in self.flows.items() if n == name]
        if not versions:
            raise KeyError(name)
        return max(versions, key=lambda f: f.version)

    def get(self, name: str, version: int) -> Flow:
        return self.flows[(name, version)]

    def names(self) -> list[str]:
        return sorted({n for n, _ in self.flows})

    def all_latest(self) -> list[Flow]:
        return [self.latest(n) for n in self.names()]

    def event_types(self) -> list[str]:
        """The event streams the controller reads: those of every loaded version."""
        seen: dict[str, None] = {}
        for flow in self.flows.values():
            seen.update(dict.fromkeys(flow.event_types()))
        return list(seen)


Document = tuple[Path, dict[str, Any]]


# libyaml's loader when PyYAML has it (its wheels do): the pure-Python one took about 60 ms for
# bulk_repricing.yaml, and every process reads every flow file as it starts.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_file(path: Path) -> dict[str, Any]:
    try:
        document = yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise FlowDefinitionError(str(path), {"_file": [str(exc)]}) from exc
    if not isinstance(document, dict):
        raise FlowDefinitionError(str(path), {"_file": ["must be a mapping at the top level"]})
    return document


def load_file(path: Path, registry: Registry) -> Flow:
    """One flow file, its declared message types registered first."""
    document = read_file(path)
    _declare(registry, [(path, document)])
    return load_flow(document, registry, str(path))


def load_registry(flows_dirs: Iterable[Path] = ()) -> Registry:
    """The shipped schemas and every message type the shipped and extra flow files declare:
    what every process (controller, API, participants) validates payloads with."""
    registry = default_registry()
    _declare(registry, _read_all(flows_dirs))
    return registry


def load_catalog(registry: Registry, extra_dirs: Iterable[Path] = ()) -> Catalog:
    """Every flow, after every file's message types are registered in `registry`: a flow may
    use a type another file declares, and a file with only `messages:` declares types alone."""
    documents = _read_all(extra_dirs)
    _declare(registry, documents)
    flows: dict[tuple[str, int], Flow] = {}
    for path, document in documents:
        if set(document) == {"messages"}:
            continue
        flow = load_flow(document, registry, str(path))
        key = (flow.name, flow.version)
        if key in flows and flows[key] != flow:
            raise FlowDefinitionError(
                str(path), {"version": [f"{flow.name} v{flow.version} is already defined"]}
            )
        flows[key] = flow
    return Catalog(flows)


def _read_all(extra_dirs: Iterable[Path]) -> list[Document]:
    return [(path, read_file(path)) for directory in (SHIPPED, *extra_dirs)
            for path in sorted(directory.glob("*.y*ml"))]


def _declare(registry: Registry, documents: Iterable[Document]) -> None:
    for path, document in documents:
        declare(registry, read_messages(document.get("messages"), str(path)))
