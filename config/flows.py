"""Loads the flow definitions (YAML files) shipped under config/flows and any extra directory."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from contracts.errors import FlowDefinitionError
from contracts.flows import Flow, load_flow
from contracts.payloads import Registry

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


def load_file(path: Path, registry: Registry) -> Flow:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise FlowDefinitionError(str(path), {"_file": [str(exc)]}) from exc
    if not isinstance(document, dict):
        raise FlowDefinitionError(str(path), {"_file": ["must be a mapping at the top level"]})
    return load_flow(document, registry, str(path))


def load_catalog(registry: Registry, extra_dirs: Iterable[Path] = ()) -> Catalog:
    flows: dict[tuple[str, int], Flow] = {}
    for directory in (SHIPPED, *extra_dirs):
        for path in sorted(directory.glob("*.y*ml")):
            flow = load_file(path, registry)
            key = (flow.name, flow.version)
            if key in flows and flows[key] != flow:
                raise FlowDefinitionError(
                    str(path), {"version": [f"{flow.name} v{flow.version} is already defined"]}
                )
            flows[key] = flow
    return Catalog(flows)
