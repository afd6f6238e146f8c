"""A compliance report as NIST OSCAL assessment results (JSON, OSCAL 1.2).

One result covers the report's period. Each assessed control is a finding whose target is
the control (``objective-id``): ``met`` is ``satisfied`` (reason ``pass``), ``partial`` and
``not_met`` are ``not-satisfied`` (reasons ``other`` and ``fail``), each with weightvault's
own status and reason as a property and remarks; ``not_applicable`` controls are listed as
reviewed but get no finding. Each cited log event is an observation whose relevant evidence
points at the event by log index (``#log-<index>``), so an assessor's tool keeps the link
to the proof in the report. UUIDs are derived from the report's digest, so rendering the
same report twice gives the same document.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import uuid
from collections.abc import Mapping
from typing import Any, Final

from weightvault.auditlog.events import decode_event
from weightvault.encoding import canonical_json

__all__ = ["OSCAL_VERSION", "to_oscal"]

OSCAL_VERSION: Final = "1.2.1"
NS: Final = "https://weightvault.dev/ns/oscal"
_STATE: Final = {
    "met": ("satisfied", "pass"),
    "partial": ("not-satisfied", "other"),
    "not_met": ("not-satisfied", "fail"),
}


def _iso(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat(timespec="seconds")


def to_oscal(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The OSCAL ``assessment-results`` document for report ``doc``."""
    digest = hashlib.sha256(canonical_json(dict(doc))).hexdigest()
    base = uuid.uuid5(uuid.NAMESPACE_URL, f"urn:weightvault:report:{digest}")

    def uid(name: str) -> str:
        return str(uuid.uuid5(base, name))

    scope = doc["scope"]
    until = int(scope["until"])
    since = int(scope["since"]) if scope.get("since") is not None else None
    events = {}
    for item in doc["evidence"]:
        events[int(item["index"])] = decode_event(base64.b64decode(str(item["entry"])))
    observations = [
        {
            "uuid": uid(f"log-{index}"),
            "title": f"log entry {index}: {event.type}",
            "description": f"{event.type} by {event.actor} on {event.resource} (tenant {event.tenant})",
            "methods": ["EXAMINE"],
            "collected": _iso(event.ts),
            "relevant-evidence": [
                {
                    "href": f"#log-{index}",
                    "description": f"audit log entry {index}, with its inclusion proof in the weightvault report",
                }
            ],
        }
        for index, event in sorted(events.items())
    ]
    findings = []
    for control in doc["controls"]:
        state = _STATE.get(control["status"])
        if state is None:
            continue
        finding: dict[str, Any] = {
            "uuid": uid(f"finding-{control['id']}"),
            "title": f"{control['id']}: {control['title']}",
            "description": control["reason"],
            "props": [{"name": "status", "ns": NS, "value": control["status"]}],
            "target": {
                "type": "objective-id",
                "target-id": control["id"],
                "status": {"state": state[0], "reason": state[1]},
            },
        }
        if control["evidence"]:
            finding["related-observations"] = [{"observation-uuid": uid(f"log-{i}")} for i in control["evidence"]]
        findings.append(finding)
    tenant = scope.get("tenant") or "the whole broker"
    result: dict[str, Any] = {
        "uuid": uid("result"),
        "title": f"weightvault controls, {tenant}",
        "description": (
            f"Controls of catalogue {doc['catalogue']['name']} {doc['catalogue']['version']} assessed from the "
            f"audit log {doc['log']['origin']} at size {doc['log']['size']}"
        ),
        "start": _iso(since if since is not None else until),
        "end": _iso(until),
        "reviewed-controls": {
            "control-selections": [{"include-controls": [{"control-id": c["id"]} for c in doc["controls"]]}]
        },
    }
    if observations:
        result["observations"] = observations
    if findings:
        result["findings"] = findings
    return {
        "assessment-results": {
            "uuid": uid("assessment-results"),
            "metadata": {
                "title": f"weightvault compliance report: {tenant}",
                "last-modified": _iso(until),
                "version": doc["catalogue"]["version"],
                "oscal-version": OSCAL_VERSION,
            },
            "import-ap": {"href": "#weightvault-controls"},
            "results": [result],
        }
    }
