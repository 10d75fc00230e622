"""`streamvault status`: every process of a running cluster, as the controller sees it."""

from __future__ import annotations

import json

from streamvault.client.controller_client import ControllerClient
from streamvault.client.protocol import messages as m

FIELDS = ("role", "id", "pid", "endpoint", "state", "containers", "info", "age_s")


def fetch(controller: str, timeout_s: float) -> list[dict]:
    client = ControllerClient(controller, timeout_s=timeout_s)
    try:
        reply = client.call(m.GetStatus())
    finally:
        client.close()
    return [{f: getattr(p, f) for f in FIELDS} for p in reply.processes]


def render(processes: list[dict], as_json: bool) -> str:
    if as_json:
        return json.dumps(processes, indent=2, sort_keys=True)
    lines = [f"{'role':<11} {'id':<4} {'pid':>8}  {'state':<13} endpoint"]
    for p in processes:
        lines.append(
            f"{p['role']:<11} {p['id']:<4} {p['pid']:>8}  {p['state']:<13} {p['endpoint']}"
        )
        if p["role"] == "worker":
            info = p["info"]
            lines.append(
                f"{'':<11} containers={p['containers']} "
                f"durability_mode={info.get('durability_mode', '?')} "
                f"appends={info.get('appends', 0)} records={info.get('records', 0)}"
            )
        stages = stage_line(p["info"].get("latency_ms"))
        if stages:
            lines.append(f"{'':<11} latency ms (p50/p95/max over the last samples): {stages}")
    return "\n".join(lines)


def stage_line(latency: object) -> str:
    """Each stage a process timed, as "name p50/p95/max" in ms (an info's "latency_ms",
    client/protocol/latency.py); empty if it timed none."""
    if not isinstance(latency, dict):
        return ""
    parts = [
        f"{name} {s['p50']:g}/{s['p95']:g}/{s['max']:g}"
        for name, s in sorted(latency.items())
        if isinstance(s, dict) and "p50" in s
    ]
    return ", ".join(parts)
