"""A Mermaid flowchart of a flow definition, served with it."""

from __future__ import annotations

from contracts.flows import Flow


def mermaid(flow: Flow) -> str:
    lines = ["flowchart LR", f'  start(["{flow.start_event}"])']
    producers = {s.done_on: s.name for s in flow.steps}
    for step in flow.steps:
        shape = ("{{", "}}") if step.kind == "approval" else ("[", "]")
        label = f"{step.name}<br/>{step.participant} ({step.kind})"
        lines.append(f'  {step.name}{shape[0]}"{label}"{shape[1]}')
    for step in flow.steps:
        for event in step.reacts_to:
            source = "start" if event == flow.start_event else producers.get(event, "start")
            lines.append(f"  {source} -- {event} --> {step.name}")
        if step.compensation:
            lines.append(f"  {step.name} -. {step.compensation.command} .-> {step.name}")
    done = " & ".join(flow.completes_when)
    lines.append(f'  {done} --> completed(["completed"])')
    return "\n".join(lines)
